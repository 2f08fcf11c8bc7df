"""Herbarium scale (issue 11): the IVF-PQ preset with exact re-rank at 100k / 1M / 5M specimens.

Run by hand: `.venv/bin/python bench/bench_scale.py --n 100000 [--preset ivfpq] [--work /tmp/bench_scale]`.
Synthetic clustered 512-d unit vectors (a centre per genus, a species offset, specimen noise) and a specimen table
drawn row by row from the real CNCFlora occurrences in ../shared/data/occurrences/cncflora, so families, genera,
countries, institutions and years keep their real frequencies and correlations. Metadata is held as dictionary codes
in numpy (what a filter reads). One run prints one JSON object: RAM bytes a specimen (the index apart from the
metadata), disk bytes, build time, open time, p50/p95 latency unfiltered and with common (~5%), rare (~0.1%) and
combined filters, recall@10 against exact search on the same allowed set. The serving half runs in a fresh process
so its RSS is the index's, not the build's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CNCFLORA = ROOT.parent / "shared" / "data" / "occurrences" / "cncflora"
DIM, K, QUERIES = 512, 10, 200
COLUMNS = ("family", "genus", "country", "institutionCode", "year")


def specimen_table(n: int, seed: int = 0) -> pd.DataFrame:
    """n specimens drawn (with replacement) from the real occurrence rows; categorical columns."""
    if not CNCFLORA.is_dir():
        sys.exit(f"bench_scale: {CNCFLORA} is missing (the shared data folder)")
    frames = [pd.read_csv(p, usecols=lambda c: c in ("family", "scientificName", "country", "institutionCode", "year"),
                          dtype=str, on_bad_lines="skip", encoding_errors="replace") for p in sorted(CNCFLORA.rglob("*.csv"))]
    real = pd.concat(frames, ignore_index=True)
    real["genus"] = real["scientificName"].fillna("").str.split(" ").str[0]
    real["year"] = pd.to_numeric(real["year"], errors="coerce").fillna(0).astype(np.int16)
    rows = np.random.default_rng(seed).integers(0, len(real), n)
    table = real.iloc[rows].reset_index(drop=True)
    out = pd.DataFrame({c: table[c].fillna("").astype("category") for c in COLUMNS if c != "year"})
    out["year"] = table["year"].to_numpy()
    out["species"] = table["scientificName"].fillna("").astype("category")
    return out


def write_vectors(table: pd.DataFrame, path: Path, seed: int = 0) -> np.memmap:
    """Clustered unit vectors: genus centre + species offset + specimen noise, written in chunks to a memmap."""
    rng = np.random.default_rng(seed)
    genus_codes = table["genus"].cat.codes.to_numpy()
    species_codes = table["species"].cat.codes.to_numpy()
    genus_centres = rng.normal(size=(genus_codes.max() + 1, DIM)).astype(np.float32)
    species_offsets = rng.normal(size=(species_codes.max() + 1, DIM)).astype(np.float32) * 0.6
    species_genus = np.zeros(species_codes.max() + 1, np.int64)
    species_genus[species_codes] = genus_codes
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(table), DIM))
    for lo in range(0, len(table), 100_000):
        s = species_codes[lo:lo + 100_000]
        v = genus_centres[species_genus[s]] + species_offsets[s] + 0.9 * rng.normal(size=(len(s), DIM)).astype(np.float32)
        out[lo:lo + len(s)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    out.flush()
    return out


def pick_filters(table: pd.DataFrame) -> dict[str, dict]:
    """A family near 5% of specimens, a genus near 0.1%, and family + a year range (both from the real spread)."""
    def nearest(column: str, share: float) -> str:
        counts = table[column].value_counts(normalize=True)
        counts = counts[counts.index != ""]
        return str((counts - share).abs().idxmin())

    family = nearest("family", 0.05)
    return {"common": {"family": nearest("family", 0.05)}, "rare": {"genus": nearest("genus", 0.001)},
            "combined": {"family": family, "year": (1980, 2000), "country": "Brazil"}}


def mask_of(codes: dict[str, np.ndarray], categories: dict[str, list[str]], flt: dict) -> np.ndarray:
    """Filter -> bool mask from dictionary codes (a category lookup, then one comparison per column)."""
    mask = None
    for column, wanted in flt.items():
        if column == "year":
            part = (codes["year"] >= wanted[0]) & (codes["year"] <= wanted[1])
        else:
            part = codes[column] == categories[column].index(wanted)
        mask = part if mask is None else mask & part
    return mask


def serve(work: Path) -> dict:
    """Fresh process: open the index, time the queries, report RSS and recall."""
    import resource

    from retrieval.vectors import SpecimenIndex

    def rss() -> dict[str, int]:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

    meta = json.loads((work / "meta.json").read_text())
    before = rss()
    started = time.perf_counter()
    index = SpecimenIndex.load(work / "index", mmap=True)
    open_s = time.perf_counter() - started
    after_open = rss()
    codes = {c: np.load(work / f"codes_{c}.npy") for c in COLUMNS}
    metadata_bytes = sum(a.nbytes for a in codes.values())
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    truth = json.loads((work / "truth.json").read_text())
    n = len(index)
    results = {}
    for name, flt in [("unfiltered", None), *meta["filters"].items()]:
        times, recalls, short = [], [], 0
        for qi, q in enumerate(queries):
            t0 = time.perf_counter()
            allowed = None if flt is None else np.flatnonzero(mask_of(codes, meta["categories"], flt))
            hits = index.search(q, k=K, allowed=allowed)[0]
            times.append(time.perf_counter() - t0)
            want = truth[name][qi]
            short += len(hits) < min(K, len(want))
            recalls.append(len({h for h, _ in hits} & set(want)) / max(1, min(K, len(want))))
        results[name] = {"share": meta["shares"][name], "p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
                         "p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
                         "recall@10": round(float(np.mean(recalls)), 4), "queries_short_of_k": short}
    like = index.vector(int(n // 2))
    assert np.allclose(like, vectors[n // 2]), "more-like-this vector differs from the indexed one"
    done = rss()
    return {"open_s": round(open_s, 3), "ram_index_bytes_per_specimen": round((after_open["RssAnon"] - before["RssAnon"]) / n, 1),
            "ram_after_queries_anon_bytes_per_specimen": round((done["RssAnon"] - before["RssAnon"]) / n, 1),
            "ram_after_queries_file_mapped_bytes_per_specimen": round((done["RssFile"] - before["RssFile"]) / n, 1),
            "ram_metadata_bytes_per_specimen": round(metadata_bytes / n, 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "search": results}


def exact_truth(vectors: np.ndarray, queries: np.ndarray, masks: dict[str, np.ndarray | None]) -> dict[str, list]:
    """Exact top-k ids per query and filter, one pass over the vectors."""
    best = {name: (np.full((len(queries), K), -np.inf, np.float32), np.full((len(queries), K), -1, np.int64))
            for name in masks}
    for lo in range(0, len(vectors), 50_000):
        block = np.asarray(vectors[lo:lo + 50_000])
        scores = queries @ block.T
        ids = np.arange(lo, lo + len(block))
        for name, mask in masks.items():
            s = scores if mask is None else np.where(mask[lo:lo + len(block)], scores, -np.inf)
            top_s, top_i = best[name]
            both_s = np.concatenate([top_s, s], axis=1)
            both_i = np.concatenate([top_i, np.broadcast_to(ids, s.shape)], axis=1)
            pick = np.argsort(-both_s, axis=1, kind="stable")[:, :K]
            best[name] = (np.take_along_axis(both_s, pick, 1), np.take_along_axis(both_i, pick, 1))
    return {name: [[int(i) for i, s in zip(row_i, row_s) if np.isfinite(s)] for row_i, row_s in zip(*best[name][::-1])]
            for name in masks}


def build(n: int, preset: str, work: Path) -> dict:
    from retrieval.vectors import SpecimenIndex

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = specimen_table(n)
    vectors = write_vectors(table, work / "vectors.npy")
    for c in COLUMNS:
        np.save(work / f"codes_{c}.npy", table[c].to_numpy() if c == "year" else table[c].cat.codes.to_numpy())
    categories = {c: [str(x) for x in table[c].cat.categories] for c in COLUMNS if c != "year"}
    filters = pick_filters(table)
    codes = {c: np.load(work / f"codes_{c}.npy") for c in COLUMNS}
    masks = {"unfiltered": None, **{name: mask_of(codes, categories, f) for name, f in filters.items()}}
    rng = np.random.default_rng(1)
    picked = rng.choice(n, QUERIES, replace=False)
    queries = np.asarray(vectors[np.sort(picked)]) + 0.05 * rng.normal(size=(QUERIES, DIM)).astype(np.float32)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    np.save(work / "queries.npy", queries)
    data_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (work / "truth.json").write_text(json.dumps(exact_truth(vectors, queries, masks)))
    truth_s = time.perf_counter() - t0
    (work / "meta.json").write_text(json.dumps({
        "filters": filters, "categories": categories,
        "shares": {name: (1.0 if m is None else round(float(m.mean()), 5)) for name, m in masks.items()}}))
    encoder = {"name": "synthetic", "fingerprint": "-", "dim": DIM}
    t0 = time.perf_counter()
    index = SpecimenIndex.create(encoder, preset_name=preset, n_expected=n)
    from retrieval.vectors.index import training_rows

    sample = np.sort(rng.choice(n, min(n, training_rows(index)), replace=False))
    index.train(np.asarray(vectors[sample]))
    train_s = time.perf_counter() - t0
    for lo in range(0, n, 100_000):
        index.add(np.arange(lo, min(n, lo + 100_000)), np.asarray(vectors[lo:lo + 100_000]))
    index.save(work / "index")
    build_s = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in (work / "index").rglob("*") if p.is_file() and not p.is_symlink())
    return {"n": n, "preset": preset, "factory": index.manifest["factory"], "data_s": round(data_s, 1),
            "truth_s": round(truth_s, 1), "train_s": round(train_s, 1), "build_s": round(build_s, 1),
            "disk_bytes_per_specimen": round(disk / n, 1), "filters": filters}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--preset", default="ivfpq")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        print(json.dumps(serve(args.work)))
        return
    work = args.work / f"{args.preset}-{args.n}"
    report = build(args.n, args.preset, work)
    done = subprocess.run([sys.executable, __file__, "--serve", "--work", str(work)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    report.update(json.loads(done.stdout.strip().splitlines()[-1]))
    report["load"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
