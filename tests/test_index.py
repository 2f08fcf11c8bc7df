"""SpecimenIndex: exact search, filters inside FAISS, persistence and the manifest check."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from retrieval.errors import BadInput, HerbariaError, IndexMismatch
from retrieval.vectors import SpecimenIndex, factory_for

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


def _legacy(folder, index: SpecimenIndex) -> None:
    """The single-pair layout that 51d512c wrote: folder/specimens.faiss + folder/manifest.json."""
    import faiss

    from retrieval.vectors import sha256_file

    folder.mkdir()
    faiss.write_index(index.index, str(folder / "specimens.faiss"))
    manifest = {**index.manifest, "count": len(index), "checksum": sha256_file(folder / "specimens.faiss")}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_old_layout_loads_and_the_next_save_migrates_it(tmp_path):
    vecs = _vectors(60)
    old = SpecimenIndex.create(ENC)
    old.add(np.arange(50), vecs[:50])
    folder = tmp_path / "index"
    _legacy(folder, old)
    loaded = SpecimenIndex.load(folder, encoder=ENC)
    assert len(loaded) == 50 and SpecimenIndex.exists(folder)
    loaded.add(np.arange(50, 60), vecs[50:])
    loaded.save(folder)
    assert os.readlink(folder / "current") == "v0001"
    for name in ("specimens.faiss", "manifest.json"):  # what other readers open still reads the committed pair
        assert os.readlink(folder / name) == f"current/{name}"
    assert json.loads((folder / "manifest.json").read_text())["count"] == 60
    loaded.save(folder)
    loaded.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["current", "manifest.json", "specimens.faiss", "v0002", "v0003"]
    np.testing.assert_allclose(SpecimenIndex.load(folder).vector(55), vecs[55], atol=1e-6)


class Injected(Exception):
    """A failure raised in place of a filesystem call (not an OSError, which some callers absorb)."""


@pytest.mark.parametrize("layout", ["old", "versioned"])
def test_a_save_that_fails_at_any_step_leaves_a_loadable_pair(tmp_path, monkeypatch, layout):
    """Issue 8 item 7: failing between the index file and its manifest used to leave a checksum mismatch."""
    import builtins
    import io

    import faiss

    vecs = _vectors(60)
    first = SpecimenIndex.create(ENC)
    first.add(np.arange(50), vecs[:50])
    step, failed_at = 0, []
    while True:
        step += 1
        folder = tmp_path / f"s{step}"
        if layout == "old":
            _legacy(folder, first)
        else:
            first.save(folder)
        grown = SpecimenIndex.load(folder)
        grown.add(np.arange(50, 60), vecs[50:])
        calls = {"n": 0}

        def failing(original, write_only=False):
            def wrapper(*args, **kwargs):
                mode = str(args[1] if len(args) > 1 else kwargs.get("mode", "r"))
                if not write_only or set(mode) & set("wax+"):
                    calls["n"] += 1
                    if calls["n"] == step:
                        raise Injected(f"failure injected at step {step}")
                return original(*args, **kwargs)
            return wrapper

        with monkeypatch.context() as patch:
            for name in ("replace", "rename", "symlink", "mkdir", "fsync", "unlink"):
                patch.setattr(os, name, failing(getattr(os, name)))
            patch.setattr(faiss, "write_index", failing(faiss.write_index))
            patch.setattr(builtins, "open", failing(builtins.open, write_only=True))
            patch.setattr(io, "open", failing(io.open, write_only=True))
            try:
                grown.save(folder)
                finished = True
            except Injected:
                finished = False
        after = SpecimenIndex.load(folder, encoder=ENC)  # never a checksum mismatch
        assert len(after) in (50, 60), step
        np.testing.assert_allclose(after.vector(7), vecs[7], atol=1e-6)
        if finished:
            assert len(after) == 60
            break
        failed_at.append(step)
        grown.save(folder)  # and the next save goes through
        assert len(SpecimenIndex.load(folder)) == 60
    assert len(failed_at) >= 5
