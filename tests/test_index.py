"""SpecimenIndex: exact search, filters inside FAISS, persistence and the manifest check."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import BadInput, HerbariaError, IndexMismatch
from retrieval.index import SpecimenIndex, factory_for

ENC = {"name": "enc-a", "model": "m", "fingerprint": "f00d", "dim": 16}


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("preset", ["exact", "hnsw", "ivf"])
def test_own_vector_comes_first(preset):
    vecs, ids = _vectors(400), np.arange(1000, 1400)
    index = SpecimenIndex.create(ENC, preset_name=preset, n_expected=400)
    index.add(ids, vecs)
    hits = index.search(vecs[:20], k=5)
    assert [h[0][0] for h in hits] == list(ids[:20])
    assert sorted(index.ids()) == list(ids)


def test_auto_is_exact_for_small_collections():
    assert factory_for("auto", 1000)[0] == "IDMap2,Flat"
    assert factory_for("auto", 200_000)[0].startswith("IDMap2,IVF")


@pytest.mark.parametrize("preset", ["exact", "hnsw", "ivf"])
def test_filter_is_applied_inside_the_search(preset):
    """With a selector, k results all come from the allowed set even when none are in the unfiltered top-k."""
    vecs = _vectors(500)
    index = SpecimenIndex.create(ENC, preset_name=preset, n_expected=500)
    index.add(np.arange(500), vecs)
    query = vecs[0]
    unfiltered = {i for i, _ in index.search(query, k=10)[0]}
    allowed = np.array([i for i in range(250, 500) if i not in unfiltered][:60])
    hits = index.search(query, k=10, allowed=allowed)[0]
    assert len(hits) == 10 and {i for i, _ in hits} <= set(allowed)
    exact = sorted(allowed, key=lambda i: -float(vecs[i] @ query))[:10]
    if preset == "exact":
        assert [i for i, _ in hits] == exact
    assert index.search(query, k=10, allowed=np.array([], dtype=np.int64)) == [[]]


def test_save_load_and_manifest(tmp_path):
    vecs = _vectors(50)
    index = SpecimenIndex.create(ENC)
    index.add(np.arange(50), vecs)
    index.save(tmp_path)
    loaded = SpecimenIndex.load(tmp_path, encoder=ENC)
    assert len(loaded) == 50 and loaded.manifest["count"] == 50 and loaded.manifest["checksum"]
    np.testing.assert_allclose(loaded.vector(7), vecs[7], atol=1e-6)
    loaded.add(np.arange(50, 60), _vectors(10, seed=1))  # incremental add
    loaded.save(tmp_path)
    assert SpecimenIndex.load(tmp_path).manifest["count"] == 60


def test_other_encoder_is_refused(tmp_path):
    index = SpecimenIndex.create(ENC)
    index.add(np.arange(3), _vectors(3))
    index.save(tmp_path)
    with pytest.raises(IndexMismatch, match="enc-a"):
        SpecimenIndex.load(tmp_path, encoder={**ENC, "name": "enc-b", "fingerprint": "beef"})
    with pytest.raises(IndexMismatch, match="dimension"):
        SpecimenIndex.load(tmp_path).search(np.ones(8, np.float32))


def test_damaged_index_file_is_refused(tmp_path):
    index = SpecimenIndex.create(ENC)
    index.add(np.arange(3), _vectors(3))
    index.save(tmp_path)
    (tmp_path / "specimens.faiss").write_bytes(b"garbage")
    with pytest.raises(HerbariaError, match="damaged"):
        SpecimenIndex.load(tmp_path)


def test_missing_index_and_bad_k(tmp_path):
    with pytest.raises(BadInput, match="herbaria index"):
        SpecimenIndex.load(tmp_path)
    index = SpecimenIndex.create(ENC)
    index.add(np.arange(3), _vectors(3))
    with pytest.raises(BadInput):
        index.search(_vectors(1), k=0)
