"""Stage: encode a collection's specimen images into its FAISS index.

Incremental by design: specimens already in the index are skipped, and the index
is committed after chunks as they come (spaced so saving stays a small part of the run) (a new version, see retrieval.vectors.index), so an interrupted
run resumes where it stopped. The run holds the collection's write lock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.collections import Collection
from retrieval.vectors.encoder import create_encoder
from retrieval.errors import BadInput
from retrieval.vectors.faiss_gpu import train_on_gpus
from retrieval.vectors.index import SpecimenIndex, check_compatible, training_rows
from retrieval.collections import DEFAULT_WAIT, collection_lock

INDEX_DIR = "index"
DEFAULT_ENCODER = "bioclip"


def index_dir(collection: Collection) -> Path:
    return collection.path / INDEX_DIR


def build_index(collection: str | Path | Collection, *, model: str | None = None, preset: str = "auto",
                rebuild: bool = False, batch_size: int | None = None, chunk_size: int = 512, device: str | None = None,
                precision: str = "auto", progress: bool = True, wait: float = DEFAULT_WAIT, engine: str = "local",
                ray_address: str | None = None) -> dict[str, Any]:
    """Encode every specimen image not yet indexed; returns a summary dict.

    `batch_size` None: the encoder's default (large on GPU). `engine="ray"` runs the stages on Ray Data
    (retrieval/vectors/ray_engine.py; `ray_address` None starts a local Ray). Another writer of the
    collection is waited for up to `wait` seconds (then CollectionBusy)."""
    if engine not in ("local", "ray"):
        raise BadInput(f"unknown engine {engine!r}; use local or ray")
    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    with collection_lock(col.path, purpose="index", wait=wait):
        if engine == "ray":
            from retrieval.vectors.ray_engine import build_with_ray

            return build_with_ray(col, model=model, preset=preset, rebuild=rebuild, batch_size=batch_size,
                                  chunk_size=chunk_size, device=device, precision=precision, ray_address=ray_address,
                                  default_encoder=DEFAULT_ENCODER, folder=index_dir(col))
        return _build(col, model=model, preset=preset, rebuild=rebuild, batch_size=batch_size, chunk_size=chunk_size,
                      device=device, precision=precision, progress=progress)


def open_for_indexing(col: Collection, folder: Path, *, model: str | None, preset: str, rebuild: bool,
                      device: str | None, precision: str, default_encoder: str = DEFAULT_ENCODER
                      ) -> tuple[Any, Any, SpecimenIndex]:
    """The encoder, the specimens with images, and the index they go into: the saved one (refused if another
    encoder built it) or a new one. Shared by the in-process and the Ray engines."""
    existing = None if rebuild or not SpecimenIndex.exists(folder) else SpecimenIndex.read_manifest(folder)
    name = model or (existing or {}).get("encoder") or default_encoder
    encoder = create_encoder(name, device=device, precision=precision)
    table = col.specimens()
    table = table[table["image"].fillna("").astype(str) != ""]
    if table.empty:
        raise BadInput(f"collection {col.path.name} has no specimen images to index; ingest a source with images first")
    if existing is not None:
        check_compatible(existing, encoder.info)
        index = SpecimenIndex.load(folder, encoder=encoder.info)
    else:
        index = SpecimenIndex.create(encoder.info, preset_name=preset, n_expected=len(table))
        train_on_gpus(index.index)  # k-means on the GPUs where the faiss-gpu wheel is installed
    return encoder, table, index


def _build(col: Collection, *, model: str | None, preset: str, rebuild: bool, batch_size: int | None, chunk_size: int,
           device: str | None, precision: str, progress: bool) -> dict[str, Any]:
    folder = index_dir(col)
    encoder, table, index = open_for_indexing(col, folder, model=model, preset=preset, rebuild=rebuild, device=device,
                                              precision=precision)
    name = encoder.name
    todo = table[~table["specimen_id"].isin(index.ids())] if len(index) else table
    ids = todo["specimen_id"].to_numpy(np.int64)
    paths = [col.path / p for p in todo["image"].astype(str)]
    start, skipped = time.perf_counter(), 0
    # An index that needs training is trained on a random sample encoded first (never the whole collection in
    # one array), then filled chunk by chunk. A save costs the whole FAISS file (the vectors file of an on-disk
    # preset is appended), so saves are spaced to take at most about a tenth of the run; the last one commits.
    if not index.is_trained and len(paths):
        first = np.sort(np.random.default_rng(0).choice(len(paths), min(len(paths), training_rows(index)), replace=False))
        rest = np.setdiff1d(np.arange(len(paths)), first)
        order = np.concatenate([first, rest])
        ids, paths = ids[order], [paths[i] for i in order]
        bounds = [0, *range(len(first), len(paths), chunk_size)]
    else:
        bounds = list(range(0, len(paths), chunk_size))
    bounds.append(len(paths))
    last_save, save_cost = time.perf_counter(), 0.0
    with tqdm(total=len(paths), desc=f"indexing with {name}", unit="img", disable=not progress) as bar:
        for lo, hi in zip(bounds, bounds[1:]):
            vecs = encoder.encode_images(paths[lo:hi], batch_size=batch_size, skip_errors=True)
            good = np.any(vecs != 0, axis=1)
            skipped += int((~good).sum())
            if good.any():
                index.add(ids[lo:hi][good], vecs[good])
            if hi == len(paths) or time.perf_counter() - last_save >= 10 * save_cost:
                began = time.perf_counter()
                index.save(folder)
                last_save, save_cost = time.perf_counter(), time.perf_counter() - began
            bar.update(len(vecs))
    if not len(index):
        index.save(folder)
    seconds = time.perf_counter() - start
    return {"encoder": name, "fingerprint": encoder.fingerprint, "factory": index.manifest["factory"],
            "added": int(len(paths) - skipped), "skipped": skipped, "total": len(index), "seconds": round(seconds, 2),
            "images_per_second": round(len(paths) / seconds, 2) if paths and seconds > 0 else None, "path": str(folder)}
