"""Flora indexing and morphology-query speed, before and after the embedding caches, in one run.

Indexing: the same descriptions built twice into a fresh embedding cache (cold: every chunk
encoded; warm: every chunk found by text hash), and once the way indexing worked before the
on-disk cache (no cache, the model's 256-token cut). Querying: distinct paraphrased queries
(bench/eval_morphology.py's generator), each asked twice; "before" encodes the query and its
parts at every call with the 256-token cut, "after" is DescriptionIndex.search as shipped
(query embeddings cached, parts in one batch, 64-token cut). Prints the machine's load.

    .venv/bin/python bench/bench_flora_speed.py --taxa 300 --queries 100
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval.flora import read_descriptions  # noqa: E402

MALESIANA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flora" / "malesiana"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentiles(times: list[float]) -> str:
    ms = 1000 * np.array(times)
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taxa", type=int, default=0, help="a seeded random sample of this many descriptions (0: all)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--text-model", default="minilm")
    parser.add_argument("--skip-before", action="store_true", help="skip the uncached indexing run")
    args = parser.parse_args()
    os.environ["HERBARIA_CACHE"] = tempfile.mkdtemp(prefix="herbaria-speed-")  # a cold on-disk embedding cache
    from retrieval.flora.morphology import DescriptionIndex
    from retrieval.flora.morphology.query import query_parts, rewrite_query
    from retrieval.flora.text_encoders import cached_text_encoder
    from retrieval.flora.traits import extract_traits
    from eval_morphology import make_queries

    records = read_descriptions(MALESIANA)
    if args.taxa and args.taxa < len(records):
        records = [records[i] for i in sorted(random.Random(0).sample(range(len(records)), args.taxa))]
    print(f"{len(records)} Flora Malesiana descriptions, {os.cpu_count()} cores, load before: {load()}")
    cached_text_encoder(args.text_model)  # model loading is not indexing
    figures = {}
    if not args.skip_before:
        t = time.perf_counter()
        DescriptionIndex.build(records, text_model=args.text_model, progress=False, disk_cache=False)
        figures["before (no cache)"] = time.perf_counter() - t
    for run in ("cold cache", "warm cache"):
        t = time.perf_counter()
        index = DescriptionIndex.build(records, text_model=args.text_model, progress=run == "cold cache")
        figures[run] = time.perf_counter() - t
    for run, seconds in figures.items():
        print(f"index {run}: {seconds:.1f} s ({len(index.chunks)} chunks), load {load()}")
    queries = [q["query"] for q in make_queries(records, args.queries, 0, markup=True)]
    encoder = index.dense.encoder()
    before, after = [], []
    for q in queries * 2:
        t = time.perf_counter()
        qtraits = extract_traits(q, None, query=True)
        rewritten, _ = rewrite_query(q, qtraits)
        parts = query_parts(rewritten)
        encoder.encode([rewritten] + [p for p in parts if p != rewritten], max_tokens=256)  # the old per-call encode
        index.search(q, k=10)  # the rest of the search (its own encode is cached by now)
        before.append(time.perf_counter() - t)
    index.dense._queries.clear()
    for q in queries * 2:
        t = time.perf_counter()
        index.search(q, k=10)
        after.append(time.perf_counter() - t)
    print(f"fused query before: {percentiles(before)}")
    print(f"fused query after:  {percentiles(after)}")
    after_first = after[:len(queries)]
    print(f"fused query after, first asking only: {percentiles(after_first)}; load after: {load()}")


if __name__ == "__main__":
    main()
