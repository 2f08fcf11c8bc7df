"""Media downloads against a local http.server: cache, retries, per-host rate limit, resume, no network."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import pytest
from PIL import Image

from conftest import closed_port

from retrieval.errors import BadInput, NetworkUnavailable
from retrieval.collections import HostRateLimiter, MediaFetcher


def _jpeg_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "JPEG")
    return buf.getvalue()


class Server:
    """Serves /img/N.jpg; /flaky/... fails once with 500; /missing is 404; /cut sends half its body.

    /redirect?to=URL answers 302 to URL (relative or absolute, any scheme); /loop redirects to itself.
    """

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.times: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # the reachability probe
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:
                with owner.lock:
                    owner.hits[self.path] += 1
                    owner.times.append((self.path, time.monotonic()))
                    count = owner.hits[self.path]
                body = _jpeg_bytes((count * 40 % 255, 90, 30))
                if self.path.startswith(("/redirect?to=", "/loop")):
                    self.send_response(302)
                    self.send_header("Location", unquote(self.path.partition("?to=")[2]) or "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/flaky") and count == 1:
                    self.send_error(500)
                    return
                if self.path == "/missing":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path == "/cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as srv:
        yield srv


def _fetcher(tmp_path, **options) -> MediaFetcher:
    defaults = {"workers": 2, "backoff": 0.01, "min_interval": 0.0, "timeout": 5, "retries": 2}
    return MediaFetcher(tmp_path / "cache", **{**defaults, **options})


def test_download_then_cache_hit(tmp_path, server):
    urls = [f"{server.url}/img/{i}.jpg" for i in range(5)]
    first = _fetcher(tmp_path).fetch(urls, progress=False)
    assert first.downloaded == 5 and not first.errors
    assert all(Image.open(path).format == "JPEG" for path in first.paths.values())
    assert len({p.name for p in first.paths.values()}) == 5  # one hash-named file per URL
    second = _fetcher(tmp_path).fetch(urls, progress=False)  # a new process would see the same cache
    assert second.cached == 5 and second.downloaded == 0
    assert all(server.hits[f"/img/{i}.jpg"] == 1 for i in range(5))


def test_retry_after_one_server_error(tmp_path, server):
    report = _fetcher(tmp_path).fetch([f"{server.url}/flaky/a.jpg"], progress=False)
    assert report.downloaded == 1 and not report.errors
    assert server.hits["/flaky/a.jpg"] == 2


def test_no_retry_without_retries(tmp_path, server):
    report = _fetcher(tmp_path, retries=0).fetch([f"{server.url}/flaky/b.jpg"], progress=False)
    assert report.errors == {f"{server.url}/flaky/b.jpg": "HTTP 500"}
    assert server.hits["/flaky/b.jpg"] == 1


def test_permanent_failure_is_remembered(tmp_path, server):
    url = f"{server.url}/missing"
    assert _fetcher(tmp_path).fetch([url], progress=False).errors[url] == "HTTP 404"
    again = _fetcher(tmp_path).fetch([url], progress=False)
    assert "earlier run" in again.errors[url]
    assert server.hits["/missing"] == 1  # 404 is not retried, nor asked again on the next run
    _fetcher(tmp_path).fetch([url], progress=False, retry_failed=True)
    assert server.hits["/missing"] == 2


def test_truncated_download_leaves_no_file(tmp_path, server):
    fetcher = _fetcher(tmp_path, retries=1)
    url = f"{server.url}/cut"
    report = fetcher.fetch([url], progress=False)
    assert url in report.errors and not report.paths
    assert server.hits["/cut"] == 2  # retried once
    assert not fetcher.cache_path(url).exists()
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_rate_limit_per_host(tmp_path, server):
    urls = [f"{server.url}/img/r{i}.jpg" for i in range(4)]
    _fetcher(tmp_path, workers=4, min_interval=0.2).fetch(urls, progress=False)
    starts = sorted(t for path, t in server.times if path.startswith("/img/r"))
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) == 4
    assert min(gaps) >= 0.12, gaps  # four workers, yet about one request per 0.2 s to this host


def test_rate_limiter_is_per_host_and_thread_safe():
    limiter = HostRateLimiter(0.05)
    waits: list[float] = []
    threads = [threading.Thread(target=lambda: waits.append(limiter.wait("a.org"))) for _ in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # the 4th caller waits about 3 intervals, less the time the threads took to start
    assert sorted(waits)[-1] >= 0.1 and sum(waits) >= 0.2
    assert limiter.wait("b.org") == 0  # another host is not held back
    assert time.monotonic() - start < 1


def test_resume_after_interruption(tmp_path, server, monkeypatch):
    urls = [f"{server.url}/img/s{i}.jpg" for i in range(6)]
    fetcher = _fetcher(tmp_path, workers=1, min_interval=0.1)  # paced, so the crash comes mid-way
    original = MediaFetcher._record
    calls = {"n": 0}

    def crash_after_two(self, db, url, status, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original(self, db, url, status, **kwargs)

    monkeypatch.setattr(MediaFetcher, "_record", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        fetcher.fetch(urls, progress=False)
    monkeypatch.setattr(MediaFetcher, "_record", original)
    fetched_before = {path for path, _ in server.times}
    assert 2 <= len(fetched_before) < 6
    report = _fetcher(tmp_path).fetch(urls, progress=False)
    assert len(report.paths) == 6 and not report.errors
    assert report.cached == len(fetched_before) and report.downloaded == 6 - len(fetched_before)
    assert all(server.hits[f"/img/s{i}.jpg"] == 1 for i in range(6))  # nothing fetched twice
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_no_network_is_one_early_error(tmp_path):
    port = closed_port()
    urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(50)]
    start = time.monotonic()
    with pytest.raises(NetworkUnavailable, match="cannot download 50 media files: no network connection"):
        _fetcher(tmp_path, backoff=5).fetch(urls, progress=False)
    assert time.monotonic() - start < 5  # no per-URL timeouts, no backoff sleeps


def test_network_dropping_mid_way_stops_the_run(tmp_path, server):
    """Hosts that answered the probe but then refuse every connection: stop after a few, not after all."""
    port = closed_port()
    fetcher = _fetcher(tmp_path, retries=0, max_consecutive_unreachable=3, workers=1)
    fetcher._reachable.add(f"http://127.0.0.1:{port}")  # as if the probe had succeeded just before
    urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(20)]
    with pytest.raises(NetworkUnavailable, match="the network seems down"):
        fetcher.fetch(urls, progress=False)


def test_redirects_are_followed_to_http_only(tmp_path, server):
    """A media server may redirect to another http(s) URL, never to a file: or other scheme."""
    planted = tmp_path / "planted.jpg"
    planted.write_bytes(_jpeg_bytes((1, 2, 3)))
    to = {
        "same-host": "/img/moved.jpg",
        "file": f"file://{planted}",
        "ftp": "ftp://127.0.0.1/img.jpg",
        "data": "data:image/jpeg;base64,/9j/4AAQ",
        "no-host": "https:///img.jpg",  # (http:///x would join onto this host: fine)
    }
    urls = {name: f"{server.url}/redirect?to={quote(target, safe='')}" for name, target in to.items()}
    fetcher = _fetcher(tmp_path, retries=0)
    report = fetcher.fetch([*urls.values(), f"{server.url}/loop"], progress=False)
    assert set(report.paths) == {urls["same-host"]}
    assert server.hits["/img/moved.jpg"] == 1
    assert report.errors[urls["file"]] == "redirected to a file: URL; refused (only http(s) media are fetched)"
    assert report.errors[urls["ftp"]].startswith("redirected to a ftp: URL; refused")
    assert report.errors[urls["data"]].startswith("redirected to a data: URL; refused")
    assert report.errors[urls["no-host"]].startswith("redirected to a URL without a host; refused")
    assert report.errors[f"{server.url}/loop"] == "more than 5 redirects"
    assert 5 <= server.hits["/loop"] <= 6
    for name in ("file", "ftp", "data", "no-host"):
        assert not fetcher.cache_path(urls[name]).exists()


def test_non_http_urls_are_refused_before_any_request(tmp_path, server):
    for url in ("file:///etc/hostname", "ftp://127.0.0.1/a.jpg", "http:///a.jpg"):
        with pytest.raises(BadInput, match="not an http\\(s\\) media URL"):
            _fetcher(tmp_path).fetch([url], progress=False)
    assert not server.hits
