"""`herbaria ingest` and `herbaria index`: build a collection and its image index."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from herbaria.cli.common import add_wait_option, print_json, register_commands
from retrieval.errors import BadInput


def _parse_mapping(pairs: Sequence[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        column, sep, term = pair.partition("=")
        if not sep or not column.strip() or not term.strip():
            raise BadInput(f"--map expects COLUMN=dwcTerm (e.g. species=scientificName), not '{pair}'")
        mapping[column.strip()] = term.strip()
    return mapping


def _cmd_ingest(args: argparse.Namespace) -> int:
    from retrieval.collections import ingest

    summary = ingest(args.source, args.out, mapping=_parse_mapping(args.map), limit=args.limit,
                     progress=not (args.json or args.quiet), cache_dir=args.cache_dir,
                     download=not args.no_download, wait=args.wait)
    if args.json:
        print_json(summary)
        return 0
    print(f"{summary['source']}: read {summary['read']}, added {summary['added']}, updated {summary['updated']}, "
          f"unchanged {summary['unchanged']}, skipped {summary['skipped']}, "
          f"stored without image {summary['no_image']}")
    for reason, count in sorted(summary["reasons"].items(), key=lambda item: -item[1]):
        print(f"  {count} x {reason}")
    print(f"collection {summary['collection']}: {summary['total']} specimens, {summary['with_image']} with images")
    coords = summary.get("coordinates")
    if coords:
        flagged = ", ".join(f"{n} {flag.replace('_', ' ')}" for flag, n in coords["flagged"].items() if n) or "none flagged"
        print(f"coordinates: {coords['with_coordinates']} with coordinates, {coords['usable']} usable; {flagged} "
              f"(flagged points are kept but not used for maps or training)")
    return 0


def _add_ingest(sub: Any) -> None:
    p = sub.add_parser("ingest", help="add specimens from an image folder, Darwin Core Archive, GBIF JSON or IIIF")
    p.add_argument("source", help="folder with labels.csv, DwC-A (.zip/.tgz/folder with meta.xml), GBIF .json, or a "
                   "IIIF manifest/collection (http(s) URL or .json) or .txt list of manifest URLs")
    p.add_argument("--out", required=True, help="collection folder (created when new)")
    p.add_argument("--limit", type=int, help="read at most N records")
    p.add_argument("--map", action="extend", nargs="+", default=[], metavar="COLUMN=TERM",
                   help="map a source column onto a Darwin Core term (or 'media' for the image file)")
    p.add_argument("--cache-dir", help="where downloaded media are cached (default: COLLECTION/media-cache)")
    p.add_argument("--no-download", action="store_true", help="store remote specimens without fetching images")
    add_wait_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_ingest)


def _cmd_index(args: argparse.Namespace) -> int:
    from retrieval.vectors import build_index

    summary = build_index(args.collection, model=args.model, preset=args.preset, rebuild=args.rebuild,
                          batch_size=args.batch_size, device=args.device, precision=args.precision, wait=args.wait,
                          engine=args.engine, ray_address=args.ray_address)
    if args.json:
        print_json(summary)
    else:
        print(f"indexed {summary['added']} images with {summary['encoder']} ({summary['factory']}); "
              f"{summary['total']} in the index, {summary['skipped']} skipped, {summary['seconds']} s")
    return 0


def _add_index(sub: Any) -> None:
    p = sub.add_parser("index", help="encode a collection's images into its FAISS index")
    p.add_argument("collection", help="collection folder (made by `herbaria ingest`)")
    p.add_argument("--model", help="encoder preset or hf-hub:/local-dir: checkpoint (default: the index's, else bioclip)")
    p.add_argument("--preset", default="auto", help="index preset: auto (chosen by size), exact, ivf, ivfpq, hnsw")
    p.add_argument("--rebuild", action="store_true", help="start a new index (needed to change the encoder)")
    p.add_argument("--batch-size", type=int, help="images per encoder batch (default: 256 on a GPU, 32 on CPU)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: Ray Data stages writing resumable shards (pip install -e '.[ray]')")
    p.add_argument("--ray-address", help="Ray cluster to join (default: start a local one); with --engine ray")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16")
    add_wait_option(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_index)


COMMANDS = {"ingest": _add_ingest, "index": _add_index}


def register(subparsers: Any, names: Sequence[str] | None = None) -> None:
    register_commands(subparsers, COMMANDS, names)
