"""Load test of the web demo: N concurrent gradio_client sessions sharing T chat turns.

Serves a collection in this process (or targets --url) and prints clients, turns,
errors, lost turns and p50/p95 latency as JSON. Run by hand, e.g.:

    .venv/bin/python bench/load_test.py --collection ../shared/data/specimens/harvard --model tiny-test
    .venv/bin/python bench/load_test.py --url http://127.0.0.1:7860/ --clients 20 --turns 200

--collection accepts a collection folder, or an image folder / archive that is
ingested (and indexed with --model) into a temporary collection first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prepare(source: str | None, model: str, work: Path) -> Path:
    """A ready collection: as given, ingested from a source, or the generated test sheets."""
    from retrieval.vectors import build_index

    if source is None:
        from demo_support import build_collection

        return build_collection(work, per_taxon=4, model=model)
    path = Path(source)
    if (path / "collection.json").is_file():
        build_index(path, model=model, progress=True)
        return path
    from retrieval.collections import ingest

    out = work / path.name
    ingest(path, out, progress=True)
    build_index(out, model=model, progress=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", help="collection folder, or a source to ingest (default: generated sheets)")
    parser.add_argument("--model", default="tiny-test", help="encoder (default tiny-test)")
    parser.add_argument("--url", help="load an already running demo instead of serving one here")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--image-every", type=int, default=5, help="every k-th turn uploads a sheet (0: never)")
    parser.add_argument("--concurrency", type=int, default=2, help="server: turns answered at once")
    parser.add_argument("--queue-size", type=int, default=64, help="server: turns allowed to wait")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds before unfinished turns count as lost")
    parser.add_argument("--out", help="also write the report as JSON here")
    args = parser.parse_args()

    from demo.loadtest import run_load

    with tempfile.TemporaryDirectory(prefix="herbaria-load-") as tmp:
        server = None
        image = None
        if args.url:
            url = args.url
        else:
            from demo.server import create_server, start_server

            collection = prepare(args.collection, args.model, Path(tmp))
            server = start_server(create_server(collection, model=args.model, concurrency=args.concurrency,
                                                queue_size=args.queue_size))
            url = server.url
            image = next((collection / "images").rglob("*.jpg"), None)
        try:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            report = run_load(url, clients=args.clients, turns=args.turns, image=image,
                              image_every=args.image_every if image else 0, deadline_s=args.deadline)
        finally:
            if server is not None:
                server.close()
    report.update(started=started, model=args.model, collection=args.collection or "generated sheets",
                  server_concurrency=args.concurrency, queue_size=args.queue_size,
                  image_every=args.image_every if image else 0, cpus=os.cpu_count(), machine=platform.machine(),
                  load_average_1m=round(os.getloadavg()[0], 2))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if report["errors"] == 0 and report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
