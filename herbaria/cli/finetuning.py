"""`herbaria finetune`: adapt the image-text encoder to a collection (the stage is the `finetuning` package)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from herbaria.cli.common import print_json, register_commands


def _cmd_finetune(args: argparse.Namespace) -> int:
    from finetuning import finetune
    from finetuning.evaluate import format_report

    summary = finetune(args.collection, model=args.model, objective=args.objective, out=args.out, epochs=args.epochs,
                       batch_size=args.batch_size, per_taxon=args.per_taxon, grad_accum=args.grad_accum, lr=args.lr,
                       weight_decay=args.weight_decay, warmup=args.warmup,
                       image_blocks=0 if args.lit else args.image_blocks, text_blocks=args.text_blocks,
                       lora_rank=args.lora_rank, temperature=args.temperature, captioner=args.captioner,
                       itc_weight=args.itc_weight, caption_weight=args.caption_weight, momentum=args.momentum,
                       queue_size=args.queue_size, alpha=args.alpha, heldout_taxa=args.heldout_taxa,
                       heldout_specimens=args.heldout_specimens, mixed_precision=args.mixed_precision,
                       grad_checkpointing=args.grad_checkpointing, device=args.device, num_workers=args.workers,
                       seed=args.seed, resume=not args.no_resume, save_every=args.save_every, max_steps=args.max_steps,
                       evaluate=not args.no_eval, progress=not (args.quiet or args.json))
    if args.json:
        print_json(summary)
    else:
        print(format_report(summary))
    return 0


def _add_finetune(sub: Any) -> None:
    p = sub.add_parser("finetune", help="adapt the image-text encoder to the collection's sheets and descriptions")
    p.add_argument("collection", help="collection folder with named specimen images (descriptions optional)")
    p.add_argument("--model", default="bioclip", help="encoder to start from: a preset or hf-hub:/local-dir: (default bioclip)")
    p.add_argument("--objective", choices=("contrastive", "multitask"), default="contrastive",
                   help="contrastive, or multitask: + captioning loss, momentum encoders, feature queue, distillation")
    p.add_argument("--out", help="checkpoint folder (default COLLECTION/finetuned); use it as --model local-dir:OUT")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--per-taxon", type=int, default=2, help="sheets of one taxon per batch (default 2)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-5 for pretrained weights, 5e-4 from scratch)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="(norms, biases, embeddings, temperature skipped)")
    p.add_argument("--warmup", type=float, default=0.1, help="share of the steps warming up before cosine decay")
    p.add_argument("--image-blocks", default="auto", help="trailing image blocks that train: auto, all or N (0 locks)")
    p.add_argument("--text-blocks", default="auto", help="trailing text blocks that train: auto, all or N (0 locks)")
    p.add_argument("--lit", action="store_true", help="LiT: lock the image tower (same as --image-blocks 0)")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead (needs peft)")
    p.add_argument("--temperature", default="learned", help="learned (default) or a fixed value such as 0.07")
    p.add_argument("--captioner", default="auto", help="multitask: decoder preset (auto: the one made for --model)")
    p.add_argument("--itc-weight", type=float, default=1.0, help="multitask: weight of the contrastive loss")
    p.add_argument("--caption-weight", type=float, default=1.0, help="multitask: weight of the captioning loss")
    p.add_argument("--momentum", type=float, default=0.995, help="multitask: EMA momentum of the momentum encoders")
    p.add_argument("--queue-size", type=int, default=1024, help="multitask: momentum features kept as extra negatives")
    p.add_argument("--alpha", type=float, default=0.4, help="multitask: weight of the momentum soft targets")
    p.add_argument("--heldout-taxa", type=float, default=0.1, help="share of taxa kept out for evaluation")
    p.add_argument("--heldout-specimens", type=float, default=0.1, help="share of the other sheets kept out")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory, slower")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present; several GPUs via `accelerate launch`)")
    p.add_argument("--workers", type=int, help="image decoding processes (default: automatic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start again instead of resuming from the checkpoint")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (default: each epoch)")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (a later run resumes)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_finetune)


COMMANDS = {"finetune": _add_finetune}


def register(subparsers: Any, names: Sequence[str] | None = None) -> None:
    register_commands(subparsers, COMMANDS, names)
