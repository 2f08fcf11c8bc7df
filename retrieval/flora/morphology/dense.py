"""The dense signal: sentence-transformers embeddings of the clause chunks, cosine to the query.

Why: it finds paraphrases BM25 cannot ("saw-toothed" for serrate); the embeddings are
tied to the text model that made them (name and weights fingerprint), checked before the
first query is encoded. Embedding is what indexing and querying spend their time on, so
chunk embeddings are kept on disk by text hash (re-adding unchanged text costs nothing) and
query embeddings in memory.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import IndexMismatch

QUERY_CACHE_SIZE = 2048
BLOCK = 2048  # texts per encode call (the encoder sorts each by length: under 2% padding); the bar moves per block
SAVE_EVERY_S = 30.0  # an interrupted indexing run keeps what it embedded up to this long ago


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Chunk embeddings of one text model on disk, keyed by the SHA-1 of the chunk text.

    One folder per model fingerprint (keys.npy, vectors.npy), replaced whole on save, so a
    reader never sees half a file; it is a cache: losing it only costs time."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder, self.dim = folder, dim
        self._vectors: dict[bytes, np.ndarray] = {}
        self._added = False
        try:
            keys = np.load(folder / "keys.npy")
            vectors = np.load(folder / "vectors.npy")
            if vectors.ndim == 2 and vectors.shape[1] == dim and len(keys) == len(vectors):
                self._vectors = {bytes(k): v for k, v in zip(keys, vectors)}
        except (OSError, ValueError):
            pass

    @classmethod
    def for_encoder(cls, encoder: Any) -> EmbeddingCache:
        from retrieval.cache import cache_dir

        return cls(cache_dir() / "embeddings" / f"{encoder.name}-{encoder.fingerprint}", encoder.dim)

    def get(self, text: str) -> np.ndarray | None:
        return self._vectors.get(text_key(text))

    def put(self, texts: list[str], vectors: np.ndarray) -> None:
        for text, vector in zip(texts, vectors):
            self._vectors[text_key(text)] = vector
        self._added = self._added or bool(len(texts))

    def save(self) -> None:
        if not self._added:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._vectors), dtype="S20")
        vectors = np.stack(list(self._vectors.values())).astype(np.float32)
        tag = f".{os.getpid()}.{threading.get_ident()}.tmp.npy"
        for name, array in (("keys.npy", keys), ("vectors.npy", vectors)):
            np.save(self.folder / (name + tag), array)
        # keys last: a reader that pairs new vectors with old keys finds the lengths differ and ignores both
        os.replace(self.folder / ("vectors.npy" + tag), self.folder / "vectors.npy")
        os.replace(self.folder / ("keys.npy" + tag), self.folder / "keys.npy")
        self._added = False


def embed_chunks(texts: list[str], encoder: Any, *, known: dict[str, np.ndarray] | None = None,
                 batch_size: int | None = None,
                 progress: bool = True, chunk_taxon: np.ndarray | None = None,
                 cache: EmbeddingCache | None = None) -> np.ndarray:
    """(len(texts), dim) float32 embeddings; `known` maps a text to an embedding already
    computed with the same model, `cache` is the on-disk one (re-indexing skips both). New
    texts are encoded once each (a clause repeated across taxa too) in blocks of taxa (the
    encoder sorts each block by length), with a progress bar in taxa when `chunk_taxon` says
    whose each text is."""
    from tqdm.auto import tqdm

    known = dict(known or {})
    if cache is not None:
        for t in set(texts) - set(known):
            vector = cache.get(t)
            if vector is not None:
                known[t] = vector
    # new texts in taxon order: the bar then moves steadily
    todo = list(dict.fromkeys(t for t in texts if t not in known))
    done_after: list[int] = []
    if chunk_taxon is not None and len(texts):
        position = {t: k for k, t in enumerate(todo)}
        last: dict[int, int] = {}
        for t, taxon in zip(texts, chunk_taxon):
            last[int(taxon)] = max(last.get(int(taxon), -1), position.get(t, -1))
        done_after = sorted(last.values())  # a taxon is done once its last new text is encoded
    bar = tqdm(total=len(done_after) or len(todo), desc="embedding taxa" if done_after else "embedding chunks",
               unit=" taxa" if done_after else " chunks", disable=not progress or not texts)
    counted = int(np.searchsorted(done_after, -1, side="right")) if done_after else 0
    bar.update(counted)
    vectors: list[np.ndarray] = []
    saved = time.monotonic()
    for start in range(0, len(todo), BLOCK):
        block = todo[start:start + BLOCK]
        encoded = encoder.encode(block, batch_size=batch_size)
        vectors.append(encoded)
        if cache is not None:
            cache.put(block, encoded)
            if time.monotonic() - saved > SAVE_EVERY_S:
                cache.save()
                saved = time.monotonic()
        if done_after:
            now = int(np.searchsorted(done_after, start + len(block) - 1, side="right"))
            bar.update(now - counted)
            counted = now
        else:
            bar.update(len(block))
    bar.close()
    if cache is not None:
        cache.save()
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    lookup = {**known, **dict(zip(todo, np.concatenate(vectors) if vectors else []))}
    return np.stack([lookup[t] for t in texts]).astype(np.float32)


def best_per_taxon(values: np.ndarray, chunk_taxon: np.ndarray, n_taxa: int, empty: float = 0.0) -> np.ndarray:
    """Per taxon, the maximum of `values` (chunks, ...) over its chunks (`empty` for a taxon without
    any): one reduceat over runs when the chunks come in taxon order (as an index builds them), else ufunc.at."""
    out = np.full((n_taxa, *values.shape[1:]), empty, dtype=np.float32)
    if not len(chunk_taxon):
        return out
    taxon = np.asarray(chunk_taxon)
    if np.all(taxon[1:] >= taxon[:-1]):
        starts = np.flatnonzero(np.r_[True, taxon[1:] != taxon[:-1]])
        out[taxon[starts]] = np.maximum.reduceat(values, starts, axis=0)
    else:
        np.maximum.at(out, taxon, values)
    return out


_TORCH_SETTINGS = threading.RLock()


def _thread_setting(encoder: Any) -> Any:
    """The lock that guards torch's process-wide thread setting: the encoder's own (it sets and restores the
    setting around each encode), else one of this module's."""
    return getattr(encoder, "lock", None) or _TORCH_SETTINGS


def encode_query_texts(encoder: Any, texts: list[str]) -> np.ndarray:
    """A query and its parts: a text model of this package encodes them in one pass (`encode_queries`), any
    other encoder by its plain encode."""
    queries = getattr(encoder, "encode_queries", None)
    return queries(texts) if queries else encoder.encode(texts)


class DenseSignal:
    """Chunk embeddings of one text model; the query encoder is loaded on first use."""

    def __init__(self, embeddings: np.ndarray, chunk_taxon: np.ndarray, n_taxa: int, text_model: dict[str, Any],
                 encoder: Any = None) -> None:
        self.embeddings, self.chunk_taxon, self.n_taxa = embeddings, chunk_taxon, n_taxa
        self.text_model = text_model
        self._encoder = encoder
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._matrix: Any = None  # the embeddings as a torch tensor (shared memory), made on first query

    def encoder(self) -> Any:
        if self._encoder is None:
            from retrieval.flora.text_encoders import cached_text_encoder

            self._encoder = cached_text_encoder(self.text_model["name"])
            if self._encoder.fingerprint != self.text_model.get("fingerprint"):
                raise IndexMismatch(f"text model {self.text_model['name']!r} differs from the one the descriptions were "
                                    "embedded with; rebuild with `herbaria descriptions add`")
        return self._encoder

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Query texts embedded once each (a chat repeats its queries and their parts), new ones in one batch."""
        encoder = self.encoder()
        with self._lock:
            new = [t for t in dict.fromkeys(texts) if t not in self._queries]
        if new:
            vectors = encode_query_texts(encoder, new)
            with self._lock:
                for t, v in zip(new, vectors):
                    self._queries[t] = v
                while len(self._queries) > QUERY_CACHE_SIZE:
                    self._queries.popitem(last=False)
        with self._lock:
            found = {t: self._queries.get(t) for t in texts}
        if any(v is None for v in found.values()):  # evicted meanwhile by another thread: encode directly
            return encoder.encode(texts)
        return np.stack([found[t] for t in texts])

    def similarities(self, q: np.ndarray) -> np.ndarray:
        """(chunks, queries) cosines: one float32 matrix product on one thread. Why torch and one thread: on a
        shared 2-core machine BLAS's second thread waits for a descheduled sibling (2-3x slower at load 6), and
        OpenBLAS's product with a few columns is 2x slower than torch's on one thread."""
        import torch

        if self._matrix is None:
            self._matrix = torch.from_numpy(np.ascontiguousarray(self.embeddings, dtype=np.float32))
        with _thread_setting(self._encoder):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                # q's transpose as a view: torch multiplies by a column-major right side 3x faster than a row-major one
                return (self._matrix @ torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).T).numpy()
            finally:
                torch.set_num_threads(threads)

    def scores(self, query: str, parts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per taxon: best chunk for the whole query plus best chunk for each query part;
        and the chunk similarities (for evidence)."""
        texts = [query] + [p for p in parts if p and p != query]
        q = self.encode_queries(texts)
        sims = self.similarities(q)
        best = best_per_taxon(sims, self.chunk_taxon, self.n_taxa, empty=-1.0)
        best[best < -0.5] = 0.0
        score = best[:, 0] + (best[:, 1:].sum(axis=1) if best.shape[1] > 1 else 0.0)
        return score, sims[:, 0] if len(parts) <= 1 else sims.max(axis=1)
