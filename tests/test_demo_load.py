"""A bounded load test: 20 concurrent sessions, 200 turns, no errors and no lost turns.

Correctness only; latency figures come from `bench/load_test.py` (see BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo_support import build_collection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from demo.server import create_server, start_server

    work = tmp_path_factory.mktemp("demo-load")
    collection = build_collection(work, per_taxon=3)
    server = start_server(create_server(collection, model="tiny-test", concurrency=2, queue_size=64))
    try:
        yield {"url": server.url, "image": next((work / "sheets").glob("*.jpg"))}
    finally:
        server.close()


@pytest.mark.timeout(240)
def test_twenty_clients_two_hundred_turns(served: dict[str, Any]) -> None:
    from demo.loadtest import run_load

    report = run_load(served["url"], clients=20, turns=200, image=Path(served["image"]), image_every=5,
                      deadline_s=180)
    assert report["errors"] == 0, report["error_examples"]
    assert report["lost"] == 0 and report["completed"] == 200
    assert report["p50_s"] is not None and report["p95_s"] >= report["p50_s"]
