"""Fetch remote specimen images into a local cache, politely and resumably.

GBIF datasets point at image servers run by herbaria, often small ones: requests
are rate-limited per host and retried with backoff rather than hammered. Each URL
maps to one hash-named cache file written via a `.part` file and renamed only
when complete, and a small SQLite table records what was fetched or failed, so an
interrupted ingest resumes without fetching anything twice. Without a network the
fetcher says so once, up front, instead of timing out on every URL. Redirects are
followed here, hop by hop, and only to http(s) URLs (`retrieval.collections.source_media`):
a server must not be able to point the fetcher at file:, ftp: or data: URLs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from tqdm import tqdm

from retrieval.errors import BadInput, NetworkUnavailable
from retrieval.collections.images import MAX_BYTES
from retrieval.collections.source_media import is_http_url, url_scheme

log = logging.getLogger(__name__)

USER_AGENT = "Herbaria/0.1 (herbarium specimen assistant; media ingest)"
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
_SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    url TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    status TEXT NOT NULL,          -- 'done' or 'failed'
    bytes INTEGER,
    error TEXT,
    permanent INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
)
"""


class _Transient(Exception):
    """A failure worth retrying (connection reset, 5xx, 429)."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class _Unreachable(_Transient):
    """The host could not be connected to at all."""


class _Permanent(Exception):
    """A failure retrying will not fix (404, 403, too large)."""


class HostRateLimiter:
    """At most one request start per `min_interval` seconds per host, across threads."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> float:
        """Block until `host` may be contacted; returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + self.min_interval
        delay = start - now
        if delay > 0:
            time.sleep(delay)
        return delay


@dataclass
class FetchReport:
    """Where each URL's file is (`paths`), why the others failed (`errors`), and how much was downloaded."""

    paths: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    downloaded: int = 0
    cached: int = 0


class MediaFetcher:
    """Downloads URLs into `cache_dir`; `state_path` is the SQLite file holding the download table."""

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        state_path: str | Path | None = None,
        workers: int = 4,
        retries: int = 3,
        backoff: float = 1.0,
        min_interval: float = 0.5,
        timeout: float = 30.0,
        max_bytes: int = MAX_BYTES,
        probe_timeout: float = 5.0,
        max_consecutive_unreachable: int = 8,
        session_factory: Callable[[], requests.Session] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = Path(state_path) if state_path else self.cache_dir / "downloads.sqlite"
        self.workers = max(1, workers)
        self.retries = max(0, retries)
        self.backoff = backoff
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.probe_timeout = probe_timeout
        self.max_consecutive_unreachable = max_consecutive_unreachable
        self.limiter = HostRateLimiter(min_interval)
        self._session_factory = session_factory or requests.Session
        self._local = threading.local()
        self._reachable: set[str] = set()
        with closing(self._db()) as db, db:
            db.execute(_SCHEMA)

    # ------------------------------------------------------------------ state
    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.state_path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def cache_path(self, url: str) -> Path:
        """The cache file for `url`: a hash of the URL, fanned out over 256 folders."""
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.cache_dir / digest[:2] / digest

    def _state(self, urls: list[str]) -> dict[str, tuple[str, int]]:
        found: dict[str, tuple[str, int]] = {}
        with closing(self._db()) as db:
            for start in range(0, len(urls), 500):
                chunk = urls[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for url, status, permanent in db.execute(
                    f"SELECT url, status, permanent FROM media WHERE url IN ({marks})", chunk
                ):
                    found[url] = (status, permanent)
        return found

    def _record(self, db: sqlite3.Connection, url: str, status: str, *, size: int | None = None,
                error: str | None = None, permanent: bool = False) -> None:
        db.execute(
            "INSERT INTO media (url, file, status, bytes, error, permanent, attempts, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT(url) DO UPDATE SET status=excluded.status, "
            "bytes=excluded.bytes, error=excluded.error, permanent=excluded.permanent, "
            "attempts=media.attempts + 1, updated=excluded.updated",
            (url, str(self.cache_path(url).relative_to(self.cache_dir)), status, size, error, int(permanent),
             time.time()),
        )

    # ------------------------------------------------------------------ network
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            session.headers.setdefault("User-Agent", USER_AGENT)
            self._local.session = session
        return session

    def _probe(self, urls: list[str]) -> None:
        """Fail once, early, when none of the hosts can be reached (no network, DNS down)."""
        hosts: dict[str, str] = {}
        for url in urls:
            parts = urlsplit(url)
            hosts.setdefault(f"{parts.scheme}://{parts.netloc}", url)
        reasons: list[str] = []
        for origin, url in list(hosts.items())[:3]:
            if origin in self._reachable:
                return
            try:
                self._session().head(url, timeout=self.probe_timeout, allow_redirects=False)
            except (requests.ConnectionError, requests.Timeout) as err:
                reasons.append(f"{urlsplit(origin).hostname}: {_short(err)}")
                continue
            self._reachable.add(origin)
            return
        raise NetworkUnavailable(
            f"cannot download {len(urls)} media files: no network connection ({'; '.join(reasons)}); "
            "ingest a local folder or archive instead, or run again when online"
        )

    def _download(self, url: str) -> int:
        """One URL into its cache file; retries transient failures with exponential backoff."""
        target = self.cache_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        host = urlsplit(url).netloc
        attempt = 0
        while True:
            self.limiter.wait(host)
            try:
                return self._get(url, target)
            except _Transient as err:
                if attempt >= self.retries:
                    raise
                delay = err.wait if err.wait is not None else self.backoff * (2**attempt)
                log.debug("retrying %s in %.1fs: %s", url, delay, err)
                time.sleep(min(delay, 60.0))
                attempt += 1

    def _open(self, url: str) -> requests.Response:
        """GET `url`, following at most MAX_REDIRECTS redirects, each to an http(s) URL with a host."""
        session = self._session()
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            response = session.get(current, stream=True, timeout=self.timeout, allow_redirects=False)
            location = session.get_redirect_target(response)
            if not location:
                return response
            response.close()
            current = urljoin(current, location)
            if not is_http_url(current):
                scheme = url_scheme(current)
                what = f"a {scheme}: URL" if scheme not in ("http", "https") else "a URL without a host"
                raise _Permanent(f"redirected to {what}; refused (only http(s) media are fetched)")
        raise _Permanent(f"more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, target: Path) -> int:
        part = target.with_name(f"{target.name}.{threading.get_ident()}.part")
        try:
            with self._open(url) as response:
                if response.status_code in RETRY_STATUS:
                    raise _Transient(f"HTTP {response.status_code}", _retry_after(response))
                if response.status_code >= 400:
                    raise _Permanent(f"HTTP {response.status_code}")
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > self.max_bytes:
                    raise _Permanent(f"file is {declared // (1024 * 1024)} MB, over the limit")
                size = 0
                with open(part, "wb") as out:
                    for chunk in response.iter_content(chunk_size=1 << 16):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise _Permanent("file is over the size limit")
                        out.write(chunk)
                if size == 0:
                    raise _Permanent("empty response")
            os.replace(part, target)
            return size
        except requests.exceptions.SSLError as err:
            raise _Permanent(f"TLS error: {_short(err)}") from None
        except requests.ConnectionError as err:
            raise _Unreachable(_short(err)) from None
        except (requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as err:
            raise _Transient(_short(err)) from None
        except requests.RequestException as err:
            raise _Permanent(_short(err)) from None
        finally:
            part.unlink(missing_ok=True)

    # ------------------------------------------------------------------ public
    def fetch(self, urls: Iterable[str], *, progress: bool = True, retry_failed: bool = False) -> FetchReport:
        """Make every URL a local file; already cached ones are not requested again.

        URLs that failed permanently (404, too large) in an earlier run are not
        retried unless `retry_failed`. Raises `NetworkUnavailable` before any
        download when no host is reachable, or when hosts stop answering mid-way.
        """
        report = FetchReport()
        wanted = list(dict.fromkeys(u for u in urls if u))
        for url in wanted:
            if not is_http_url(url):
                raise BadInput(f"not an http(s) media URL: {url[:100]}")
        state = self._state(wanted)
        todo: list[str] = []
        for url in wanted:
            status, permanent = state.get(url, ("", 0))
            if self.cache_path(url).is_file():
                report.paths[url] = self.cache_path(url)
                report.cached += 1
            elif status == "failed" and permanent and not retry_failed:
                report.errors[url] = "failed in an earlier run (not retried)"
            else:
                todo.append(url)
        if not todo:
            return report
        for url in todo:  # leftovers of a killed run: never completed, never to be renamed
            for stale in self.cache_path(url).parent.glob(f"{self.cache_path(url).name}.*.part"):
                stale.unlink(missing_ok=True)
        self._probe(todo)
        unreachable_run = 0
        with closing(self._db()) as db, ThreadPoolExecutor(self.workers, thread_name_prefix="media") as pool, \
                tqdm(total=len(todo), desc="downloading media", unit="file", disable=not progress) as bar:
            futures = {pool.submit(self._download, url): url for url in todo}
            try:
                for future in as_completed(futures):
                    url = futures[future]
                    bar.update(1)
                    try:
                        size = future.result()
                    except _Permanent as err:
                        report.errors[url] = str(err)
                        self._record(db, url, "failed", error=str(err), permanent=True)
                        unreachable_run = 0
                    except _Transient as err:
                        report.errors[url] = str(err)
                        self._record(db, url, "failed", error=str(err))
                        unreachable_run = unreachable_run + 1 if isinstance(err, _Unreachable) else 0
                        if unreachable_run >= self.max_consecutive_unreachable:
                            raise NetworkUnavailable(
                                f"cannot download media: the last {unreachable_run} connections failed "
                                f"({err}); the network seems down; run again to resume"
                            ) from None
                    else:
                        report.paths[url] = self.cache_path(url)
                        report.downloaded += 1
                        self._record(db, url, "done", size=size)
                        unreachable_run = 0
                    db.commit()
            except BaseException:
                for pending in futures:
                    pending.cancel()
                raise
        return report


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _short(err: BaseException) -> str:
    """requests' messages nest urllib3 reprs; keep the innermost readable reason."""
    text = str(err)
    for marker in ("Failed to resolve", "Name or service not known", "Connection refused",
                   "Network is unreachable", "timed out", "No route to host", "Temporary failure in name resolution"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:160] if text else type(err).__name__


def fetch_media(urls: Iterable[str], cache_dir: str | Path, *, progress: bool = True, **options: object) -> FetchReport:
    """Stage function: download `urls` into `cache_dir` (see `MediaFetcher` for the options)."""
    return MediaFetcher(cache_dir, **options).fetch(urls, progress=progress)  # type: ignore[arg-type]
