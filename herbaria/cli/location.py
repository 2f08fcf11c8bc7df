"""`herbaria location train`: train a collection's location encoder (the geo-prior and range maps use it)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from herbaria.cli.common import print_json, register_commands


def _cmd_location(args: argparse.Namespace) -> int:
    from location import train_location_encoder

    summary = train_location_encoder(args.collection, target=args.target, model=args.model, epochs=args.epochs,
                                     max_seconds=args.max_seconds, seed=args.seed)
    if args.json:
        print_json(summary)
        return 0
    space = summary.get("space") or {}
    print(f"location model trained on {summary.get('records', '?')} records against "
          f"{space.get('kind')} {space.get('encoder') or ''}".rstrip()
          + f"; {summary.get('flagged_skipped', 0)} flagged coordinates skipped; saved in {summary['path']}")
    return 0


def _add_location(sub: Any) -> None:
    p = sub.add_parser("location", help="train the location encoder behind the geo-prior and 'where does this grow?' maps")
    p.add_argument("action", choices=["train"], help="train: fit it on the collection's usable coordinates")
    p.add_argument("collection", help="collection folder (ingested; indexed for the image target)")
    p.add_argument("--target", default="auto", choices=["auto", "images", "taxa"],
                   help="train against image vectors, or taxon vectors when images are few (default auto)")
    p.add_argument("--model", help="encoder to check against the image index (default: the index's)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the training summary as JSON")
    p.set_defaults(handler=_cmd_location)


COMMANDS = {"location": _add_location}


def register(subparsers: Any, names: Sequence[str] | None = None) -> None:
    register_commands(subparsers, COMMANDS, names)
