"""The neural decoder learns, checkpoints round-trip, and an interrupted training resumes where it stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from captioning.base import encode
from captioning.decoder import NeuralCaptioner
from captioning.decoding import DecodeOptions
from captioning.training import Pair, collate, evaluate, fit, make_examples
from retrieval.errors import BadInput, HerbariaError
from retrieval.registry import preset

SECTIONS = [
    {"leaf": "Leaves alternate, palmately 5-lobed, margin toothed.", "flower": "Flowers solitary, petals 5, pink."},
    {"leaf": "Leaves opposite, simple, entire.", "flower": "Flowers in umbels, white."},
    {"leaf": "Leaves whorled, linear, glabrous.", "flower": "Flowers yellow; tepals 6."},
    {"leaf": "Leaves basal, sword-shaped, parallel-veined.", "flower": "Flowers blue, in racemes."},
]


def _images(n: int) -> list[Image.Image]:
    return [Image.fromarray((np.random.default_rng(i).random((64, 64, 3)) * 255).astype("uint8")) for i in range(n)]


def _fresh() -> NeuralCaptioner:
    texts = [t for s in SECTIONS for t in s.values()]
    cap = NeuralCaptioner.from_spec(preset("captioners", "tiny-test"), precision="fp32", texts=texts)
    cap.organs = cap.meta["organs"] = ["leaf", "flower"]
    return cap


@pytest.fixture(scope="module")
def data():
    cap = _fresh()
    features = encode(cap.encoder, _images(len(SECTIONS)))
    pairs = [Pair(i, 100 + i, f"taxon {i}", dict(s)) for i, s in enumerate(SECTIONS)]
    return features, pairs


def _loss(cap: NeuralCaptioner, examples, features) -> float:
    batch = collate(examples, cap.tokenizer.pad_token_id)
    rows = batch.pop("rows")
    cap.model.float().eval()
    with torch.no_grad():
        return float(cap.model(**batch, pooled=features.pooled[rows].float(), tokens=features.tokens[rows].float()))


@pytest.fixture(scope="module")
def trained(data):
    features, pairs = data
    cap = _fresh()
    examples = make_examples(cap, pairs)
    before = _loss(cap, examples, features)
    report = fit(cap, examples, features, epochs=120, batch_size=8, lr=3e-3, progress=False)
    after = _loss(cap, examples, features)
    return cap, before, after, report


def test_decoder_learns_and_reproduces_training_captions(data, trained):
    features, pairs = data
    cap, before, after, report = trained
    assert report["finished"] and report["steps"] == 120
    assert after < 0.1 * before, (before, after)
    outs = cap.caption(encoded=features, options=DecodeOptions(max_new_tokens=40))
    assert [o["sections"] for o in outs] == [p.sections for p in pairs]
    assert outs[0]["text"] == "Leaves alternate, palmately 5-lobed, margin toothed. Flowers solitary, petals 5, pink."
    scores = evaluate(cap, pairs, features)["decoder"]
    assert scores["bleu4"] == pytest.approx(1.0) and scores["trait_f1"] == pytest.approx(1.0)


def test_checkpoint_round_trips(tmp_path, data, trained):
    features, _ = data
    cap = trained[0]
    cap.save(tmp_path / "model", trained=True)
    loaded = NeuralCaptioner.load(tmp_path / "model", precision="fp32")
    assert loaded.meta["trained"] and loaded.organs == cap.organs
    for (name, a), (_, b) in zip(cap.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    options = DecodeOptions(strategy="beam", max_new_tokens=30)
    assert loaded.caption(encoded=features, options=options) == cap.caption(encoded=features, options=options)
    assert loaded.tokenizer.encode("Leaves opposite") == cap.tokenizer.encode("Leaves opposite")


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, data):
    features, pairs = data
    _fresh().save(tmp_path / "init")
    runs = {}
    for name, steps in (("whole", None), ("interrupted", 7)):
        cap = NeuralCaptioner.load(tmp_path / "init", precision="fp32")
        examples = make_examples(cap, pairs)
        kwargs = dict(epochs=4, batch_size=3, lr=3e-3, out=tmp_path / name, progress=False, save_every=2)
        first = fit(cap, examples, features, max_steps=steps, **kwargs)
        if steps:
            assert not first["finished"] and first["steps"] == 7
            state = json.loads((tmp_path / name / "checkpoint" / "state.json").read_text())
            assert (state["epoch"], state["batch"]) == (2, 1)
            cap = NeuralCaptioner.load(tmp_path / "init", precision="fp32")
            first = fit(cap, examples, features, **kwargs)
        assert first["finished"] and first["steps"] == 12
        runs[name] = (cap, first["history"])
    (whole, h1), (resumed, h2) = runs["whole"], runs["interrupted"]
    assert [h["loss"] for h in h1] == pytest.approx([h["loss"] for h in h2], rel=1e-4)
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_bad_inputs(tmp_path, data):
    features, _ = data
    cap = _fresh()
    with pytest.raises(BadInput):
        fit(cap, [], features)
    with pytest.raises(BadInput):
        NeuralCaptioner.load(tmp_path)
    cap.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(HerbariaError):
        NeuralCaptioner.load(tmp_path / "m")


def test_int8_decoding_keeps_the_learned_captions(data, trained):
    """The CPU fast path (int8 weights, see quantize.py) writes what full precision writes."""
    features, pairs = data
    cap = trained[0]
    fast = NeuralCaptioner(cap.model, cap.tokenizer, dict(cap.meta), precision="int8")
    assert fast.steps.int8 and not cap.steps.int8 and fast.precision == "int8"
    for strategy in ("greedy", "beam"):
        options = DecodeOptions(strategy=strategy, max_new_tokens=40)
        assert fast.caption(encoded=features, options=options) == cap.caption(encoded=features, options=options)
    with pytest.raises(BadInput):
        NeuralCaptioner(cap.model, cap.tokenizer, dict(cap.meta), precision="int4")
