"""The fast encoding path (issue 9, item 7): length-sorted token-budget batches, batches side by
side on one torch thread each, bfloat16 weights where the CPU has them; none may change which
vector belongs to which text, nor move a vector more than bfloat16 rounding does."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.flora.text_encoders import choose_precision, create_text_encoder, encode_workers, length_batches

TEXTS = ["Leaves: apex acute", "Flowers white, 5-merous; petals obovate, glabrous, 3-4 mm long", "x",
         "Fruit a drupe", "Leaves opposite, elliptic, margin serrate, hairy beneath and glabrous above", "Stipules 0",
         "Inflorescence axillary, cymose", "Seeds 2"] * 3


def test_length_batches_cover_every_text_once_shortest_first_within_the_budget() -> None:
    batches = length_batches(TEXTS, budget_chars=120)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(TEXTS)))
    lengths = [len(TEXTS[i]) for i in flat]
    assert lengths == sorted(lengths)
    for b in batches:
        assert len(b) == 1 or len(b) * max(len(TEXTS[i]) for i in b) <= 120
    assert len(length_batches(TEXTS, budget_chars=10**6)) == 1 and length_batches([], 100) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_each_text_gets_its_own_vector_whatever_the_batching(workers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERBARIA_ENCODE_WORKERS", workers)
    encoder = create_text_encoder("tiny-test", precision="float32")
    together = encoder.encode(TEXTS, budget_chars=100)
    alone = np.stack([encoder.encode([t])[0] for t in TEXTS])
    assert together.shape == (len(TEXTS), encoder.dim) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_bfloat16_embeddings_stay_close_to_float32_and_share_the_fingerprint() -> None:
    full = create_text_encoder("tiny-test", precision="float32")
    half = create_text_encoder("tiny-test", precision="bfloat16")
    a, b = full.encode(TEXTS), half.encode(TEXTS)
    assert half.precision == "bfloat16" and full.fingerprint == half.fingerprint  # indexes stay interchangeable
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.99


def test_precision_is_bfloat16_only_where_asked_or_native(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.flora import text_encoders

    monkeypatch.delenv("HERBARIA_TEXT_PRECISION", raising=False)
    monkeypatch.setattr(text_encoders, "cpu_has_bf16", lambda: True)
    assert choose_precision("cpu") == "bfloat16" and choose_precision("cuda") == "float32"
    monkeypatch.setattr(text_encoders, "cpu_has_bf16", lambda: False)
    assert choose_precision(None) == "float32" and choose_precision("cpu", "bf16") == "bfloat16"
    monkeypatch.setenv("HERBARIA_TEXT_PRECISION", "fp32")
    monkeypatch.setattr(text_encoders, "cpu_has_bf16", lambda: True)
    assert choose_precision("cpu") == "float32"
    with pytest.raises(ValueError, match="precision"):
        choose_precision("cpu", "int4")


def test_workers_follow_the_cores_and_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERBARIA_ENCODE_WORKERS", "3")
    assert encode_workers(10, "cpu") == 3 and encode_workers(2, "cpu") == 2
    assert encode_workers(1, "cpu") == 1 and encode_workers(10, "cuda") == 1
    monkeypatch.setenv("HERBARIA_ENCODE_WORKERS", "0")
    assert encode_workers(10, "cpu") == 1
