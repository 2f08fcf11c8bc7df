"""Training the neural decoder on (specimen image, its taxon's description) pairs.

The image encoder stays frozen (as in SmallCap), so every image is encoded once up
front and epochs only run the decoder: on a CPU that is the difference between
minutes and hours. Each organ section of a description is one target, prompted by
the organ and the neighbours' text for it. accelerate handles mixed precision and
several GPUs; checkpoints hold model, optimiser, scheduler and position in the
epoch, so an interrupted run resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from captioning.base import Encoded, Neighbour
from captioning.decoder import NeuralCaptioner
from captioning.decoding import DecodeOptions
from captioning.metrics import report
from captioning.prompts import compose, neighbour_context
from retrieval.errors import BadInput

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
IGNORE = -100


@dataclass
class Pair:
    """One training or validation item: a row of the encoded features and its taxon's description."""

    row: int
    specimen_id: int
    name: str
    sections: dict[str, str]  # organ -> text; {WHOLE: text} when the description has no organ sections
    neighbours: list[Neighbour] | None = None

    def reference(self) -> str:
        return compose(self.sections)


@dataclass
class Example:
    row: int
    prompt: list[int]
    target: list[int]


def make_examples(captioner: NeuralCaptioner, pairs: Sequence[Pair], *, max_target_tokens: int = 96) -> list[Example]:
    """One example per (pair, organ section): prompt = neighbours' text for the organ + organ label."""
    tok = captioner.tokenizer
    out = []
    for pair in pairs:
        for organ, text in pair.sections.items():
            if not text.strip():
                continue
            ctx = neighbour_context(pair.neighbours or [], organ, max_taxa=captioner.meta.get("context_taxa", 3),
                                    exclude_specimen=pair.specimen_id)
            target = tok.encode(" " + text.strip(), add_special_tokens=False)[:max_target_tokens] + [tok.eos_token_id]
            out.append(Example(pair.row, captioner.encode_prompt(organ, ctx), target))
    return out


def collate(examples: Sequence[Example], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded input, attention mask, labels (-100 on prompt and padding) and feature rows."""
    width = max(len(e.prompt) + len(e.target) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        seq = e.prompt + e.target
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, len(e.prompt):len(seq)] = torch.tensor(e.target)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "rows": torch.tensor([e.row for e in examples], dtype=torch.long)}


def trainable_parameters(captioner: NeuralCaptioner, scope: str) -> list[torch.nn.Parameter]:
    """`all`, or `cross`: only the image bridge and cross-attention (SmallCap-style, for a pretrained LM)."""
    model = captioner.model
    if scope == "all":
        params = list(model.parameters())
    elif scope == "cross":
        params = []
        for name, p in model.named_parameters():
            train = not name.startswith("lm.") or ".crossattention." in name or ".ln_cross_attn." in name
            p.requires_grad_(train)
            if train:
                params.append(p)
    else:
        raise BadInput(f"unknown training scope {scope!r}; use all or cross")
    return params


def _mixed_precision(value: str, device: torch.device) -> str:
    if value != "auto":
        return value
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _save_checkpoint(accelerator: Any, folder: Path, state: dict[str, Any]) -> None:
    """Write a new checkpoint beside the old one, then swap: a crash leaves one complete checkpoint."""
    tmp = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def fit(captioner: NeuralCaptioner, examples: Sequence[Example], features: Encoded, *, epochs: int = 10,
        batch_size: int = 16, lr: float = 3e-4, weight_decay: float = 0.01, warmup: float = 0.05,
        scope: str = "all", out: str | Path | None = None, resume: bool = True, save_every: int = 0,
        mixed_precision: str = "auto", seed: int = 0, max_steps: int | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Teacher-forced training of `captioner.model` in place; returns the loss history.

    With `out`, a checkpoint is written at every epoch end (and every `save_every` steps)
    to out/checkpoint, and `resume` continues from it. `max_steps` stops early (it
    exists so tests can interrupt a run at a known point).
    """
    from accelerate import Accelerator

    if not examples:
        raise BadInput("no training examples: the collection's specimens have no described taxa")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise BadInput("need epochs >= 1, batch_size >= 1 and lr > 0")
    device = captioner.device
    accelerator = Accelerator(mixed_precision=_mixed_precision(mixed_precision, device), cpu=device.type == "cpu")
    model = captioner.model.float().train()
    params = trainable_parameters(captioner, scope)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(examples) / (batch_size * accelerator.num_processes))
    total = per_epoch * epochs
    warm = max(1, int(warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    pooled, tokens = features.pooled.float(), features.tokens
    pad = captioner.tokenizer.pad_token_id
    state = {"epoch": 0, "batch": 0, "step": 0, "history": [], "examples": len(examples)}
    ckpt = Path(out) / CHECKPOINT_DIR if out else None
    if ckpt is not None and resume and (ckpt / STATE_FILE).exists():
        saved = json.loads((ckpt / STATE_FILE).read_text())
        if saved.get("examples") != len(examples):
            raise BadInput(f"the checkpoint in {ckpt} was trained on {saved.get('examples')} examples, not "
                           f"{len(examples)}; train from scratch with --no-resume (or into another --out)")
        accelerator.load_state(str(ckpt))
        state = saved
        log.info("resuming at epoch %d, batch %d", state["epoch"], state["batch"])
    started = time.perf_counter()
    bar = tqdm(total=total, initial=state["step"], desc="training captioner", unit="step", disable=not progress)
    stopped = False
    while state["epoch"] < epochs and not stopped:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + state["epoch"])).tolist()
        order = order[accelerator.process_index::accelerator.num_processes]
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        losses = [] if state["batch"] == 0 else list(state.get("epoch_losses", []))
        for b in range(state["batch"], len(batches)):
            batch = collate([examples[i] for i in batches[b]], pad)
            rows = batch.pop("rows")
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                loss = model(**batch, pooled=pooled[rows].to(accelerator.device),
                             tokens=tokens[rows].to(accelerator.device))
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            state.update(batch=b + 1, step=state["step"] + 1, epoch_losses=losses)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if max_steps is not None and state["step"] >= max_steps:
                stopped = True
                break
            if ckpt is not None and save_every and state["step"] % save_every == 0 and b + 1 < len(batches):
                _save_checkpoint(accelerator, ckpt, state)
        if not stopped:
            state["history"].append({"epoch": state["epoch"] + 1, "loss": round(sum(losses) / max(len(losses), 1), 5)})
            state.update(epoch=state["epoch"] + 1, batch=0, epoch_losses=[])
        if ckpt is not None:
            _save_checkpoint(accelerator, ckpt, state)
    bar.close()
    captioner.model = accelerator.unwrap_model(model).to(captioner.dtype).eval()
    captioner.refresh()
    for p in captioner.model.parameters():
        p.requires_grad_(True)
    return {"epochs": state["epoch"], "steps": state["step"], "history": state["history"],
            "last_losses": state.get("epoch_losses", [])[-5:], "seconds": round(time.perf_counter() - started, 2),
            "finished": state["epoch"] >= epochs}


def evaluate(captioner: NeuralCaptioner, pairs: Sequence[Pair], features: Encoded, *,
             options: DecodeOptions | None = None, batch_size: int = 16, grounded: Any = None) -> dict[str, Any]:
    """Generate for held-out pairs and score against their references (and the grounded captioner's text)."""
    if not pairs:
        return {"n": 0}
    organs = sorted({o for p in pairs for o in p.sections}, key=lambda o: captioner.organs.index(o)
                    if o in captioner.organs else len(captioner.organs))
    hyps: list[str] = []
    for lo in range(0, len(pairs), batch_size):
        chunk = pairs[lo:lo + batch_size]
        enc = features.rows([p.row for p in chunk])
        nbs = [[n for n in (p.neighbours or []) if n.get("specimen_id") != p.specimen_id] for p in chunk]
        outs = captioner.caption(encoded=enc, neighbours=nbs, organs=organs, options=options)
        hyps += [o["text"] for o in outs]
    refs = [p.reference() for p in pairs]
    result: dict[str, Any] = {"decoder": report(hyps, refs),
                              "examples": [{"specimen_id": p.specimen_id, "taxon": p.name, "generated": h, "reference": r}
                                           for p, h, r in list(zip(pairs, hyps, refs))[:5]]}
    if grounded is not None and all(p.neighbours for p in pairs):
        texts = [grounded.caption_one([n for n in p.neighbours if n.get("specimen_id") != p.specimen_id])["text"]
                 for p in pairs]
        result["grounded"] = report(texts, refs)
    return result
