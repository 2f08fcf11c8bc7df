"""Image-encoding throughput, fp32 vs bf16 weights, and how far bf16 embeddings drift.

Run by hand: `.venv/bin/python bench/bench_encoder.py [--model vit-b-16-random] [--images DIR] [--n 64]`.
Random weights give valid speed figures (not quality ones). With --images, real sheets
are decoded through the same reduced-size JPEG path as `herbaria index`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.vectors import create_encoder


def _inputs(images: str | None, n: int) -> list:
    if images:
        files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        return (files * (n // max(len(files), 1) + 1))[:n]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit-b-16-random")
    ap.add_argument("--images", help="folder of real sheets (e.g. ../shared/data/specimens/harvard)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    inputs = _inputs(args.images, args.n)
    report: dict = {"model": args.model, "n": len(inputs), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine(),
                    "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu")}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
    vectors = {}
    for precision in ("fp32", "bf16"):
        enc = create_encoder(args.model, precision=precision, device=args.device)
        enc.encode_images(inputs[: args.batch_size], batch_size=args.batch_size)  # warm-up
        start = time.perf_counter()
        vectors[precision] = enc.encode_images(inputs, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        report[f"{precision}_images_per_second"] = round(len(inputs) / seconds, 2)
    cos = (vectors["fp32"] * vectors["bf16"]).sum(axis=1)
    report["bf16_vs_fp32_cosine_min"] = round(float(cos.min()), 5)
    report["bf16_vs_fp32_cosine_mean"] = round(float(cos.mean()), 5)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
