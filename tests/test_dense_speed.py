"""Per-taxon maxima by runs (the fast path of the dense and BM25 signals) equal the plain scatter-max."""

from __future__ import annotations

import numpy as np

from retrieval.flora.morphology.dense import best_per_taxon


def test_best_per_taxon_matches_scatter_max_in_taxon_order_or_not() -> None:
    rng = np.random.default_rng(0)
    taxon = np.sort(rng.integers(0, 40, 500))  # some taxa of the 45 have no chunk
    values = rng.normal(size=(500, 3)).astype(np.float32)
    expected = np.full((45, 3), -1.0, dtype=np.float32)
    np.maximum.at(expected, taxon, values)
    assert np.array_equal(best_per_taxon(values, taxon, 45, empty=-1.0), expected)
    shuffled = rng.permutation(500)
    assert np.array_equal(best_per_taxon(values[shuffled], taxon[shuffled], 45, empty=-1.0), expected)
    one = np.zeros(45, dtype=np.float32)
    np.maximum.at(one, taxon, values[:, 0])
    assert np.array_equal(best_per_taxon(values[:, 0], taxon, 45), one)
    assert best_per_taxon(values[:0], taxon[:0], 2).tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
