"""The decoding loop: cached == uncached, batching == one by one, beam beats greedy where it should,
repetition controls hold; and the BLIP / CoCa adapters agree with their libraries' own forward passes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from captioning.decoding import DecodeOptions, generate
from captioning.registry import create_captioner
from retrieval.errors import BadInput


def _image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8"))


class Markov:
    """A step model whose next-token distribution depends on the last token only (cache = nothing to keep)."""

    eos_token_ids = (0,)
    pad_token_id = 0

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.log()

    def forward_step(self, input_ids, attention_mask, position_ids, memory, cache, use_cache):
        return self.table[input_ids[:, -1]].clone(), ("cache",) if use_cache else None

    def expand_cache(self, cache, repeats):
        return cache

    def reorder_cache(self, cache, rows):
        return cache


def _trap() -> Markov:
    """From 1, greedy takes 2 (p .6) then is stuck with a flat tail; 3 (p .4) leads to a sure path."""
    t = torch.full((6, 6), 1e-6)
    t[1, 2], t[1, 3] = 0.6, 0.4
    t[2, 4], t[2, 5], t[2, 0] = 0.34, 0.33, 0.33
    t[3, 0] = 1.0
    t[4, 0] = t[5, 0] = 1.0
    return Markov(t / t.sum(1, keepdim=True))


def test_beam_search_finds_the_more_probable_sequence():
    model = _trap()
    greedy = generate(model, [[1]], {}, DecodeOptions(max_new_tokens=5, length_penalty=0.0))[0]
    beam = generate(model, [[1]], {}, DecodeOptions(strategy="beam", num_beams=2, max_new_tokens=5, length_penalty=0.0))[0]
    assert greedy["tokens"] == [2, 4]
    assert beam["tokens"] == [3]
    assert beam["score"] == pytest.approx(math.log(0.4), abs=1e-3) and beam["score"] > greedy["score"]


def test_min_length_and_no_repeat_ngram():
    t = torch.full((5, 5), 1e-3)
    t[1, 2] = t[2, 1] = 1.0  # stop at once, or else 1 2 1 2 ...
    t[1, 0] = t[2, 0] = 2.0
    model = Markov(t / t.sum(1, keepdim=True))
    assert generate(model, [[1]], {}, DecodeOptions(max_new_tokens=8))[0]["tokens"] == []
    out = generate(model, [[1]], {}, DecodeOptions(max_new_tokens=8, min_new_tokens=8))[0]["tokens"]
    assert len(out) == 8 and 0 not in out
    out = generate(model, [[1]], {}, DecodeOptions(max_new_tokens=8, min_new_tokens=8, no_repeat_ngram_size=2))[0]["tokens"]
    bigrams = list(zip(out, out[1:]))
    assert len(bigrams) == len(set(bigrams))
    plain = generate(model, [[1]], {}, DecodeOptions(max_new_tokens=6, min_new_tokens=6))[0]["tokens"]
    penalised = generate(model, [[1]], {}, DecodeOptions(max_new_tokens=6, min_new_tokens=6, repetition_penalty=50.0))[0]["tokens"]
    assert len(set(penalised)) > len(set(plain))


def test_options_are_validated():
    for bad in ({"strategy": "magic"}, {"max_new_tokens": 0}, {"min_new_tokens": 9, "max_new_tokens": 3},
                {"top_p": 0.0}, {"temperature": 0.0}, {"num_beams": 0}):
        with pytest.raises(BadInput):
            DecodeOptions(**bad)


@pytest.fixture(scope="module")
def tiny():
    return create_captioner("tiny-test", precision="fp32")


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_cached_and_uncached_decoding_give_the_same_tokens(tiny, strategy):
    options = DecodeOptions(strategy=strategy, max_new_tokens=12, num_beams=3, seed=3, top_p=0.95,
                            repetition_penalty=1.3, no_repeat_ngram_size=3)
    images = [_image(1), _image(2)]
    cached = tiny.caption(images, organs=["leaf", "flower"], options=options)
    uncached = tiny.caption(images, organs=["leaf", "flower"], options=options.with_(use_cache=False))
    assert [c["sections"] for c in cached] == [u["sections"] for u in uncached]
    assert all(c["tokens"] > 0 for c in cached)


def test_batched_prompts_of_different_lengths_match_one_by_one(tiny):
    """Left padding must not change any row's tokens."""
    from captioning.base import encode

    enc = encode(tiny.encoder, [_image(5)])
    with torch.inference_mode():
        memory = tiny.model.memory(enc.pooled, enc.tokens)
    prompts = [tiny.encode_prompt("leaf"), tiny.encode_prompt("flower", "Similar: Viola alba: petals violet, spurred")]
    for strategy in ("greedy", "beam"):
        options = DecodeOptions(strategy=strategy, max_new_tokens=10)
        together = generate(tiny.steps, prompts, {"image": memory.repeat(2, 1, 1)}, options)
        alone = [generate(tiny.steps, [p], {"image": memory}, options)[0] for p in prompts]
        assert [t["tokens"] for t in together] == [a["tokens"] for a in alone]


def test_image_is_encoded_once_and_shared(tiny, monkeypatch):
    from captioning import base

    enc = base.encode(tiny.encoder, [_image(7)])
    calls = []
    monkeypatch.setattr(tiny.encoder, "image_features", lambda *a, **k: calls.append(1))
    tiny.caption(encoded=enc, options=DecodeOptions(max_new_tokens=3))
    assert calls == []


def test_coca_cached_steps_match_open_clip_forward():
    coca = create_captioner("coca-tiny-test", precision="fp32")
    memory = coca.memory([_image(0)])
    text = torch.tensor([[coca.sot, 320, 1125, 539, 518, 2102]])
    with torch.no_grad():
        ref = coca.model(None, text, image_latent=torch.zeros(1, 1), image_embs=memory["image"], output_labels=False)["logits"]
        mask, pos = torch.ones_like(text), torch.arange(text.shape[1])[None]
        logits, cache = coca.steps.forward_step(text[:, :2], mask[:, :2], pos[:, :2], memory, None, True)
        torch.testing.assert_close(logits, ref[:, 1], atol=1e-4, rtol=1e-4)
        for t in range(2, text.shape[1]):
            logits, cache = coca.steps.forward_step(text[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], memory, cache, True)
            torch.testing.assert_close(logits, ref[:, t], atol=1e-4, rtol=1e-4)
    for strategy in ("greedy", "beam"):
        options = DecodeOptions(strategy=strategy, max_new_tokens=8)
        a = coca.caption([_image(0), _image(1)], options=options)
        b = coca.caption([_image(0), _image(1)], options=options.with_(use_cache=False))
        assert a == b and a[0]["tokens"] == 8


def test_blip_through_our_loop_matches_its_own_greedy_generate():
    blip = create_captioner("blip-tiny-test", precision="fp32")
    image = _image(4)
    ours = blip.caption([image], options=DecodeOptions(max_new_tokens=10))[0]
    memory = blip.memory([image])
    with torch.no_grad():
        ref = blip.model.text_decoder.generate(input_ids=torch.tensor([[blip.bos]]), eos_token_id=blip.eos,
                                               pad_token_id=blip.pad, encoder_hidden_states=memory["image"],
                                               max_new_tokens=10, do_sample=False)
    assert ours["text"] == blip.tokenizer.decode(ref[0, 1:], skip_special_tokens=True).strip()
    beam = DecodeOptions(strategy="beam", max_new_tokens=10)
    assert blip.caption([image], options=beam) == blip.caption([image], options=beam.with_(use_cache=False))


@pytest.mark.parametrize("name", ["decoder-distilgpt2", "blip-base"])
def test_missing_weights_name_the_preset(name, monkeypatch):
    from retrieval.errors import NetworkUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkUnavailable, match=f"captioner '{name}'"):
        create_captioner(name, encoder="tiny-test")
