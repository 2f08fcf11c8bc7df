"""A filter's ids as the table's rows plus the first id (RowIds, issue 11): the same answers as the ids themselves
from the table, the filters' membership test and every index path, without building the ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import clustered_vectors

from retrieval.collections import RowIds, SpecimenTable
from retrieval.filters import allowed_contains, allowed_ids, parse_filters
from retrieval.vectors import SpecimenIndex
from retrieval.vectors import index as index_module

ENC = {"name": "enc-r", "model": "m", "fingerprint": "f00d", "dim": 16}


def test_row_ids_are_the_rows_plus_the_first_id_and_never_change():
    rows = np.array([0, 3, 4, 9], dtype=np.int32)
    held = RowIds(rows, 101)
    assert len(held) == 4 and held.tolist() == [101, 104, 105, 110] and list(held) == [101, 104, 105, 110]
    ids = np.asarray(held)
    assert ids.dtype == np.int64 and not ids.flags.writeable and np.asarray(held) is ids  # built once
    assert np.asarray(held, dtype=np.float64).tolist() == [101.0, 104.0, 105.0, 110.0]
    own = np.array(held)  # a copy the caller may write to
    own[0] = 0
    assert own.flags.writeable and held.tolist()[0] == 101
    assert not held.rows.flags.writeable and rows.flags.writeable  # the caller's array is left as it was
    asked = [104, 100, 101, 110, 111, -5, 2**40, 105]
    assert held.contains(asked).tolist() == [True, False, True, True, False, False, False, True]
    assert RowIds(np.zeros(0, np.int32), 7).contains([7]).tolist() == [False]
    with pytest.raises(TypeError):
        RowIds(np.array([0.5]), 1)


def test_allowed_contains_agrees_for_row_ids_and_plain_ids():
    plain = np.array([2, 5, 9], dtype=np.int64)
    asked = [9, 1, 5, 5, 10]
    want = [True, False, True, True, False]
    assert allowed_contains(plain, asked).tolist() == want
    assert allowed_contains(RowIds(np.array([0, 3, 7]), 2), asked).tolist() == want
    assert allowed_contains(RowIds(np.array([0, 3, 7]), 2), np.array(asked)).tolist() == want


def test_a_table_numbered_as_one_run_hands_its_filter_rows_on():
    frame = pd.DataFrame({"specimen_id": np.arange(50, 80), "family": ["Rosaceae", "Poaceae", "Fabaceae"] * 10})
    table = SpecimenTable.from_pandas(frame)
    got = allowed_ids(table, parse_filters({"family": "poaceae"}))
    assert isinstance(got, RowIds) and got.tolist() == list(range(51, 80, 3))
    gapped = SpecimenTable.from_pandas(frame.assign(specimen_id=np.arange(50, 80) * 2))
    ids = allowed_ids(gapped, parse_filters({"family": "poaceae"}))
    assert isinstance(ids, np.ndarray) and not ids.flags.writeable and ids.tolist() == list(range(102, 160, 6))


@pytest.mark.parametrize("first", [1, 40, 1000])
@pytest.mark.parametrize("route", ["exact", "lists", "broad"])
def test_every_index_path_answers_row_ids_as_their_ids(monkeypatch, first, route):
    """Index ids 40..2039 (one run); the table's run starts at `first`, so its rows are shifted or cut at the
    index's ends. Each path (the allowed set scored exactly, the list probe, the widened search of a broad filter)
    returns the same hits for RowIds as for the ids, all allowed, k of them, exact scores."""
    vecs = clustered_vectors(2000, seed=21)
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=2000)
    index.add(np.arange(40, 2040), vecs)
    monkeypatch.setattr(index_module, "EXACT_FILTER_ROWS", 10**6 if route == "exact" else 0)
    monkeypatch.setattr(index_module, "BROAD_SHARE", 0.5 if route == "broad" else 2.0)
    rng = np.random.default_rng(22)
    share = 0.9 if route == "broad" else 0.2
    rows = np.flatnonzero(rng.random(2100) < share).astype(np.int32)  # table rows, some beyond the index
    held = RowIds(rows, first)
    ids = np.asarray(held).copy()
    inside = set(ids[(ids >= 40) & (ids < 2040)].tolist())
    for q in clustered_vectors(4, seed=23):
        fresh = index.search(q, k=10, allowed=held)[0]
        assert fresh == index.search(q, k=10, allowed=ids)[0] == index.search(q, k=10, allowed=held)[0]
        assert len(fresh) == min(10, len(inside)) and {i for i, _ in fresh} <= inside
        assert all(s == pytest.approx(float(vecs[i - 40] @ q), abs=1e-5) for i, s in fresh)


def test_row_ids_on_an_index_not_numbered_as_one_run():
    vecs = clustered_vectors(600, seed=24)
    ids = np.arange(600, dtype=np.int64) * 3 + 1
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=600)
    index.add(ids, vecs)
    held = RowIds(np.arange(0, 1800, 2, dtype=np.int32), 1)  # ids 1, 3, 5, ...: every other one indexed
    allowed = set(ids.tolist()) & set(held.tolist())
    for q in clustered_vectors(3, seed=25):
        hits = index.search(q, k=8, allowed=held)[0]
        assert len(hits) == 8 and {i for i, _ in hits} <= allowed
        assert hits == index.search(q, k=8, allowed=np.asarray(held).copy())[0]  # the same ids, as an array


def test_sets_dropped_from_the_recent_ones_free_their_ids_without_a_deadlock():
    """A kept set holds its ids; when it is dropped (more than RECENT filters, or the index grows) and held the
    last reference, the ids' weakref callback runs: it must not wait for the lock held while dropping."""
    import threading

    from retrieval.vectors.allowed import RECENT

    vecs = clustered_vectors(300, seed=26)
    index = SpecimenIndex.create(ENC, preset_name="exact", n_expected=300)
    index.add(np.arange(300), vecs)

    def many_filters():
        for start in range(3 * RECENT):  # each RowIds is referenced only by the index's kept set after its search
            index.search(vecs[0], k=3, allowed=RowIds(np.arange(start, start + 50), 0))
        index.add(np.array([300]), vecs[:1])  # clears the kept sets
        index.search(vecs[0], k=3, allowed=RowIds(np.arange(0, 50), 0))

    worker = threading.Thread(target=many_filters, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "dropping a kept allowed set deadlocked"
