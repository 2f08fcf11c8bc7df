"""The morphology search's pieces, each alone: clause chunks, the three signals, the fusion, and the
index's versioned folder (a save commits every file at once; the flat layout of 51d512c loads and
is migrated by the next save)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrieval.errors import IndexMismatch
from retrieval.flora import extract_traits, read_descriptions
from retrieval.flora.morphology import (DenseSignal, DescriptionIndex, LexicalSignal, TraitSignal, chunk_text, chunks_of,
                                        competition_ranks, fuse)
from retrieval.flora.morphology.index import FILES
from retrieval.flora import TaxonDescription
from retrieval.flora.traits import trait_table
from writer_faults import write_flat_descriptions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _record(taxon: str, text: str, rank: str = "species") -> TaxonDescription:
    return TaxonDescription(taxon=taxon, name=taxon, text=text, rank=rank, language="en")


def test_later_clauses_are_read_with_their_sentence_head() -> None:
    record = _record("Alpha beta", "Leaves opposite, shortly petiolate; blade elliptic to ovate, apex acute; "
                                   "margin finely serrate throughout. Flowers white; fragrant.")
    assert [chunk_text(record.text, row) for row in chunks_of(record)] == [
        "Leaves opposite, shortly petiolate;",
        "Leaves: blade elliptic to ovate, apex acute;",  # "apex acute" is still the leaf's
        "Leaves: margin finely serrate throughout.",
        "Flowers white; fragrant.",  # a very short clause rides with its neighbour
    ]


def test_fusion_shares_ranks_between_ties_and_ranks_contradicting_taxa_last() -> None:
    traits = np.array([2.0, 0.0, 2.0, 1.0, -1.0], dtype=np.float32)
    order, ranks = competition_ranks(traits, pool=10)
    assert sorted(zip(order.tolist(), ranks.tolist()), key=lambda p: p[0]) == [(0, 1), (2, 1), (3, 3)]
    bm25 = np.array([0.0, 0.0, 3.0, 1.0, 5.0], dtype=np.float32)
    contradicted = traits < 0
    fused, per_signal = fuse({"traits": traits, "bm25": bm25}, contradicted, weights={"traits": 1.0, "bm25": 1.0},
                             rrf_k=10, ties="min")
    assert per_signal == {"traits": {0: 1, 2: 1, 3: 3}, "bm25": {4: 1, 2: 2, 3: 3}}
    assert fused[2] == pytest.approx(1 / 11 + 1 / 12) and fused[0] == pytest.approx(1 / 11)  # bm25 breaks the tie
    assert fused[1] == 0.0
    assert 0 < fused[4] < min(fused[[0, 2, 3]])  # bm25's best, but its traits contradict the query
    muted, _ = fuse({"traits": traits, "bm25": bm25}, contradicted, weights={"traits": 1.0, "bm25": 0.0}, rrf_k=10, ties="min")
    assert muted[2] == muted[0]  # a signal weighted 0 ranks but does not vote
    top, _ = fuse({"bm25": bm25}, np.zeros(5, dtype=bool), pool=1)
    assert np.flatnonzero(top).tolist() == [4]


def test_lexical_signal_scores_each_part_by_its_best_clause() -> None:
    texts = ["Leaves: margin serrate", "Flowers white", "Leaves: margin entire", "Feuilles opposées"]
    taxon = np.array([0, 0, 1, 2])
    signal = LexicalSignal(texts, taxon, 3)
    per_taxon, per_clause = signal.scores(["serrate leaves", "white flowers"])
    assert per_taxon[0] > per_taxon[1] > 0 and per_taxon[2] > 0  # taxon 2 matches "leaves" in French
    assert per_clause[0] > per_clause[2] and per_clause[1] > 0
    only_first, _ = signal.scores(["serrate leaves"])
    assert per_taxon[0] > only_first[0]  # each part adds its own best clause
    assert signal.scores(["zzz"])[0].tolist() == [0.0, 0.0, 0.0]


def test_trait_signal_supports_contradicts_and_counts_genera_less() -> None:
    texts = {"glabra": ("Leaves glabrous.", "species"), "hirta": ("Leaves densely hairy.", "species"),
             "Genus": ("Leaves glabrous.", "genus"), "nuda": ("Flowers white.", "species")}
    traits = [trait_table(extract_traits(text, "en")) for text, _ in texts.values()]
    signal = TraitSignal(traits, [rank for _, rank in texts.values()])
    scores, evidence = signal.scores(extract_traits("leaves not hairy", query=True))
    glabra, hirta, genus, nuda = scores.tolist()
    assert glabra > genus > 0 > hirta and nuda == 0.0
    assert genus == pytest.approx(0.8 * glabra)
    assert set(evidence) == {0, 1, 2} and evidence[1][0][1] < 0


def test_dense_signal_finds_its_own_clause_and_refuses_another_model() -> None:
    from retrieval.flora import cached_text_encoder

    encoder = cached_text_encoder("tiny-test")
    texts = ["Leaves: blade ovate, margin crenate", "Corolla tubular, yellow", "Fruit a capsule, seeds winged"]
    signal = DenseSignal(encoder.encode(texts), np.array([0, 1, 2]), 3, encoder.info, encoder)
    score, sims = signal.scores("Corolla tubular, yellow", [])
    assert int(np.argmax(score)) == 1 and sims[1] == pytest.approx(1.0, abs=1e-5)
    other = DenseSignal(signal.embeddings, signal.chunk_taxon, 3, {**encoder.info, "fingerprint": "another"})
    with pytest.raises(IndexMismatch, match="rebuild"):
        other.scores("corolla yellow", [])


@pytest.fixture
def three(tmp_path: Path) -> DescriptionIndex:
    path = tmp_path / "three.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("taxon", "text"), ("Alpha hirta", "Shrub. Leaves hairy beneath. Flowers white."),
                                  ("Beta glabra", "Shrub. Leaves glabrous. Flowers white."),
                                  ("Gamma pilosa", "Herb. Leaves ovate, pubescent. Flowers yellow.")])
    return DescriptionIndex.build(read_descriptions(path), text_model="tiny-test", progress=False)


def _specimens(names: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame({"specimen_id": list(names), "scientificName": list(names.values())})


def _state(index: DescriptionIndex) -> tuple:
    return ([r.taxon for r in index.records], index.chunks.tolist(), index.embeddings.tobytes(), index.specimen_links)


def test_each_save_commits_a_version_and_keeps_the_one_before(three: DescriptionIndex, tmp_path: Path) -> None:
    folder = tmp_path / "descriptions"
    three.save(folder)
    three.link(_specimens({7: "Beta glabra Someone"}))
    three.save(folder)
    assert os.readlink(folder / "current") == "v0002" and (folder / "v0001").is_dir()  # a reader may still hold v0001
    assert all(os.readlink(folder / name) == f"current/{name}" for name in FILES)
    loaded = DescriptionIndex.load(folder)
    assert _state(loaded) == _state(three) and loaded.specimen_links == {"Beta glabra": [7]}  # links saved with the index
    assert json.loads((folder / "manifest.json").read_text())["version"] == 2
    three.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, "current", "v0002", "v0003"])
    assert loaded.search("leaves not hairy", k=1, signals=("bm25", "traits"))[0]["specimen_ids"] == [7]


def test_the_flat_layout_loads_and_the_next_save_migrates_it(three: DescriptionIndex, tmp_path: Path) -> None:
    folder = tmp_path / "descriptions"
    three.link(_specimens({3: "Gamma pilosa"}))
    three.save(folder)
    write_flat_descriptions(folder)  # as 51d512c wrote it, with a killed save's leftovers
    (folder / ".writing").mkdir()
    (folder / ".writing" / "chunks.npy").write_bytes(b"half")
    assert not (folder / "current").exists() and not (folder / "manifest.json").is_symlink()
    flat = DescriptionIndex.load(folder)
    assert DescriptionIndex.exists(folder) and _state(flat) == _state(three)
    flat.save(folder)
    assert os.readlink(folder / "current") == "v0001"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, "current", "v0001"])
    assert all(os.readlink(folder / name) == f"current/{name}" for name in FILES)
    assert _state(DescriptionIndex.load(folder)) == _state(three)


def test_a_tie_is_ranked_whole_before_the_pool_is_cut_so_file_order_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    traits = np.zeros(200, dtype=np.float32)
    traits[:150] = 2.0  # a 150-way tie across the pool of 100
    traits[150:160] = 1.0
    bm25 = rng.random(200).astype(np.float32)
    order, ranks = competition_ranks(traits, pool=100)
    assert len(order) == 150 and set(ranks.tolist()) == {1}  # the whole tie, none of the taxa after it
    _, mean_ranks = competition_ranks(traits, pool=100, ties="mean")
    assert set(mean_ranks.tolist()) == {75.5}
    fused, _ = fuse({"traits": traits, "bm25": bm25}, np.zeros(200, dtype=bool), pool=100)
    perm = rng.permutation(200)
    moved, _ = fuse({"traits": traits[perm], "bm25": bm25[perm]}, np.zeros(200, dtype=bool), pool=100)
    assert np.allclose(moved, fused[perm])  # the same taxon gets the same score in any file order


def test_the_rrf_constant_does_not_change_when_weights_are_given() -> None:
    from retrieval.flora.morphology.fusion import DEFAULT_RRF_K, DEFAULT_WEIGHTS

    bm25 = np.array([3.0, 1.0, 0.0], dtype=np.float32)
    plain, _ = fuse({"bm25": bm25}, np.zeros(3, dtype=bool))
    weighted, _ = fuse({"bm25": bm25}, np.zeros(3, dtype=bool), weights={"bm25": 1.0})
    assert weighted[0] == pytest.approx(1 / (DEFAULT_RRF_K + 1))
    assert plain[0] == pytest.approx(DEFAULT_WEIGHTS["bm25"] / (DEFAULT_RRF_K + 1))


def test_a_narrower_query_state_reaches_the_broader_state_a_flora_wrote_with_a_discount() -> None:
    from retrieval.flora.vocab import BROADER_MATCH

    texts = ["Leaves puberulent.", "Leaves hairy.", "Leaves glabrous.", "Leaves pubescent."]
    tables = [trait_table(extract_traits(t, "en")) for t in texts]
    signal = TraitSignal(tables, ["species"] * 4)
    score, _ = signal.scores(extract_traits("puberulent leaves", "en", query=True))
    exact, broader, glabrous, sibling = score.tolist()
    assert broader == pytest.approx(BROADER_MATCH * exact) and 0 < broader < exact
    assert glabrous < 0 and sibling == 0.0  # a sibling state is neither support nor contradiction
    score, _ = signal.scores(extract_traits("hairy leaves", "en", query=True))  # and the other way round
    assert score[1] > score[0] == pytest.approx(BROADER_MATCH * score[1])


def test_query_parts_cut_where_the_trait_reader_cuts() -> None:
    from retrieval.flora.morphology import query_parts

    assert query_parts("leaves (3-5; rarely 7) opposite; flowers white: fragrant") == [
        "leaves (3-5; rarely 7) opposite", "flowers white", "fragrant"]


def test_the_default_text_encoder_loads_once_however_it_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.flora import text_encoders

    loads = []
    monkeypatch.setattr(text_encoders, "create_text_encoder", lambda name, device=None: loads.append((name, device)) or object())
    if hasattr(text_encoders, "_loaded_encoder"):
        text_encoders._loaded_encoder.cache_clear()
    else:
        text_encoders.cached_text_encoder.cache_clear()
    try:
        first = text_encoders.cached_text_encoder("minilm-probe")
        assert text_encoders.cached_text_encoder("minilm-probe", None) is first
        assert text_encoders.cached_text_encoder(name="minilm-probe") is first
        assert loads == [("minilm-probe", None)]
    finally:
        (getattr(text_encoders, "_loaded_encoder", None) or text_encoders.cached_text_encoder).cache_clear()


class _CountingEncoder:
    """Stands in for a text model where only the number of texts encoded matters."""

    name, fingerprint, dim = "counting", "c0ffee", 3

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        self.encoded += texts
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_embeddings_are_cached_on_disk_by_text_so_unchanged_text_is_not_encoded_again(tmp_path: Path) -> None:
    from retrieval.flora.morphology.dense import EmbeddingCache, embed_chunks

    texts = ["Leaves: margin serrate", "Flowers white", "Leaves: margin serrate"]
    encoder = _CountingEncoder()
    first = embed_chunks(texts, encoder, progress=False, chunk_taxon=np.array([0, 1, 1]),
                         cache=EmbeddingCache(tmp_path / "cache", 3))
    assert sorted(encoder.encoded) == ["Flowers white", "Leaves: margin serrate"]  # each distinct text once
    again = _CountingEncoder()
    second = embed_chunks(texts + ["Fruit a capsule"], again, progress=False, cache=EmbeddingCache(tmp_path / "cache", 3))
    assert again.encoded == ["Fruit a capsule"] and np.array_equal(second[:3], first)
    assert EmbeddingCache(tmp_path / "cache", 4).get("Flowers white") is None  # another model's vectors never reused


def test_query_embeddings_are_computed_once_per_text() -> None:
    encoder = _CountingEncoder()
    signal = DenseSignal(np.eye(3, dtype=np.float32), np.array([0, 1, 2]), 3, {"name": "counting"}, encoder)
    signal.scores("white flowers, serrate leaves", ["white flowers", "serrate leaves"])
    signal.scores("white flowers, serrate leaves", ["white flowers", "serrate leaves"])
    signal.scores("white flowers", [])
    assert sorted(encoder.encoded) == ["serrate leaves", "white flowers", "white flowers, serrate leaves"]


class _PassCountingEncoder(_CountingEncoder):
    """Like a text model of this package (it has encode_queries): records each forward pass's texts."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[tuple[list[str], dict]] = []

    def encode(self, texts: list[str], **options: object) -> np.ndarray:
        self.passes.append((list(texts), options))
        return super().encode(texts)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        self.passes.append((list(texts), {"queries": True}))
        return super().encode(texts)


def test_a_query_and_its_parts_go_through_the_encoder_in_one_call_and_score_as_a_plain_product() -> None:
    import torch

    encoder = _PassCountingEncoder()
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((7, 3)).astype(np.float32)
    signal = DenseSignal(embeddings, np.array([0, 0, 1, 1, 1, 2, 2]), 3, {"name": "counting"}, encoder)
    threads = torch.get_num_threads()
    score, sims = signal.scores("white flowers, serrate leaves", ["white flowers", "serrate leaves"])
    assert encoder.passes == [(["white flowers, serrate leaves", "white flowers", "serrate leaves"], {"queries": True})]
    q = encoder.encode(["white flowers, serrate leaves", "white flowers", "serrate leaves"])
    assert np.allclose(signal.similarities(q), embeddings @ q.T, rtol=1e-6)
    assert np.allclose(sims, (embeddings @ q.T).max(axis=1), rtol=1e-6)
    assert torch.get_num_threads() == threads  # the one-thread product leaves the process's setting as it was


def test_a_text_model_encodes_a_query_and_its_parts_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.flora import text_encoders

    encoder = text_encoders.create_text_encoder("tiny-test")
    texts = ["white flowers, serrate leaves", "white flowers", "serrate leaves"]
    passes: list[list[str]] = []
    run = encoder.model.encode
    monkeypatch.setattr(encoder.model, "encode", lambda batch, **kw: passes.append(list(batch)) or run(batch, **kw))
    vectors = encoder.encode_queries(texts)
    assert len(passes) == 1 and sorted(passes[0]) == sorted(texts) and vectors.shape == (3, encoder.dim)
    with encoder.lock:  # the public lock is re-entrant: a caller holding it can still encode
        assert encoder.encode_queries(texts[:1]).shape == (1, encoder.dim)
