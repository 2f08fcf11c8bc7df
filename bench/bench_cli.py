"""Wall time of `herbaria search`, `ask`, `caption` and `traits`, one fresh process per call, as a user types them.

Builds the collection (the 45 sheets of ../shared/data/specimens/harvard, indexed with tiny-test, the Go Botany
notes added as descriptions with the tiny-test text encoder), then runs each command `--repeat` times with each code tree
given (`--code DIR`, default this checkout), so before and after are measured in the same run on the same load; a tree that has `herbaria worker` is
timed again with a worker running (its first call, which loads the models, reported apart):

    git archive HEAD | tar -x -C /tmp/herbaria-before     # the code before a change (read-only git)
    .venv/bin/python bench/bench_cli.py --code /tmp/herbaria-before --code .

Prints one JSON object: machine, load averages, per code tree and command the median and max seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHEETS = REPO.parent / "shared" / "data" / "specimens" / "harvard"
FLORA = REPO.parent / "shared" / "data" / "flora" / "gobotany" / "taxa.csv"


def herbaria(code: Path, *args: str, timeout: float = 600, socket: Path | None = None
             ) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    env.pop("HERBARIA_WORKER_SOCKET", None)
    env.update({"HERBARIA_WORKER_SOCKET": str(socket)} if socket else {"HERBARIA_NO_WORKER": "1"})
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "herbaria", *args], cwd=code, env=env, text=True,
                          capture_output=True, timeout=timeout)
    return time.perf_counter() - start, done


def build(code: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    collection = folder / "harvard"
    flora = folder / "descriptions.csv"  # Go Botany's notes as a taxon,text description file
    with FLORA.open(encoding="utf-8", errors="replace", newline="") as src, flora.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["taxon", "text"])
        for row in csv.DictReader(src):
            text = " ".join(row.get(c) or "" for c in ("factoid", "Lookalike_tips")).strip()
            if row.get("Scientific__Name") and text:
                writer.writerow([row["Scientific__Name"], text])
    steps = (("ingest", str(SHEETS), "--out", str(collection)),
             ("index", str(collection), "--model", "tiny-test"),
             ("descriptions", "add", str(collection), str(flora), "--text-model", "tiny-test"))
    for step in steps:
        _, done = herbaria(code, *step)
        if done.returncode:
            sys.exit(f"setup failed: herbaria {' '.join(step)}\n{done.stderr[-2000:]}")
    return collection


def commands(collection: Path) -> dict[str, tuple[str, ...]]:
    sheet = str(sorted(SHEETS.glob("*.jpg"))[0])
    return {
        "search": ("search", str(collection), "opposite serrate leaves", "--k", "8"),
        "ask": ("ask", str(collection), "which specimens have opposite serrate leaves?"),
        "caption": ("caption", str(collection), sheet),
        "traits": ("traits", "Leaves opposite, ovate, 3-5 cm long; margin serrate.", "--collection", str(collection)),
    }


def timed(code: Path, cmd: tuple[str, ...], repeat: int, socket: Path | None = None) -> dict[str, object]:
    times = []
    for _ in range(repeat):
        seconds, done = herbaria(code, *cmd, socket=socket)
        if done.returncode:
            times.append(float("nan"))
            print(f"{code} {cmd[0]} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        else:
            times.append(round(seconds, 2))
    return {"median_s": statistics.median(times), "max_s": max(times), "runs": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", action="append", type=Path, help="a code tree to run (repeatable; default: this one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", action="append", help="command names to time (default all)")
    args = parser.parse_args()
    if not SHEETS.is_dir():
        sys.exit(f"no sheets at {SHEETS}: this benchmark needs ../shared/data")
    codes = [c.resolve() for c in (args.code or [REPO])]
    report: dict[str, object] = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                                 "load_before": os.getloadavg(), "repeat": args.repeat, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # each code tree builds its own copy of the collection: stored formats may differ between versions
        collections = {code: build(code, Path(tmp) / str(i)) for i, code in enumerate(codes)}
        for name in commands(Path(tmp)):
            if args.only and name not in args.only:
                continue
            for code in codes:
                cmd = commands(collections[code])[name]
                report["results"].setdefault(str(code), {})[name] = timed(code, cmd, args.repeat)  # type: ignore[union-attr]
        for code in codes:  # the same commands with `herbaria worker` running (the code trees that have it)
            if not (code / "herbaria" / "cli" / "worker.py").exists():
                continue
            sock = Path(tempfile.mkdtemp(prefix="hw", dir="/tmp")) / "s" / "worker.sock"
            server = subprocess.Popen([sys.executable, "-m", "herbaria", "worker", "--socket", str(sock)], cwd=code,
                                      env={**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"},
                                      stderr=subprocess.DEVNULL)
            try:
                while not sock.exists():
                    time.sleep(0.05)
                warm = report["results"].setdefault(f"{code} (worker)", {})  # type: ignore[union-attr]
                for name, cmd in commands(collections[code]).items():
                    if not args.only or name in args.only:
                        first = timed(code, cmd, 1, socket=sock)["runs"]  # loads what this command needs
                        warm[name] = {**timed(code, cmd, args.repeat, socket=sock), "first_s": first[0]}
            finally:
                server.terminate()
                server.wait(30)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
