"""FAISS specimen index with a manifest that ties it to the encoder that built it.

Vectors from two different encoders are not comparable, and nothing in a FAISS
file says which model made it: the manifest (encoder, weights fingerprint,
dimension, factory string, count, checksum) lets us refuse a mismatched model
instead of returning confident nonsense.

The index file and its manifest are committed together as one version of the folder
(retrieval/versioned.py: index/v0007/ with both files, made current by one atomic switch
of the symlink index/current; index/manifest.json and index/specimens.faiss link through
it). A crash at any point leaves `current` on a complete pair; the single-pair layout of
earlier versions loads as it is and is migrated by the next save.

Large collections use a compressed preset (`ivfpq`): PQ codes in RAM, the float32 vectors
on disk beside them (retrieval/vectors/store.py), candidates over-fetched and re-ranked
exactly. Every preset searches its inner index by row (FAISS's internal id, the row of the
id map) so a filter is one bitmap over rows; an IVF index then probes, nearest first, only the
lists that hold allowed specimens until they hold enough (a common filter no longer scans every
list); when few specimens pass, the allowed ones are scored exactly instead; when most pass, the
unfiltered search is widened and its allowed candidates kept. A filtered search never returns fewer
than k when k exist; a filter's prepared allowed set is kept for follow-ups (allowed.py).
`open_shared` opens each committed version once per process, memory-mapped where FAISS can.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.collections import RowIds
from retrieval.errors import BadInput, HerbariaError, IndexMismatch
from retrieval.registry import preset
from retrieval.vectors.allowed import AllowedSet, RecentAllowed, sorted_unique
from retrieval.vectors.probing import LAZY_COUNT_RATIO, lists_to_probe
from retrieval.vectors.store import VECTORS_FILE, VectorStore, sampled_digest, sha256_file
from retrieval.versioned import commit_version, committed, read_committed, version_token

INDEX_FILE = "specimens.faiss"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of RAM for the vector index
DEFAULT_LATENCY_MS = 10.0
SCAN_BYTES_PER_MS = 4e6  # a brute-force scan on one busy core, order of magnitude
RERANK_OVERHEAD = 16  # RAM bytes a specimen beyond its PQ code: its row in the list and its id in the id map
# A filter passing at most this many specimens is scored exactly: gathering a row from the memmap costs the same at
# any size, so no share of n (was 1%: 50k rows at 5M). Measured side by side (warm page cache, load ~4): 1M, 4k rows
# exact 3-8 ms, list probe 2-4 ms; 5M, 5k rows exact 12 ms, probe 8-17; 12k exact 27-31, probe 12-14; 50k exact
# 88-111, probe 10-13; the probe's recall@10 0.975-1.0.
EXACT_FILTER_ROWS = 4096
RERANK_PER, RERANK_MAX = 5000, 4096  # bench/bench_scale.py at 1M and 5M
FILTER_SCAN = 2.0  # a filtered IVF search reads at most this many times its budget's entries (_filtered_ivf)
FILTER_FETCH = 2.0  # a filtered search re-ranks this many times the unfiltered re-rank depth
BROAD_SHARE = 0.5  # a filter passing at least this share of the specimens widens the unfiltered search (_broad)
# open_shared page-tables an on-disk preset's vectors in the background (populate_vectors) when
# HERBARIA_POPULATE_VECTORS=1: re-ranks at 5M then cost about 1 ms instead of 3-5 ms of page faults, but the whole
# vectors file is read into the page cache and counted in the process's RSS (2 GB a million), so it is opt-in.
POPULATE_ENV = "HERBARIA_POPULATE_VECTORS"
TRAIN_PER_LIST = 256  # training sample: at most this many points per inverted list


def populate_shared() -> bool:
    """Whether HERBARIA_POPULATE_VECTORS asks open_shared to page-table on-disk vectors."""
    return os.environ.get(POPULATE_ENV, "").strip().lower() in ("1", "true", "yes")


def choose_index(n: int, dim: int, *, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
                 latency_target_ms: float = DEFAULT_LATENCY_MS) -> tuple[str, str]:
    """(preset, factory) for `n` vectors of `dim`, autofaiss-style: the most exact index that fits.

    Exact below the `auto` preset's floor, or while a full scan fits the budget and the latency target;
    IVF over float32 while the vectors fit in RAM; else IVF-PQ with the largest code that fits (the
    float32 vectors stay on disk for the exact re-rank)."""
    if n < 0 or dim < 1:
        raise BadInput(f"cannot size an index for {n} vectors of dimension {dim}")
    flat_bytes = n * (4 * dim + 16)
    scan_ms = n * 4 * dim / SCAN_BYTES_PER_MS
    if n < preset("indexes", "auto")["exact_below"] or (flat_bytes <= memory_budget_bytes and scan_ms <= latency_target_ms):
        return "exact", factory_for("exact", n, dim)[0]
    if flat_bytes <= memory_budget_bytes:
        return "ivf", factory_for("ivf", n, dim)[0]
    return "ivfpq", factory_for("ivfpq", n, dim, code_bytes=_pq_bytes(n, dim, memory_budget_bytes))[0]


def _pq_bytes(n: int, dim: int, budget: int) -> int:
    """The largest PQ code (bytes, dividing `dim`, at most 64) whose codes fit the budget; the smallest if none does."""
    sizes = [m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0]
    return next((m for m in sizes if n * (m + RERANK_OVERHEAD) <= budget), sizes[-1])


def factory_for(preset_name: str, n_expected: int, dim: int = 512, *,
                code_bytes: int | None = None) -> tuple[str, dict[str, Any]]:
    """The FAISS factory string for an index preset, sized for the collection."""
    spec = preset("indexes", preset_name)
    if preset_name == "auto":
        return factory_for(choose_index(n_expected, dim)[0], n_expected, dim)
    factory = spec["factory"]
    if "{nlist}" in factory:
        per_sqrt = spec.get("lists_per_sqrt", 4)  # IVF-PQ: fewer, longer lists (its codes are cheap to scan)
        nlist = max(1, min(int(per_sqrt * math.sqrt(max(n_expected, 1))), max(1, n_expected // spec.get("min_train", 39))))
        m = code_bytes or _pq_bytes(n_expected, dim, DEFAULT_MEMORY_BUDGET)
        nbits = 8 if n_expected >= 256 * 39 else 4  # 256 centroids a sub-quantizer need ~10k training points
        factory = factory.format(nlist=nlist, m=m, nbits=nbits, dim=dim)
    return factory, spec


def training_rows(index: SpecimenIndex) -> int:
    """How many vectors to train an index on: enough for k-means (40 a list), at most TRAIN_PER_LIST a list,
    and no more than 50,000 where 40 a list is fewer (the build holds them in RAM at once)."""
    ivf = _ivf(index.index)
    if ivf is None:
        return 1
    return min(TRAIN_PER_LIST * ivf.nlist, max(40 * ivf.nlist, 50_000))


def _ivf(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


class SpecimenIndex:
    """Normalised image vectors keyed by specimen_id; inner product = cosine similarity."""

    def __init__(self, index: faiss.Index, manifest: dict[str, Any], *, store: VectorStore | None = None,
                 read_only: bool = False) -> None:
        self.index, self.manifest, self.store, self.read_only = index, manifest, store, read_only
        self._outer = faiss.downcast_index(index)
        self._inner = faiss.downcast_index(self._outer.index)
        self._lookup: tuple[np.ndarray, np.ndarray | None] | None = None
        self._lists: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # list of each row, centroids, sizes
        self._recent = RecentAllowed()  # the last filters' prepared allowed sets
        self._lock = threading.Lock()

    @classmethod
    def create(cls, encoder: dict[str, Any], *, preset_name: str = "auto", n_expected: int = 0) -> SpecimenIndex:
        dim = int(encoder["dim"])
        factory, spec = factory_for(preset_name, n_expected, dim)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        manifest = {
            "format": FORMAT_VERSION, "encoder": encoder["name"], "model": encoder.get("model"),
            "pretrained": encoder.get("pretrained"), "fingerprint": encoder["fingerprint"], "dim": dim,
            "normalized": True, "metric": "inner_product", "factory": factory, "preset": preset_name,
            "nprobe": spec.get("nprobe"), "filter_nprobe": spec.get("filter_nprobe"), "efSearch": spec.get("efSearch"),
            "rerank": spec.get("rerank"),
            "count": 0, "checksum": None, "created": time.time(),
        }
        return cls(index, manifest, store=VectorStore(dim) if spec.get("vectors_on_disk") else None)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def ids(self) -> np.ndarray:
        """Specimen ids by row (row = FAISS's internal id)."""
        return self._id_map().astype(np.int64) if len(self) else np.zeros(0, np.int64)

    def _id_map(self) -> np.ndarray:
        """FAISS's id map as it is (a view, no copy): the specimen id of each row. Not for an empty index."""
        return faiss.rev_swig_ptr(self._outer.id_map.data(), len(self))

    def train(self, vectors: np.ndarray) -> None:
        """Train on at most TRAIN_PER_LIST points per inverted list (k-means needs no more)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ivf = _ivf(self.index)
        cap = TRAIN_PER_LIST * ivf.nlist if ivf is not None else len(vectors)
        if len(vectors) > cap:
            vectors = vectors[np.sort(np.random.default_rng(0).choice(len(vectors), cap, replace=False))]
        if ivf is not None:
            ivf.cp.niter = min(ivf.cp.niter, 10)  # coarse lists only route candidates; more k-means rounds buy little
            ivf = faiss.downcast_index(ivf)
            if isinstance(ivf, faiss.IndexIVFPQ):
                ivf.do_polysemous_training = False  # the factory's default; 20x the training time, unused here
        self.index.train(vectors)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.read_only:
            raise HerbariaError("this index was opened read-only (shared, memory-mapped); load it with "
                                "SpecimenIndex.load to add to it")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.manifest["dim"]:
            raise IndexMismatch(f"vectors of dimension {vectors.shape[-1]} cannot go into an index of dimension {self.manifest['dim']}")
        if not self.is_trained:
            self.train(vectors)
        with self._lock:
            self._ensure_direct_map()
            self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
            if self.store is not None:
                self.store.append(vectors)
            self._lookup = self._lists = None
            self._recent.clear()

    def _ensure_direct_map(self) -> None:
        """IVF over float32 answers `reconstruct` (more like this) only with a direct map from row to list entry."""
        ivf = _ivf(self._inner)
        if self.store is None and ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()

    def _keys(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Sorted ids and the rows in that order (None: ids already sorted by row), built once; a single key: the
        ids are one run starting there (AUTOINCREMENT), rows by arithmetic, no 8 B a specimen kept."""
        with self._lock:
            if self._lookup is None:
                ids = self.ids()
                order = None if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])) else np.argsort(ids, kind="stable")
                if order is None and len(ids) and ids[-1] - ids[0] == len(ids) - 1:
                    ids = ids[:1]
                self._lookup = (ids if order is None else ids[order], order)
            return self._lookup

    def _run_start(self) -> int | None:
        """The first id when the indexed ids are one run (rows by subtraction), else None."""
        keys, _ = self._keys()
        return int(keys[0]) if len(keys) == 1 and len(self) > 1 else None

    def rows_of(self, specimen_ids: np.ndarray) -> np.ndarray:
        """Rows of the given specimen ids (-1: not in the index)."""
        keys, order = self._keys()
        wanted = np.asarray(specimen_ids, dtype=np.int64)
        start = self._run_start()
        if start is not None:
            rows = wanted - start
            return np.where((rows >= 0) & (rows < len(self)), rows, -1)
        at = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
        found = (at < len(keys)) & (keys[at] == wanted) if len(keys) else np.zeros(len(wanted), bool)
        rows = at if order is None else order[at]
        return np.where(found, rows, -1)

    def _allowed_rows(self, allowed: np.ndarray) -> np.ndarray:
        """Sorted unique rows of the allowed ids that are indexed (a filter's ids come sorted: no sort then)."""
        return self._sorted_rows(sorted_unique(allowed))

    def _sorted_rows(self, wanted: np.ndarray | RowIds) -> np.ndarray:
        """`_allowed_rows` of ids already sorted and unique (an AllowedSet's `sorted_ids`, or a filter's RowIds)."""
        start = self._run_start()
        if isinstance(wanted, RowIds):
            if start is None:
                return self._sorted_rows(wanted.ids)
            # both number one run: the table's rows shifted by the difference of the first ids (none: the same rows)
            shift, rows = wanted.first - start, wanted.rows
            bounds = np.clip([-shift, len(self) - shift], 0, np.iinfo(rows.dtype).max).astype(rows.dtype)
            lo, hi = np.searchsorted(rows, bounds)  # in the rows' own type: no int64 copy of millions of rows
            return rows[lo:hi] if shift == 0 else rows[lo:hi].astype(np.int64) + shift
        if start is not None:  # one run of ids: the indexed ones are a slice, rows by subtraction
            lo, hi = np.searchsorted(wanted, [start, start + len(self)])
            return wanted[lo:hi] - start
        _, order = self._keys()
        rows = self.rows_of(wanted)
        rows = rows[rows >= 0]
        return rows if order is None else np.sort(rows)  # distinct ids sit in distinct rows

    def _row_lists(self, ivf: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The inverted list of each row (2 B a specimen below 32,768 lists), the coarse centroids and the lists'
        sizes, built once from the lists' ids: a filter then probes only lists that hold allowed specimens."""
        with self._lock:
            if self._lists is None:
                lists = ivf.invlists
                where = np.full(len(self), -1, np.int16 if ivf.nlist < 32768 else np.int32)
                for number in range(ivf.nlist):
                    size = lists.list_size(number)
                    if size:
                        where[faiss.rev_swig_ptr(lists.get_ids(number), size)] = number
                sizes = np.array([lists.list_size(number) for number in range(ivf.nlist)], dtype=np.int64)
                self._lists = (where, ivf.quantizer.reconstruct_n(0, ivf.nlist), sizes)
            return self._lists

    def _row_vectors(self, rows: np.ndarray) -> np.ndarray:
        if self.store is not None:
            return self.store.rows(rows)
        with self._lock:
            self._ensure_direct_map()
        return self._inner.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))

    def populate_vectors(self, *, background: bool = False) -> threading.Thread | bool:
        """Page-table the on-disk vectors for the exact re-rank (VectorStore.populate): at 5M the re-rank's 1,000 page
        faults cost more than the PQ scan. `background`: in a daemon thread (returned); False without a store, or
        where the committed vectors exceed the memory available (MemAvailable)."""
        if self.store is None or 4 * self.store.dim * self.store.committed > _available_memory():
            return False  # a file larger than the memory left would only evict what others need
        if not background:
            return self.store.populate()
        thread = threading.Thread(target=self.store.populate, name="populate-vectors", daemon=True)
        thread.start()
        return thread

    def vector(self, specimen_id: int) -> np.ndarray:
        """The stored vector of one specimen ("more like this one"): float32, as indexed."""
        row = int(self.rows_of(np.array([int(specimen_id)]))[0])
        if row < 0:
            raise BadInput(f"specimen {specimen_id} is not in the index")
        return self._row_vectors(np.array([row]))[0]

    def search(self, queries: np.ndarray, *, k: int = 10,
               allowed: np.ndarray | RowIds | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (specimen_id, score) per query; `allowed` (ids, or a filter's RowIds) restricts the search inside
        FAISS."""
        queries = np.atleast_2d(np.ascontiguousarray(queries, dtype=np.float32))
        if queries.shape[1] != self.manifest["dim"]:
            raise IndexMismatch(f"query of dimension {queries.shape[1]} against an index of dimension {self.manifest['dim']}")
        if k < 1:
            raise BadInput("k must be at least 1")
        if len(self) == 0 or (allowed is not None and len(allowed) == 0):
            return [[] for _ in queries]
        n = len(self)
        rows, plan = None, None
        # PQ ranks a filter's survivors less well when they lie far from the query: twice the candidates then.
        # More specimens crowd the PQ ranking (5M: recall@10 0.85 with 400 candidates, 0.95 with 1,000): at least
        # one candidate per RERANK_PER specimens, up to RERANK_MAX.
        depth = min(max(k * int(self.manifest.get("rerank") or 1), n // RERANK_PER), max(RERANK_MAX, k))
        if allowed is not None:
            plan = self._recent.get(allowed, lambda: AllowedSet(allowed, n, self._sorted_rows))
            if len(plan) >= BROAD_SHARE * n and isinstance(self._inner, faiss.IndexIVF):
                broad = self._broad(queries, plan, k, depth)
                if broad is not None:
                    return broad
            rows = plan.rows
            if len(rows) == 0:
                return [[] for _ in queries]
        n_allowed = n if rows is None else len(rows)
        flat = isinstance(self._inner, faiss.IndexFlat)
        if rows is not None and not flat and n_allowed <= EXACT_FILTER_ROWS:
            return self._translate([self._exact(q, rows, k) for q in queries])
        fetch = min(n, int(depth * (FILTER_FETCH if rows is not None else 1))) if self.store is not None else min(k, n)
        params, _keep = self._params(plan, n, n_allowed)  # selector and bitmap must outlive the search
        if plan is not None and isinstance(self._inner, faiss.IndexIVF):
            scores, labels = self._filtered_ivf(queries, plan, fetch, params)
        else:
            scores, labels = self._inner.search(queries, fetch, params=params)
        out = []
        for q, row_labels, row_scores in zip(queries, labels, scores):
            found = row_labels[row_labels >= 0]
            if len(found) < min(k, n_allowed):  # the probed lists held too few allowed specimens
                out.append(self._exact(q, np.arange(n) if rows is None else rows, k))
            elif self.store is not None:
                out.append(self._exact(q, found, k))
            else:
                out.append([(int(r), float(s)) for r, s in zip(row_labels, row_scores) if r >= 0])
        return self._translate(out)

    def _broad(self, queries: np.ndarray, plan: AllowedSet, k: int, depth: int) -> list[list[tuple[int, float]]] | None:
        """A filter passing most specimens: the unfiltered search widened by 1/share (lists and candidates), its
        candidates kept when allowed (a binary search each in the sorted ids), then the usual re-rank. At 5M a 95%
        filter's bitmap and per-list counts alone cost more than the whole search. None when a query keeps fewer
        than k candidates (the caller then takes the filtered route)."""
        ivf = self._inner
        share = len(plan) / len(self)
        nprobe = min(ivf.nlist, math.ceil(int(self.manifest.get("nprobe") or 1) / share))
        fetch = min(len(self), math.ceil((depth if self.store is not None else 4 * k) / share))
        scores, labels = ivf.search(queries, fetch, params=faiss.SearchParametersIVF(nprobe=nprobe))
        ids = self._id_map()
        out = []
        for q, row_labels, row_scores in zip(queries, labels, scores):
            found = row_labels >= 0
            keep = np.flatnonzero(found)[plan.holds(ids[row_labels[found]])]
            if len(keep) < k:
                return None
            if self.store is not None:  # the best allowed by PQ score, as many as a filtered search re-ranks
                out.append(self._exact(q, row_labels[keep[:int(depth * FILTER_FETCH)]], k))
            else:
                out.append([(int(row_labels[i]), float(row_scores[i])) for i in keep[:k]])
        return self._translate(out)

    def _filter_nprobe(self) -> int:
        """Lists' worth of entries a filtered IVF search budgets: `filter_nprobe` where the manifest has one (the
        `ivfpq` preset: its unfiltered nprobe is lower, since PQ's ranking, not the lists probed, limits its recall,
        while a filter's survivors are spread thinner), else `nprobe` (indexes saved before)."""
        return int(self.manifest.get("filter_nprobe") or self.manifest.get("nprobe") or 1)

    def _filtered_ivf(self, queries: np.ndarray, plan: AllowedSet, fetch: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Probe, nearest first, only the lists that hold allowed specimens, until they hold twice as many allowed
        ones as the filter budget (`_filter_nprobe` lists) holds entries, or FILTER_SCAN times that many have been read.

        A bitmap over every list (nprobe from the selectivity alone) pays a membership test for every specimen
        of every probed list: a common filter (5%) scanned all lists. A filter that follows the vectors (a
        family) sits in a few lists, all probed; one that does not (a year range) spreads over every list,
        where the nearest lists hold its nearest specimens. Counts (probing.py): one bincount of the filter's rows,
        or, for a filter of many rows, a bitmap test of the rows of the nearest lists alone."""
        ivf = self._inner
        where, centroids, sizes = self._row_lists(ivf)
        per_search = self._filter_nprobe() * len(self) / ivf.nlist  # entries a filtered search budgets
        # a filter of more rows than the entries a query walks, times the ratio, counts only the lists it walks
        near_only = len(plan.rows) > LAZY_COUNT_RATIO * FILTER_SCAN * per_search
        lists = ivf.invlists

        def rows_of_list(number: int) -> np.ndarray:
            return faiss.rev_swig_ptr(lists.get_ids(number), int(sizes[number]))

        coarse = queries @ centroids.T  # all centroids at once
        scores = np.full((len(queries), fetch), -np.inf, np.float32)
        labels = np.full((len(queries), fetch), -1, np.int64)
        for i, q in enumerate(queries):
            probe = None
            if near_only and plan.known_counts() is None:  # None: given up, counting every list costs less
                probe = lists_to_probe(coarse[i], sizes, per_search, fetch, FILTER_SCAN,
                                       count_lists=lambda chosen: plan.count_lists(chosen, rows_of_list, ivf.nlist),
                                       give_up=len(plan.rows) / LAZY_COUNT_RATIO)
            if probe is None:  # every list counted once, kept by the plan
                probe = lists_to_probe(coarse[i], sizes, per_search, fetch, FILTER_SCAN,
                                       counts=plan.list_counts(where, ivf.nlist))
            keys = np.ascontiguousarray(probe[None], dtype=np.int64)
            dis = np.ascontiguousarray(coarse[i, probe][None], dtype=np.float32)
            params.nprobe = keys.shape[1]
            ivf.search_preassigned_c(1, faiss.swig_ptr(q), fetch, faiss.swig_ptr(keys), faiss.swig_ptr(dis),
                                     faiss.swig_ptr(scores[i]), faiss.swig_ptr(labels[i]), False, params)
        return scores, labels

    def _exact(self, query: np.ndarray, rows: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Exact top-k among `rows` (the re-rank of candidates, or a selective filter's allowed set)."""
        score = self.store.scores if self.store is not None else (lambda part, q: self._row_vectors(part) @ q)
        scores = np.concatenate([score(rows[lo:lo + 65536], query) for lo in range(0, len(rows), 65536)])
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(rows[i]), float(scores[i])) for i in top]

    def _translate(self, hits: list[list[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
        ids = self._id_map()
        return [[(int(ids[r]), s) for r, s in row] for row in hits]

    def _params(self, plan: AllowedSet | None, n: int, n_allowed: int) -> tuple[Any, Any]:
        """Search parameters (the filter's bitmap selector, nprobe or efSearch) and what must outlive the search."""
        keep: list[Any] = []
        extra: dict[str, Any] = {}
        if plan is not None:
            bits = plan.bits()
            sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            keep += [bits, sel]
            extra["sel"] = sel
        ivf = _ivf(self._inner)
        if ivf is not None:
            nprobe = int(self.manifest.get("nprobe") or 1)
            # A filter on an IVF wrapped in another index (no preset makes one): scan as many allowed entries as the
            # filter budget's lists hold, twice over; others cost a bitmap test. A bare IVF's filtered search sets
            # its own nprobe per query (_filtered_ivf).
            if plan is not None:
                nprobe = min(ivf.nlist, math.ceil(2 * self._filter_nprobe() * n / n_allowed))
            params: Any = faiss.SearchParametersIVF(nprobe=nprobe, **extra)
        elif isinstance(self._inner, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=int(self.manifest.get("efSearch") or 16), **extra)
        else:
            params = faiss.SearchParameters(**extra) if extra else None
        if params is not None and isinstance(self._inner, faiss.IndexPreTransform):
            keep.append(params)
            params = faiss.SearchParametersPreTransform(index_params=params)
        keep.append(params)
        return params, keep

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Commit index, manifest (and the vectors file of an on-disk preset) as one new version of `folder`."""
        if self.read_only:
            raise HerbariaError("a shared read-only index cannot be saved; load it with SpecimenIndex.load")
        folder = Path(folder)
        written: dict[str, Any] = {}
        before = committed(folder)
        try:
            previous = json.loads((before / MANIFEST_FILE).read_text()).get("vectors")
        except (OSError, ValueError):
            previous = None

        def write(version: Path, number: int) -> None:
            faiss.write_index(self.index, str(version / INDEX_FILE))
            path = version / INDEX_FILE
            written.update(self.manifest, count=len(self), checksum=sha256_file(path), size=path.stat().st_size,
                           sampled=sampled_digest(path), updated=time.time(), version=number)
            if self.store is not None:
                written["vectors"] = self.store.write(version, previous, before)
            (version / MANIFEST_FILE).write_text(json.dumps(written, indent=2), encoding="utf-8")

        files = (INDEX_FILE, MANIFEST_FILE) + ((VECTORS_FILE,) if self.store is not None else ())
        number = commit_version(folder, files, write)
        self.manifest = written
        if self.store is not None:
            self.store.reopen(folder / f"v{number:04d}" / VECTORS_FILE)

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
    def load(cls, folder: str | Path, *, encoder: dict[str, Any] | None = None, mmap: bool = False,
             verify: bool = False) -> SpecimenIndex:
        """Load and check; with `encoder`, refuse an index built by another model.

        The check is the size and a sampled digest (`verify`: a full sha256); `mmap` maps an IVF index's lists
        instead of reading them (opened read-only: for serving, not for adding)."""
        return read_committed(folder, lambda where: cls._load_pair(folder, where, encoder, mmap, verify),
                              what="the image index", retry_on=(OSError, RuntimeError, HerbariaError))

    @classmethod
    def _load_pair(cls, folder: str | Path, where: Path, encoder: dict[str, Any] | None, mmap: bool,
                   verify: bool) -> SpecimenIndex:
        if not (where / MANIFEST_FILE).exists():
            raise BadInput(f"no image index in {Path(folder).parent.name or folder}; run `herbaria index` first")
        manifest = json.loads((where / MANIFEST_FILE).read_text())
        if encoder is not None:
            check_compatible(manifest, encoder)
        path = where / INDEX_FILE
        damaged = HerbariaError("the image index file is missing or damaged (checksum mismatch); "
                                "rebuild it with `herbaria index --rebuild`")
        if not path.exists():
            raise damaged
        cheap = (not verify and manifest.get("sampled") and path.stat().st_size == manifest.get("size")
                 and sampled_digest(path) == manifest["sampled"])
        if not cheap and sha256_file(path) != manifest.get("checksum"):
            raise damaged
        mapped = mmap and "IVF" in str(manifest.get("factory", ""))
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped else 0)
        if mapped:
            _no_prefetch(index)
        store = None
        if manifest.get("vectors"):
            try:
                store = VectorStore.open(where, manifest["vectors"])
            except (OSError, ValueError, KeyError):
                raise damaged from None
        loaded = cls(index, manifest, store=store, read_only=mapped)
        if not mapped:
            loaded._ensure_direct_map()
        return loaded


def _no_prefetch(index: faiss.Index) -> None:
    """A memory-mapped IVF's lists are OnDiskInvertedLists, which start `prefetch_nthread` (32) threads at every
    search to read the probed lists ahead. The page cache holds them once warm; the threads cost about 1.5 ms a
    query at 5M on 2 cores (3.5 -> 1.9 ms for FAISS's part: BENCHMARKS.md, fourth pass), so none are started."""
    ivf = _ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if isinstance(lists, faiss.OnDiskInvertedLists):
        lists.prefetch_nthread = 0


def _available_memory() -> int:
    """Bytes of memory available without swapping (Linux MemAvailable); 0 where unknown (nothing is populated)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


_OPEN: dict[str, tuple[tuple[Any, ...], SpecimenIndex]] = {}
_OPEN_LOCK = threading.Lock()


def open_shared(folder: str | Path, *, encoder: dict[str, Any] | None = None) -> SpecimenIndex:
    """The committed index of `folder`, opened once per process (memory-mapped where FAISS can) and shared by
    every service that searches it (the chat's resources and the caption service); a newly committed version is
    opened at the next call. Read-only: a writer loads its own copy with `SpecimenIndex.load`. An on-disk preset's
    vectors are page-tabled in the background when HERBARIA_POPULATE_VECTORS=1 (`populate_vectors`)."""
    key = os.path.realpath(folder)
    manifest = SpecimenIndex.read_manifest(folder)
    if encoder is not None:
        check_compatible(manifest, encoder)
    token = (os.path.realpath(committed(folder)), manifest.get("checksum"), manifest.get("updated"))
    with _OPEN_LOCK:
        held = _OPEN.get(key)
        if held is not None and held[0] == token:
            return held[1]
    index = SpecimenIndex.load(folder, encoder=encoder, mmap=True)
    if populate_shared():
        index.populate_vectors(background=True)
    with _OPEN_LOCK:
        _OPEN[key] = ((os.path.realpath(committed(folder)), index.manifest.get("checksum"), index.manifest.get("updated")), index)
    return index


def index_version(folder: str | Path) -> tuple[Any, ...] | None:
    """A cheap token that changes whenever a new index is committed (None: no index)."""
    return version_token(folder, MANIFEST_FILE)


def check_compatible(manifest: dict[str, Any], encoder: dict[str, Any]) -> None:
    if manifest["encoder"] != encoder["name"] or manifest["fingerprint"] != encoder["fingerprint"] or manifest["dim"] != encoder["dim"]:
        raise IndexMismatch(
            f"this index was built with encoder {manifest['encoder']!r} (weights {manifest['fingerprint']}, dim {manifest['dim']}) "
            f"but {encoder['name']!r} (weights {encoder['fingerprint']}, dim {encoder['dim']}) was asked for; "
            f"search with --model {manifest['encoder']} or rebuild with `herbaria index --model {encoder['name']} --rebuild`"
        )
