"""Index presets for large collections (issue 11): exact re-rank, filters that never leak and never return fewer than
k, vectors retrievable on IVF and IVF-PQ, a shared memory-mapped open, presets chosen by size, resume after a kill."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.errors import BadInput, HerbariaError
from retrieval.vectors import SpecimenIndex, choose_index, factory_for, open_shared
from retrieval.vectors import index as index_module
from retrieval.vectors.store import VECTORS_FILE

ENC = {"name": "enc-a", "model": "m", "fingerprint": "f00d", "dim": 16}
PRESETS = ["exact", "ivf", "hnsw", "ivfpq"]


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (as image embeddings are), so IVF lists are uneven."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim))
    v = (centres[rng.integers(0, 12, n)] + 0.6 * rng.normal(size=(n, dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _exact(vecs: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int, allowed=None) -> list[int]:
    keep = np.ones(len(ids), bool) if allowed is None else np.isin(ids, allowed)
    scores = vecs[keep] @ query
    return [int(i) for i in ids[keep][np.argsort(-scores, kind="stable")[:k]]]


@pytest.fixture(scope="module")
def built():
    """Each preset over the same 600 vectors, ids shuffled and sparse (not equal to rows)."""
    vecs = _vectors(600)
    ids = np.random.default_rng(1).permutation(600).astype(np.int64) * 7 + 3
    out = {}
    for name in PRESETS:
        index = SpecimenIndex.create(ENC, preset_name=name, n_expected=600)
        index.add(ids[:300], vecs[:300])
        index.add(ids[300:], vecs[300:])
        out[name] = index
    return vecs, ids, out


@pytest.fixture(params=["bitmap", "exact-scan"])
def filter_path(request, monkeypatch):
    """Run a test through both ways a filter is applied: the bitmap inside FAISS, or scoring the allowed set."""
    if request.param == "bitmap":
        monkeypatch.setattr(index_module, "EXACT_FILTER_ROWS", 0)
    return request.param


@pytest.mark.parametrize("name", PRESETS)
def test_top_k_is_exact_search_unfiltered_and_filtered(built, name, filter_path):
    vecs, ids, indexes = built
    index = indexes[name]
    queries = _vectors(8, seed=5)
    allowed = ids[::9]
    for q in queries:
        hits = index.search(q, k=10)[0]
        if name != "hnsw":  # a graph walk is approximate; the others scan every list here or re-rank exactly
            assert [i for i, _ in hits] == _exact(vecs, ids, q, 10)
        filtered = index.search(q, k=10, allowed=allowed)[0]
        if name != "hnsw" or filter_path == "exact-scan":
            assert [i for i, _ in filtered] == _exact(vecs, ids, q, 10, allowed)
        assert {i for i, _ in filtered} <= set(allowed.tolist()) and len(filtered) == 10
        by_id = dict(zip(ids.tolist(), vecs))
        for i, score in filtered:  # scores are exact inner products, not PQ estimates
            assert score == pytest.approx(float(by_id[i] @ q), abs=1e-5)


@pytest.mark.parametrize("name", ["ivf", "ivfpq"])
def test_more_like_this_works_on_ivf_indexes(built, tmp_path, name):
    """Issue 11: `reconstruct` on an IVF index needed a direct map that was never made; IVF-PQ reads the memmap."""
    vecs, ids, indexes = built
    index = indexes[name]
    np.testing.assert_array_equal(index.vector(int(ids[42])), vecs[42])
    index.save(tmp_path / name)
    for loaded in (SpecimenIndex.load(tmp_path / name), open_shared(tmp_path / name)):
        np.testing.assert_array_equal(loaded.vector(int(ids[500])), vecs[500])
        assert loaded.search(loaded.vector(int(ids[7])), k=1)[0][0][0] == int(ids[7])
    with pytest.raises(BadInput, match="not in the index"):
        index.vector(5)  # not a multiple of 7 plus 3


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_filters_never_leak_and_never_return_fewer_than_k(built, data):
    vecs, ids, indexes = built
    name = data.draw(st.sampled_from(PRESETS))
    fraction = data.draw(st.sampled_from([0.002, 0.01, 0.05, 0.3, 0.9]))
    seed = data.draw(st.integers(0, 10_000))
    k = data.draw(st.integers(1, 20))
    bitmap = data.draw(st.booleans())  # through the FAISS bitmap, or the exact scan of a selective filter
    rng = np.random.default_rng(seed)
    allowed = ids[rng.random(len(ids)) < fraction]
    allowed = np.concatenate([allowed, [10**9 + 1]])  # an id that is not indexed is ignored
    q = _vectors(1, seed=seed)[0]
    saved = index_module.EXACT_FILTER_ROWS
    if bitmap:
        index_module.EXACT_FILTER_ROWS = 0
    try:
        hits = indexes[name].search(q, k=k, allowed=allowed)[0]
    finally:
        index_module.EXACT_FILTER_ROWS = saved
    assert {i for i, _ in hits} <= set(allowed.tolist())
    assert len(hits) == min(k, len(allowed) - 1)
    assert len({i for i, _ in hits}) == len(hits)


def test_on_disk_vectors_keep_ram_small_and_open_is_shared_and_mapped(tmp_path):
    vecs, ids = _vectors(2000), np.arange(2000, dtype=np.int64)
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=2000)
    index.add(ids, vecs)
    index.save(tmp_path)
    assert (tmp_path / VECTORS_FILE).stat().st_size == 2000 * 16 * 4
    first = open_shared(tmp_path, encoder=ENC)
    assert open_shared(tmp_path) is first  # one copy per process
    assert first.read_only and type(first.store._disk) is np.memmap
    import faiss

    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(first.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # mapped, not read into RAM
    assert lists.prefetch_nthread == 0  # no prefetch threads started at every search (FAISS's default: 32)
    with pytest.raises(HerbariaError, match="read-only"):
        first.add(np.array([5000]), vecs[:1])
    grown = SpecimenIndex.load(tmp_path)
    grown.add(np.array([5000]), vecs[:1])
    grown.save(tmp_path)
    second = open_shared(tmp_path)
    assert second is not first and len(second) == 2001  # a new version is opened once more


def test_vectors_are_appended_not_rewritten_and_a_killed_append_is_ignored(tmp_path):
    vecs, ids = _vectors(900), np.arange(900, dtype=np.int64)
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=900)
    index.add(ids[:600], vecs[:600])
    index.save(tmp_path)
    inode = (tmp_path / VECTORS_FILE).stat().st_ino
    index.add(ids[600:700], vecs[600:700])
    index.save(tmp_path)
    assert (tmp_path / VECTORS_FILE).stat().st_ino == inode  # the same file, grown: the versions share it
    with open(tmp_path / VECTORS_FILE, "ab") as f:  # a build killed while appending rows
        f.write(np.ones((37, 16), np.float32).tobytes())
    resumed = SpecimenIndex.load(tmp_path)
    assert len(resumed) == 700 and len(resumed.store) == 700
    resumed.add(ids[700:], vecs[700:])
    resumed.save(tmp_path)
    final = SpecimenIndex.load(tmp_path, verify=True)
    assert (tmp_path / VECTORS_FILE).stat().st_size == 900 * 16 * 4
    for i in (0, 650, 699, 700, 899):
        np.testing.assert_array_equal(final.vector(i), vecs[i])


def test_a_damaged_vectors_file_or_index_is_refused(tmp_path):
    vecs = _vectors(700)
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=700)
    index.add(np.arange(700), vecs)
    index.save(tmp_path)
    with open(tmp_path / VECTORS_FILE, "r+b") as f:
        f.truncate(100 * 16 * 4)
    with pytest.raises(HerbariaError, match="damaged"):
        SpecimenIndex.load(tmp_path)


def test_presets_are_chosen_by_size_memory_and_latency():
    assert choose_index(1000, 512)[0] == "exact"
    assert choose_index(200_000, 512)[0] == "ivf"  # 400 MB of float32 fits the default 1 GiB
    preset, factory = choose_index(5_000_000, 512)
    assert preset == "ivfpq" and factory.startswith("IDMap,IVF") and "PQ" in factory
    code = int(factory.split("PQ")[1].split("x")[0])
    assert 5_000_000 * (code + 16) <= 1 << 30
    assert choose_index(200_000, 512, memory_budget_bytes=100 << 20)[0] == "ivfpq"
    assert choose_index(60_000, 64, latency_target_ms=1000)[0] == "exact"
    assert factory_for("auto", 5_000_000)[0] == factory
    with pytest.raises(BadInput):
        choose_index(10, 0)


def test_a_build_killed_part_way_resumes_to_the_same_index(tmp_path, monkeypatch):
    """`herbaria index --preset ivfpq` stopped in its third chunk (after its first save): the next run adds only what is missing, and every
    specimen's vector equals the one an uninterrupted build stored."""
    import shutil

    from writer_faults import image_folder

    from retrieval.collections import ingest
    from retrieval.vectors import ClipEncoder, build_index

    source = image_folder(tmp_path / "src", "A", 40, 60)
    ingest(source, tmp_path / "col", progress=False)
    shutil.copytree(tmp_path / "col", tmp_path / "reference")
    build_index(tmp_path / "reference", model="tiny-test", preset="ivfpq", chunk_size=8, progress=False)
    reference = SpecimenIndex.load(tmp_path / "reference" / "index")

    calls = {"n": 0}
    encode = ClipEncoder.encode_images

    def dies_in_third_chunk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return encode(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ClipEncoder, "encode_images", dies_in_third_chunk)
        patch.setattr("retrieval.vectors.indexing.training_rows", lambda index: 16)  # a small training chunk first
        with pytest.raises(KeyboardInterrupt):
            build_index(tmp_path / "col", model="tiny-test", preset="ivfpq", chunk_size=8, progress=False)
    partial = SpecimenIndex.load(tmp_path / "col" / "index")
    assert 0 < len(partial) < 40
    summary = build_index(tmp_path / "col", model="tiny-test", progress=False, chunk_size=8)
    assert summary["added"] == 40 - len(partial) and summary["total"] == 40
    resumed = SpecimenIndex.load(tmp_path / "col" / "index", verify=True)
    assert sorted(resumed.ids()) == sorted(reference.ids())
    for sid in reference.ids():
        np.testing.assert_allclose(resumed.vector(int(sid)), reference.vector(int(sid)), atol=1e-5)


def test_populated_vectors_rerank_the_same(tmp_path, monkeypatch):
    """Page-tabling the on-disk vectors (open_shared does it in the background) changes no result; an index without
    on-disk vectors has nothing to populate."""
    vecs = _vectors(800, seed=40)
    ids = np.arange(800, dtype=np.int64) * 3 + 1
    index = SpecimenIndex.create(ENC, preset_name="ivfpq", n_expected=800)
    index.add(ids, vecs)
    index.save(tmp_path / "pq")
    loaded = SpecimenIndex.load(tmp_path / "pq", mmap=True)
    queries = _vectors(4, seed=41)
    before = [loaded.search(q, k=10, allowed=ids[::5])[0] for q in queries]
    assert loaded.populate_vectors() is True
    thread = loaded.populate_vectors(background=True)
    thread.join(10)
    assert [loaded.search(q, k=10, allowed=ids[::5])[0] for q in queries] == before
    for q in queries:
        assert [i for i, _ in loaded.search(q, k=10)[0]][:1] == _exact(vecs, ids, q, 1)
    np.testing.assert_array_equal(open_shared(tmp_path / "pq").vector(int(ids[9])), vecs[9])
    monkeypatch.setattr(index_module, "_available_memory", lambda: 800 * 16 * 4 - 1)  # the file would not fit
    assert loaded.populate_vectors() is False
    flat = SpecimenIndex.create(ENC, preset_name="exact", n_expected=800)
    flat.add(ids, vecs)
    assert flat.populate_vectors() is False


def test_shared_indexes_populate_their_vectors_only_when_asked(monkeypatch):
    """Populating reads the whole vectors file into the page cache and the process's RSS: opt-in."""
    monkeypatch.delenv("HERBARIA_POPULATE_VECTORS", raising=False)
    assert index_module.populate_shared() is False
    monkeypatch.setenv("HERBARIA_POPULATE_VECTORS", "1")
    assert index_module.populate_shared() is True


def test_store_scores_equal_the_product_of_its_rows_in_the_order_asked(tmp_path, monkeypatch):
    """The re-rank scores committed rows in place (FAISS reads them from the map in file order) and puts the scores
    back in the asked order, repeats included; rows still in RAM (added since the last save) score the same way."""
    import faiss

    from retrieval.vectors.store import VectorStore

    calls = []
    in_place = faiss.fvec_inner_products_by_idx
    monkeypatch.setattr(faiss, "fvec_inner_products_by_idx", lambda *args: calls.append(args[-1]) or in_place(*args))
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    store = VectorStore(16)
    store.append(vectors[:400])
    store.write(tmp_path, None, None)
    store.reopen(tmp_path / "vectors.f32")
    assert store.committed == 400
    store.append(vectors[400:])
    query = rng.standard_normal(16).astype(np.float32)
    for rows in (np.array([399, 3, 250, 3, 0, 128]), np.array([450, 2, 399, 499, 2]), rng.integers(0, 400, 300)):
        assert np.allclose(store.scores(rows, query), vectors[rows] @ query, rtol=1e-5, atol=1e-5)
    assert calls == [6, 300]  # committed rows only: those in RAM are multiplied by numpy
    with pytest.raises(ValueError):
        store.scores(np.array([1, 2]), query[:8])
    # a row past the map FAISS would read (the count moved on before the map, as a concurrent save could) is refused
    # by numpy, never read out of bounds
    store.committed = 450
    with pytest.raises(IndexError):
        store.scores(np.array([420, 3]), query)
    assert calls == [6, 300]
