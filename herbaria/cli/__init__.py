"""`herbaria` command line: each subcommand maps its options onto one stage function.

This module only assembles the areas (one module each, registering its subcommands)
and lists the commands in workflow order for --help; parsing, exit codes and the
one-line errors live in `herbaria.cli.common`. Handlers import their stage inside,
so `herbaria --help` loads no model library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from herbaria.cli import captioning, collections, finetuning, flora, location, search, serving, worker
from herbaria.cli.common import EXIT_BAD_INPUT, EXIT_OK, parse_command_line, run_command

AREAS = (collections, flora, search, captioning, location, serving, finetuning, worker)
# --help follows the work: build a collection, describe it, search it, caption, ask, serve; then adapt the encoder
WORKFLOW = ("ingest", "index", "descriptions", "location", "search", "traits", "caption", "train-captioner", "ask",
            "serve", "demo", "finetune", "worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herbaria", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    area_of = {name: area for area in AREAS for name in area.COMMANDS}
    for name in WORKFLOW + tuple(n for n in area_of if n not in WORKFLOW):
        area_of[name].register(sub, [name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    forwarded = worker.forward(sys.argv[1:] if argv is None else argv)  # a running worker has the models loaded
    if forwarded is not None:
        return forwarded
    parser = build_parser()
    try:
        args = parse_command_line(parser, argv)
    except SystemExit as exit_:  # argparse already printed its message
        return EXIT_BAD_INPUT if exit_.code not in (0, None) else EXIT_OK
    return run_command(args)

