"""Turn latency of the assistant for a text question and for an uploaded image, in process and through the web demo.

In process is `HerbariaAssistant.ask` alone (route, encode, search, caption,
compose); "served" is a gradio_client call against the demo on 127.0.0.1 (upload,
queue, validation, thumbnails, streaming included). Run by hand, e.g.:

    .venv/bin/python bench/bench_turns.py --collection ../shared/data/specimens/harvard --model tiny-test
    .venv/bin/python bench/bench_turns.py --collection ../shared/data/specimens/harvard --model vit-b-16-random

`vit-b-16-random` is BioCLIP's architecture (ViT-B/16) with random weights: the
same compute per turn as BioCLIP without downloading it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Distinct questions, so that no turn is answered from a cache of text vectors.
TEXT_QUESTIONS = tuple(f"Which specimens have {arrangement} {organ} with {margin} margins?"
                       for organ in ("leaves", "leaflets")
                       for arrangement in ("opposite", "alternate", "whorled", "basal", "clustered")
                       for margin in ("toothed", "entire", "lobed", "serrate", "crenate", "wavy"))


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> dict[str, float]:
    from demo.loadtest import percentile

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {"n": repeats, "p50_ms": round(1000 * percentile(samples, 50), 1),
            "p95_ms": round(1000 * percentile(samples, 95), 1), "mean_ms": round(1000 * statistics.fmean(samples), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", help="collection folder or a source to ingest (default: generated sheets)")
    parser.add_argument("--model", default="tiny-test")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--image", help="image to upload (default: a sheet of the collection)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    import torch
    from gradio_client import Client, handle_file

    from assistant.agent import HerbariaAssistant
    from demo.server import create_server, start_server
    from load_test import prepare

    results: dict[str, Any] = {"model": args.model, "collection": args.collection or "generated sheets",
                               "repeats": args.repeats, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "machine": platform.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="herbaria-turns-") as tmp:
        collection = prepare(args.collection, args.model, Path(tmp))
        image = Path(args.image) if args.image else next((collection / "images").rglob("*.jpg"))
        results["image_bytes"] = image.stat().st_size
        start = time.perf_counter()
        assistant = HerbariaAssistant(collection, model=args.model)
        results["load_s"] = round(time.perf_counter() - start, 2)
        results["specimens"] = assistant.info()["specimens"]
        questions = iter(range(10**9))

        def text_turn() -> None:
            assistant.ask(TEXT_QUESTIONS[next(questions) % len(TEXT_QUESTIONS)])

        results["in_process"] = {"text": timed(text_turn, args.repeats),
                                 "image": timed(lambda: assistant.ask("", str(image)), args.repeats)}
        server = start_server(create_server(collection, assistant=assistant))
        try:
            client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)

            def served(message: dict[str, Any]) -> None:
                turn = client.predict(message, api_name="/chat")[-1]
                if turn.get("error"):
                    raise RuntimeError(turn["error"])

            results["served"] = {
                "text": timed(lambda: served({"text": TEXT_QUESTIONS[next(questions) % len(TEXT_QUESTIONS)],
                                              "files": []}), args.repeats),
                "image": timed(lambda: served({"text": "", "files": [handle_file(str(image))]}), args.repeats),
            }
            client.close()
        finally:
            server.close()
    results["load_average_1m"] = round(os.getloadavg()[0], 2)  # other work on the machine skews timings
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
