"""Which lists a filtered IVF search probes (retrieval/vectors/probing.py): a large filter counts only the lists
nearest the query, a chunk at a time, and must choose exactly the lists that counting every list would."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clustered_vectors

from retrieval.vectors import SpecimenIndex
from retrieval.vectors import index as index_module
from retrieval.vectors.allowed import AllowedSet
from retrieval.vectors.probing import lists_to_probe

ENC = {"name": "enc-p", "model": "m", "fingerprint": "cafe", "dim": 16}


@pytest.mark.parametrize("seed", range(40))
def test_counting_the_nearest_lists_chooses_what_counting_every_list_does(seed):
    rng = np.random.default_rng(seed)
    nlist = int(rng.integers(1, 300))
    sizes = rng.integers(0, 60, nlist)
    share = rng.choice([0.0, 0.01, 0.2, 0.9, 1.0])
    counts = np.where(rng.random(nlist) < rng.random(), rng.binomial(sizes, share), 0)
    coarse = np.round(rng.normal(size=nlist), 1).astype(np.float32)  # ties: the order must still agree
    per_search, fetch, scan = float(rng.uniform(1, 400)), int(rng.integers(1, 500)), float(rng.choice([0, 1, 2, 1e9]))
    asked = []

    def count_lists(lists):
        asked.append(lists.copy())
        return counts[lists]

    full = lists_to_probe(coarse, sizes, per_search, fetch, scan, counts=counts)
    lazy = lists_to_probe(coarse, sizes, per_search, fetch, scan, count_lists=count_lists)
    np.testing.assert_array_equal(lazy, full)
    assert np.all(counts[full] > 0)
    walked = np.concatenate(asked)
    assert len(np.unique(walked)) == len(walked)  # each list counted once a query
    if len(full) and len(walked) < nlist:  # stopped early: every list nearer than the last walked was counted
        nearer = coarse > coarse[walked].min()
        assert set(np.flatnonzero(nearer)) <= set(walked.tolist())


def test_walking_past_the_give_up_point_returns_none():
    sizes = np.full(100, 10)
    counts = np.zeros(100, np.int64)
    counts[-1] = 10  # the only allowed rows sit in the farthest list
    coarse = -np.arange(100, dtype=np.float32)
    assert lists_to_probe(coarse, sizes, 5.0, 5, 1.0, count_lists=lambda lists: counts[lists], give_up=50) is None
    np.testing.assert_array_equal(lists_to_probe(coarse, sizes, 5.0, 5, 1.0, count_lists=lambda lists: counts[lists]),
                                  [99])


@pytest.fixture(scope="module")
def data():
    vecs = clustered_vectors(3000, seed=4)
    ids = np.arange(3000, dtype=np.int64) + 100
    return vecs, ids


@pytest.fixture(scope="module", params=["ivf", "ivfpq"])
def index(request, data):
    vecs, ids = data
    built = SpecimenIndex.create(ENC, preset_name=request.param, n_expected=len(ids))
    built.add(ids, vecs)
    return built


def test_lists_counted_one_by_one_match_the_bincount_and_are_remembered(index, data):
    import faiss

    ivf = faiss.extract_index_ivf(index.index)
    where, _, sizes = index._row_lists(ivf)
    _, ids = data
    allowed = np.sort(ids[np.random.default_rng(5).random(len(ids)) < 0.3])
    plan = AllowedSet(allowed, len(index), index._sorted_rows)
    read = []

    def rows_of_list(number):
        read.append(number)
        return faiss.rev_swig_ptr(ivf.invlists.get_ids(number), int(sizes[number]))

    lists = np.random.default_rng(6).permutation(ivf.nlist)[: max(1, ivf.nlist // 2)]
    got = plan.count_lists(lists, rows_of_list, ivf.nlist)
    assert sorted(read) == sorted(lists.tolist())
    read.clear()
    np.testing.assert_array_equal(plan.count_lists(lists[::-1], rows_of_list, ivf.nlist), got[::-1])
    assert read == []  # remembered: no list read twice
    everything = AllowedSet(allowed, len(index), index._sorted_rows).list_counts(where, ivf.nlist)
    np.testing.assert_array_equal(got, everything[lists])
    np.testing.assert_array_equal(plan.count_lists(np.arange(ivf.nlist), rows_of_list, ivf.nlist), everything)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.9])
def test_a_search_counting_nearest_lists_returns_the_same_hits(index, data, monkeypatch, fraction):
    """Counting lists one by one (forced for every filter), giving up and counting every list, and counting every list
    from the start: the same hits, for filters thin and broad."""
    _, ids = data
    monkeypatch.setattr(index_module, "EXACT_FILTER_ROWS", 0)
    monkeypatch.setattr(index_module, "BROAD_SHARE", 2.0)  # every filter through the list probe
    allowed = np.sort(ids[np.random.default_rng(8).random(len(ids)) < fraction])
    queries = clustered_vectors(8, seed=10)
    calls = {"one by one": 0, "every list": 0}
    one_by_one, every_list = AllowedSet.count_lists, AllowedSet.list_counts
    monkeypatch.setattr(AllowedSet, "count_lists", lambda *a: calls.__setitem__("one by one", calls["one by one"] + 1)
                        or one_by_one(*a))
    monkeypatch.setattr(AllowedSet, "list_counts", lambda *a: calls.__setitem__("every list", calls["every list"] + 1)
                        or every_list(*a))

    def run():
        calls.update({"one by one": 0, "every list": 0})
        return [index.search(q, k=10, allowed=allowed)[0] for q in queries], dict(calls)

    monkeypatch.setattr(index_module, "LAZY_COUNT_RATIO", float("inf"))
    full, counted = run()
    assert counted == {"one by one": 0, "every list": len(queries)}
    monkeypatch.setattr(index_module, "LAZY_COUNT_RATIO", 1e-9)
    lazy, counted = run()
    assert counted["one by one"] >= len(queries) and counted["every list"] == 0
    real = index_module.lists_to_probe
    monkeypatch.setattr(index_module, "lists_to_probe",  # the walk gives up at once (its own test is above)
                        lambda *a, **kw: None if "count_lists" in kw else real(*a, **kw))
    gave_up, counted = run()
    assert counted["every list"] == len(queries)
    assert lazy == full == gave_up
    allowed_set = set(allowed.tolist())
    assert all(len(hits) == 10 and {i for i, _ in hits} <= allowed_set for hits in full)
