"""`herbaria caption` and `herbaria train-captioner`: describe an image organ by organ, train the decoder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from herbaria.cli.common import add_wait_option, print_json, register_commands


def _cmd_caption(args: argparse.Namespace) -> int:
    from captioning.api import caption_image

    result = caption_image(args.collection, args.image, captioner=args.captioner, k=args.k, model=args.model,
                           device=args.device, precision=args.precision, strategy=args.strategy, num_beams=args.beams,
                           max_new_tokens=args.max_tokens, seed=args.seed)
    if args.json:
        print_json(result)
        return 0
    print(result["text"])
    if result.get("warning"):
        print(f"warning: {result['warning']}", file=sys.stderr)
    n = result["k"] if result["neighbours"] else 0
    if result["kind"] != "grounded":  # a decoder's text: show what the similar specimens support of it
        for organ in result["organs"]:
            for t in organ["traits"]:
                value = ("not " if t["negated"] else "") + t["value"]
                print(f"  {organ['organ']:<14} {t['character']:<16} {value:<28} {t['count']}/{t['of']}")
        for taxon in result["taxa"][:5]:
            print(f"  candidate: {taxon['name']} ({taxon['count']}/{taxon['of']}, best similarity {taxon['best_score']})")
    print(f"captioner {result['captioner']}, {n} neighbours ({result['described_neighbours']} with a described taxon), "
          f"encoder {result['encoder']}, {result['seconds']} s", file=sys.stderr)
    return 0


def _add_caption(sub: Any) -> None:
    p = sub.add_parser("caption", help="describe a specimen image organ by organ, grounded in the collection")
    p.add_argument("collection", help="collection folder (ingested and indexed)")
    p.add_argument("image", help="image file (photo or herbarium sheet)")
    p.add_argument("--captioner", default="grounded",
                   help="grounded (default), trained (this collection's), a preset (tiny-test, decoder-gpt2, blip-base, "
                        "coca-vit-b-32) or local-dir:PATH")
    p.add_argument("--k", type=int, default=8, help="similar specimens to ground the description in (default 8)")
    p.add_argument("--model", help="encoder (default: the one the collection's index was built with)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--precision", choices=("auto", "int8", "bf16", "fp32", "fp16"), default="auto",
                   help="neural captioners: auto = int8 decoding on CPUs, bf16 on GPUs (default)")
    p.add_argument("--strategy", choices=("greedy", "beam", "sample"), default="greedy",
                   help="decoding for neural captioners (default greedy)")
    p.add_argument("--beams", type=int, default=3, help="beams for --strategy beam (default 3)")
    p.add_argument("--max-tokens", type=int, default=60, help="new tokens per organ section (default 60)")
    p.add_argument("--seed", type=int, help="seed for --strategy sample")
    p.add_argument("--json", action="store_true", help="print the whole result (organs, support, taxa, neighbours) as JSON")
    p.set_defaults(handler=_cmd_caption)


def _cmd_train_captioner(args: argparse.Namespace) -> int:
    from captioning.api import train_captioner

    summary = train_captioner(args.collection, captioner=args.captioner, out=args.out, encoder=args.encoder, k=args.k,
                              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, scope=args.scope,
                              val_fraction=args.val_fraction, resume=not args.no_resume,
                              mixed_precision=args.mixed_precision, seed=args.seed, device=args.device,
                              max_steps=args.max_steps, progress=not (args.quiet or args.json), wait=args.wait)
    if args.json:
        print_json(summary)
        return 0
    losses = summary["history"]
    first, last = (losses[0]["loss"], losses[-1]["loss"]) if losses else (None, None)
    print(f"trained {summary['captioner']} on {summary['train_pairs']} specimens of {summary['taxa']} taxa "
          f"({summary['examples']} organ sections), {summary['epochs']} epochs, loss {first} -> {last}")
    for who, scores in summary["validation"].items():
        if isinstance(scores, dict) and "bleu4" in scores:
            print(f"  validation {who:<9} n={scores['n']} BLEU-4 {scores['bleu4']} ROUGE-L {scores['rouge_l']} "
                  f"trait F1 {scores['trait_f1']}")
    print(f"saved to {summary['out']}; caption with --captioner trained")
    return 0


def _add_train_captioner(sub: Any) -> None:
    p = sub.add_parser("train-captioner", help="train a trait-description decoder on the collection's images and descriptions")
    p.add_argument("collection", help="collection folder with images, an index and taxon descriptions")
    p.add_argument("--captioner", default="decoder-distilgpt2",
                   help="starting point: decoder-distilgpt2 (default), decoder-gpt2 or tiny-test")
    p.add_argument("--out", help="output folder (default COLLECTION/captioner)")
    p.add_argument("--encoder", help="image encoder (default: the index's, so captioning reuses its image pass)")
    p.add_argument("--k", type=int, default=8, help="neighbours whose descriptions prompt the decoder (0: none)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4 for a pretrained LM, 1e-3 from scratch)")
    p.add_argument("--scope", choices=("auto", "all", "cross"), default="auto",
                   help="what to train: all weights, or only cross-attention and the image bridge (SmallCap)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="specimens held out for the validation report")
    p.add_argument("--no-resume", action="store_true", help="start again instead of resuming from the checkpoint")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda (default: cuda when available; several GPUs via `accelerate launch`)")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (the checkpoint lets a later run resume)")
    add_wait_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_train_captioner)


COMMANDS = {"caption": _add_caption, "train-captioner": _add_train_captioner}


def register(subparsers: Any, names: Sequence[str] | None = None) -> None:
    register_commands(subparsers, COMMANDS, names)
