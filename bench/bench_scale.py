"""Herbarium scale (issue 11): the IVF-PQ preset with exact re-rank at 100k / 1M / 5M specimens.

Run by hand: `.venv/bin/python bench/bench_scale.py --n 100000 [--preset ivfpq] [--work /tmp/bench_scale]`;
`--real 20000`: recall of the preset on MiniLM vectors of real flora sentences (../shared/data/flora).
Synthetic clustered 512-d unit vectors (a centre per genus, a species offset, specimen noise) and a specimen table
drawn row by row from the real CNCFlora occurrences in ../shared/data/occurrences/cncflora, so families, genera,
countries, institutions and years keep their real frequencies and correlations. Metadata is saved as dictionary codes;
serving builds the app's SpecimenTable from them, so a filter goes through retrieval.filters as a chat turn's does
(built fresh, and remembered as a follow-up question's; the old numpy mask beside them). One run prints one JSON
object: RAM bytes a specimen (the index apart from the metadata), disk bytes, build time, open time, p50/p95 latency
unfiltered and with common (~5%), rare (~0.1%), combined, quarter (~25%) and broad (~90%) filters, recall@10 against
exact search on the same allowed set. The serving half runs in a fresh process so its RSS is the index's, not the
build's. `--refresh-truth` re-picks the filters and their exact top-k in a saved work folder without rebuilding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CNCFLORA = ROOT.parent / "shared" / "data" / "occurrences" / "cncflora"
DIM, K, QUERIES = 512, 10, 200
COLUMNS = ("family", "genus", "country", "institutionCode", "year")
CHUNK = 100_000  # rows a build step holds in RAM
SAVE_EVERY = 1_000_000  # the on-disk preset keeps appended vectors in RAM until a save


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


def write_vectors(table: pd.DataFrame, path: Path, seed: int = 0) -> None:
    """Clustered unit vectors: genus centre + species offset + specimen noise, written in chunks (`.npy`).

    Written and later read with plain file I/O, never a memmap, so the build's RSS stays that of one chunk at 5M
    (a memmap's pages would count as the process's resident file pages)."""
    rng = np.random.default_rng(seed)
    genus_codes = table["genus"].cat.codes.to_numpy()
    species_codes = table["species"].cat.codes.to_numpy()
    genus_centres = rng.normal(size=(genus_codes.max() + 1, DIM)).astype(np.float32)
    species_offsets = rng.normal(size=(species_codes.max() + 1, DIM)).astype(np.float32) * 0.6
    species_genus = np.zeros(species_codes.max() + 1, np.int64)
    species_genus[species_codes] = genus_codes
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (len(table), DIM)})
        for lo in range(0, len(table), CHUNK):
            s = species_codes[lo:lo + CHUNK]
            v = genus_centres[species_genus[s]] + species_offsets[s] + 0.9 * rng.normal(size=(len(s), DIM)).astype(np.float32)
            f.write((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32).tobytes())


def read_rows(path: Path, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of a 2-d float32 `.npy`, read (not mapped)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
        hi = min(hi, shape[0])
        f.seek(f.tell() + lo * shape[1] * 4)
        return np.frombuffer(f.read((hi - lo) * shape[1] * 4), dtype=np.float32).reshape(hi - lo, shape[1])


def read_picked(path: Path, rows: np.ndarray) -> np.ndarray:
    return np.stack([read_rows(path, int(r), int(r) + 1)[0] for r in rows])


def pick_filters(table: pd.DataFrame) -> dict[str, dict]:
    """A family near 5% of specimens, a genus near 0.1%, and family + a year range (both from the real spread)."""
    def nearest(column: str, share: float) -> str:
        counts = table[column].value_counts(normalize=True)
        counts = counts[counts.index != ""]
        return str((counts - share).abs().idxmin())

    family = nearest("family", 0.05)
    return {"common": {"family": nearest("family", 0.05)}, "rare": {"genus": nearest("genus", 0.001)},
            "combined": {"family": family, "year": (1980, 2000), "country": "Brazil"},
            "quarter": {"family": nearest("family", 0.25)}, "broad": {"country": nearest("country", 0.9)}}


def refresh_truth(work: Path) -> dict:
    """Re-pick the filters (pick_filters) from the saved codes and recompute their exact top-k, without rebuilding
    the index: a work folder built before a filter was added gets it."""
    meta = json.loads((work / "meta.json").read_text())
    frame = pd.DataFrame({c: pd.Categorical.from_codes(np.load(work / f"codes_{c}.npy").astype(np.int64), meta["categories"][c])
                          for c in COLUMNS if c != "year"})
    codes = {c: np.load(work / f"codes_{c}.npy") for c in COLUMNS}
    filters = pick_filters(frame)
    masks = {"unfiltered": None, **{name: mask_of(codes, meta["categories"], f) for name, f in filters.items()}}
    queries = np.load(work / "queries.npy")
    t0 = time.perf_counter()
    (work / "truth.json").write_text(json.dumps(exact_truth(work / "vectors.npy", len(frame), queries, masks)))
    meta.update(filters=filters, shares={name: (1.0 if m is None else round(float(m.mean()), 5)) for name, m in masks.items()})
    (work / "meta.json").write_text(json.dumps(meta))
    return {"filters": filters, "shares": meta["shares"], "truth_s": round(time.perf_counter() - t0, 1)}


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


def app_table(work: Path, meta: dict) -> Any:
    """The bench's specimen table as the app serves it (a SpecimenTable of dictionary columns, missing years null),
    so a filter goes through retrieval.filters as a chat turn's does."""
    import pyarrow as pa

    from retrieval.collections import SpecimenTable

    columns: dict[str, pa.Array] = {}
    for c in COLUMNS:
        codes = np.load(work / f"codes_{c}.npy")
        if c == "year":
            columns[c] = pa.array(codes.astype(np.int32), mask=codes == 0)
        else:
            columns[c] = pa.DictionaryArray.from_arrays(codes.astype(np.int32), pa.array(meta["categories"][c]))
    n = len(columns["year"])
    return SpecimenTable.from_arrow(pa.table({"specimen_id": np.arange(n, dtype=np.int64), **columns}))


def app_filters(flt: dict) -> dict:
    from retrieval.filters import parse_filters

    return parse_filters({k: (tuple(v) if k == "year" else v) for k, v in flt.items()})


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies over every CPU from /proc/stat; None where there is none (not Linux)."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (values[7] if len(values) > 7 else 0), sum(values)


def conditions(start: tuple[int, int] | None) -> dict:
    """The load average and the share of CPU time the hypervisor gave to other guests since `start` (steal): on a
    shared VM the same code runs 25-40% slower in some windows, and a run's figures say which window they had."""
    end = cpu_times()
    steal = None
    if start is not None and end is not None and end[1] > start[1]:
        steal = round((end[0] - start[0]) / (end[1] - start[1]), 4)
    return {"load": os.getloadavg(), "steal_share": steal}


def serve(work: Path, nprobe: int | None = None, rerank_per: int | None = None,
          filter_nprobe: int | None = None, populate: bool = False, old_mask: bool = True) -> dict:
    """Fresh process: open the index, time the queries, report RSS and recall. `old_mask=False` leaves out the
    first passes' numpy mask (its whole-column passes evict what the app's route keeps in cache).

    `nprobe` / `filter_nprobe` / `rerank_per` override the saved manifest's nprobe, filter budget and the re-rank depth (one candidate per
    `rerank_per` specimens) to compare settings on one saved index without rebuilding it."""
    from retrieval.filters import allowed_ids, filter_rows
    from retrieval.vectors import SpecimenIndex
    from retrieval.vectors import index as index_module

    if rerank_per:
        index_module.RERANK_PER = rerank_per

    def rss() -> dict[str, int]:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

    def rss_peak() -> int:  # VmHWM is this process's own (ru_maxrss keeps the parent's across fork and exec)
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    meta = json.loads((work / "meta.json").read_text())
    before = rss()
    started = time.perf_counter()
    index = SpecimenIndex.load(work / "index", mmap=True)
    open_s = time.perf_counter() - started
    after_open = rss()
    if nprobe:
        index.manifest["nprobe"] = nprobe
    if filter_nprobe:
        index.manifest["filter_nprobe"] = filter_nprobe
    populate_s = None
    if populate:  # as open_shared does in the background; here waited for, so the queries see it done
        t0 = time.perf_counter()
        populated = index.populate_vectors()
        populate_s = round(time.perf_counter() - t0, 2) if populated else None
    codes = {c: np.load(work / f"codes_{c}.npy") for c in COLUMNS}
    metadata_bytes = sum(a.nbytes for a in codes.values())
    queries = np.load(work / "queries.npy")
    truth = json.loads((work / "truth.json").read_text())
    n = len(index)
    table = app_table(work, meta)
    results = {}
    for name, flt in [("unfiltered", None), *meta["filters"].items()]:
        parsed = None if flt is None else app_filters(flt)
        t0 = time.perf_counter()
        if parsed is not None:
            filter_rows(table, parsed)  # the postings / sorted years of its columns, built at a column's first filter
        first_s = time.perf_counter() - t0
        if parsed is not None:
            assert np.array_equal(table.ids_at(filter_rows(table, parsed)), np.flatnonzero(mask_of(codes, meta["categories"], flt))), \
                f"the app's filter and the bench's mask disagree on {flt}"
        # per query, side by side in turn: the filter built afresh (a new filter), the filter remembered (the same
        # filter again: a follow-up question), and the bench's own numpy mask (figures before this change)
        variants = {"fresh": lambda: None if parsed is None else table.id_set(filter_rows(table, parsed)),
                    "remembered": lambda: allowed_ids(table, parsed),
                    "numpy_mask": lambda: None if flt is None else np.flatnonzero(mask_of(codes, meta["categories"], flt))}
        if flt is None or not old_mask:
            variants = {v: variants[v] for v in (("fresh",) if flt is None else ("fresh", "remembered"))}
        times: dict = {v: [] for v in variants}
        filter_times: list = []
        recalls, short = [], 0
        for qi, q in enumerate(queries):
            want = truth[name][qi]
            for v in (list(variants) if qi % 2 == 0 else list(variants)[::-1]):
                t0 = time.perf_counter()
                allowed = variants[v]()
                t1 = time.perf_counter()
                hits = index.search(q, k=K, allowed=allowed)[0]
                times[v].append(time.perf_counter() - t0)
                if v == "fresh":
                    filter_times.append(t1 - t0)
                    short += len(hits) < min(K, len(want))
                    recalls.append(len({h for h, _ in hits} & set(want)) / max(1, min(K, len(want))))
        results[name] = {"share": meta["shares"][name], **{
            f"{v}_p50_ms" if v != "fresh" else "p50_ms": round(1000 * float(np.percentile(t, 50)), 2) for v, t in times.items()},
            "p95_ms": round(1000 * float(np.percentile(times["fresh"], 95)), 2),
            "filter_p50_ms": round(1000 * float(np.percentile(filter_times, 50)), 2),
            "first_filter_of_columns_s": round(first_s, 3),
            "recall@10": round(float(np.mean(recalls)), 4), "queries_short_of_k": short}
    like = index.vector(int(n // 2))
    assert np.allclose(like, read_rows(work / "vectors.npy", n // 2, n // 2 + 1)[0]), "more-like-this vector differs from the indexed one"
    done = rss()
    return {"open_s": round(open_s, 3), "ram_index_bytes_per_specimen": round((after_open["RssAnon"] - before["RssAnon"]) / n, 1),
            "ram_after_queries_anon_bytes_per_specimen": round((done["RssAnon"] - before["RssAnon"]) / n, 1),
            "ram_after_queries_file_mapped_bytes_per_specimen": round((done["RssFile"] - before["RssFile"]) / n, 1),
            "ram_metadata_bytes_per_specimen": round(metadata_bytes / n, 1),
            "peak_rss_mb": round(rss_peak() / 2**20, 1), "nprobe": index.manifest.get("nprobe"), "populate_s": populate_s,
            "filter_nprobe": index._filter_nprobe(),
            "rerank_per": index_module.RERANK_PER, "search": results}


def compare(work: Path, settings: list[tuple[int, ...]], populate: bool = False) -> dict:
    """Side by side in one process, interleaved per query: (nprobe, filter_nprobe[, exact filter rows, filter scan,
    filter fetch, broad share, lazy count ratio (inf: every list counted)]) settings on
    the saved index, so load and page cache weigh on each alike. Latency includes building the filter's id list
    afresh (retrieval.filters on the app's table), as `serve`'s "fresh" figure does."""
    from retrieval.filters import filter_rows
    from retrieval.vectors import SpecimenIndex
    from retrieval.vectors import index as index_module

    default_rows, default_scan, default_fetch = index_module.EXACT_FILTER_ROWS, index_module.FILTER_SCAN, index_module.FILTER_FETCH
    default_broad, default_lazy = index_module.BROAD_SHARE, index_module.LAZY_COUNT_RATIO

    index = SpecimenIndex.load(work / "index", mmap=True)
    if populate:
        index.populate_vectors()
    meta = json.loads((work / "meta.json").read_text())
    queries = np.load(work / "queries.npy")
    truth = json.loads((work / "truth.json").read_text())
    out: dict = {}
    table = app_table(work, meta)
    for name, flt in [("unfiltered", None), *meta["filters"].items()]:
        parsed = None if flt is None else app_filters(flt)
        if parsed is not None:
            filter_rows(table, parsed)  # postings built outside the timings
        times: dict = {s: [] for s in settings}
        recalls: dict = {s: [] for s in settings}
        for qi, q in enumerate(queries):
            for setting in (settings if qi % 2 == 0 else settings[::-1]):
                index.manifest["nprobe"], index.manifest["filter_nprobe"] = int(setting[0]), int(setting[1])
                index_module.EXACT_FILTER_ROWS = int(setting[2]) if len(setting) > 2 else default_rows
                index_module.FILTER_SCAN = setting[3] if len(setting) > 3 else default_scan
                index_module.FILTER_FETCH = setting[4] if len(setting) > 4 else default_fetch
                index_module.BROAD_SHARE = setting[5] if len(setting) > 5 else default_broad
                index_module.LAZY_COUNT_RATIO = setting[6] if len(setting) > 6 else default_lazy  # inf: count every list
                t0 = time.perf_counter()
                allowed = None if flt is None else table.id_set(filter_rows(table, parsed))
                hits = index.search(q, k=K, allowed=allowed)[0]
                times[setting].append(time.perf_counter() - t0)
                want = truth[name][qi]
                recalls[setting].append(len({h for h, _ in hits} & set(want)) / max(1, min(K, len(want))))
        out[name] = {":".join(f"{x:g}" for x in setting): {
            "p50_ms": round(1000 * float(np.percentile(times[setting], 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(times[setting], 95)), 2),
            "recall@10": round(float(np.mean(recalls[setting])), 4)} for setting in settings}
    return out


def exact_truth(path: Path, n: int, queries: np.ndarray, masks: dict[str, np.ndarray | None]) -> dict[str, list]:
    """Exact top-k ids per query and filter, one chunked pass over the vectors file."""
    best = {name: (np.full((len(queries), K), -np.inf, np.float32), np.full((len(queries), K), -1, np.int64))
            for name in masks}
    for lo in range(0, n, CHUNK):
        block = read_rows(path, lo, lo + CHUNK)
        for name, mask in masks.items():
            cols = np.arange(len(block)) if mask is None else np.flatnonzero(mask[lo:lo + len(block)])
            if len(cols) == 0:
                continue
            s = queries @ block[cols].T
            if s.shape[1] > K:
                part = np.argpartition(-s, K, axis=1)[:, :K]
                s, cols_q = np.take_along_axis(s, part, 1), cols[part]
            else:
                cols_q = np.broadcast_to(cols, s.shape)
            top_s, top_i = best[name]
            both_s = np.concatenate([top_s, s], axis=1)
            both_i = np.concatenate([top_i, lo + cols_q], axis=1)
            pick = np.argsort(-both_s, axis=1, kind="stable")[:, :K]
            best[name] = (np.take_along_axis(both_s, pick, 1), np.take_along_axis(both_i, pick, 1))
    return {name: [[int(i) for i, s in zip(row_i, row_s) if np.isfinite(s)] for row_i, row_s in zip(*best[name][::-1])]
            for name in masks}


def build(n: int, preset: str, work: Path) -> dict:
    import resource

    from retrieval.vectors import SpecimenIndex

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = specimen_table(n)
    path = work / "vectors.npy"
    write_vectors(table, path)
    for c in COLUMNS:
        np.save(work / f"codes_{c}.npy", table[c].to_numpy() if c == "year" else table[c].cat.codes.to_numpy())
    categories = {c: [str(x) for x in table[c].cat.categories] for c in COLUMNS if c != "year"}
    filters = pick_filters(table)
    codes = {c: np.load(work / f"codes_{c}.npy") for c in COLUMNS}
    masks = {"unfiltered": None, **{name: mask_of(codes, categories, f) for name, f in filters.items()}}
    rng = np.random.default_rng(1)
    picked = rng.choice(n, QUERIES, replace=False)
    queries = read_picked(path, np.sort(picked)) + 0.05 * rng.normal(size=(QUERIES, DIM)).astype(np.float32)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    np.save(work / "queries.npy", queries)
    data_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (work / "truth.json").write_text(json.dumps(exact_truth(path, n, queries, masks)))
    truth_s = time.perf_counter() - t0
    (work / "meta.json").write_text(json.dumps({
        "filters": filters, "categories": categories,
        "shares": {name: (1.0 if m is None else round(float(m.mean()), 5)) for name, m in masks.items()}}))
    encoder = {"name": "synthetic", "fingerprint": "-", "dim": DIM}
    t0 = time.perf_counter()
    index = SpecimenIndex.create(encoder, preset_name=preset, n_expected=n)
    from retrieval.vectors.index import training_rows

    sample = np.sort(rng.choice(n, min(n, training_rows(index)), replace=False))
    index.train(read_picked(path, sample))
    train_s = time.perf_counter() - t0
    for lo in range(0, n, CHUNK):
        index.add(np.arange(lo, min(n, lo + CHUNK)), read_rows(path, lo, lo + CHUNK))
        if (lo + CHUNK) % SAVE_EVERY == 0 and lo + CHUNK < n:
            index.save(work / "index")  # appends this million's vectors to the file, drops them from RAM
    index.save(work / "index")
    build_s = time.perf_counter() - t0
    files = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in (work / "index").rglob("*")
             if p.is_file() and not p.is_symlink()}  # versions hard-link one vectors file: count it once
    disk = sum(files.values())
    return {"n": n, "preset": preset, "factory": index.manifest["factory"], "data_s": round(data_s, 1),
            "truth_s": round(truth_s, 1), "train_s": round(train_s, 1), "build_s": round(build_s, 1),
            "disk_bytes_per_specimen": round(disk / n, 1), "filters": filters,
            "build_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

FLORA = ROOT.parent / "shared" / "data" / "flora"


def real_sentences(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """n distinct description sentences (30+ characters) from the floras, shuffled, with their family and flora."""
    from retrieval.errors import HerbariaError
    from retrieval.flora import read_descriptions, split_sentences

    if not FLORA.is_dir():
        sys.exit(f"bench_scale: {FLORA} is missing (the shared data folder)")
    seen: dict[str, tuple[str, str]] = {}
    for folder in sorted(p for p in FLORA.iterdir() if p.is_dir()):
        try:
            records = read_descriptions(folder)
        except HerbariaError:  # a folder in a format read_descriptions does not take (gobotany's pages)
            continue
        for record in records:
            for lo, hi in split_sentences(record.text):
                text = " ".join(record.text[lo:hi].split())
                if len(text) >= 30:
                    seen.setdefault(text, (record.family or "", folder.name))
    texts = sorted(seen)
    picked = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in picked], [seen[texts[i]][0] for i in picked], [seen[texts[i]][1] for i in picked]


def real(n: int, preset: str) -> dict:
    """Recall of the preset against exact search on MiniLM vectors of real flora sentences (a real distribution):
    `n` sentences indexed, QUERIES other sentences as queries, unfiltered and with a family filter near 5%."""
    from retrieval.flora import cached_text_encoder
    from retrieval.vectors import SpecimenIndex

    t0 = time.perf_counter()
    texts, families, floras = real_sentences(n + QUERIES)
    encoder = cached_text_encoder("minilm")
    vectors = encoder.encode(texts, batch_size=64)
    encode_s = time.perf_counter() - t0
    base, queries = vectors[:n], vectors[n:]
    table = pd.DataFrame({"family": pd.Series(families[:n], dtype="category"), "flora": floras[:n]})
    counts = table["family"].value_counts(normalize=True)
    counts = counts[counts.index != ""]
    family = str((counts - 0.05).abs().idxmin())
    masks = {"unfiltered": None, "common": (table["family"] == family).to_numpy()}
    out: dict = {"n": len(base), "dim": int(base.shape[1]), "encoder": "minilm", "encode_s": round(encode_s, 1),
                 "floras": sorted(set(floras)), "common_filter": {"family": family}}
    for rerank in (None, 1):  # the preset's re-rank, then the PQ codes alone (no re-rank)
        index = SpecimenIndex.create({**encoder.info}, preset_name=preset, n_expected=len(base))
        index.add(np.arange(len(base)), base)
        if rerank:
            index.manifest["rerank"] = rerank
        label = "codes_only" if rerank else "preset"
        out.setdefault("factory", index.manifest["factory"])
        for name, mask in masks.items():
            allowed = None if mask is None else np.flatnonzero(mask)
            pool = np.arange(len(base)) if allowed is None else allowed
            times, recalls = [], []
            for q in queries:
                t1 = time.perf_counter()
                hits = index.search(q, k=K, allowed=allowed)[0]
                times.append(time.perf_counter() - t1)
                want = set(pool[np.argsort(-(base[pool] @ q), kind="stable")[:K]].tolist())
                recalls.append(len({h for h, _ in hits} & want) / max(1, min(K, len(pool))))
            out[f"{label}_{name}"] = {"share": 1.0 if mask is None else round(float(mask.mean()), 4),
                                      "recall@10": round(float(np.mean(recalls)), 4),
                                      "p50_ms": round(1000 * float(np.percentile(times, 50)), 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--preset", default="ivfpq")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--serve", action="store_true", help="only the serving half, on the index saved in --work")
    ap.add_argument("--nprobe", type=int, default=None, help="--serve: override the saved index's nprobe")
    ap.add_argument("--filter-nprobe", type=int, default=None, help="--serve: override the filters' list budget")
    ap.add_argument("--populate", action="store_true", help="--serve/--compare: page-table the vectors first")
    ap.add_argument("--rerank-per", type=int, default=None, help="--serve: one re-rank candidate per this many specimens")
    ap.add_argument("--compare", nargs="+", default=None, metavar="NPROBE:FILTER_NPROBE[:EXACT_ROWS[:FILTER_SCAN[:FILTER_FETCH[:BROAD_SHARE[:LAZY_COUNT_RATIO]]]]]",
                    help="side by side on the index saved in --work, interleaved per query (e.g. 48:48:50000 16:32)")
    ap.add_argument("--real", type=int, default=0, metavar="N",
                    help="recall on MiniLM vectors of N real flora sentences instead of the synthetic run")
    ap.add_argument("--no-old-mask", action="store_true", help="--serve: time the app's route only (fresh, remembered)")
    ap.add_argument("--refresh-truth", action="store_true", help="re-pick the filters and their exact top-k in --work")
    args = ap.parse_args()
    if args.refresh_truth:
        print(json.dumps(refresh_truth(args.work), indent=2))
        return
    start = cpu_times()
    if args.real:
        print(json.dumps({**real(args.real, args.preset), **conditions(start)}, indent=2))
        return
    if args.compare:
        settings = [tuple(float(x) for x in c.split(":")) for c in args.compare]
        print(json.dumps({**compare(args.work, settings, args.populate), **conditions(start)}, indent=2))
        return
    if args.serve:
        print(json.dumps({**serve(args.work, args.nprobe, args.rerank_per, args.filter_nprobe, args.populate,
                                  old_mask=not args.no_old_mask), **conditions(start)}))
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
