"""Per-client fairness: a flooding client is told to slow down while another visitor is still answered.

Loopback clients all come from 127.0.0.1, so the served demo trusts 127.0.0.1 as a proxy and each
simulated visitor names itself in X-Forwarded-For, the way a reverse proxy would name real ones.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from demo.fairness import ClientFairness, ClientLimits, client_identity, parse_networks
from retrieval.errors import BadInput

FLOODER = "203.0.113.9"
VISITOR = "198.51.100.20"
TURN_DELAY_S = 0.3  # each served turn takes at least this long, so that the flood's turns overlap


# ---------------------------------------------------------------------------------------------- who is a client
def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert client_identity("192.0.2.7", ["10.1.1.1"]) == "192.0.2.7"
    assert client_identity("192.0.2.7", ["10.1.1.1"], parse_networks("127.0.0.1")) == "192.0.2.7"
    assert client_identity("127.0.0.1", ["10.1.1.1"]) == "127.0.0.1"  # no trusted proxy by default


def test_a_trusted_proxy_chain_names_the_rightmost_address_it_did_not_write_itself() -> None:
    proxies = parse_networks("127.0.0.1, 10.0.0.0/8")
    # The left part is whatever the client sent; the right part was appended by our proxies.
    assert client_identity("127.0.0.1", ["6.6.6.6, 198.51.100.20, 10.0.0.5"], proxies) == "198.51.100.20"
    assert client_identity("127.0.0.1", ["6.6.6.6", "198.51.100.20:5123"], proxies) == "198.51.100.20"
    assert client_identity("127.0.0.1", ["not-an-address"], proxies) == "127.0.0.1"
    assert client_identity("127.0.0.1", [], proxies) == "127.0.0.1"


def test_ipv6_clients_count_by_their_prefix_and_mapped_ipv4_as_ipv4() -> None:
    assert client_identity("2001:db8:1:2::5") == client_identity("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_identity("2001:db8:1:3::5") != client_identity("2001:db8:1:2::5")
    assert client_identity("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_identity("[2001:db8::1]:443", ()) == "2001:db8::/64"


def test_rotating_forwarded_for_from_an_untrusted_peer_stays_one_client() -> None:
    fairness = ClientFairness(_FakeQueue(), ClientLimits(trusted_proxies=()))
    seen = {fairness.identity(_request("192.0.2.7", f"10.0.0.{i}")) for i in range(20)}
    assert seen == {"192.0.2.7"}
    trusting = ClientFairness(_FakeQueue(), ClientLimits(trusted_proxies=("192.0.2.7",)))
    assert trusting.identity(_request("192.0.2.7", "198.51.100.20")) == "198.51.100.20"


def test_settings_come_from_options_then_environment_then_defaults() -> None:
    assert ClientLimits.from_settings(env={}) == ClientLimits(4, 1, ())
    env = {"HERBARIA_PER_CLIENT_QUEUE": "8", "HERBARIA_PER_CLIENT_CONCURRENCY": "2",
           "HERBARIA_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"}
    assert ClientLimits.from_settings(env=env) == ClientLimits(8, 2, ("127.0.0.1/32", "10.0.0.0/8"))
    assert ClientLimits.from_settings(3, 0, "", env=env) == ClientLimits(3, 0, ())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"per_client_queue": -1}, "0 (no limit) or more"),
    ({"env": {"HERBARIA_PER_CLIENT_CONCURRENCY": "two"}}, "whole number"),
    ({"trusted_proxies": "127.0.0.1, proxy.example.org"}, "'proxy.example.org' is not an IP address"),
])
def test_bad_settings_are_one_line_errors(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("env", {})
    with pytest.raises(BadInput, match=re.escape(message)) as err:
        ClientLimits.from_settings(**kwargs)
    assert "\n" not in str(err.value)


class _FakeQueue:
    push = get_events = None
    event_ids_to_events: dict[str, Any] = {}
    active_jobs: list[Any] = []
    event_queue_per_concurrency_id: dict[str, Any] = {}


def _request(peer: str, forwarded_for: str) -> Any:
    headers = httpx.Headers({"x-forwarded-for": forwarded_for})
    return SimpleNamespace(client=SimpleNamespace(host=peer), headers=SimpleNamespace(getlist=headers.get_list))


# ---------------------------------------------------------------------------------------------- a served demo
class SlowCountingAssistant:
    """The real assistant, each turn held `TURN_DELAY_S` longer, counting how many turns of each client run at once
    (the flood's questions start with "flood")."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, text: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        who = "flood" if text.startswith("flood") else "visitor"
        with self.lock:
            self.running[who] += 1
            self.peak[who] = max(self.peak[who], self.running[who])
        try:
            time.sleep(TURN_DELAY_S)
            yield from self.inner.stream(text, *args, **kwargs)
        finally:
            with self.lock:
                self.running[who] -= 1


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from assistant.agent import HerbariaAssistant
    from demo.server import create_server, start_server
    from demo_support import build_collection

    collection = build_collection(tmp_path_factory.mktemp("demo-fairness"), per_taxon=2)
    assistant = SlowCountingAssistant(HerbariaAssistant(collection, model="tiny-test"))
    limits = ClientLimits(per_client_queue=4, per_client_concurrency=1, trusted_proxies=("127.0.0.1",))
    server = start_server(create_server(collection, model="tiny-test", concurrency=2, queue_size=64,
                                        assistant=assistant, client_limits=limits))
    try:
        yield {"url": server.url, "assistant": assistant}
    finally:
        server.close()


def _chat_body(text: str) -> dict[str, Any]:
    return {"data": [{"text": text, "files": []}, [], [], [], 0, 0]}


def _result(http: httpx.Client, url: str, event_id: str) -> str:
    """The last SSE event of a `/call/chat` job ("complete" or "error")."""
    last = ""
    with http.stream("GET", f"{url}gradio_api/call/chat/{event_id}", timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                last = line.split(":", 1)[1].strip()
    return last


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_flooding_client_is_refused_while_another_visitor_is_answered(
        served: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    from gradio_client import Client

    url, assistant = served["url"], served["assistant"]
    flood_headers = {"X-Forwarded-For": FLOODER}
    refusals: list[httpx.Response] = []
    accepted: list[str] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    first_refusal = threading.Event()

    def join(http: httpx.Client, i: int) -> None:
        response = http.post(f"{url}gradio_api/call/chat", json=_chat_body(f"flood {i}: opposite leaves?"),
                             headers=flood_headers, timeout=30)
        with lock:
            statuses[response.status_code] += 1
            if response.status_code == 200:
                accepted.append(response.json()["event_id"])
            elif response.status_code == 429:
                refusals.append(response)
                first_refusal.set()

    with httpx.Client() as http, ThreadPoolExecutor(max_workers=8) as pool:
        flood = [pool.submit(join, http, i) for i in range(100)]  # 100 joins, as fast as 8 connections go
        assert first_refusal.wait(60), f"the flood was never refused: {statuses}"
        visitor = Client(url, verbose=False, analytics_enabled=False, download_files=False,
                         headers={"X-Forwarded-For": VISITOR})
        try:
            *_, turn = visitor.predict({"text": "Which specimens have opposite leaves?", "files": []},
                                       api_name="/chat")
        finally:
            visitor.close()
        for future in flood:
            future.result(timeout=60)
        outcomes = Counter(_result(http, url, event_id) for event_id in accepted)

        assert turn["error"] is None and turn["specimens"]  # the other visitor was answered
        assert set(statuses) <= {200, 429} and statuses[429] >= 50, statuses  # told to slow down, not "queue full"
        assert 4 <= len(accepted) <= 50, statuses
        assert outcomes == Counter({"complete": len(accepted)})  # what was accepted was answered, none lost
        assert "Too many questions at once" in refusals[0].json()["detail"]
        assert refusals[0].headers["retry-after"].isdigit()
        assert assistant.peak["flood"] == 1  # never more than one of the flood's turns running at once

        # Its turns done, the same client is welcome again.
        again = http.post(f"{url}gradio_api/call/chat", json=_chat_body("flood again: white flowers?"),
                          headers=flood_headers, timeout=30)
        assert again.status_code == 200 and _result(http, url, again.json()["event_id"]) == "complete"

    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err and "Exception in ASGI" not in captured.err


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_page_and_gradio_client_route_is_limited_too(served: dict[str, Any]) -> None:
    """gradio_client (like the page) joins through /gradio_api/queue/join with its session hash."""
    from gradio_client import Client

    client = Client(served["url"], verbose=False, analytics_enabled=False, download_files=False,
                    headers={"X-Forwarded-For": "192.0.2.44"})
    try:
        jobs = [client.submit({"text": f"page {i}: toothed leaves?", "files": []}, api_name="/chat")
                for i in range(10)]
        outcomes = Counter()
        for job in jobs:
            try:
                outcomes["answered" if job.result(timeout=90)[-1]["error"] is None else "error"] += 1
            except Exception as err:  # the refusal reaches gradio_client as an HTTP 429 error
                outcomes["429" if "429" in str(err) else repr(err)] += 1
    finally:
        client.close()
    assert set(outcomes) == {"answered", "429"} and outcomes["answered"] >= 4, outcomes
