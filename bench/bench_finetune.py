"""Fine-tuning throughput and peak memory, both objectives, on synthetic batches (no collection, no downloads).

Run by hand. On a GPU machine (one call, well under 5 minutes):
    .venv/bin/python bench/bench_finetune.py --model vit-b-16-random --batch-size 256 --precision bf16
(ViT-B/16 architecture with random weights, every block training: the heaviest setting; the
multitask objective adds the distilgpt2-sized decoder `decoder-vit-b-random`, momentum
encoders and a queue.) On a CPU it runs a smoke configuration by default:
    .venv/bin/python bench/bench_finetune.py
The step is the one `herbaria finetune` runs (text sampling, tokenisation and caption
batches included); only image decoding is left out, so these are model-side figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from finetuning.batching import near_taxa_batches
from finetuning.pairs import DEFAULT_TEXT_WEIGHTS, PairSet, Specimen, Taxon
from finetuning.train import Run, _validate

SECTIONS = {"plant": "Herb, 30-60 cm.", "leaf": "Leaves opposite, ovate, margin serrate, hairy beneath.",
            "flower": "Flowers in cymes, petals 5, white; sepals 5, green."}


def synthetic_pairs(batch_size: int) -> PairSet:
    """batch_size/2 taxa in genera of 4, 4 sheets each: enough for one batch of near taxa."""
    taxa = []
    for t in range(max(2, batch_size // 2)):
        taxa.append(Taxon(f"Genus{t // 4} species{t}", genus=f"Genus{t // 4}", family=f"Family{t // 16}",
                          sentences=[list(SECTIONS.values())], traits=[["leaf opposite", "leaf serrate", "petal white"]],
                          sections=[dict(SECTIONS)]))
    specimens = [Specimen(i, Path("synthetic.jpg"), i // 4) for i in range(4 * len(taxa))]
    return PairSet(taxa, specimens, list(range(len(specimens))), [], [])


def options(args: argparse.Namespace, objective: str) -> dict:
    o = dict(model=args.model, objective=objective, epochs=1, batch_size=args.batch_size, per_taxon=2, grad_accum=1,
             lr=None, weight_decay=0.1, warmup=0.1, image_blocks="auto", text_blocks="auto", lora_rank=0,
             temperature="learned", text_weights=dict(DEFAULT_TEXT_WEIGHTS), captioner="auto", itc_weight=1.0,
             caption_weight=1.0, momentum=0.995, queue_size=4096, alpha=0.4, heldout_taxa=0.0, heldout_specimens=0.0,
             mixed_precision=args.precision, grad_checkpointing=args.grad_checkpointing, device=args.device,
             num_workers=0, cache_images=False, seed=0, resume=False, save_every=0, max_steps=None, evaluate=False,
             progress=False)
    _validate(o)
    return o


def measure(args: argparse.Namespace, objective: str) -> dict:
    pairs = synthetic_pairs(args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(options(args, objective), pairs, Path(tmp), total_steps=args.warmup + args.steps)
        cuda = run.acc.device.type == "cuda"
        rows = near_taxa_batches(pairs.specimens, pairs.train, pairs.taxa, batch_size=args.batch_size, per_taxon=2,
                                 rng=random.Random(0))[0]
        size = run.base.image_size
        pixels = torch.randn(len(rows), 3, size, size, generator=torch.Generator().manual_seed(0))
        if cuda:
            pixels = pixels.pin_memory()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        losses = []
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            metrics = run.forward_backward(rows, pixels, random.Random(step))
            run.apply()
            losses.append(round(metrics["loss"], 4))
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        report = {"objective": objective, "model": args.model, "batch_size": len(rows), "image_size": size,
                  "mixed_precision": run.acc.mixed_precision, "trainable_parameters": run.trainable,
                  "grad_checkpointing": args.grad_checkpointing, "steps": args.steps,
                  "seconds_per_step": round(seconds / args.steps, 4),
                  "images_per_second": round(len(rows) * args.steps / seconds, 1), "losses": losses}
        if cuda:
            report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        del run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return report


def main() -> None:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit-b-16-random" if gpu else "tiny-test")
    ap.add_argument("--batch-size", type=int, default=256 if gpu else 8)
    ap.add_argument("--precision", default="bf16" if gpu else "no", help="accelerate mixed precision: no, bf16, fp16")
    ap.add_argument("--objectives", default="contrastive,multitask")
    ap.add_argument("--steps", type=int, default=10 if gpu else 5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", help="also write the JSON report here")
    args = ap.parse_args()
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name() if gpu else None},
              "runs": [measure(args, objective) for objective in args.objectives.split(",")]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
