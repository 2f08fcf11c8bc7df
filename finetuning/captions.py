"""The captioning half of the multi-task objective: the trait decoder of `captioning/` on the trained image tower.

Each described sheet of a batch gets one organ section of one of its taxon's
descriptions as target, prompted as `herbaria train-captioner` prompts: by the organ
and, for half of the examples, the sections of its nearest batch neighbours (by the
momentum image features). The half without context makes the decoder read the image,
so its gradient shapes the image tower; the half with context keeps the exported
decoder usable as a retrieval-augmented captioner.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finetuning.pairs import PairSet
from retrieval.errors import BadInput
from retrieval.registry import list_presets, preset

CONTEXT_SHARE = 0.5


def captioner_preset(captioner: str, model: str) -> str:
    """'auto': the decoder preset made for this encoder (tiny-test for tiny-test), else decoder-distilgpt2."""
    if captioner != "auto":
        return captioner
    for name in list_presets("captioners"):
        spec = preset("captioners", name)
        if spec.get("kind") == "decoder" and spec.get("encoder") == model:
            return name
    return "decoder-distilgpt2"


def start_captioner(pairs: PairSet, *, captioner: str, model: str, folder: Path, device: str | None,
                    resume: bool) -> Any:
    """The decoder to train: the one saved in `folder` when resuming (same tokenizer), else a fresh one, saved there."""
    from captioning.decoder import NeuralCaptioner
    from captioning.grounded import GROUP_ORDER

    if resume and (folder / "captioner.json").exists():
        return NeuralCaptioner.load(folder, device=device, precision="fp32")
    spec = preset("captioners", captioner_preset(captioner, model))
    if spec.get("kind") != "decoder":
        raise BadInput(f"captioner {spec['name']!r} is not a trainable decoder; use decoder-distilgpt2 or tiny-test")
    sections = [s for t in pairs.taxa for s in t.sections]
    corpus = [text for s in sections for text in s.values()]
    if not corpus:
        raise BadInput("--objective multitask needs flora descriptions linked to the specimens; add them with "
                       "`herbaria descriptions add`, or use --objective contrastive")
    cap = NeuralCaptioner.from_spec(spec, encoder=model, device=device, precision="fp32", texts=corpus)
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    cap.organs = sorted({o for s in sections for o in s}, key=lambda o: (order.get(o, len(order)), o))
    cap.meta.update(organs=cap.organs)
    cap.save(folder)
    return cap


def caption_batch(captioner: Any, pairs: PairSet, rows: Sequence[int], similarity: torch.Tensor, rng: random.Random, *,
                  max_target_tokens: int = 64) -> dict[str, torch.Tensor] | None:
    """Collated decoder inputs for the described sheets of a batch (`rows`: specimen indexes), or None."""
    from captioning.training import Pair, collate, make_examples

    chosen: list[dict[str, str] | None] = []
    for i in rows:
        options = [s for s in pairs.taxa[pairs.specimens[i].taxon].sections if s]
        chosen.append(rng.choice(options) if options else None)
    items = []
    for b, i in enumerate(rows):
        sections = chosen[b]
        if sections is None:
            continue
        organ = rng.choice(sorted(sections))
        neighbours = None
        if rng.random() < CONTEXT_SHARE:
            order = torch.argsort(similarity[b], descending=True).tolist()
            neighbours = [{"specimen_id": pairs.specimens[rows[j]].specimen_id, "score": float(similarity[b, j]),
                           "name": pairs.taxa[pairs.specimens[rows[j]].taxon].key, "sections": chosen[j]}
                          for j in order if j != b and chosen[j]]
        items.append(Pair(b, pairs.specimens[i].specimen_id, pairs.taxa[pairs.specimens[i].taxon].key,
                          {organ: sections[organ]}, neighbours))
    if not items:
        return None
    examples = make_examples(captioner, items, max_target_tokens=max_target_tokens)
    return collate(examples, captioner.tokenizer.pad_token_id) if examples else None
