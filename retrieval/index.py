"""FAISS specimen index with a manifest that ties it to the encoder that built it.

Vectors from two different encoders are not comparable, and nothing in a FAISS
file says which model made it: the manifest (encoder, weights fingerprint,
dimension, factory string, count, checksum) lets us refuse a mismatched model
instead of returning confident nonsense.

The index file and its manifest are committed together: each save writes a new
version folder (index/v0007/ with both files, fsynced), then switches the symlink
index/current to it with one atomic rename, then prunes older versions (the one
before stays for readers that resolved it a moment ago). A crash at any point
leaves `current` on a complete pair. index/manifest.json and index/specimens.faiss
are fixed symlinks through `current`, so the folder still reads like the single-pair
layout of earlier versions, which loads as it is and is migrated by the next save.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.errors import BadInput, HerbariaError, IndexMismatch
from retrieval.registry import preset

INDEX_FILE = "specimens.faiss"
MANIFEST_FILE = "manifest.json"
CURRENT = "current"
FORMAT_VERSION = 1
_VERSION = re.compile(r"^v(\d{4,})$")


def factory_for(preset_name: str, n_expected: int) -> tuple[str, dict[str, Any]]:
    """The FAISS factory string for an index preset, sized for the collection."""
    spec = preset("indexes", preset_name)
    if preset_name == "auto":
        return factory_for("exact" if n_expected < spec["exact_below"] else "ivf", n_expected)
    factory = spec["factory"]
    if "{nlist}" in factory:
        nlist = max(1, min(int(4 * math.sqrt(max(n_expected, 1))), max(1, n_expected // spec.get("min_train", 39))))
        factory = factory.format(nlist=nlist)
    return factory, spec


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class SpecimenIndex:
    """Normalised image vectors keyed by specimen_id; inner product = cosine similarity."""

    def __init__(self, index: faiss.Index, manifest: dict[str, Any]) -> None:
        self.index, self.manifest = index, manifest

    @classmethod
    def create(cls, encoder: dict[str, Any], *, preset_name: str = "auto", n_expected: int = 0) -> SpecimenIndex:
        factory, spec = factory_for(preset_name, n_expected)
        dim = int(encoder["dim"])
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        manifest = {
            "format": FORMAT_VERSION, "encoder": encoder["name"], "model": encoder.get("model"),
            "pretrained": encoder.get("pretrained"), "fingerprint": encoder["fingerprint"], "dim": dim,
            "normalized": True, "metric": "inner_product", "factory": factory, "preset": preset_name,
            "nprobe": spec.get("nprobe"), "efSearch": spec.get("efSearch"), "count": 0, "checksum": None, "created": time.time(),
        }
        return cls(index, manifest)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(faiss.downcast_index(self.index).id_map).astype(np.int64)

    def train(self, vectors: np.ndarray) -> None:
        self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.manifest["dim"]:
            raise IndexMismatch(f"vectors of dimension {vectors.shape[-1]} cannot go into an index of dimension {self.manifest['dim']}")
        if not self.is_trained:
            self.train(vectors)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def vector(self, specimen_id: int) -> np.ndarray:
        """The stored vector of one specimen ("more like this one")."""
        try:
            return self.index.reconstruct(int(specimen_id))
        except RuntimeError as err:
            raise BadInput(f"specimen {specimen_id} is not in the index") from err

    def search(self, queries: np.ndarray, *, k: int = 10, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (specimen_id, score) per query; `allowed` restricts the search inside FAISS."""
        queries = np.atleast_2d(np.ascontiguousarray(queries, dtype=np.float32))
        if queries.shape[1] != self.manifest["dim"]:
            raise IndexMismatch(f"query of dimension {queries.shape[1]} against an index of dimension {self.manifest['dim']}")
        if k < 1:
            raise BadInput("k must be at least 1")
        if len(self) == 0 or (allowed is not None and len(allowed) == 0):
            return [[] for _ in queries]
        params, _sel = self._params(allowed)  # the selector must outlive the search call
        scores, labels = self.index.search(queries, min(k, len(self)), params=params)
        return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0] for row_ids, row_scores in zip(labels, scores)]

    def _params(self, allowed: np.ndarray | None) -> tuple[faiss.SearchParameters | None, Any]:
        inner = faiss.downcast_index(faiss.downcast_index(self.index).index)
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64)) if allowed is not None else None
        extra = {"sel": sel} if sel is not None else {}
        if isinstance(inner, faiss.IndexIVF):
            return faiss.SearchParametersIVF(nprobe=int(self.manifest.get("nprobe") or 1), **extra), sel
        if isinstance(inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(efSearch=int(self.manifest.get("efSearch") or 16), **extra), sel
        return (faiss.SearchParameters(**extra) if sel is not None else None), sel

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Commit index and manifest as one new version of `folder` (see the module docstring)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        previous = _current_name(folder)
        number = 1 + max((int(m.group(1)) for m in map(_VERSION.match, os.listdir(folder)) if m), default=0)
        version = folder / f"v{number:04d}"
        version.mkdir()
        faiss.write_index(self.index, str(version / INDEX_FILE))
        _fsync(version / INDEX_FILE)
        manifest = {**self.manifest, "count": len(self), "checksum": _sha256(version / INDEX_FILE),
                    "updated": time.time(), "version": number}
        with open(version / MANIFEST_FILE, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(manifest, indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        _fsync(version)
        fixed = [name for name in (INDEX_FILE, MANIFEST_FILE) if not _links_through_current(folder / name)]
        for name in fixed:  # missing ones now (they resolve once `current` exists) ...
            if not os.path.lexists(folder / name):
                _symlink(f"{CURRENT}/{name}", folder / name)
        if (folder / CURRENT).is_dir() and not (folder / CURRENT).is_symlink():  # a copy that followed links
            os.replace(folder / CURRENT, folder / f".{CURRENT}-copy-{number:04d}")
        _symlink(version.name, folder / CURRENT)  # the commit
        _fsync(folder)
        self.manifest = manifest
        for name in fixed:  # ... the single-pair layout's files after the commit
            if not _links_through_current(folder / name):
                _symlink(f"{CURRENT}/{name}", folder / name)
        _prune(folder, keep={version.name, previous})

    @staticmethod
    def exists(folder: str | Path) -> bool:
        """Whether `folder` holds a committed index (either layout)."""
        return (committed(folder) / MANIFEST_FILE).is_file()

    @staticmethod
    def read_manifest(folder: str | Path) -> dict[str, Any]:
        path = committed(folder) / MANIFEST_FILE
        if not path.exists():
            raise BadInput(f"no image index in {Path(folder).parent.name or folder}; run `herbaria index` first")
        return json.loads(path.read_text())

    @classmethod
    def load(cls, folder: str | Path, *, encoder: dict[str, Any] | None = None) -> SpecimenIndex:
        """Load and verify; with `encoder`, refuse an index built by another model."""
        for _ in range(3):
            where = committed(folder)  # both files from one version, even while a writer switches
            try:
                return cls._load_pair(folder, where, encoder)
            except IndexMismatch:
                raise
            except (OSError, RuntimeError, HerbariaError):
                if committed(folder) == where:
                    raise  # not a version pruned under us: the index itself is missing or damaged
        raise HerbariaError("the image index kept changing while it was being read; try again")

    @classmethod
    def _load_pair(cls, folder: str | Path, where: Path, encoder: dict[str, Any] | None) -> SpecimenIndex:
        if not (where / MANIFEST_FILE).exists():
            raise BadInput(f"no image index in {Path(folder).parent.name or folder}; run `herbaria index` first")
        manifest = json.loads((where / MANIFEST_FILE).read_text())
        if encoder is not None:
            check_compatible(manifest, encoder)
        path = where / INDEX_FILE
        if not path.exists() or _sha256(path) != manifest.get("checksum"):
            raise HerbariaError("the image index file is missing or damaged (checksum mismatch); "
                                "rebuild it with `herbaria index --rebuild`")
        return cls(faiss.read_index(str(path)), manifest)


def committed(folder: str | Path) -> Path:
    """The folder holding the committed index pair: the version `current` names, else `folder` itself."""
    folder = Path(folder)
    pointer = folder / CURRENT
    if pointer.is_symlink():
        return folder / os.readlink(pointer)
    if pointer.is_dir():
        return pointer
    return folder


def index_version(folder: str | Path) -> tuple[Any, ...] | None:
    """A cheap token that changes whenever a new index is committed (None: no index)."""
    folder = Path(folder)
    try:
        if (folder / CURRENT).is_symlink():
            return (os.readlink(folder / CURRENT),)
        stat = (committed(folder) / MANIFEST_FILE).stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _current_name(folder: Path) -> str | None:
    return os.readlink(folder / CURRENT) if (folder / CURRENT).is_symlink() else None


def _links_through_current(path: Path) -> bool:
    return path.is_symlink() and os.readlink(path) == f"{CURRENT}/{path.name}"


def _symlink(target: str, path: Path) -> None:
    """Point `path` at `target`, replacing whatever is there in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(folder: Path, *, keep: set[str | None]) -> None:
    """Versions other than `keep`, unfinished ones and leftovers of interrupted saves."""
    for entry in os.scandir(folder):
        name = entry.name
        if name in keep or name in (CURRENT, INDEX_FILE, MANIFEST_FILE):
            continue
        if _VERSION.match(name) or name.startswith(f".{CURRENT}-copy-"):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif name.endswith(".tmp") and not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)


def check_compatible(manifest: dict[str, Any], encoder: dict[str, Any]) -> None:
    if manifest["encoder"] != encoder["name"] or manifest["fingerprint"] != encoder["fingerprint"] or manifest["dim"] != encoder["dim"]:
        raise IndexMismatch(
            f"this index was built with encoder {manifest['encoder']!r} (weights {manifest['fingerprint']}, dim {manifest['dim']}) "
            f"but {encoder['name']!r} (weights {encoder['fingerprint']}, dim {encoder['dim']}) was asked for; "
            f"search with --model {manifest['encoder']} or rebuild with `herbaria index --model {encoder['name']} --rebuild`"
        )
