"""`herbaria search` and `herbaria ask`: find specimens, and ask the assistant one question."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from herbaria.cli.common import print_json, print_table, register_commands
from retrieval.errors import BadInput

SEARCH_COLUMNS = ("rank", "taxon", "label", "catalogNumber", "family", "country", "year", "score")


def _cmd_search(args: argparse.Namespace) -> int:
    from retrieval.search import search_collection

    if not (args.query and args.query.strip()) and not args.image:
        raise BadInput("empty query: give some text or --image PATH")
    results = search_collection(args.collection, text=args.query, image=args.image, k=args.k,
                                filters=args.filter, model=args.model)
    if args.json:
        print_json(results)
    elif not results:
        print("no matching specimens" + _did_you_mean(args.collection, args.filter))
    else:
        from assistant.composer import citation

        print_table([{**r, "taxon": r.get("scientificName"), "label": citation(r).strip("[]")} for r in results],
                    SEARCH_COLUMNS)
        for hit in results:
            for item in (hit.get("description") or {}).get("evidence", [])[:2]:
                print(f"  {hit['rank']}. {hit['description']['name']}: {item['highlighted']}")
    return 0


def _did_you_mean(collection: str, filters: Sequence[str]) -> str:
    """'; did you mean family=Geraniaceae?' for a filter value the collection does not hold but nearly does."""
    import difflib

    from retrieval.collections import FILTER_FIELDS, Collection

    table = Collection.open(collection).specimens()
    hints = []
    for item in filters:
        key, _, value = item.partition("=")
        column = FILTER_FIELDS.get(key.strip())
        if column is None or column == "year" or column not in table:
            continue
        held = sorted(set(table[column].dropna().astype(str)) - {""})
        if not held:
            hints.append(f"this collection records no {key.strip()}")
            continue
        for wanted in value.split(","):
            if wanted.strip().casefold() not in {h.casefold() for h in held}:
                near = difflib.get_close_matches(wanted.strip(), held, n=1, cutoff=0.75)
                if near:
                    hints.append(f"did you mean {key.strip()}={near[0]}?")
    return "; " + "; ".join(hints) if hints else ""


def _add_search(sub: Any) -> None:
    p = sub.add_parser("search", help="search specimens by text and/or image, fusing the image index with the flora descriptions")
    p.add_argument("collection")
    p.add_argument("query", nargs="?", default=None, help='text, e.g. "opposite serrate leaves"')
    p.add_argument("--image", help="query image path")
    p.add_argument("--k", type=int, default=10, help="number of results")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="family, genus, scientificName, country, institution, year (1900-1950); repeatable")
    p.add_argument("--model", help="encoder to check against the index (default: the index's)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(handler=_cmd_search, trailing_text="query")


def _cmd_ask(args: argparse.Namespace) -> int:
    from assistant.agent import TurnResult
    from assistant.ask import ask

    rich = sys.stdout.isatty() and not args.json  # a terminal gets the answer rendered once, as markdown
    result: TurnResult | None = None
    for item in ask(args.collection, args.question, args.image, filters=args.filter, model=args.model,
                    captioner=args.captioner, chat_model=args.chat_model, chat_base_url=args.chat_base_url,
                    state_file=args.state):
        if isinstance(item, TurnResult):
            result = item
        elif not args.json and not rich:
            sys.stdout.write(item)
            sys.stdout.flush()
    assert result is not None
    if args.json:
        print_json(result.to_dict())
        return 0
    if rich:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(result.text))
    else:
        print()
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    return 0


def _add_ask(sub: Any) -> None:
    p = sub.add_parser("ask", help="ask the assistant one question (text and/or an image) about a collection")
    p.add_argument("collection", help="collection folder (ingested and indexed)")
    p.add_argument("question", nargs="?", default="", help='e.g. "how do the leaves of Geranium maculatum look?"')
    p.add_argument("--image", help="a specimen photo to describe, identify and match")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="family, genus, scientificName, country, institution, year (1900-1950); repeatable")
    p.add_argument("--model", help="encoder (default: the one the collection's index was built with)")
    p.add_argument("--captioner", default="grounded", help="captioner for images (default grounded; 'none' to skip)")
    p.add_argument("--chat-model", help="compose with a chat model, e.g. ollama:llama3.1 or openai:MODEL "
                                        "(default $HERBARIA_CHAT_MODEL, else the built-in grounded composer)")
    p.add_argument("--chat-base-url", help="server of the chat model (Ollama, OpenAI-compatible); "
                                           "default $HERBARIA_CHAT_BASE_URL")
    p.add_argument("--state", metavar="FILE", help="conversation state file: read before, written after, "
                                                  "so a next `ask` can say 'only Rubiaceae'")
    p.add_argument("--json", action="store_true", help="print the whole turn (answer, specimens, taxa, state) as JSON")
    p.set_defaults(handler=_cmd_ask, trailing_text="question")


COMMANDS = {"search": _add_search, "ask": _add_ask}


def register(subparsers: Any, names: Sequence[str] | None = None) -> None:
    register_commands(subparsers, COMMANDS, names)
