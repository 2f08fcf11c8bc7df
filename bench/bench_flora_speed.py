"""Flora indexing and morphology-query speed, before and after, in one run (issue 9, item 7).

Encoding side by side: the same seeded sample of clause chunks encoded the way indexing
worked before (float32 weights, sentence-transformers batches of 64 over blocks of 512 sorted
by length) and as shipped (bfloat16 weights where the CPU has them, shortest first in batches
of a fixed character budget), alternated, with chunks per wall second and per CPU second
(the machine is shared: the CPU figure and the ratio are what carry over). Then the whole
corpus indexed cold (a fresh on-disk embedding cache: every chunk encoded) and warm (every
chunk found by text hash), and fused queries (bench/eval_morphology.py's paraphrased
generator) timed on first asking and on repeats. Prints the machine's load throughout.

    nice -n 5 .venv/bin/python bench/bench_flora_speed.py                    # all 2,734 descriptions
    nice -n 5 .venv/bin/python bench/bench_flora_speed.py --text-model minilm-static   # the static default
    nice -n 5 .venv/bin/python bench/bench_flora_speed.py --queries-only --cache ~/.cache/herbaria   # queries
    .venv/bin/python bench/bench_flora_speed.py --taxa 300 --compare-taxa 100 --queries 60
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the trait signal's reference, for "before"

from retrieval.flora import read_descriptions  # noqa: E402

MALESIANA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flora" / "malesiana"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentiles(times: list[float]) -> str:
    ms = 1000 * np.array(times)
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms (n={len(ms)})"


def encode_before(encoder, texts: list[str]) -> np.ndarray:
    """Indexing's encoding before this change: blocks of 512 sorted by length, batches of 64."""
    out = []
    for start in range(0, len(texts), 512):
        block = sorted(texts[start:start + 512], key=lambda t: (len(t), t))
        out.append(encoder.model.encode(block, batch_size=64, convert_to_numpy=True, normalize_embeddings=True))
    return np.concatenate(out)


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taxa", type=int, default=0, help="a seeded random sample of this many descriptions (0: all)")
    parser.add_argument("--compare-taxa", type=int, default=150, help="descriptions encoded both ways side by side")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--text-model", default="minilm")
    parser.add_argument("--cache", help="on-disk cache folder to use (default: a fresh one, so the first index is cold)")
    parser.add_argument("--queries-only", action="store_true",
                        help="index once (from --cache when it holds the embeddings) and time queries only")
    args = parser.parse_args()
    os.environ["HERBARIA_CACHE"] = args.cache or tempfile.mkdtemp(prefix="herbaria-speed-")
    print(f"embedding cache: {os.environ['HERBARIA_CACHE']}")
    import torch

    from retrieval.flora.morphology import DescriptionIndex, chunk_text, chunks_of
    from retrieval.flora.text_encoders import cached_text_encoder, create_text_encoder
    from eval_morphology import make_queries

    records = read_descriptions(MALESIANA)
    if args.taxa and args.taxa < len(records):
        records = [records[i] for i in sorted(random.Random(0).sample(range(len(records)), args.taxa))]
    wall, cpu = timed(lambda: cached_text_encoder(args.text_model))  # a static model is distilled here on first use
    after = cached_text_encoder(args.text_model)
    print(f"text model {args.text_model} ready in {wall:.1f} s wall, {cpu:.1f} CPU s (fresh cache: a static model "
          f"distils here), load {load()}", flush=True)
    # "before" is the float32 model: the one already loaded when it runs in float32 (a static model always does)
    before = after if after.precision == "float32" else create_text_encoder(args.text_model, precision="float32")
    print(f"{len(records)} Flora Malesiana descriptions, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"precision {after.precision}, load before: {load()}", flush=True)

    compare = 0 if args.queries_only else min(args.compare_taxa, len(records))
    sample = [records[i] for i in sorted(random.Random(1).sample(range(len(records)), compare))]
    texts = list(dict.fromkeys(chunk_text(r.text, (0, *span)) for r in sample for span in chunks_of(r)))
    runs = {"before": [], "after": []}
    for _ in range(2 if texts else 0):
        runs["before"].append(timed(lambda: encode_before(before, texts)))
        runs["after"].append(timed(lambda: after.encode(texts)))
    for name, times in runs.items() if texts else ():
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        print(f"encode {name}: {len(texts)} chunks, best of 2: {wall:.1f} s wall ({len(texts) / wall:.0f} chunks/s), "
              f"{cpu:.1f} CPU s ({len(texts) / cpu:.0f} chunks per CPU second)", flush=True)
    sorted_texts = texts and [t for start in range(0, len(texts), 512) for t in sorted(texts[start:start + 512], key=lambda t: (len(t), t))]
    cos = np.sum(encode_before(before, texts) * after.encode(sorted_texts), axis=1) if texts else np.ones(1)
    texts and print(f"cosine after vs before, same chunks: min {cos.min():.5f}, mean {cos.mean():.6f}; load {load()}", flush=True)

    figures = {}
    for run in ("cached", ) if args.queries_only else ("cold cache", "warm cache"):
        wall, cpu = timed(lambda: figures.setdefault("index", DescriptionIndex.build(records, text_model=args.text_model,
                                                                                   progress=run != "warm cache")))
        index = figures.pop("index")
        unique = len({chunk_text(records[int(r[0])].text, r) for r in index.chunks})
        print(f"index {run}: {wall:.1f} s wall, {cpu:.1f} CPU s ({len(index.chunks)} chunks, {unique} distinct: "
              f"{unique / wall:.0f} chunks/s), load {load()}", flush=True)

    queries = [q["query"] for q in make_queries(records, args.queries, 0, markup=True)]
    query_speed(index, queries)


def query_speed(index, queries: list[str]) -> None:
    """Fused queries timed before and after, alternated in one process: before = the trait signal matching rows
    one by one in Python (the reference kept in tests/test_trait_signal_speed.py) and each query text encoded
    in its own forward pass side by side (as shipped in d8e03d0), chunk cosines by numpy's BLAS; after = as
    shipped. First asking: query embeddings forgotten and a fresh trait signal (its vocabulary answers are
    learnt during the run); asked again: the same queries once more."""
    import types

    from test_trait_signal_speed import ReferenceTraitSignal

    from retrieval.flora.morphology import TraitSignal
    from retrieval.flora.morphology.dense import best_per_taxon

    index.search(queries[0], k=10)  # first call loads lazily built state
    traits, ranks = index.traits, [r.rank for r in index.records]
    shipped_scores = index.dense.scores

    def before_scores(self, query: str, parts: list[str]):
        texts = [query] + [p for p in parts if p and p != query]
        self._encoder = before_encoder
        try:
            q = self.encode_queries(texts)
        finally:
            self._encoder = shipped
        sims = self.embeddings @ q.T
        best = best_per_taxon(sims, self.chunk_taxon, self.n_taxa, empty=-1.0)
        best[best < -0.5] = 0.0
        score = best[:, 0] + (best[:, 1:].sum(axis=1) if best.shape[1] > 1 else 0.0)
        return score, sims[:, 0] if len(parts) <= 1 else sims.max(axis=1)

    shipped = index.dense.encoder()

    class OnePassEach:  # the query encoding before: one text per forward pass, passes side by side
        name, dim, fingerprint = shipped.name, shipped.dim, shipped.fingerprint

        def encode(self, texts: list[str]) -> np.ndarray:
            return shipped.encode_queries(texts)

    before_encoder = OnePassEach()
    ReferenceTraitSignal.ordered = False
    for name in ("before", "after", "before", "after"):
        if name == "before":
            index.trait_signal = ReferenceTraitSignal(traits, ranks)
            index.dense.scores = types.MethodType(before_scores, index.dense)
        else:
            index.trait_signal = TraitSignal(traits, ranks)
            index.dense.scores = shipped_scores
        index.dense._queries.clear()
        first = [timed(lambda: index.search(q, k=10))[0] for q in queries]
        repeat = [timed(lambda: index.search(q, k=10))[0] for q in queries]
        print(f"fused query {name}, first asking: {percentiles(first)}; asked again: {percentiles(repeat)}; "
              f"load {load()}", flush=True)


if __name__ == "__main__":
    main()
