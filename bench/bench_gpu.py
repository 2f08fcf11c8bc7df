"""GPU path throughput: JPEG files to vectors (images/s) and index search (queries/s), ViT-B/16.

Run by hand, one call of at most ~5 minutes:

    .venv/bin/python bench/bench_gpu.py --out bench/out/gpu.json        # on a GPU machine (full configuration)
    .venv/bin/python bench/bench_gpu.py                                 # on CPU: a small smoke configuration

Images: `--unique` distinct synthetic sheets (smooth fields and strokes, JPEG quality 90, `--size`
pixels) written `--images` times as separate files, so decoding is real work on every file while
generation stays cheap. The encoder is open_clip ViT-B/16 with random weights (preset
`vit-b-16-random`): valid speed, no quality. Routes timed: the default one of `herbaria index`
(on CUDA: JPEG bytes read by DataLoader workers, nvJPEG batch decode, resize/normalise on the
GPU, bf16, pinned memory) and, for comparison, PIL decoding in the workers (HERBARIA_GPU_DECODE=0).
Search: `--vectors` random unit vectors in the index preset `auto` chooses, `--queries` queries at
k=10, batched and one at a time; on FAISS GPUs (faiss-gpu wheel) also a GPU copy of the index.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.vectors import SpecimenIndex, create_encoder
from retrieval.vectors.faiss_gpu import faiss_gpu_count, searcher

BUDGET_S = 280.0  # the whole call stays under 5 minutes with model load and clean-up


def _sheet_jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    base = np.stack([120 + 90 * np.sin(x / (40 + 30 * c) + y / 97 + phase[c]) for c in range(3)], -1)
    for _ in range(40):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(4, 40)
        base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 160, 3)
    buf = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_files(folder: Path, n: int, unique: int, size: tuple[int, int]) -> tuple[list[Path], int]:
    blobs = [_sheet_jpeg(size[0], size[1], seed) for seed in range(unique)]
    paths = []
    for i in range(n):
        paths.append(folder / f"sheet{i:06d}.jpg")
        paths[-1].write_bytes(blobs[i % unique])
    return paths, int(np.mean([len(b) for b in blobs]))


def _time_route(encoder, paths: list[Path], *, gpu_decode: bool, batch_size: int, workers: int) -> dict:
    os.environ["HERBARIA_GPU_DECODE"] = "1" if gpu_decode else "0"
    encoder.encode_images(paths[: 2 * batch_size], batch_size=batch_size, num_workers=workers)  # warm-up
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    vecs = encoder.encode_images(paths, batch_size=batch_size, num_workers=workers)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert np.all(np.abs(np.linalg.norm(vecs, axis=1) - 1) < 1e-3), "every image must give a unit vector"
    return {"route": "device JPEG decode" if encoder.decodes_on_device() else "PIL decode in workers",
            "images": len(paths), "seconds": round(seconds, 2), "images_per_second": round(len(paths) / seconds, 1)}


def _time_search(n_vectors: int, n_queries: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(n_vectors, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = vecs[rng.choice(n_vectors, n_queries, replace=False)] + 0.05 * rng.normal(size=(n_queries, dim)).astype(np.float32)
    info = {"name": "bench", "model": "ViT-B-16", "fingerprint": "bench", "dim": dim}
    index = SpecimenIndex.create(info, preset_name="auto", n_expected=n_vectors)
    start = time.perf_counter()
    index.add(np.arange(n_vectors), vecs)
    out = {"vectors": n_vectors, "factory": index.manifest["factory"], "build_seconds": round(time.perf_counter() - start, 2)}
    start = time.perf_counter()
    index.search(queries, k=10)
    out["batched_queries_per_second"] = round(n_queries / (time.perf_counter() - start), 1)
    single = queries[: min(n_queries, 500)]
    start = time.perf_counter()
    for q in single:
        index.search(q, k=10)
    out["single_queries_per_second"] = round(len(single) / (time.perf_counter() - start), 1)
    if faiss_gpu_count():
        on_gpus = searcher(index.index)
        on_gpus.search(queries[:10], 10)
        start = time.perf_counter()
        on_gpus.search(queries, 10)
        out["faiss_gpu_batched_queries_per_second"] = round(n_queries / (time.perf_counter() - start), 1)
    return out


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-b-16-random")
    ap.add_argument("--images", type=int, default=16384 if cuda else 32)
    ap.add_argument("--unique", type=int, default=256 if cuda else 8)
    ap.add_argument("--size", default="1024x1536" if cuda else "384x512", help="WIDTHxHEIGHT of each sheet")
    ap.add_argument("--batch-size", type=int, default=256 if cuda else 16)
    ap.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--vectors", type=int, default=200_000 if cuda else 20_000)
    ap.add_argument("--queries", type=int, default=10_000 if cuda else 200)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", help="write the report here as JSON")
    args = ap.parse_args()
    began = time.perf_counter()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    encoder = create_encoder(args.model, device=args.device)
    report: dict = {
        "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if cuda else None, "faiss_gpus": faiss_gpu_count(),
        "model": args.model, "device": str(encoder.device), "dtype": str(encoder.dtype), "batch_size": args.batch_size,
        "workers": args.workers, "image_size": args.size, "smoke": not cuda,
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        paths, report["mean_jpeg_bytes"] = _write_files(Path(tmp), args.images, args.unique, size)
        report["encode"] = [_time_route(encoder, paths, gpu_decode=True, batch_size=args.batch_size, workers=args.workers)]
        if cuda and time.perf_counter() - began < BUDGET_S / 2:  # the CPU-decode route for comparison, on fewer files
            report["encode"].append(_time_route(encoder, paths[: len(paths) // 4], gpu_decode=False,
                                                batch_size=args.batch_size, workers=args.workers))
    os.environ.pop("HERBARIA_GPU_DECODE", None)
    if time.perf_counter() - began < BUDGET_S * 0.6:
        report["search"] = _time_search(args.vectors, args.queries, encoder.dim)
    else:
        report["search"] = "skipped: the time budget went to encoding"
    report["wall_seconds"] = round(time.perf_counter() - began, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
