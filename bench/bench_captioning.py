"""Captioning latency per image: our decoder (greedy, beam-3) vs CoCa, 30 tokens, image encoder included.

Run by hand: `.venv/bin/python bench/bench_captioning.py [--runs 7] [--image SHEET.jpg] [--device cuda] [--out FILE]`.

Each timed call starts from a decoded PIL image and ends with the text: preprocessing,
the ViT image encoder, prefill and 30 decoding steps (end-of-text suppressed so every
run writes exactly 30 tokens). Weights are random (`vit-b-16-random`, a distilgpt2-sized
decoder with GPT-2's 50,257-token vocabulary, `coca-vit-b-32-random`): valid for speed,
not for quality. Reference from the issue: open_clip CoCa ViT-B/32 `generate()` on this
2-core CPU with transformers 4.55, 2.3 s (top-k) and 5.0 s (beam-3); its `generate()`
does not run with transformers 5, which this script checks and records. As a stand-in
measured in the same minutes (the CPU is shared), CoCa also runs through our loop
without a cache, fp32: the whole prefix again at every step, which is generate()'s work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from captioning.base import encode
from captioning.decoding import DecodeOptions
from captioning.registry import create_captioner
from retrieval.collections import load_image

COCA_GENERATE_REFERENCE = {"top_k_s": 2.3, "beam_3_s": 5.0, "transformers": "4.55",
                           "source": "issue 4, measured on this 2-core CPU"}
CONTEXT = ("Similar: Geranium maculatum: Leaves alternate, palmately 5-7-lobed, lobes toothed, 5-12 cm wide, "
           "sparsely hairy. | Geranium robertianum: Leaves opposite, ternately compound, leaflets pinnately lobed, "
           "glandular-hairy. | Anemone canadensis: Leaves basal, palmately 3-5-parted, margin toothed.")


def _image(path: str | None) -> Image.Image:
    if path:
        return load_image(path, reduce_to=448)
    default = Path(__file__).resolve().parents[2] / "shared/data/specimens/harvard/Geranium_maculatum.27912.2054.jpg"
    if default.exists():
        return load_image(default, reduce_to=448)
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (750, 500, 3), dtype=np.uint8))


def _time(fn: Callable[[], Any], runs: int, warmup: int = 2) -> dict[str, Any]:
    """Wall-clock seconds, and this process's CPU seconds: on a shared machine the CPU time of a
    single-threaded run is what the wall time would be on an idle one (contention only adds waiting)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"median_s": round(statistics.median(wall), 4), "min_s": round(min(wall), 4),
            "max_s": round(max(wall), 4), "cpu_median_s": round(statistics.median(cpu), 4), "runs": runs}


def _decoder_case(image: Image.Image, strategy: str, *, precision: str, context: str, device: str | None,
                  runs: int) -> dict[str, Any]:
    from captioning.decoder import NeuralCaptioner
    from retrieval.registry import preset

    cap = NeuralCaptioner.from_spec(preset("captioners", "decoder-vit-b-random"), precision=precision, device=device)
    options = DecodeOptions(strategy=strategy, num_beams=3, max_new_tokens=30, min_new_tokens=30)
    neighbours = [[{"specimen_id": 1, "score": 1.0, "name": "x", "sections": {"leaf": context}}]] if context else None

    def run() -> dict[str, Any]:
        enc = encode(cap.encoder, [image])  # the one image pass (shared with retrieval in the app)
        return cap.caption(encoded=enc, neighbours=neighbours, organs=["leaf"], options=options)[0]

    out = run()
    assert out["tokens"] == 30, out
    timing = _time(run, runs)
    enc_only = _time(lambda: encode(cap.encoder, [image]), runs)
    return {"captioner": "decoder-vit-b-random", "strategy": strategy if strategy == "greedy" else "beam-3",
            "precision": cap.precision + ("" if cap.steps.int8 or not cap.int8 else " (int8 unavailable)"),
            "encoder_precision": str(cap.encoder.dtype).replace("torch.", ""),
            "prompt_tokens": len(cap.encode_prompt("leaf", context)),
            **timing, "encoder_only_median_s": enc_only["median_s"], "encoder_only_cpu_median_s": enc_only["cpu_median_s"]}


def _coca_case(image: Image.Image, strategy: str, *, precision: str, device: str | None, runs: int,
               use_cache: bool = True) -> dict[str, Any]:
    """CoCa through our loop; without the cache it redoes the whole prefix every step, as CoCa.generate() does,
    which makes it a same-conditions stand-in for generate() where that cannot run."""
    cap = create_captioner("coca-vit-b-32-random", precision=precision, device=device)
    options = DecodeOptions(strategy=strategy, num_beams=3, max_new_tokens=30, min_new_tokens=30, use_cache=use_cache)
    out = cap.caption([image], options=options)[0]
    assert out["tokens"] == 30, out
    timing = _time(lambda: cap.caption([image], options=options), runs)
    loop = "our loop, KV cache" if use_cache else "our loop, no cache: generate()'s work"
    return {"captioner": f"coca-vit-b-32-random ({loop})", "strategy": strategy if strategy == "greedy" else "beam-3",
            "precision": str(cap.dtype).replace("torch.", ""), **timing}


def _coca_generate(image: Image.Image, runs: int) -> dict[str, Any]:
    """open_clip's own CoCa.generate(), fp32, as in the issue's reference; recorded as an error where it fails."""
    cap = create_captioner("coca-vit-b-32-random", precision="fp32", device="cpu")
    pixels = cap.preprocess(image)[None]
    result: dict[str, Any] = {"captioner": "coca-vit-b-32-random CoCa.generate()"}
    for name, kwargs in (("top_k", {"generation_type": "top_k"}), ("beam_3", {"generation_type": "beam_search",
                                                                          "num_beams": 3, "num_beam_groups": 1})):
        try:
            result[name] = _time(lambda: cap.model.generate(pixels, seq_len=30, **kwargs), runs, warmup=1)
        except Exception as err:  # the point of the check: it breaks with transformers 5
            result[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--image", help="a sheet to caption (default: a Harvard sheet from ../shared/data)")
    ap.add_argument("--device", default=None, help="cpu (default here) or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="only the default configuration")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    image = _image(args.image)
    report: dict[str, Any] = {
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "image": f"{image.size[0]}x{image.size[1]} PIL image (decoded before timing)", "new_tokens": 30,
        "load_before": os.getloadavg(), "reference_coca_generate": COCA_GENERATE_REFERENCE, "cases": []}
    cases = report["cases"]
    for strategy in ("greedy", "beam"):
        cases.append(_decoder_case(image, strategy, precision="auto", context="", device=args.device, runs=args.runs))
        cases.append(_coca_case(image, strategy, precision="fp32", device=args.device, runs=max(3, args.runs // 2),
                                use_cache=False))
    if not args.quick:
        for strategy in ("greedy", "beam"):
            cases.append(_decoder_case(image, strategy, precision="auto", context=CONTEXT, device=args.device,
                                       runs=args.runs))
            for precision in ("bf16", "fp32"):
                cases.append(_decoder_case(image, strategy, precision=precision, context="", device=args.device,
                                           runs=args.runs))
            for precision in ("auto", "fp32"):
                cases.append(_coca_case(image, strategy, precision=precision, device=args.device, runs=args.runs))
        if report["device"] == "cpu":
            cases.append(_coca_generate(image, max(2, args.runs // 3)))
    report["load_after"] = os.getloadavg()
    stand_in = {c["strategy"]: c for c in cases if "no cache" in c["captioner"]}
    for case in cases:
        if "median_s" in case and case["captioner"] == "decoder-vit-b-random":
            ref = COCA_GENERATE_REFERENCE["top_k_s" if case["strategy"] == "greedy" else "beam_3_s"]
            case["speedup_vs_coca_generate_reference"] = round(ref / case["median_s"], 1)
            if case["strategy"] in stand_in:  # same machine, same minutes
                case["speedup_vs_uncached_coca_now"] = round(stand_in[case["strategy"]]["median_s"] / case["median_s"], 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
