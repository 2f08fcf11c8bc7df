"""Specimen-level evaluation: does a morphology query built from a taxon's description return its specimens?

The Harvard + ml-herbarium sheets (163 specimens, ../shared/data/specimens) get the Flora of North America
vol. 2 treatments and the Go Botany taxon table as descriptions. Every described taxon that links to
specimens (taxonomy.py: exact, synonym, species, fuzzy, genus) gets one query per description record: its
rarer extracted traits written as a botanist lists them ("opposite leaves, serrate margin, white flowers"),
each trait shared by at least 3 descriptions of the corpus, so no single one names the taxon, and no
sentence copied. The query runs through the description search; specimens take their taxon's rank, so
the specimens of one taxon tie, and recall@10 is the expected share of the taxon's specimens (at most 10)
among the first 10 under random tie-breaking: file order cannot change a figure.

This measures the description side only: no image index is used (the tiny-test image encoder would add
noise, not signal), and the dense signal is left out when no pretrained text encoder is available offline
(--text-model tiny-test; pass --text-model minilm where its weights are cached).

    .venv/bin/python bench/eval_specimens.py
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.collections import Collection  # noqa: E402
from retrieval.flora import add_descriptions, open_descriptions, triple  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
SHEETS = ("harvard", "ml-herbarium")
SOURCES = (SHARED / "flora" / "fna-v2", SHARED / "flora" / "gobotany" / "taxa.csv")


def build_collection(folder: Path) -> Collection:
    """The sheets' labels as a collection (no images: only names matter to the description side)."""
    coll = Collection.create(folder)
    rows = []
    for sheet in SHEETS:
        with (SHARED / "specimens" / sheet / "labels.csv").open(newline="") as fh:
            for row in csv.DictReader(fh):
                key = f"{sheet}/{row['file']}"
                rows.append({"dedupe_key": key, "record_hash": key, "scientificName": row["scientificName"],
                             "catalogNumber": row.get("catalogNumber") or row["file"], "institutionCode": sheet})
    coll.upsert(rows, source="eval_specimens")
    coll.write_snapshot()
    return coll


def trait_query(traits: list[dict], frequency: Counter, n: int = 4, min_shared: int = 3) -> str:
    """Up to n traits, rarest first but each shared by at least `min_shared` descriptions (a trait
    only this description has would name the taxon by itself), one per (organ, character)."""
    seen: set[tuple[str, str]] = set()
    picked = []
    for t in sorted(traits, key=lambda t: (frequency[triple(t)], t["span"][0])):
        organ, character, value = triple(t)
        if frequency[triple(t)] < min_shared:
            continue
        if t.get("negated") or (organ, character) in seen or organ in {"plant", "whole plant"}:
            continue
        seen.add((organ, character))
        picked.append(f"{value} {organ}")
        if len(picked) == n:
            break
    return ", ".join(picked)


def expected_recall(ranked_taxa: list[str], links: dict[str, list[int]], gold: str, k: int = 10) -> float:
    """Expected share of gold's specimens (at most k) in the first k specimens, ties broken at random."""
    specimen_rank: dict[int, int] = {}
    for rank, name in enumerate(ranked_taxa):
        for sid in links.get(name, []):
            specimen_rank.setdefault(sid, rank)
    groups: dict[int, list[int]] = defaultdict(list)
    for sid, rank in specimen_rank.items():
        groups[rank].append(sid)
    want = set(links.get(gold, []))
    slots, found = k, 0.0
    for rank in sorted(groups):
        members = groups[rank]
        take = min(slots, len(members))
        found += take * sum(sid in want for sid in members) / len(members)
        slots -= take
        if not slots:
            break
    return found / min(k, len(want)) if want else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-model", default="tiny-test")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"real data not found at {SHARED}", file=sys.stderr)
        return 2
    signal_sets = {"bm25": ("bm25",), "traits": ("traits",), "bm25+traits": ("bm25", "traits")}
    if args.text_model != "tiny-test":
        signal_sets.update({"dense": ("dense",), "fused (all)": ("bm25", "dense", "traits")})
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        coll = build_collection(Path(tmp) / "sheets")
        summary = add_descriptions(coll, list(SOURCES), text_model=args.text_model, progress=False)
        index = open_descriptions(coll)
        cov = summary["coverage"]
        frequency = Counter(key for table in index.traits for key in {triple(t) for t in table})
        links = index.specimen_links
        queries = [(r.name, r.source, trait_query(index.traits[i], frequency)) for i, r in enumerate(index.records)
                   if r.name in links]
        queries = [q for q in queries if q[2]]
        figures: dict[str, dict[str, float]] = {}
        for label, signals in signal_sets.items():
            per_source: dict[str, list[float]] = defaultdict(list)
            for name, source, query in queries:
                ranked = [hit["name"] for hit in index.search(query, k=50, signals=signals)]
                recall = expected_recall(ranked, links, name)
                per_source[source].append(recall)
                per_source["all"].append(recall)
            figures[label] = {s: round(sum(v) / len(v), 3) for s, v in sorted(per_source.items())}
    examples = [q[2] for q in queries[:3]]
    out = {"examples": examples, "specimens": cov["specimens"], "taxa": cov["taxa"], "linked_taxa": cov["linked_taxa"],
           "linked_specimens": cov["linked_specimens"], "by_kind": cov["by_kind"], "queries": len(queries),
           "queries_by_source": dict(Counter(q[1] for q in queries)), "recall@10": figures,
           "text_model": args.text_model, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
