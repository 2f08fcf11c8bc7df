"""Identification at herbarium scale: the vectorised ranking against the per-taxon loop it replaced.

    .venv/bin/python bench/bench_identify.py --taxa 48500 --repeat 20

Synthetic taxa (names, genera, families, 1-3 specimen ids each) and random unit 512-d prompt vectors: speed only.
Both run in one process on the same data, one thread; prints the median and p95 per call and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from assistant.identification import TaxonPrompts  # noqa: E402
from test_identification import _loop, _table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taxa", type=int, default=48_500)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    table = _table(args.taxa)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(table), 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    t0 = time.perf_counter()
    prompts = TaxonPrompts(table, vectors)
    setup = time.perf_counter() - t0
    query = vectors[7] + 0.1 * rng.normal(size=512).astype(np.float32)
    timings: dict[str, list[float]] = {"loop": [], "vectorised": []}
    for _ in range(args.repeat):
        for kind in ("vectorised", "loop") if _ % 2 else ("loop", "vectorised"):
            t = time.perf_counter()
            if kind == "loop":
                _loop(table, vectors, query, 100.0, "genus", 5)
            else:
                prompts.identify(query, 100.0, rank="genus", top=5)
            timings[kind].append(time.perf_counter() - t)
    for kind, ts in timings.items():
        ts = sorted(ts)
        print(f"{kind:>10}: p50 {1000 * statistics.median(ts):8.2f} ms  p95 {1000 * ts[int(0.95 * (len(ts) - 1))]:8.2f} ms")
    print(f"ratio loop/vectorised (p50): {statistics.median(timings['loop']) / statistics.median(timings['vectorised']):.0f}x;"
          f" one-off label codes: {1000 * setup:.0f} ms; taxa: {len(table):,}")


if __name__ == "__main__":
    main()
