"""Search latency of the FAISS specimen index per preset, with and without a metadata filter.

Run by hand: `.venv/bin/python bench/bench_index.py [--n 200000] [--dim 512]`. Synthetic
unit vectors; the filter keeps ~5% of ids, as "family=Rubiaceae" would in a large herbarium.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from retrieval.vectors import SpecimenIndex


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = vecs[rng.choice(args.n, args.queries, replace=False)]
    allowed = np.flatnonzero(rng.random(args.n) < 0.05).astype(np.int64)
    allowed_set = set(allowed.tolist())
    enc = {"name": "synthetic", "fingerprint": "-", "dim": args.dim}
    rows = []
    for preset in ("exact", "ivf", "hnsw"):
        index = SpecimenIndex.create(enc, preset_name=preset, n_expected=args.n)
        t0 = time.perf_counter()
        index.add(np.arange(args.n), vecs)
        build = time.perf_counter() - t0
        row = {"preset": preset, "factory": index.manifest["factory"], "build_s": round(build, 1)}
        for label, sel in (("unfiltered", None), ("filtered_5pct", allowed)):
            t0 = time.perf_counter()
            for q in queries:
                hits = index.search(q, k=args.k, allowed=sel)[0]
                if sel is not None:
                    assert {i for i, _ in hits} <= allowed_set
            row[f"{label}_ms_per_query"] = round(1000 * (time.perf_counter() - t0) / len(queries), 2)
        exact_ids = [int(np.argmax(vecs @ q)) for q in queries[:50]]
        found = [index.search(q, k=args.k)[0][0][0] for q in queries[:50]]
        row["self_recall@1"] = round(float(np.mean(np.array(found) == np.array(exact_ids))), 3)
        rows.append(row)
    print(json.dumps({"n": args.n, "dim": args.dim, "k": args.k, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
