"""Opening a large collection for chat (issue 11): the served specimen table against the pandas one it replaced.

Run by hand: `nice -n 5 .venv/bin/python bench/bench_open.py --n 1000000 [--work /tmp/bench_open]`.
Builds once (kept in --work): a collection of n specimens through the real store and snapshot path, rows drawn
from the real CNCFlora occurrences (bench/bench_scale.py's `specimen_table`) with every Darwin Core column filled
(unique occurrenceIDs, catalog numbers, URLs; collectors and localities from pools), and an `ivfpq` index of
synthetic clustered vectors for the `tiny-test` encoder (64-d: the encoder of the tests, so no weights). Then, each
in a FRESH process: `new` opens `Resources` as shipped (memory-mapped Arrow table); `old` rebuilds what the
pandas-era `Resources` held (the whole table as pandas, rows by id via `set_index`, a name map, the vocabulary) beside
the same index. Both report open + first filtered query, peak and anonymous RSS, filter masks (common ~5%, rare
~0.1%, combined), row lookups, taxa, and an image turn (search + identification from a given vector; the encoder
pass timed apart). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
DIM = 64
CHUNK = 50_000


def _rss() -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def _mapped_mb(folder: Path) -> dict[str, float]:
    """Resident MB of each file of the collection this process maps (from /proc/self/smaps)."""
    out: dict[str, float] = {}
    path = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 6 and parts[-1].startswith(str(folder)):
            path = Path(parts[-1]).name
        elif parts and "-" in parts[0]:
            path = None
        elif path and parts[0] == "Rss:":
            out[path] = round(out.get(path, 0) + int(parts[1]) / 1024, 1)
    return out


def _p50(fn, repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 3)


def build(n: int, work: Path) -> dict:
    from bench_scale import pick_filters, specimen_table

    from retrieval.collections import Collection
    from retrieval.vectors import SpecimenIndex, create_encoder, index_dir

    folder = work / f"collection-{n}"
    if (folder / "index" / "manifest.json").exists():
        return json.loads((work / f"meta-{n}.json").read_text())
    started = time.perf_counter()
    drawn = specimen_table(n)
    rng = np.random.default_rng(0)
    collectors = np.array([f"{chr(65 + i % 26)}. {['Silva', 'Souza', 'Gray', 'Fernald', 'Pires', 'Mori'][i % 6]} {i}"
                           for i in range(5000)], dtype=object)
    localities = np.array([f"Serra {i}, km {i % 97}" for i in range(60_000)], dtype=object)
    col = Collection.create(folder)
    species = drawn["species"].astype(str).to_numpy()
    family, genus = drawn["family"].astype(str).to_numpy(), drawn["genus"].astype(str).to_numpy()
    country, inst = drawn["country"].astype(str).to_numpy(), drawn["institutionCode"].astype(str).to_numpy()
    years = drawn["year"].to_numpy()
    who, where = collectors[rng.integers(0, 5000, n)], localities[rng.integers(0, 60_000, n)]
    lat, lon = rng.uniform(-33, 5, n), rng.uniform(-73, -35, n)
    from retrieval.collections.collection import _STORED, normalise

    db = col._db()
    columns = ", ".join(f'"{c}"' for c in _STORED)
    sql = (f"INSERT INTO specimens (dedupe_key, source, record_hash, {columns}, added, updated) "
           f"VALUES (?, ?, ?, {', '.join('?' * len(_STORED))}, 0, 0)")
    for lo in range(0, n, CHUNK):  # the store's own row form (`normalise`), inserted in bulk: upsert's per-row
        # dedupe lookups would take minutes at 1M and are not what this benchmark measures
        rows = [{"dedupe_key": f"occ:urn:bench:{i}", "record_hash": "h", "occurrenceID": f"urn:bench:{i}",
                 "catalogNumber": f"{inst[i] or 'X'}{i:08d}", "institutionCode": inst[i], "collectionCode": "Herbarium",
                 "scientificName": species[i], "family": family[i], "genus": genus[i],
                 "specificEpithet": species[i].split(" ")[1] if " " in species[i] else "", "recordedBy": who[i],
                 "eventDate": f"{years[i]}-05-01" if years[i] else "", "country": country[i], "locality": where[i],
                 "decimalLatitude": lat[i], "decimalLongitude": lon[i], "license": "CC-BY-4.0",
                 "rightsHolder": inst[i], "references": f"https://example.org/specimen/{i}",
                 "imageUrl": f"https://example.org/media/{i}.jpg"} for i in range(lo, min(n, lo + CHUNK))]
        with db:
            db.executemany(sql, [(r["dedupe_key"], "bench", "h", *(row[c] for c in _STORED))
                                 for r in rows for row in (normalise(r),)])
            db.execute("UPDATE state SET value = value + 1 WHERE key = 'version'")
    ingest_s = time.perf_counter() - started
    t = time.perf_counter()
    col.write_snapshot()
    snapshot_s = time.perf_counter() - t
    col.close()
    encoder = create_encoder("tiny-test")
    t = time.perf_counter()
    genus_codes = drawn["genus"].cat.codes.to_numpy()
    species_codes = drawn["species"].cat.codes.to_numpy()
    centres = rng.normal(size=(genus_codes.max() + 1, DIM)).astype(np.float32)
    offsets = rng.normal(size=(species_codes.max() + 1, DIM)).astype(np.float32) * 0.6
    index = SpecimenIndex.create(encoder.info, preset_name="ivfpq", n_expected=n)
    ids = Collection.open(folder).table().ids

    def vectors(lo: int, hi: int) -> np.ndarray:
        v = centres[genus_codes[lo:hi]] + offsets[species_codes[lo:hi]] + 0.9 * np.random.default_rng(lo).normal(
            size=(hi - lo, DIM)).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    sample = np.sort(rng.choice(n, min(n, 100_000), replace=False))
    index.train(np.concatenate([vectors(i, i + 1) for i in sample[:: max(1, len(sample) // 20_000)]]))
    for lo in range(0, n, 100_000):
        index.add(ids[lo:lo + 100_000], vectors(lo, min(n, lo + 100_000)))
    index.save(index_dir(col))
    meta = {"n": n, "ingest_s": round(ingest_s, 1), "write_snapshot_s": round(snapshot_s, 1),
            "index_build_s": round(time.perf_counter() - t, 1), "filters": pick_filters(drawn),
            "query_vector": vectors(n // 3, n // 3 + 1)[0].tolist(),
            "disk_mb": {p.name: round(p.stat().st_size / 2**20, 1) for p in folder.iterdir() if p.is_file()}}
    (work / f"meta-{n}.json").write_text(json.dumps(meta))
    return meta


def _old_state(collection):
    """What the pandas-era Resources._Loaded built at open (assistant/resources.py before issue 11's table)."""
    import pandas as pd

    from assistant.vocab import Vocabulary
    from retrieval.flora import normalize_name, species_of

    table = collection.specimens()
    by_id = table.set_index("specimen_id", drop=False)
    names = table["scientificName"].fillna("").astype(str).map(normalize_name)
    names = pd.Series(names.to_numpy(), index=table["specimen_id"].to_numpy())
    species, genera = names.map(species_of), names.str.split(" ").str[0]
    vocab = Vocabulary.from_table(table)
    return table, by_id, names, species, genera, vocab


def serve(kind: str, n: int, work: Path) -> dict:
    """One fresh process: open, first filtered query, then the timings."""
    before = _rss()
    import torch

    torch.set_num_threads(1)
    from retrieval.collections import Collection
    from retrieval.filters import filter_mask, parse_filters
    from retrieval.search import open_index, specimen_record

    meta = json.loads((work / f"meta-{n}.json").read_text())
    folder = work / f"collection-{n}"
    filters = meta["filters"]
    filters["combined"]["year"] = "1980-2000"
    vector = np.asarray(meta["query_vector"], dtype=np.float32)
    imported = _rss()
    out: dict = {"kind": kind}
    t = time.perf_counter()
    from assistant.resources import Resources  # noqa: F401 (both kinds: the chat's own imports, timed apart)

    out["import_assistant_s"] = round(time.perf_counter() - t, 2)
    out["rss_mb_after_imports"] = _rss()
    started = time.perf_counter()
    if kind == "new":

        res = Resources(folder, model="tiny-test", captioner=None)
        first = res.search(vector, k=8, filters=filters["common"])
        table = res.table
        record = res.record
        sample_ids = table.ids[:: max(1, len(table) // 1000)][:200]
    else:
        col = Collection.open(folder)
        table, by_id, names, species, genera, vocab = _old_state(col)
        index, encoder = open_index(col, model="tiny-test")
        from retrieval.filters import allowed_ids

        def record(sid: int) -> dict:
            return specimen_record(col, by_id.loc[int(sid)])
        hits = index.search(vector, k=8, allowed=allowed_ids(table, parse_filters(filters["common"])))[0]
        first = [{"rank": r, **record(s)} for r, (s, _) in enumerate(hits, 1)]
        sample_ids = table["specimen_id"].to_numpy()[:: max(1, len(table) // 1000)][:200]
    out["open_and_first_query_s"] = round(time.perf_counter() - started, 2)
    out["first_query_hits"] = len(first)
    out["rss_mb_after_open"] = _rss()
    out["mapped_collection_files_rss_mb_after_open"] = _mapped_mb(folder)
    out["rss_mb_torch_and_retrieval_imported"] = imported
    out["rss_mb_start"] = before
    parsed = {name: parse_filters(f) for name, f in filters.items()}
    out["filter_mask_p50_ms"] = {name: _p50(lambda f=f: filter_mask(table, f)) for name, f in parsed.items()}
    if hasattr(table, "ids_at"):  # the served route: fewest-rows condition from postings, built afresh each time
        from retrieval.filters import filter_rows

        out["filter_ids_p50_ms (served route, not remembered)"] = {
            name: _p50(lambda f=f: table.ids_at(filter_rows(table, f))) for name, f in parsed.items()}
    out["filter_share"] = {name: round(float(filter_mask(table, f).mean()), 5) for name, f in parsed.items()}
    ids = iter(np.resize(sample_ids, 10_000))
    out["record_by_id_p50_ms"] = _p50(lambda: record(int(next(ids))), 200)
    if kind == "new":
        catalog = res.row(int(sample_ids[5]))["catalogNumber"]
        out["find_catalog_p50_ms"] = _p50(lambda: res.find_catalog(catalog))
        out["find_specimens_p50_ms"] = _p50(lambda: res.find_specimens(catalog.lower()))
        genus = filters["rare"]["genus"]
        out["taxon_ids_genus_p50_ms"] = _p50(lambda: res.taxon_ids(genus))
        t = time.perf_counter()
        res.identify(vector)
        out["first_identification_s (taxon table + prompts, cached on disk after)"] = round(time.perf_counter() - t, 2)

        def turn() -> None:
            res.search(vector, k=8, kind="image")
            res.identify(vector)
            res.identify(vector, rank="genus")
        out["image_turn_p50_ms (search + identify x2, given vector)"] = _p50(turn, 15)
        out["image_turn_filtered_p50_ms"] = _p50(lambda: (res.search(vector, k=8, filters=filters["combined"]),
                                                          res.identify(vector)), 15)
        from PIL import Image

        image = Image.new("RGB", (600, 900), (200, 190, 160))
        out["encoder_pass_p50_ms (tiny-test)"] = _p50(lambda: res.encode_image(image), 5)
        out["taxa"] = len(res._state.taxa.table) if res._state.taxa is not None else None
    else:
        catalog = str(by_id.loc[int(sample_ids[5]), "catalogNumber"])
        numbers = table["catalogNumber"].fillna("").astype(str)
        out["find_catalog_p50_ms"] = _p50(lambda: table[numbers == catalog], 5)
        genus = filters["rare"]["genus"]
        out["taxon_ids_genus_p50_ms"] = _p50(lambda: [int(i) for i in names.index[(genera == genus).to_numpy()]], 5)
    out["rss_mb_end"] = _rss()
    out["mapped_collection_files_rss_mb_end"] = _mapped_mb(folder)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_open"))
    parser.add_argument("--serve", choices=("new", "old"))
    parser.add_argument("--only", choices=("new", "old"))
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(args.serve, args.n, args.work)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    meta = build(args.n, args.work)
    result = {"n": args.n, "build": {k: v for k, v in meta.items() if k not in ("query_vector",)},
              "build_s_this_run": round(time.perf_counter() - t, 1), "load": os.getloadavg(), "cores": os.cpu_count()}
    for kind in ([args.only] if args.only else ["new", "old"]):
        run = subprocess.run([sys.executable, __file__, "--serve", kind, "--n", str(args.n), "--work", str(args.work)],
                             capture_output=True, text=True)
        result[kind] = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else {"error": run.stderr[-2000:]}
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
