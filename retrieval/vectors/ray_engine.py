"""The index stage on Ray Data: read -> decode -> encode -> write shards, then merge.

Why Ray: one machine encodes a few thousand sheets a second at best; a herbarium of millions
spread over several GPU nodes needs an engine that schedules stages, spills and retries, and
Ray Data is that engine (`pip install -e '.[ray]'`). The stages are the in-process ones:
files are read as bytes, decoded and preprocessed by CPU tasks (`load_image` + the encoder's own
preprocess, so vectors match `herbaria index` without Ray), encoded by an actor pool (one model
per actor; GPU actors when `num_gpus` > 0), and written as shards: `ids-KEY.npy` + `vectors-KEY.npy`
per block under COLLECTION/index-shards/FINGERPRINT/. The driver then merges every shard into the
collection's index through `SpecimenIndex.add/save`, under the collection lock that
`build_index` holds. Shards are the resume record: ids already in a shard are not encoded again,
so a killed run (or a lost index) costs only the merge. Every worker must see the collection's
folder at the same path (a shared file system on a multi-node cluster).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np

from retrieval.collections import Collection
from retrieval.errors import BadInput
from retrieval.vectors.encoder import ClipEncoder, create_encoder
from retrieval.vectors.index import SpecimenIndex

SHARDS_DIR = "index-shards"


def shard_dir(col: Collection, encoder: ClipEncoder) -> Path:
    """One folder per encoder weights: shards of another model are never merged."""
    return col.path / SHARDS_DIR / f"{encoder.name.replace('/', '_').replace(':', '_')}-{encoder.fingerprint}"


def _committed_shards(folder: Path) -> list[str]:
    """Shard keys whose ids file exists: the ids file is written last, so it marks a complete shard."""
    return sorted(p.name[len("ids-"):-len(".npy")] for p in folder.glob("ids-*.npy")) if folder.is_dir() else []


def _save_atomically(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_shard(folder: Path, ids: np.ndarray, vectors: np.ndarray) -> str:
    """Vectors first, then ids (the commit marker); the key is a hash of the ids, so a retried block rewrites itself."""
    key = hashlib.sha1(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomically(folder / f"vectors-{key}.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    _save_atomically(folder / f"ids-{key}.npy", np.ascontiguousarray(ids, dtype=np.int64))
    return key


def iter_shards(folder: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) shard by shard, so a merge never holds every vector at once."""
    for key in _committed_shards(folder):
        yield np.load(folder / f"ids-{key}.npy"), np.load(folder / f"vectors-{key}.npy", mmap_mode="r")


def shard_ids(folder: Path) -> np.ndarray:
    ids = [np.load(folder / f"ids-{key}.npy") for key in _committed_shards(folder)]
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)


def read_shards(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every committed shard; an id in two shards (a retried block) counts once."""
    pairs = list(iter_shards(folder))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    all_ids, all_vecs = np.concatenate([i for i, _ in pairs]), np.concatenate([v for _, v in pairs])
    _, first = np.unique(all_ids, return_index=True)
    return all_ids[np.sort(first)], all_vecs[np.sort(first)]


# ---------------------------------------------------------------------------------------- stages
def read_stage(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Bytes of each image file (b'' when unreadable: the decode stage names the problem)."""
    data = []
    for path in batch["path"]:
        try:
            data.append(Path(path).read_bytes())
        except OSError:
            data.append(b"")
    return {"specimen_id": batch["specimen_id"], "path": batch["path"], "data": np.array(data, dtype=object)}


def decode_stage(batch: dict[str, np.ndarray], *, preprocess: Any, reduce_to: int) -> dict[str, Any]:
    """PIL decoding (reduced-scale JPEG draft) and the encoder's own preprocess, as in the in-process path."""
    from retrieval.collections import load_image
    from retrieval.errors import ImageError

    pixels, ok, shape = [], [], None
    for data in batch["data"]:
        try:
            pixels.append(preprocess(load_image(bytes(data), reduce_to=reduce_to)).numpy())
            shape = pixels[-1].shape
            ok.append(True)
        except ImageError:
            pixels.append(None)
            ok.append(False)
    blank = np.zeros(shape or (0,), np.float32)
    stacked = np.stack([p if p is not None else blank for p in pixels]) if shape else np.zeros((len(ok), 0), np.float32)
    return {"specimen_id": batch["specimen_id"], "pixels": stacked, "ok": np.array(ok, dtype=bool)}


class EncodeActor:
    """One encoder per actor process (loaded once, reused for every batch)."""

    def __init__(self, name: str, device: str | None, precision: str) -> None:
        import torch

        self.encoder = create_encoder(name, device=device, precision=precision)
        self.torch = torch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        ok = np.asarray(batch["ok"], dtype=bool)
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_pixels(self.torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        return {"specimen_id": batch["specimen_id"], "vector": vectors, "ok": ok}


def write_stage(batch: dict[str, np.ndarray], *, folder: str) -> dict[str, Any]:
    ok = np.asarray(batch["ok"], dtype=bool)
    ids = np.asarray(batch["specimen_id"], dtype=np.int64)[ok]
    if len(ids):
        write_shard(Path(folder), ids, np.asarray(batch["vector"])[ok])
    return {"written": np.array([len(ids)]), "skipped": np.array([int((~ok).sum())])}


# ---------------------------------------------------------------------------------------- driver
def build_with_ray(col: Collection, *, model: str | None, preset: str, rebuild: bool, batch_size: int | None,
                   chunk_size: int, device: str | None, precision: str, ray_address: str | None,
                   default_encoder: str, folder: Path) -> dict[str, Any]:
    """Encode what neither the index nor a shard holds, on Ray; then merge all shards into the index.
    The caller holds the collection lock."""
    try:
        import ray
    except ImportError:
        raise BadInput("--engine ray needs Ray: pip install -e '.[ray]' (or pip install 'ray[data]')") from None
    from retrieval.vectors.indexing import open_for_indexing

    encoder, table, index = open_for_indexing(col, folder, model=model, preset=preset, rebuild=rebuild,
                                              device="cpu" if device is None else device, precision=precision,
                                              default_encoder=default_encoder)
    name = encoder.name
    shards = shard_dir(col, encoder)
    in_shards = shard_ids(shards)
    done = np.union1d(index.ids() if len(index) else np.zeros(0, np.int64), in_shards)
    todo = table[~table["specimen_id"].isin(done)]
    start, written, skipped = time.perf_counter(), 0, 0
    if len(todo):
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        try:
            written, skipped = _run_pipeline(ray, todo, col, encoder, name, shards, batch_size=batch_size,
                                             chunk_size=chunk_size, device=device, precision=precision)
        finally:
            if started_here:
                ray.shutdown()
    added = _merge(index, shards, set(table["specimen_id"].astype(np.int64)), folder)
    seconds = time.perf_counter() - start
    return {"encoder": name, "fingerprint": encoder.fingerprint, "factory": index.manifest["factory"], "engine": "ray",
            "added": added, "encoded": written, "skipped": skipped, "total": len(index),
            "resumed_from_shards": int(len(in_shards)), "seconds": round(seconds, 2),
            "images_per_second": round(written / seconds, 2) if written and seconds > 0 else None,
            "path": str(folder), "shards": str(shards)}


def _run_pipeline(ray: Any, todo: Any, col: Collection, encoder: ClipEncoder, name: str, shards: Path, *,
                  batch_size: int | None, chunk_size: int, device: str | None, precision: str) -> tuple[int, int]:
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device is None or str(device).startswith("cuda") else 0
    actors = max(1, gpus) if gpus else max(1, min(4, int(resources.get("CPU", 1)) // 2))
    batch = batch_size or (256 if gpus else 32)
    rows = [{"specimen_id": int(i), "path": str(col.path / p)} for i, p in zip(todo["specimen_id"], todo["image"].astype(str))]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // chunk_size)))
    ds = ds.map_batches(read_stage, batch_size=batch, batch_format="numpy")
    ds = ds.map_batches(decode_stage, batch_size=batch, batch_format="numpy",
                        fn_kwargs={"preprocess": encoder.preprocess, "reduce_to": 2 * encoder.image_size})
    ds = ds.map_batches(EncodeActor, batch_size=batch, batch_format="numpy", concurrency=actors,
                        num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
                        fn_constructor_kwargs={"name": name, "device": "cuda" if gpus else "cpu", "precision": precision})
    ds = ds.map_batches(write_stage, batch_size=chunk_size, batch_format="numpy", fn_kwargs={"folder": str(shards)})
    counts = ds.take_all()
    return sum(int(r["written"]) for r in counts), sum(int(r["skipped"]) for r in counts)


def _merge(index: SpecimenIndex, shards: Path, wanted: set[int], folder: Path) -> int:
    """Shard vectors of specimens still in the collection and not yet indexed go in, shard by shard
    (an untrained index first trains on all of them, as in process); one save at the end."""
    seen = set(index.ids().tolist()) if len(index) else set()
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    added = 0
    for ids, vectors in iter_shards(shards):
        keep = np.array([int(i) in wanted and int(i) not in seen for i in ids], dtype=bool)
        seen.update(int(i) for i in ids[keep])
        if not keep.any():
            continue
        added += int(keep.sum())
        if index.is_trained:
            index.add(ids[keep], np.asarray(vectors[keep]))
        else:
            pending.append((ids[keep], np.asarray(vectors[keep])))
    if pending:
        index.add(np.concatenate([i for i, _ in pending]), np.concatenate([v for _, v in pending]))
    index.save(folder)
    return added
