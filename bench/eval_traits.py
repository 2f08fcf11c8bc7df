"""Organ attribution of trait extraction, measured against FlorML's own organ markup.

FlorML volumes mark every part of a description with the organ it describes
(<char class="leaves">, <subChar class="petiole">). The markup is stripped, the plain
text goes through `extract_traits`, and each descriptive unit in the text (a vocabulary
state such as "serrate", or a measurement such as "3-5 cm") is scored: its gold organ is
the innermost markup element that names an organ, its predicted organ the organ of the
extracted trait covering it. A unit the extractor missed counts against recall.

Three match levels are reported:
  strict        predicted organ == gold organ
  hierarchical  predicted organ == gold, or is part of it ("petiole" inside a "leaves"
                element the markup did not subdivide)
  group         same organ group (leaf, flower, fruit, stem, ...)

    .venv/bin/python bench/eval_traits.py ../shared/data/flora/malesiana [--limit N] [--volumes tuning|held-out]

Rules and vocabulary were tuned on the Flora Malesiana tuning volumes (12 part 1 and 2, 13, 14; and on FNA volume 2,
whose organ headings give the same kind of gold for ferns and gymnosperms); the held-out volumes (16, 17 part 1, 18,
20, Series II volumes 2 and 3) are only measured (`--volumes held-out`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.flora import TaxonDescription, read_descriptions, vocabulary  # noqa: E402
from retrieval.flora import extract_traits, tokenize  # noqa: E402

UNIT_KINDS = ("state", "measure")
HELD_OUT = ("vol16_final.xml", "vol18_final.xml", "vol20_final.xml", "fmvol17_part1_final.xml", "ser2vol2final.xml",
            "IIvol3_final.xml")


def gold_organ(cls: str, parent_organ: str | None) -> str | None:
    voc = vocabulary()
    if cls.strip().lower() in ("habit", "habit and stems", "plant", "plants", "life form"):
        return "plant"
    organ = voc.resolve_organ(cls, "en")
    if organ is None:
        return parent_organ  # "shape", "texture", "upper surfaces": a character or position of the parent organ
    if organ in voc.relative_parts and parent_organ:
        return f"{parent_organ} {organ}"  # "lobes" inside "corolla"
    return organ


def gold_units(record: TaxonDescription) -> list[tuple[int, int, str]]:
    """(start, end, gold organ) for every state or measurement inside organ markup."""
    voc = vocabulary()
    # organ of each markup element, resolved top-down (chars before their subChars)
    organ_of: dict[tuple[int, int, str], str | None] = {}
    chars = {(s, e, c): None for s, e, c, p in record.markup if not p}
    for s, e, c, p in sorted(record.markup, key=lambda m: (bool(m[3]), m[0])):
        parent = None
        if p:
            owners = [k for k in chars if k[0] <= s and e <= k[1]]
            parent = organ_of.get(owners[0]) if owners else None
        organ_of[(s, e, c)] = gold_organ(c, parent)
    units: list[tuple[int, int, str]] = []
    items = tokenize(record.text, 0, len(record.text), record.language, False, voc)
    for item in items:
        if item.kind not in UNIT_KINDS:
            continue
        covering = [(s, e, c) for (s, e, c) in organ_of if s <= item.start and item.end <= e]
        if not covering:
            continue
        innermost = min(covering, key=lambda k: k[1] - k[0])
        organ = organ_of[innermost]
        if organ:
            units.append((item.start, item.end, organ))
    return units


def evaluate(records: list[TaxonDescription]) -> dict:
    voc = vocabulary()
    levels = ("strict", "hierarchical", "group")
    tp = {lv: Counter() for lv in levels}
    fp = {lv: Counter() for lv in levels}
    fn = {lv: Counter() for lv in levels}
    support: Counter = Counter()
    confusion: Counter = Counter()
    n_units = n_extracted = 0
    for record in records:
        units = gold_units(record)
        if not units:
            continue
        traits = extract_traits(record.text, record.language)
        spans = [(t["span"][0], t["span"][1], t["organ"]) for t in traits if not t.get("implied")]
        for start, end, gold in units:
            n_units += 1
            support[gold] += 1
            predicted = sorted({o for s, e, o in spans if s <= start < e})
            if predicted:
                n_extracted += 1
            for lv in levels:
                def ok(pred: str) -> bool:
                    if lv == "strict":
                        return pred == gold
                    if lv == "hierarchical":
                        return pred == gold or gold in voc.ancestors(pred)
                    return voc.group(pred) == voc.group(gold)
                hit = [p for p in predicted if ok(p)]
                if hit:
                    tp[lv][gold] += 1
                else:
                    fn[lv][gold] += 1
                for p in predicted:
                    if not ok(p):
                        fp[lv][p] += 1
            if predicted and not any(p == gold or gold in voc.ancestors(p) for p in predicted):
                confusion[(gold, predicted[0])] += 1
    result: dict = {"descriptions": len(records), "units": n_units, "extracted": n_extracted, "levels": {}}
    for lv in levels:
        t, f_p, f_n = sum(tp[lv].values()), sum(fp[lv].values()), sum(fn[lv].values())
        p = t / (t + f_p) if t + f_p else 0.0
        r = t / (t + f_n) if t + f_n else 0.0
        per = {}
        for organ, n in support.most_common():
            pt, pf, pn = tp[lv][organ], fp[lv][organ], fn[lv][organ]
            pp = pt / (pt + pf) if pt + pf else 0.0
            pr = pt / (pt + pn) if pt + pn else 0.0
            per[organ] = {"support": n, "precision": pp, "recall": pr, "f1": 2 * pp * pr / (pp + pr) if pp + pr else 0.0}
        top = [o for o, _ in support.most_common(30)]
        macro = sum(per[o]["f1"] for o in top) / len(top) if top else 0.0
        result["levels"][lv] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                                "macro_f1_top30": macro, "per_organ": per}
    result["confusion"] = [(g, p, n) for (g, p), n in confusion.most_common(25)]
    return result


def markdown(result: dict, title: str, top: int = 15) -> str:
    lines = [f"### {title}", "",
             f"{result['descriptions']} descriptions, {result['units']} descriptive units inside organ markup, "
             f"{result['extracted']} ({result['extracted'] / max(result['units'], 1):.1%}) covered by an extracted trait.", "",
             "| level | precision | recall | F1 (micro) | macro F1 (30 commonest organs) |", "| --- | --- | --- | --- | --- |"]
    for lv, m in result["levels"].items():
        lines.append(f"| {lv} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['macro_f1_top30']:.3f} |")
    lines += ["", f"Per organ (hierarchical level, {top} commonest gold organs):", "",
              "| organ | units | precision | recall | F1 |", "| --- | --- | --- | --- | --- |"]
    per = result["levels"]["hierarchical"]["per_organ"]
    for organ in list(per)[:top]:
        m = per[organ]
        lines.append(f"| {organ} | {m['support']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="+", help="FlorML files or folders")
    parser.add_argument("--limit", type=int, default=0, help="only the first N descriptions (quick runs)")
    parser.add_argument("--json", type=Path, help="also write the full result here")
    parser.add_argument("--confusion", action="store_true", help="print the commonest attribution errors")
    parser.add_argument("--volumes", choices=("all", "tuning", "held-out"), default="all",
                        help="of a folder of Flora Malesiana volumes: only those used in tuning, or only those held out")
    args = parser.parse_args()
    sources: list[Path] = []
    for src in map(Path, args.source):
        files = sorted(src.glob("*.xml")) if src.is_dir() and args.volumes != "all" else [src]
        sources += [f for f in files if args.volumes == "all" or (f.name in HELD_OUT) == (args.volumes == "held-out")]
    args.source = [str(f) for f in sources]
    records = [r for src in args.source for r in read_descriptions(src) if r.markup]
    if args.limit:
        records = records[: args.limit]
    t0 = time.time()
    result = evaluate(records)
    result["seconds"] = round(time.time() - t0, 1)
    title = ", ".join(Path(s).name for s in args.source)
    print(markdown(result, title))
    print(f"\n({result['seconds']} s)")
    if args.confusion:
        print("\ncommonest errors (gold -> predicted):")
        for g, p, n in result["confusion"]:
            print(f"  {n:5d}  {g} -> {p}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
