"""`herbaria descriptions add|search` and `herbaria traits`: flora descriptions and the traits read from them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from herbaria.cli.common import add_wait_option, print_json, register_commands


def _cmd_descriptions_add(args: argparse.Namespace) -> int:
    from retrieval.flora import add_descriptions

    summary = add_descriptions(args.collection, args.source, text_model=args.text_model, device=args.device,
                               rebuild=args.rebuild, progress=not (args.json or args.quiet), wait=args.wait,
                               gbif_names=args.gbif_names)
    if args.json:
        print_json(summary)
        return 0
    for src in summary["sources"]:
        print(f"{src['source']}: {src['taxa']} taxa ({', '.join(src['languages'])})")
    print(f"{summary['taxa']} described taxa ({summary['added']} new, {summary['replaced']} replaced), "
          f"{summary['traits']} traits, {summary['chunks']} sentences embedded with {summary['text_model']}; "
          f"{summary['linked_taxa']} taxa linked to {summary['linked_specimens']} specimens; {summary['seconds']} s")
    _print_coverage(summary["coverage"], limit=10)
    return 0


def _print_coverage(cov: dict[str, Any], limit: int | None = None) -> None:
    kinds = ", ".join(f"{k} {v['taxa']}" for k, v in cov["by_kind"].items() if v["taxa"])
    print(f"coverage: {cov['linked_taxa']}/{cov['taxa']} of the collection's taxa and {cov['linked_specimens']}/"
          f"{cov['specimens']} specimens have a description" + (f" (linked by {kinds})" if kinds else ""))
    shown = cov["unlinked"] if limit is None else cov["unlinked"][:limit]
    for item in shown:
        closest = f"; closest described: {', '.join(item['closest'])}" if item["closest"] else ""
        print(f"  not described: {item['name']} ({item['specimens']} specimens){closest}")
    if len(shown) < len(cov["unlinked"]):
        print(f"  ... and {len(cov['unlinked']) - len(shown)} more (herbaria descriptions coverage COLLECTION)")


def _cmd_descriptions_coverage(args: argparse.Namespace) -> int:
    from retrieval.flora import description_coverage

    cov = description_coverage(args.collection)
    if args.json:
        print_json(cov)
        return 0
    _print_coverage(cov)
    return 0


def _cmd_descriptions_search(args: argparse.Namespace) -> int:
    from retrieval.flora import search_descriptions

    results = search_descriptions(args.collection, args.query, k=args.k, signals=args.signals.split(","), lang=args.lang)
    if args.json:
        print_json(results)
        return 0
    if not results:
        print("no matching taxa")
    for rank, r in enumerate(results, 1):
        ranks = ", ".join(f"{k} {v}" for k, v in r["ranks"].items() if v)
        print(f"{rank}. {r['taxon']} ({r['family']}; {r['source']}) [{ranks}] {len(r['specimen_ids'])} specimens")
        for ev in r["evidence"][:2]:
            print(f"     {'-' if not ev['supports'] else '+'} {ev['highlighted']}")
    return 0


def _add_descriptions(sub: Any) -> None:
    p = sub.add_parser("descriptions", help="flora descriptions: add them to a collection, search them")
    dsub = p.add_subparsers(dest="descriptions_command", required=True, metavar="ACTION")
    a = dsub.add_parser("add", help="read FlorML, Darwin Core or CSV descriptions, extract traits, index, link to specimens")
    a.add_argument("collection")
    a.add_argument("source", nargs="+", help="FlorML .xml (or a folder of them), FNA treatment XML (file or folder), DwC "
                   "description file/folder/archive, CSV taxon,text, a Go Botany taxa.csv, or gbif (GBIF species "
                   "descriptions of the collection's taxa; needs the network)")
    a.add_argument("--gbif-names", action="store_true",
                   help="match names not linked offline against the GBIF backbone (needs the network; cached)")
    a.add_argument("--text-model", help="text encoder preset: minilm-static, minilm, multilingual, tiny-test (default: "
                   "the collection's, else minilm-static)")
    a.add_argument("--device", help="cpu, cuda ... (default: cuda when present)")
    a.add_argument("--rebuild", action="store_true", help="re-embed everything (needed to change --text-model)")
    add_wait_option(a)
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--json", action="store_true", help="print the summary as JSON")
    a.set_defaults(handler=_cmd_descriptions_add)
    c = dsub.add_parser("coverage", help="which of the collection's taxa and specimens have a description, and how linked")
    c.add_argument("collection")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=_cmd_descriptions_coverage)
    q = dsub.add_parser("search", help="morphology search over the descriptions only (BM25 + dense + traits)")
    q.add_argument("collection")
    q.add_argument("query", help='e.g. "opposite serrate leaves and white flowers"')
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--signals", default="bm25,dense,traits", help="comma-separated subset of bm25,dense,traits")
    q.add_argument("--lang", choices=("en", "fr"), help="query language (default: guessed)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=_cmd_descriptions_search)


def _cmd_traits(args: argparse.Namespace) -> int:
    from retrieval.flora import traits_of, triple

    result = traits_of(args.text, collection=args.collection, lang=args.lang)
    if args.json:
        print_json(result)
        return 0
    if "taxon" in result:
        print(f"{result['taxon']} ({result['source']})")
    if not result["traits"]:
        print("no traits found")
    for t in result["traits"]:
        organ, character, value = triple(t)
        print(f"({organ}, {character}, {value})")
    return 0


def _add_traits(sub: Any) -> None:
    p = sub.add_parser("traits", help="print (organ, character, value) triples of a description text or a described taxon")
    p.add_argument("text", metavar="TEXT_OR_TAXON", help='description text, or a taxon name with --collection')
    p.add_argument("--collection", help="look the taxon up in this collection's descriptions")
    p.add_argument("--lang", choices=("en", "fr"), help="text language (default: guessed)")
    p.add_argument("--json", action="store_true", help="print the traits as JSON (with spans and sentences)")
    p.set_defaults(handler=_cmd_traits)


COMMANDS = {"descriptions": _add_descriptions, "traits": _add_traits}


def register(subparsers: Any, names: Sequence[str] | None = None) -> None:
    register_commands(subparsers, COMMANDS, names)
