"""Full-precision vectors on disk beside a compressed index, and cheap file checksums.

Why: a compressed index (IVF-PQ) keeps a few dozen bytes a specimen in RAM, but its codes
are approximate. The float32 vectors stay on disk, memory-mapped, so search re-ranks its
candidates exactly and "more like this" returns the vector that was indexed.

The file is raw float32 rows (no header: rows are only ever appended, and the manifest says
how many rows a version owns). A new version of the index folder hard-links the previous
version's file and appends the new rows, so a chunk costs its own rows, not the whole file.
Rows past the committed count (an append that a kill interrupted) are never read and are
cut off by the next save; a rebuilt index starts a new file (another `lineage`).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import faiss
import numpy as np

VECTORS_FILE = "vectors.f32"
_SAMPLE_BLOCKS, _BLOCK = 16, 1 << 12


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sampled_digest(path: Path, size: int | None = None) -> str:
    """sha256 of the length, the first and last 64 KiB and 16 spread 4 KiB blocks of the first `size` bytes.

    Catches truncation, a replaced file and most damage for a few reads, where a full hash of
    gigabytes at every start would cost seconds; `verify=True` on load still does the full hash."""
    size = path.stat().st_size if size is None else size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        spots = [0, max(0, size - (1 << 16))] + [size * i // (_SAMPLE_BLOCKS + 1) for i in range(1, _SAMPLE_BLOCKS + 1)]
        for at in spots:
            f.seek(at)
            h.update(f.read(min(1 << 16 if at in spots[:2] else _BLOCK, max(0, size - at))))
    return h.hexdigest()


def _map(path: Path, rows: int, dim: int) -> np.memmap:
    """Rows are read a few at a time (re-rank, more like this): no read-ahead of the neighbouring pages."""
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))
    if hasattr(mapped, "_mmap") and hasattr(mmap, "MADV_RANDOM"):
        mapped._mmap.madvise(mmap.MADV_RANDOM)
    return mapped


class VectorStore:
    """Committed rows memory-mapped from one version's file, plus rows added since (in RAM until saved)."""

    def __init__(self, dim: int, *, lineage: str | None = None, path: Path | None = None, rows: int = 0) -> None:
        self.dim, self.lineage = dim, lineage or uuid.uuid4().hex
        self.path, self.committed = path, rows
        self._disk = _map(path, rows, dim) if path and rows else None
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def __len__(self) -> int:
        return self.committed + self._pending_rows

    def append(self, vectors: np.ndarray) -> None:
        self._pending.append(np.ascontiguousarray(vectors, dtype=np.float32))
        self._pending_rows += len(vectors)

    def scores(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Dot products of the given rows with `query`, in the order asked. Why not `rows(...) @ query`: FAISS's
        `fvec_inner_products_by_idx` reads each committed row in place from the map, in file order, and computes its
        product there, with no 2 KB copy a candidate (5M, warm, populated: a 2,000-row re-rank 0.39-0.43 ms against
        0.95-1.34 ms for gathering the rows and multiplying; BENCHMARKS.md, sixth pass)."""
        rows = np.asarray(rows, dtype=np.int64)
        disk = self._disk  # one map, bounded by its own length: a save may reopen the store meanwhile
        if not len(rows) or disk is None or rows.min() < 0 or rows.max() >= len(disk):
            return self.rows(rows) @ query
        query = np.ascontiguousarray(query, dtype=np.float32).ravel()
        if query.shape != (self.dim,):
            raise ValueError(f"a query of {query.size} values against vectors of dimension {self.dim}")
        order = np.argsort(rows, kind="stable")
        in_file_order = np.ascontiguousarray(rows[order])
        products = np.empty(len(rows), dtype=np.float32)
        mapped = disk.view(np.ndarray)  # referenced until the call returns, so the map outlives the pointer FAISS reads
        # one float of every row first: independent loads, so the rows' page-table walks and first cache lines overlap
        # instead of coming one row at a time (5M: a 2,000-row re-rank 0.66 -> 0.47 ms, BENCHMARKS.md sixth pass)
        mapped[in_file_order, 0].sum()
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(products), faiss.swig_ptr(query), faiss.swig_ptr(mapped),
                                         faiss.swig_ptr(in_file_order), self.dim, 1, len(rows))
        out = np.empty(len(rows), dtype=np.float32)
        out[order] = products
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of the given row numbers (sorted reads from the map, returned in the order asked)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        on_disk = rows < self.committed
        if on_disk.any():
            order = np.argsort(rows[on_disk], kind="stable")
            picked = np.asarray(self._disk[rows[on_disk][order]])
            out[np.flatnonzero(on_disk)[order]] = picked
        if (~on_disk).any():
            pending = np.concatenate(self._pending) if len(self._pending) != 1 else self._pending[0]
            self._pending = [pending]
            out[~on_disk] = pending[rows[~on_disk] - self.committed]
        return out

    def populate(self) -> bool:
        """Map every committed row into this process's page tables now (MADV_POPULATE_READ, Linux 5.14+; reads what
        the page cache lacks). A re-rank then gathers rows without a page fault each: 1,000 rows of a 10 GB file
        0.65 ms instead of 3-5 ms with the file already cached. False where the platform cannot."""
        advice = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)
        if self._disk is None or advice is None or not hasattr(self._disk, "_mmap"):
            return False
        try:
            self._disk._mmap.madvise(advice)
        except (OSError, ValueError):
            return False
        return True

    def manifest(self) -> dict[str, Any]:
        return {"file": VECTORS_FILE, "rows": len(self), "dim": self.dim, "lineage": self.lineage}

    def write(self, version: Path, previous: dict[str, Any] | None, previous_dir: Path | None) -> dict[str, Any]:
        """Write this store's rows as `version/VECTORS_FILE`, linking the previous version's file when it is ours."""
        target = version / VECTORS_FILE
        row_bytes = 4 * self.dim
        reuse = (previous is not None and previous_dir is not None and previous.get("lineage") == self.lineage
                 and int(previous.get("rows", -1)) == self.committed
                 and (previous_dir / VECTORS_FILE).is_file()
                 and (previous_dir / VECTORS_FILE).stat().st_size >= self.committed * row_bytes)
        if reuse:
            os.link(previous_dir / VECTORS_FILE, target)
            with open(target, "r+b") as f:
                f.truncate(self.committed * row_bytes)  # rows a killed append left behind
                f.seek(0, os.SEEK_END)
                for block in self._pending:
                    f.write(block.tobytes())
        else:
            with open(target, "wb") as f:
                for lo in range(0, self.committed, 65536):
                    f.write(np.asarray(self._disk[lo:lo + 65536]).tobytes())
                for block in self._pending:
                    f.write(block.tobytes())
        rows = len(self)
        return {**self.manifest(), "rows": rows, "sampled": sampled_digest(target, rows * row_bytes)}

    def reopen(self, path: Path) -> None:
        """After a commit: map the new version's file, drop the rows held in RAM."""
        rows = len(self)
        self.path, self.committed, self._pending, self._pending_rows = path, rows, [], 0
        self._disk = _map(path, rows, self.dim) if rows else None

    @classmethod
    def open(cls, folder: Path, info: dict[str, Any]) -> VectorStore:
        """The vectors a manifest names, checked by size and sampled digest (the file is shared by versions, and
        grows, so a full hash would not be of one version's rows)."""
        path = folder / info["file"]
        rows, dim = int(info["rows"]), int(info["dim"])
        size = rows * 4 * dim
        if not path.is_file() or path.stat().st_size < size or sampled_digest(path, size) != info.get("sampled"):
            raise ValueError("vectors file missing or damaged")
        return cls(dim, lineage=info["lineage"], path=path, rows=rows)
