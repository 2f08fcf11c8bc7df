"""Flood test of the web demo: N visitors ask T turns while one client floods the queue with joins.

Serves a collection in this process with per-client limits (`demo.fairness`) and prints, as JSON:
the visitors' turns completed, errors (a refusal would count here), lost, p50/p95 latency; the
flood's joins sent, accepted, refused (HTTP 429), other answers, and its accepted turns answered
and lost; the machine's `uptime`. Run by hand, e.g.:

    .venv/bin/python bench/flood_test.py --collection ../shared/data/specimens/harvard --model tiny-test
    .venv/bin/python bench/flood_test.py ... --per-client-queue 0 --per-client-concurrency 0   # no limits

All clients come from 127.0.0.1, so the server trusts 127.0.0.1 as a proxy and every simulated client
names itself in X-Forwarded-For, as a reverse proxy names real visitors. The visitors are
`demo.loadtest.run_load` sessions (one address each); the flood posts raw `/gradio_api/call/chat`
joins from one address at --flood-rate joins/s (the finding was 150 joins in 1.6 s) until the
visitors are done, and reads every accepted turn to its end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FLOODER = "203.0.113.9"


def visitor_address(c: int) -> str:
    return f"198.51.{100 + c // 250}.{1 + c % 250}"


def flood(url: str, stop: threading.Event, *, rate: float, connections: int, max_joins: int) -> dict[str, Any]:
    """Join as fast as `rate` allows from one address until `stop`; every accepted turn is read to its end."""
    import httpx

    headers = {"X-Forwarded-For": FLOODER}
    statuses: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    sent = 0
    interval = connections / rate

    def read(http: httpx.Client, event_id: str) -> None:
        last = "none"
        try:
            with http.stream("GET", f"{url}gradio_api/call/chat/{event_id}", headers=headers,
                             timeout=600) as response:
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        last = line.split(":", 1)[1].strip()
        except httpx.HTTPError as err:
            last = type(err).__name__
        with lock:
            outcomes[last] += 1

    def joiner(k: int, http: httpx.Client, readers: ThreadPoolExecutor) -> None:
        nonlocal sent
        next_at = time.monotonic() + k * interval / connections
        while not stop.is_set():
            with lock:
                if sent >= max_joins:
                    return
                sent += 1
                i = sent
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            body = {"data": [{"text": f"flood {i}: which leaves are opposite?", "files": []}, [], [], [], 0, 0]}
            try:
                response = http.post(f"{url}gradio_api/call/chat", json=body, headers=headers, timeout=30)
                status = str(response.status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
            with lock:
                statuses[status] += 1
            if status == "200":
                readers.submit(read, http, response.json()["event_id"])

    limits = httpx.Limits(max_connections=connections + 64, max_keepalive_connections=connections + 64)
    with httpx.Client(limits=limits) as http, ThreadPoolExecutor(max_workers=64) as readers:
        with ThreadPoolExecutor(max_workers=connections) as joiners:
            list(joiners.map(lambda k: joiner(k, http, readers), range(connections)))
        readers.shutdown(wait=True)
    accepted = statuses["200"]
    return {"flood_rate_per_s": rate, "joins_sent": sum(statuses.values()), "accepted": accepted,
            "refused_429": statuses["429"],
            "other_answers": {k: v for k, v in statuses.items() if k not in ("200", "429")},
            "accepted_answered": outcomes["complete"], "accepted_failed": outcomes["error"],
            "accepted_lost": accepted - outcomes["complete"] - outcomes["error"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", help="collection folder, or a source to ingest (default: generated sheets)")
    parser.add_argument("--model", default="tiny-test", help="encoder (default tiny-test)")
    parser.add_argument("--clients", type=int, default=30, help="normal visitors (default 30)")
    parser.add_argument("--turns-per-client", type=int, default=5)
    parser.add_argument("--flood-rate", type=float, default=100.0, help="flood joins per second (default 100)")
    parser.add_argument("--flood-connections", type=int, default=4)
    parser.add_argument("--max-flood-joins", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=2, help="server: turns answered at once")
    parser.add_argument("--queue-size", type=int, default=64, help="server: turns allowed to wait")
    parser.add_argument("--per-client-queue", type=int, default=4, help="server: 0 = no per-client limit")
    parser.add_argument("--per-client-concurrency", type=int, default=1, help="server: 0 = no per-client limit")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds before unfinished turns count as lost")
    parser.add_argument("--out", help="also write the report as JSON here")
    args = parser.parse_args()

    from demo.fairness import ClientLimits
    from demo.loadtest import run_load
    from demo.server import create_server, start_server
    from load_test import prepare

    limits = ClientLimits(args.per_client_queue, args.per_client_concurrency, trusted_proxies=("127.0.0.1",))
    turns = args.clients * args.turns_per_client
    with tempfile.TemporaryDirectory(prefix="herbaria-flood-") as tmp:
        collection = prepare(args.collection, args.model, Path(tmp))
        server = start_server(create_server(collection, model=args.model, concurrency=args.concurrency,
                                            queue_size=args.queue_size, client_limits=limits))
        stop = threading.Event()
        flood_report: dict[str, Any] = {}
        try:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            load_before = os.getloadavg()
            flooder = threading.Thread(target=lambda: flood_report.update(flood(
                server.url, stop, rate=args.flood_rate, connections=args.flood_connections,
                max_joins=args.max_flood_joins)), daemon=True)
            flooder.start()
            time.sleep(2.0)  # the flood is under way before the first visitor arrives
            visitors = run_load(server.url, clients=args.clients, turns=turns, deadline_s=args.deadline,
                                client_headers=lambda c: {"X-Forwarded-For": visitor_address(c)})
            stop.set()
            flooder.join(args.deadline)
            uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        finally:
            stop.set()
            server.close()
    report = {"started": started, "model": args.model, "collection": args.collection or "generated sheets",
              "server_concurrency": args.concurrency, "queue_size": args.queue_size,
              "per_client_queue": args.per_client_queue, "per_client_concurrency": args.per_client_concurrency,
              "visitors": visitors, "flood": flood_report, "cpus": os.cpu_count(), "machine": platform.machine(),
              "load_average_1m_before": round(load_before[0], 2), "uptime_after": uptime}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    clean = visitors["errors"] == 0 and visitors["lost"] == 0 and flood_report.get("accepted_lost", 1) == 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
