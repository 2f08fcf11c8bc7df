"""Stage: encode a collection's specimen images into its FAISS index.

Incremental by design: specimens already in the index are skipped, and the index
is committed after every chunk (a new version, see retrieval.index), so an interrupted
run resumes where it stopped. The run holds the collection's write lock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.collection import Collection
from retrieval.encoder import create_encoder
from retrieval.errors import BadInput
from retrieval.index import SpecimenIndex, check_compatible
from retrieval.locking import DEFAULT_WAIT, collection_lock

INDEX_DIR = "index"
DEFAULT_ENCODER = "bioclip"


def index_dir(collection: Collection) -> Path:
    return collection.path / INDEX_DIR


def build_index(collection: str | Path | Collection, *, model: str | None = None, preset: str = "auto",
                rebuild: bool = False, batch_size: int = 32, chunk_size: int = 512, device: str | None = None,
                precision: str = "auto", progress: bool = True, wait: float = DEFAULT_WAIT) -> dict[str, Any]:
    """Encode every specimen image not yet indexed; returns a summary dict.

    Another writer of the collection is waited for up to `wait` seconds (then CollectionBusy)."""
    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    with collection_lock(col.path, purpose="index", wait=wait):
        return _build(col, model=model, preset=preset, rebuild=rebuild, batch_size=batch_size, chunk_size=chunk_size,
                      device=device, precision=precision, progress=progress)


def _build(col: Collection, *, model: str | None, preset: str, rebuild: bool, batch_size: int, chunk_size: int,
           device: str | None, precision: str, progress: bool) -> dict[str, Any]:
    folder = index_dir(col)
    existing = None if rebuild or not SpecimenIndex.exists(folder) else SpecimenIndex.read_manifest(folder)
    name = model or (existing or {}).get("encoder") or DEFAULT_ENCODER
    encoder = create_encoder(name, device=device, precision=precision)
    table = col.specimens()
    table = table[table["image"].fillna("").astype(str) != ""]
    if existing is not None:
        check_compatible(existing, encoder.info)
        index = SpecimenIndex.load(folder, encoder=encoder.info)
    else:
        index = SpecimenIndex.create(encoder.info, preset_name=preset, n_expected=len(table))
    if table.empty:
        raise BadInput(f"collection {col.path.name} has no specimen images to index; ingest a source with images first")
    todo = table[~table["specimen_id"].isin(index.ids())] if len(index) else table
    ids = todo["specimen_id"].to_numpy(np.int64)
    paths = [col.path / p for p in todo["image"].astype(str)]
    start, skipped = time.perf_counter(), 0
    # An index that needs training sees all vectors first; a flat index is saved chunk by chunk.
    step = chunk_size if index.is_trained else max(len(paths), 1)
    with tqdm(total=len(paths), desc=f"indexing with {name}", unit="img", disable=not progress) as bar:
        for lo in range(0, len(paths), step):
            vecs = encoder.encode_images(paths[lo:lo + step], batch_size=batch_size, skip_errors=True)
            good = np.any(vecs != 0, axis=1)
            skipped += int((~good).sum())
            if good.any():
                index.add(ids[lo:lo + step][good], vecs[good])
            index.save(folder)
            bar.update(len(vecs))
    if not len(index):
        index.save(folder)
    seconds = time.perf_counter() - start
    return {"encoder": name, "fingerprint": encoder.fingerprint, "factory": index.manifest["factory"],
            "added": int(len(paths) - skipped), "skipped": skipped, "total": len(index), "seconds": round(seconds, 2),
            "images_per_second": round(len(paths) / seconds, 2) if paths and seconds > 0 else None, "path": str(folder)}
