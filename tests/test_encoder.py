"""Encoder: the tiny config on the same open_clip code path as the real presets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retrieval.vectors import create_encoder, pick_dtype, weights_fingerprint
from retrieval.errors import BadInput, ImageError, NetworkUnavailable
from retrieval.registry import list_presets, preset


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("tiny-test")


def test_registry_names_the_issue_presets():
    names = list_presets("encoders")
    assert {"bioclip", "bioclip-2", "vit-b-16-openai", "tiny-test"} <= set(names)
    assert preset("encoders", "bioclip")["model"] == "hf-hub:imageomics/bioclip"
    assert preset("encoders", "hf-hub:org/repo")["model"] == "hf-hub:org/repo"
    assert preset("encoders", "local-dir:/x")["model"] == "local-dir:/x"
    with pytest.raises(BadInput, match="unknown encoder"):
        preset("encoders", "no-such-model")


def test_vectors_are_normalised_float32(encoder):
    vecs = encoder.encode_images(_images(3))
    assert vecs.shape == (3, encoder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    texts = encoder.encode_texts(["opposite serrate leaves", "white flowers"])
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])


def test_same_weights_in_every_process(encoder):
    """tiny-test is seeded: an index built in one process is searchable from another."""
    other = create_encoder("tiny-test", precision="fp32")
    assert other is not encoder and other.fingerprint == encoder.fingerprint


def test_bf16_embeddings_stay_close_to_fp32():
    imgs = _images(4)
    fp32 = create_encoder("tiny-test", precision="fp32").encode_images(imgs)
    bf16 = create_encoder("tiny-test", precision="bf16").encode_images(imgs)
    assert (fp32 * bf16).sum(axis=1).min() > 0.99


def test_paths_with_workers_and_bad_files(tmp_path, encoder):
    paths = []
    for i, img in enumerate(_images(5)):
        paths.append(tmp_path / f"{i}.jpg")
        img.save(paths[-1])
    (tmp_path / "bad.jpg").write_text("not an image")
    paths.insert(2, tmp_path / "bad.jpg")
    with pytest.raises(ImageError, match="bad.jpg"):
        encoder.encode_images(paths)
    vecs = encoder.encode_images(paths, batch_size=2, num_workers=2, skip_errors=True)
    assert not vecs[2].any() and np.all(np.any(vecs[[0, 1, 3, 4, 5]] != 0, axis=1))
    direct = encoder.encode_images(paths[:2])
    np.testing.assert_allclose(vecs[:2], direct, atol=1e-5)


def test_image_features_share_the_pass(encoder):
    pixels = encoder.preprocess(_images(1)[0])[None]
    pooled, tokens = encoder.image_features(pixels)
    np.testing.assert_allclose(pooled.numpy()[0], encoder.encode_pixels(pixels)[0], atol=1e-5)
    assert tokens.shape[:2] == (1, (encoder.image_size // 16) ** 2)


def test_empty_text_is_bad_input(encoder):
    with pytest.raises(BadInput, match="empty"):
        encoder.encode_texts(["  "])


def test_missing_weights_offline_say_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkUnavailable, match="tiny-test"):
        create_encoder("hf-hub:imageomics/does-not-exist-here")


def test_auto_precision_is_a_known_dtype():
    import torch

    assert pick_dtype(torch.device("cpu"), "auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(BadInput):
        pick_dtype(torch.device("cpu"), "int3")


def test_fingerprint_changes_with_weights():
    import torch

    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    assert weights_fingerprint(a) != weights_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
