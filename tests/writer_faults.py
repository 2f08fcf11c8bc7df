"""Run Herbaria's writers the hard way: killed at every filesystem step, or paused mid-run.

`python tests/writer_faults.py crash ROOT [SCENARIO...]` builds small collections under ROOT, then for
each scenario and each N runs the writer in a forked child that is killed (os._exit,
no clean-up, no `finally`) just before its N-th filesystem step (a rename, link,
unlink, mkdir, fsync, file creation, FAISS write...). The killed state is kept as
ROOT/SCENARIO/crashed-N, then the writer (or a good ingest) runs again on it to
completion in ROOT/SCENARIO/resumed-N. N grows until the writer finishes without
reaching it. One JSON line per step on stdout; test_collection_transactions.py checks
the folders. Forking after the imports keeps each step at a few tens of milliseconds.

`python tests/writer_faults.py pause MODULE:ATTR MARKER GATE -- herbaria ARGS...` runs
the CLI with ATTR wrapped so that its first call creates MARKER and waits for GATE:
the test decides what another writer does meanwhile.
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

KILLED = 86
WRITE_MODES = set("wax+")


# --------------------------------------------------------------------------- sources


def image_folder(root: Path, prefix: str, n: int, shade: int, names: list[str] | None = None) -> Path:
    """n small sheets; named `Viola a0`... (one genus, as far as name matching goes) unless `names` are given."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "scientificName", "catalogNumber"])
        for i in range(n):
            Image.new("RGB", (48, 64), (shade, 40 * i % 255, 200 - 30 * i)).save(root / f"{prefix}{i}.png")
            writer.writerow([f"{prefix}{i}.png", names[i] if names else f"Viola {prefix.lower()}{i}", f"{prefix}-{i}"])
    return root


def unreachable_page(path: Path, n: int) -> Path:
    """A GBIF search page whose media live on a local port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = [{"key": 500 + i, "scientificName": f"Rosa canina {i}",
                "media": [{"type": "StillImage", "identifier": f"http://127.0.0.1:{port}/{i}.jpg"}]} for i in range(n)]
    path.write_text(json.dumps({"offset": 0, "limit": 20, "results": results}))
    return path


# --------------------------------------------------------------------------- steps


class _Steps:
    """Counts filesystem steps; kills the process just before step `crash_at`, writing what it was to `report`."""

    def __init__(self, crash_at: int, report: Path) -> None:
        self.crash_at, self.report, self.count = crash_at, report, 0
        self.originals: dict[tuple[Any, str], Any] = {}

    def step(self, what: str) -> None:
        self.count += 1
        if self.count == self.crash_at:
            fd = self.originals[(os, "open")](str(self.report), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, what.encode("utf-8", "replace"))
            os.close(fd)
            os._exit(KILLED)

    def install(self) -> None:
        import faiss

        for name in ("replace", "rename", "link", "symlink", "mkdir", "rmdir", "unlink", "remove", "fsync",
                     "ftruncate", "pwrite"):
            self._wrap(os, name, lambda n, a, k: n)
        self._wrap(os, "open", lambda n, a, k: n if len(a) > 1 and a[1] & (os.O_CREAT | os.O_WRONLY | os.O_RDWR)
                   else None)
        self._wrap(faiss, "write_index", lambda n, a, k: n)
        self._wrap(shutil, "rmtree", lambda n, a, k: n)
        self._wrap(builtins, "open", _writing)
        self._wrap(io, "open", _writing)

    def _wrap(self, module: Any, name: str, counts: Callable[[str, tuple, dict], str | None]) -> None:
        original = getattr(module, name)
        self.originals[(module, name)] = original
        label = f"{getattr(module, '__name__', module)}.{name}"

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if counts(label, args, kwargs):
                where = next((str(a) for a in args if isinstance(a, (str, Path))), "")
                self.step(f"{label}({where})")
            return original(*args, **kwargs)

        setattr(module, name, wrapper)


def _writing(label: str, args: tuple, kwargs: dict) -> str | None:
    """open() counts as a step when it may create or change a file."""
    mode = str(args[1] if len(args) > 1 else kwargs.get("mode", "r"))
    return label if WRITE_MODES & set(mode) else None


# --------------------------------------------------------------------------- scenarios


def _ingest(source: Path, out: Path) -> None:
    from retrieval.collections import ingest

    ingest(source, out, progress=False, batch_size=1)


def _failing_ingest(source: Path, out: Path) -> None:
    from retrieval.errors import NetworkUnavailable

    try:
        _ingest(source, out)
    except NetworkUnavailable:
        return
    raise AssertionError("the ingest of unreachable media was expected to fail")


def _index(out: Path) -> None:
    from retrieval.vectors import build_index

    build_index(out, model="tiny-test", progress=False, chunk_size=2)


def _write_legacy_index(out: Path) -> None:
    """Rewrite the index in the single-pair layout of 51d512c (index/specimens.faiss + index/manifest.json)."""
    from retrieval.vectors import SpecimenIndex

    folder = out / "index"
    index = SpecimenIndex.load(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    import faiss

    faiss.write_index(index.index, str(folder / "specimens.faiss"))
    from retrieval.vectors import sha256_file

    manifest = {**index.manifest, "checksum": sha256_file(folder / "specimens.faiss")}
    manifest.pop("version", None)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def flora_csv(path: Path, rows: dict[str, str]) -> Path:
    """A CSV description source (its stem is the records' source, so two files named alike replace each other's taxa)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["taxon", "text"])
        writer.writerows(rows.items())
    return path


def _describe(source: Path, out: Path) -> None:
    from retrieval.flora import add_descriptions

    add_descriptions(out, [source], text_model="tiny-test", progress=False)


def write_flat_descriptions(folder: Path) -> None:
    """Rewrite a description index in the flat layout of 51d512c (every file directly in the folder)."""
    from retrieval.flora import DescriptionIndex
    import numpy as np

    index = DescriptionIndex.load(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    with open(folder / "descriptions.jsonl", "w", encoding="utf-8") as handle:
        for record, table in zip(index.records, index.traits):
            handle.write(json.dumps({**record.to_dict(), "traits": table}, ensure_ascii=False) + "\n")
    np.save(folder / "chunks.npy", index.chunks)
    np.save(folder / "embeddings.npy", index.embeddings)
    manifest = {"format": 2, "taxa": len(index.records), "chunks": int(len(index.chunks)), "text_model": index.text_model}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (folder / "specimens.json").write_text(json.dumps(index.specimen_links))


def prepare(root: Path) -> dict[str, tuple[Path, Callable[[Path], None], Callable[[Path], None]]]:
    """Each scenario: (base folder, writer, resume), both taking the working copy's root."""
    sources = root / "sources"
    a = image_folder(sources / "a", "A", 3, 30)
    b = image_folder(sources / "b", "B", 3, 220)
    page = unreachable_page(sources / "page.json", 2)
    base_existing = root / "base-existing"
    _ingest(a, base_existing / "col")
    _index(base_existing / "col")
    base_index = root / "base-index"
    _ingest(a, base_index / "col")
    _index(base_index / "col")
    _write_legacy_index(base_index / "col")
    _ingest(b, base_index / "col")  # three more specimens to index
    empty = root / "base-empty"
    empty.mkdir()
    # descriptions of three violets, then the writer's: Viola alba described anew, V. arvensis and V. tricolor added
    violets = image_folder(sources / "violets", "V", 4, 120,
                           names=["Viola odorata L.", "Viola hirta L.", "Viola alba Besser", "Viola arvensis Murray"])
    flora_a = flora_csv(sources / "flora-a" / "viola.csv", {
        "Viola odorata L.": "Herb. Leaves cordate, crenate. Flowers violet, fragrant.",
        "Viola hirta L.": "Herb. Leaves hairy beneath; petioles pubescent.", "Viola alba Besser": "Herb. Flowers white."})
    flora_b = flora_csv(sources / "flora-b" / "viola.csv", {
        "Viola alba Besser": "Herb. Leaves glabrous; petals white, spur violet.",
        "Viola arvensis Murray": "Annual herb. Stems branched. Corolla cream, smaller than the calyx.",
        "Viola tricolor L.": "Annual herb. Petals violet, yellow and white."})
    base_described = root / "base-described"
    _ingest(violets, base_described / "col")
    _describe(flora_a, base_described / "col")
    _describe(flora_a, base_described / "col")  # two versions: the writer's save prunes the older one
    base_flat = root / "base-described-flat"
    _ingest(violets, base_flat / "col")
    _describe(flora_a, base_flat / "col")
    write_flat_descriptions(base_flat / "col" / "descriptions")
    return {
        "ingest-existing": (base_existing, lambda w: _ingest(b, w / "col"), lambda w: _ingest(b, w / "col")),
        "ingest-new": (empty, lambda w: _ingest(a, w / "col"), lambda w: _ingest(a, w / "col")),
        "ingest-new-failing": (empty, lambda w: _failing_ingest(page, w / "col"), lambda w: _ingest(a, w / "col")),
        "index": (base_index, lambda w: _index(w / "col"), lambda w: _index(w / "col")),
        "descriptions": (base_described, lambda w: _describe(flora_b, w / "col"), lambda w: _describe(flora_b, w / "col")),
        "descriptions-flat": (base_flat, lambda w: _describe(flora_b, w / "col"), lambda w: _describe(flora_b, w / "col")),
    }


def _child(run: Callable[[Path], None], work: Path, steps: _Steps | None) -> int:
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            if steps is not None:
                steps.install()
            run(work)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def crash(root: Path, only: list[str]) -> None:
    import torch

    from retrieval.flora import cached_text_encoder
    from retrieval.vectors import create_encoder

    torch.set_num_threads(1)
    create_encoder("tiny-test")  # loaded once, before any fork
    cached_text_encoder("tiny-test", None)  # the arguments `descriptions add` passes, so its call hits this cache
    scenarios = prepare(root)
    for name, (base, writer, resume) in scenarios.items():
        if only and name not in only:
            continue
        folder = root / name
        (folder / "reference").parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base, folder / "reference", symlinks=True)
        assert _child(writer, folder / "reference", None) == 0, name
        n = 0
        while True:
            n += 1
            if n > 400:
                raise AssertionError(f"{name}: more than 400 steps; is the writer looping?")
            work = folder / f"work-{n}"
            shutil.copytree(base, work, symlinks=True)
            report = folder / f"step-{n}.txt"
            code = _child(writer, work, _Steps(n, report))
            if code != KILLED:
                shutil.rmtree(work)
                print(json.dumps({"scenario": name, "steps": n - 1, "finished": code}), flush=True)
                break
            shutil.copytree(work, folder / f"crashed-{n}", symlinks=True)
            resumed = _child(resume, work, None)
            work.rename(folder / f"resumed-{n}")
            print(json.dumps({"scenario": name, "step": n, "op": report.read_text(), "resume": resumed}), flush=True)


# --------------------------------------------------------------------------- pause


def pause(target: str, marker: Path, gate: Path, argv: list[str]) -> int:
    import importlib

    module_name, _, attr = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    first = [True]

    def paused(*args: Any, **kwargs: Any) -> Any:
        if first[0]:
            first[0] = False
            marker.touch()
            deadline = time.monotonic() + 120
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return original(*args, **kwargs)

    setattr(owner, name, paused)
    from herbaria.cli import main

    return main(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if sys.argv[1] == "crash":
        crash(Path(sys.argv[2]), sys.argv[3:])
    elif sys.argv[1] == "pause":
        split = sys.argv.index("--")
        sys.exit(pause(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[split + 1:]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
