"""`herbaria` command line: each subcommand maps its options onto one stage function.

Errors reach the user as one line on stderr; exit code 2 for bad input, 1 for any
other failure, and a traceback only with --debug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from retrieval.errors import BadInput, HerbariaError

Handler = Callable[[argparse.Namespace], int | None]


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------- commands
# Each `_cmd_*` turns parsed options into a call of a stage function; imports stay
# inside so that `herbaria --help` does not load torch.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herbaria", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _REGISTRARS:
        register(sub)
    return parser


_REGISTRARS: list[Callable[[Any], None]] = []


def _table(rows: list[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """A readable table on stdout (rich), the default output of listing commands."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)


def _cmd_index(args: argparse.Namespace) -> int:
    from retrieval.indexing import build_index

    summary = build_index(args.collection, model=args.model, preset=args.preset, rebuild=args.rebuild,
                          batch_size=args.batch_size, device=args.device, precision=args.precision)
    if args.json:
        _print_json(summary)
    else:
        print(f"indexed {summary['added']} images with {summary['encoder']} ({summary['factory']}); "
              f"{summary['total']} in the index, {summary['skipped']} skipped, {summary['seconds']} s")
    return 0


def _register_index(sub: Any) -> None:
    p = sub.add_parser("index", help="encode a collection's images into its FAISS index")
    p.add_argument("collection", help="collection folder (made by `herbaria ingest`)")
    p.add_argument("--model", help="encoder preset or hf-hub:/local-dir: checkpoint (default: the index's, else bioclip)")
    p.add_argument("--preset", default="auto", help="index preset: auto, exact, ivf, hnsw")
    p.add_argument("--rebuild", action="store_true", help="start a new index (needed to change the encoder)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_index)


SEARCH_COLUMNS = ("rank", "score", "catalogNumber", "institutionCode", "scientificName", "family", "country", "year")


def _cmd_search(args: argparse.Namespace) -> int:
    from retrieval.search import search_specimens

    if not (args.query and args.query.strip()) and not args.image:
        raise BadInput("empty query: give some text or --image PATH")
    results = search_specimens(args.collection, text=args.query, image=args.image, k=args.k,
                               filters=args.filter, model=args.model)
    if args.json:
        _print_json(results)
    elif not results:
        print("no matching specimens")
    else:
        _table(results, SEARCH_COLUMNS + ("image",))
    return 0


def _register_search(sub: Any) -> None:
    p = sub.add_parser("search", help="search specimens by text and/or image")
    p.add_argument("collection")
    p.add_argument("query", nargs="?", default=None, help='text, e.g. "opposite serrate leaves"')
    p.add_argument("--image", help="query image path")
    p.add_argument("--k", type=int, default=10, help="number of results")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="family, genus, scientificName, country, institution, year (1900-1950); repeatable")
    p.add_argument("--model", help="encoder to check against the index (default: the index's)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(handler=_cmd_search)


_REGISTRARS += [_register_index, _register_search]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed its message
        return 2 if exit_.code not in (0, None) else 0
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("herbaria: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line unless --debug
        if args.debug:
            raise
        code = 2 if isinstance(err, (BadInput, FileNotFoundError)) else 1
        prefix = "error" if isinstance(err, HerbariaError) else type(err).__name__
        print(f"herbaria: {prefix}: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
