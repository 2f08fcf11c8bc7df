"""Filtered IVF search that probes only the lists holding allowed specimens (issue 11): it never leaks, never returns
fewer than k when k exist, equals exact search when it covers the allowed set, and works on a memory-mapped open."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from conftest import clustered_vectors

from retrieval.vectors import SpecimenIndex, open_shared
from retrieval.vectors import index as index_module

ENC = {"name": "enc-f", "model": "m", "fingerprint": "beef", "dim": 16}


def _exact(vecs, ids, query, k, allowed):
    keep = np.isin(ids, allowed)
    scores = vecs[keep] @ query
    return [int(i) for i in ids[keep][np.argsort(-scores, kind="stable")[:k]]]


@pytest.fixture(scope="module")
def data():
    vecs = clustered_vectors(4000)
    ids = np.random.default_rng(3).permutation(4000).astype(np.int64) * 5 + 11  # sparse, shuffled ids
    return vecs, ids


@pytest.fixture(scope="module", params=["ivf", "ivfpq"])
def index(request, data):
    vecs, ids = data
    built = SpecimenIndex.create(ENC, preset_name=request.param, n_expected=len(ids))
    built.add(ids[:2500], vecs[:2500])
    built.add(ids[2500:], vecs[2500:])
    return built


@pytest.fixture
def through_lists(monkeypatch):
    """No filter is scored exactly up front: every one goes through the list probe."""
    monkeypatch.setattr(index_module, "EXACT_FILTER_ROWS", 0)
    return monkeypatch


def test_row_lists_name_the_list_that_holds_each_row(index, data):
    ivf = faiss.extract_index_ivf(index.index)
    where, centroids, sizes = index._row_lists(ivf)
    assert len(where) == len(index) and where.min() >= 0 and centroids.shape == (ivf.nlist, 16)
    np.testing.assert_array_equal(np.bincount(where, minlength=ivf.nlist), sizes)
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        rows = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)
        assert np.all(where[rows] == number)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3])
def test_covering_the_allowed_set_is_exact(index, data, through_lists, fraction):
    vecs, ids = data
    through_lists.setattr(index_module, "FILTER_SCAN", 10**9)  # every list holding an allowed one
    through_lists.setitem(index.manifest, "nprobe", 10**6)
    through_lists.setitem(index.manifest, "filter_nprobe", 10**6)
    allowed = np.sort(ids[np.random.default_rng(7).random(len(ids)) < fraction])
    for q in clustered_vectors(6, seed=9):
        hits = index.search(q, k=10, allowed=allowed)[0]
        assert [i for i, _ in hits] == _exact(vecs, ids, q, 10, allowed)


@pytest.mark.parametrize("seed", range(6))
def test_a_short_probe_never_leaks_nor_returns_fewer_than_k(index, data, through_lists, seed):
    """Probing as few lists as possible (no scan budget): still exactly the allowed ids, k of them."""
    vecs, ids = data
    through_lists.setattr(index_module, "FILTER_SCAN", 0)
    rng = np.random.default_rng(seed)
    allowed = ids[rng.random(len(ids)) < [0.003, 0.02, 0.1, 0.5, 0.9, 0.05][seed]]
    allowed = np.concatenate([allowed, allowed[:3], [7, 10**9]])  # unsorted, duplicates, ids not indexed
    k = int(rng.integers(1, 25))
    for q in clustered_vectors(4, seed=seed + 100):
        hits = index.search(q, k=k, allowed=allowed)[0]
        got = [i for i, _ in hits]
        assert set(got) <= set(allowed.tolist()) and len(got) == len(set(got)) == min(k, len(np.unique(allowed)) - 2)
        by_id = dict(zip(ids.tolist(), vecs))
        if index.store is not None:  # the on-disk preset re-ranks exactly
            assert all(score == pytest.approx(float(by_id[i] @ q), abs=1e-5) for i, score in hits)


def test_the_list_map_follows_added_specimens(data, through_lists):
    vecs, ids = data
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=4000)
    index.add(ids[:3000], vecs[:3000])
    assert index.search(vecs[0], k=3, allowed=ids[:300])[0]  # builds the row -> list map
    index.add(ids[3000:], vecs[3000:])
    allowed = ids[3000:3400]  # only specimens added after the map was built
    hits = index.search(vecs[3100], k=5, allowed=allowed)[0]
    assert hits[0][0] == int(ids[3100]) and {i for i, _ in hits} <= set(allowed.tolist())


def test_contiguous_ids_are_found_by_arithmetic_and_memory_mapped_open_filters(tmp_path, through_lists):
    vecs = clustered_vectors(3000, seed=4)
    ids = np.arange(1, 3001, dtype=np.int64)  # the collections' AUTOINCREMENT ids
    built = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=3000)
    built.add(ids, vecs)
    built.save(tmp_path)
    shared = open_shared(tmp_path, encoder=ENC)
    assert shared.read_only
    np.testing.assert_array_equal(shared.rows_of(np.array([0, 1, 3000, 3001, -5])), [-1, 0, 2999, -1, -1])
    allowed = np.arange(1, 3001, 17)
    for q in clustered_vectors(5, seed=8):
        hits = shared.search(q, k=10, allowed=allowed)[0]
        assert {i for i, _ in hits} <= set(allowed.tolist()) and len(hits) == 10


def test_rerank_depth_grows_with_the_collection_and_its_cap_keeps_k(data, monkeypatch):
    """One candidate per RERANK_PER specimens: with every specimen a candidate the on-disk preset is exact search,
    and a cap below k still returns k (never fewer than k when k exist)."""
    vecs, ids = data
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=len(ids))
    index.add(ids, vecs)
    monkeypatch.setitem(index.manifest, "nprobe", 10**6)
    monkeypatch.setitem(index.manifest, "rerank", 1)  # k candidates from the preset alone
    monkeypatch.setattr(index_module, "RERANK_PER", 1)
    monkeypatch.setattr(index_module, "RERANK_MAX", 10**6)
    allowed = np.sort(ids[::3])
    for q in clustered_vectors(5, seed=21):
        assert [i for i, _ in index.search(q, k=10)[0]] == _exact(vecs, ids, q, 10, ids)
        assert [i for i, _ in index.search(q, k=10, allowed=allowed)[0]] == _exact(vecs, ids, q, 10, allowed)
    monkeypatch.setattr(index_module, "RERANK_MAX", 0)
    for q in clustered_vectors(3, seed=22):
        assert len(index.search(q, k=7)[0]) == 7 and len(index.search(q, k=7, allowed=allowed)[0]) == 7


def test_filter_budget_follows_filter_nprobe_and_old_manifests_fall_back_to_nprobe(data, through_lists):
    """The ivfpq preset probes fewer lists unfiltered (nprobe) than a filter budgets (filter_nprobe); an index saved
    before filter_nprobe existed budgets its filters by nprobe, as it did."""
    vecs, ids = data
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=len(ids))
    index.add(ids, vecs)
    assert index.manifest["filter_nprobe"] > index.manifest["nprobe"]
    through_lists.setattr(index_module, "FILTER_SCAN", 10**9)
    through_lists.setitem(index.manifest, "nprobe", 1)
    through_lists.setitem(index.manifest, "filter_nprobe", 10**6)  # covers every list holding an allowed one
    assert index._filter_nprobe() == 10**6
    allowed = np.sort(ids[np.random.default_rng(12).random(len(ids)) < 0.2])
    for q in clustered_vectors(6, seed=13):
        assert [i for i, _ in index.search(q, k=10, allowed=allowed)[0]] == _exact(vecs, ids, q, 10, allowed)
    del index.manifest["filter_nprobe"]  # as saved by earlier versions
    assert index._filter_nprobe() == 1
    index.manifest["nprobe"] = 10**6
    for q in clustered_vectors(6, seed=14):
        assert [i for i, _ in index.search(q, k=10, allowed=allowed)[0]] == _exact(vecs, ids, q, 10, allowed)


@pytest.mark.parametrize("exact_scan", [False, True])
def test_one_run_of_ids_slices_the_allowed_ids_and_never_leaks(monkeypatch, exact_scan):
    """Allowed ids for one run of ids (AUTOINCREMENT) become rows by a slice: ids outside the run, duplicates and
    unsorted ids are dropped or sorted, never mapped to a row, and results are k exact scores."""
    vecs = clustered_vectors(2000, seed=15)
    ids = np.arange(101, 2101, dtype=np.int64)
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=len(ids))
    index.add(ids, vecs)
    if not exact_scan:
        monkeypatch.setattr(index_module, "EXACT_FILTER_ROWS", 0)
    inside = np.random.default_rng(16).choice(ids, 300, replace=False)
    allowed = np.concatenate([inside, inside[:40], [-7, 0, 100, 2101, 2102, 10**12]])  # unsorted, repeats, outside
    np.testing.assert_array_equal(index._allowed_rows(allowed), np.sort(inside) - 101)
    np.testing.assert_array_equal(index._allowed_rows(np.sort(allowed)), np.sort(inside) - 101)
    assert len(index._allowed_rows(np.array([0, 100, 2101]))) == 0
    assert index.search(vecs[0], k=5, allowed=np.array([0, 100, 2101]))[0] == []
    for q in clustered_vectors(5, seed=17):
        hits = index.search(q, k=10, allowed=allowed)[0]
        assert {i for i, _ in hits} <= set(inside.tolist()) and len(hits) == 10
        for i, score in hits:
            assert score == pytest.approx(float(vecs[i - 101] @ q), abs=1e-5)
    own = int(inside[0])
    assert index.search(vecs[own - 101], k=3, allowed=allowed)[0][0][0] == own


def test_only_filters_up_to_a_fixed_row_count_are_scored_exactly(data, index, monkeypatch):
    """Gathering allowed rows costs the same per row at any size: the exact path takes at most EXACT_FILTER_ROWS
    rows (no share of the collection); a larger filter goes through the list probe, and both return k exact scores."""
    vecs, ids = data
    probed = []
    real = SpecimenIndex._filtered_ivf
    monkeypatch.setattr(SpecimenIndex, "_filtered_ivf", lambda self, *a: probed.append(len(a[1])) or real(self, *a))
    monkeypatch.setattr(index_module, "EXACT_FILTER_ROWS", 60)
    small, large = np.sort(ids[:60]), np.sort(ids[:200])  # 1.5% and 5% of 4,000
    q = clustered_vectors(1, seed=30)[0]
    by_id = dict(zip(ids.tolist(), vecs))
    for allowed, through_lists in ((small, False), (large, True)):
        probed.clear()
        hits = index.search(q, k=10, allowed=allowed)[0]
        assert bool(probed) == through_lists and len(hits) == 10 and {i for i, _ in hits} <= set(allowed.tolist())
        assert all(s == pytest.approx(float(by_id[i] @ q), abs=1e-5) for i, s in hits)
    assert [i for i, _ in index.search(q, k=10, allowed=small)[0]] == _exact(vecs, ids, q, 10, small)


def test_a_remembered_filter_is_prepared_once_and_answers_the_same(data, through_lists):
    """A read-only id array (what the table hands back for remembered filters) is prepared once per index: the
    same hits as a fresh writeable copy; a writeable array is never kept; adding rows forgets the prepared sets."""
    from retrieval.vectors import allowed as allowed_module

    vecs, ids = data
    built = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=len(ids))
    built.add(ids[:3000], vecs[:3000])
    made = []
    real = allowed_module.AllowedSet.__init__
    through_lists.setattr(allowed_module.AllowedSet, "__init__", lambda self, *a: made.append(1) or real(self, *a))
    allowed = np.sort(ids[::7])
    allowed.setflags(write=False)
    queries = vecs[:5] + 0.01
    first = built.search(queries, k=10, allowed=allowed)
    assert built.search(queries, k=10, allowed=allowed) == first and len(made) == 1
    assert built.search(queries, k=10, allowed=allowed.copy()) == first and len(made) == 2  # writeable: made again
    assert built.search(queries, k=10, allowed=allowed.copy()) == first and len(made) == 3
    assert all(len(hits) == 10 and set(h for h, _ in hits) <= set(allowed.tolist()) for hits in first)
    built.add(ids[3000:], vecs[3000:])  # rows now also come from the new vectors: prepared sets are stale
    after = built.search(queries, k=10, allowed=allowed)
    assert len(made) == 4 and after == built.search(queries, k=10, allowed=allowed.copy())
    assert {h for hits in after for h, _ in hits} & set(ids[3000:].tolist())  # the new rows do come up


def test_a_broad_filter_widens_the_unfiltered_search_and_falls_back_when_it_keeps_too_few(index, data, monkeypatch):
    """A filter passing most specimens (BROAD_SHARE) is answered by the unfiltered search widened by 1/share, its
    candidates checked against the allowed ids; where the query's neighbours are mostly excluded, too few survive
    and the filtered route answers. Both exact when every list is probed and every candidate re-ranked."""
    vecs, ids = data
    monkeypatch.setitem(index.manifest, "nprobe", 10**6)
    monkeypatch.setitem(index.manifest, "filter_nprobe", 10**6)
    monkeypatch.setattr(index_module, "FILTER_SCAN", 10**9)
    monkeypatch.setattr(index_module, "RERANK_PER", 1)
    monkeypatch.setattr(index_module, "RERANK_MAX", 10**6)
    broad_calls = []
    real = SpecimenIndex._broad
    monkeypatch.setattr(SpecimenIndex, "_broad", lambda self, *a: broad_calls.append(r := real(self, *a)) or r)
    rng = np.random.default_rng(5)
    allowed = np.sort(ids[rng.random(len(ids)) < 0.8])
    for q in clustered_vectors(4, seed=31):
        assert [i for i, _ in index.search(q, k=10, allowed=allowed)[0]] == _exact(vecs, ids, q, 10, allowed)
    assert len(broad_calls) == 4 and all(r is not None for r in broad_calls)
    monkeypatch.setattr(index_module, "RERANK_PER", 5000)  # the usual re-rank depth: few candidates to keep
    q = clustered_vectors(1, seed=32)[0]
    near = ids[np.argsort(-(vecs @ q), kind="stable")[:1500]]  # the query's 1,500 nearest excluded: 62% pass
    allowed = np.sort(np.setdiff1d(ids, near))
    hits = [i for i, _ in index.search(q, k=10, allowed=allowed)[0]]
    assert broad_calls[-1] is None and len(hits) == 10 and set(hits) <= set(allowed.tolist())
    if index.store is None:  # IVF over float32: the filtered route's scores are exact
        assert hits == _exact(vecs, ids, q, 10, allowed)


def test_kept_allowed_sets_stay_within_their_byte_budget(monkeypatch):
    from retrieval.vectors.allowed import AllowedSet, RecentAllowed
    from retrieval.vectors import allowed as allowed_module

    monkeypatch.setattr(allowed_module, "RECENT_BYTES", 3 * 8 * 100)  # room for one set of 100 ids (and its rows)
    recent, made = RecentAllowed(), []

    def make(ids):
        made.append(1)
        return AllowedSet(ids, 800, lambda a: a)
    first, second = np.arange(100), np.arange(100, 200)
    for a in (first, second):
        a.setflags(write=False)
    kept = recent.get(first, lambda: make(first))
    assert recent.get(first, lambda: make(first)) is kept and len(made) == 1
    recent.get(second, lambda: make(second))  # over the budget: the older set leaves
    assert recent.get(first, lambda: make(first)) is not kept and len(made) == 3


def test_an_allowed_set_sorts_and_dedupes_its_ids_once_for_its_rows_and_membership():
    """The one sortedness check of a filter's ids (allowed.sorted_unique) serves both its rows and `holds`; a
    filter's ids, already sorted, are not copied."""
    from retrieval.vectors.allowed import AllowedSet, sorted_unique

    asked = []
    plan = AllowedSet(np.array([9, 3, 5, 3, 9, 7]), 12, lambda ids: asked.append(ids.tolist()) or ids - 1)
    assert plan.sorted_ids().tolist() == [3, 5, 7, 9] and plan.rows.tolist() == [2, 4, 6, 8]
    assert plan.rows.tolist() == [2, 4, 6, 8] and asked == [[3, 5, 7, 9]]  # rows made once, from the sorted ids
    assert plan.holds(np.array([3, 4, 9, 10, 0])).tolist() == [True, False, True, False, False]
    ready = np.array([1, 4, 8], dtype=np.int64)
    assert np.shares_memory(sorted_unique(ready), ready)
