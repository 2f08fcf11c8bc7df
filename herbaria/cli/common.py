"""What every command shares: JSON and table output, the --wait option, parsing, exit codes and one-line errors.

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
Registrar = Callable[[Any], None]  # adds one subcommand to the `herbaria` subparsers

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def print_table(rows: list[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """A readable table on stdout (rich), the default output of listing commands."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def add_wait_option(p: argparse.ArgumentParser) -> None:
    """--wait, for the commands that write to a collection and so take its lock."""
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="while another command writes to the collection, wait this long for it (default 60), "
                        "then exit 2 saying it is busy")


def register_commands(subparsers: Any, commands: dict[str, Registrar], names: Sequence[str] | None) -> None:
    """Add `names` (default: all, in the area's order) of an area's `commands` to the `herbaria` subparsers."""
    for name in commands if names is None else names:
        commands[name](subparsers)


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with text left over after them given to the command's `trailing_text` argument.

    argparse binds an optional positional before the options that follow it, so
    `ask COL --image P "question"` leaves the question over. Raises SystemExit as argparse does.
    """
    args, extra = parser.parse_known_args(argv)
    slot = getattr(args, "trailing_text", None)
    if extra and slot and not getattr(args, slot) and not any(e.startswith("-") for e in extra):
        setattr(args, slot, " ".join(extra))
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command's handler; any failure becomes one line on stderr and an exit code."""
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return int(handler(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("herbaria: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # one clear line unless --debug
        if args.debug:
            raise
        code = EXIT_BAD_INPUT if isinstance(err, (BadInput, FileNotFoundError)) else EXIT_FAILURE
        prefix = "error" if isinstance(err, HerbariaError) else type(err).__name__
        print(f"herbaria: {prefix}: {err}", file=sys.stderr)
        return code

