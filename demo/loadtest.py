"""A bounded load test of a running demo: N gradio_client sessions sharing T turns.

Used by `bench/load_test.py` (figures) and `tests/test_demo_load.py` (no errors,
no lost turns). Each client is its own session, as separate visitors are; a turn
counts as lost when it neither returned nor raised before the deadline.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# 120 distinct morphology questions: visitors rarely ask the same thing twice.
DEFAULT_QUESTIONS = tuple(f"Which specimens have {arrangement} {organ} with {margin} margins?"
                          for organ in ("leaves", "leaflets", "bracts", "sepals")
                          for arrangement in ("opposite", "alternate", "whorled", "basal", "clustered")
                          for margin in ("toothed", "entire", "lobed", "serrate", "crenate", "wavy"))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_load(url: str, *, clients: int = 20, turns: int = 200, questions: Sequence[str] = DEFAULT_QUESTIONS,
             image: str | Path | None = None, image_every: int = 0, deadline_s: float = 600.0,
             api_name: str = "/chat", client_headers: Callable[[int], dict[str, str]] | None = None,
             ) -> dict[str, Any]:
    """Drive `turns` chat turns from `clients` concurrent sessions; returns counts and latency percentiles.

    With `image` and `image_every=k`, every k-th turn also uploads that image. `client_headers(c)` gives
    client c's extra HTTP headers (e.g. its own X-Forwarded-For behind a trusted proxy).
    """
    from gradio_client import Client, handle_file

    counter = iter(range(turns))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    done = 0
    stop_at = time.monotonic() + deadline_s

    def next_turn() -> int | None:
        with lock:
            return next(counter, None)

    def worker(c: int) -> None:
        nonlocal done
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False,
                        headers=client_headers(c) if client_headers else None)
        try:
            while time.monotonic() < stop_at and (turn := next_turn()) is not None:
                files = [handle_file(str(image))] if image and image_every and turn % image_every == 0 else []
                message = {"text": questions[turn % len(questions)], "files": files}
                start = time.perf_counter()
                try:
                    result = client.predict(message, api_name=api_name)
                except Exception as err:  # an error is a finding to report, not a crash of the load test
                    with lock:
                        errors.append(f"turn {turn}: {type(err).__name__}: {str(err)[:200]}")
                    continue
                elapsed = time.perf_counter() - start
                turn_json = result[-1] if isinstance(result, (list, tuple)) else None
                problem = (turn_json or {}).get("error") if isinstance(turn_json, dict) else "no turn JSON"
                with lock:
                    if problem:
                        errors.append(f"turn {turn}: {problem}")
                    else:
                        latencies.append(elapsed)
                        done += 1
        finally:
            client.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "turns": turns,
        "completed": done,
        "errors": len(errors),
        "lost": turns - done - len(errors),
        "error_examples": errors[:5],
        "wall_s": round(wall, 2),
        "throughput_turns_per_s": round(done / wall, 2) if wall else None,
        "p50_s": _round(percentile(latencies, 50)),
        "p95_s": _round(percentile(latencies, 95)),
        "max_s": _round(max(latencies) if latencies else None),
        "mean_s": _round(statistics.fmean(latencies) if latencies else None),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
