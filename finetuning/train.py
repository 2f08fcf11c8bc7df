"""Stage: fine-tune the retriever on a collection's own sheets and descriptions (`herbaria finetune`).

On accelerate: CPU or one or several GPUs (`accelerate launch -m herbaria finetune ...`),
bf16/fp16 autocast, gradient accumulation, gradient checkpointing. A checkpoint (model,
optimiser, schedule, momentum encoders, queue, random states, position in the epoch) is
swapped in atomically, so a run killed at any moment resumes from the last one; batches,
texts and crops depend only on (seed, epoch, batch), so the resumed run continues exactly
as the killed one would have. With several processes the contrastive negatives and the
queue are per process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from finetuning.batching import near_taxa_batches
from finetuning.captions import caption_batch, start_captioner
from finetuning.data import SheetDataset, loader, train_transform
from finetuning.losses import compose, contrastive_loss, momentum_contrastive_loss
from finetuning.momentum import FeatureQueue, ema_update, momentum_copy
from finetuning.pairs import DEFAULT_TEXT_WEIGHTS, PairSet, collect_pairs, sample_text
from finetuning.trainable import (
    MAX_LOGIT_SCALE,
    DualEncoder,
    add_lora,
    freeze,
    image_features,
    merge_lora,
    parameter_groups,
    parse_blocks,
    text_features,
    warmup_cosine,
)
from retrieval.collections import Collection
from retrieval.errors import BadInput, HerbariaError
from retrieval.registry import preset
from retrieval.vectors import create_encoder, pick_device

log = logging.getLogger(__name__)

OBJECTIVES = ("contrastive", "multitask")
DEFAULT_OUT = "finetuned"
TRAIN_DIR = "train"
STATE_FILE = "state.json"
# options a resumed run must share with the checkpoint it continues
_RUN_KEYS = ("model", "objective", "epochs", "batch_size", "per_taxon", "grad_accum", "lr", "weight_decay", "warmup",
             "image_blocks", "text_blocks", "lora_rank", "temperature", "text_weights", "captioner", "itc_weight",
             "caption_weight", "momentum", "queue_size", "alpha", "heldout_taxa", "heldout_specimens", "seed")


def _mixed_precision(value: str, device: torch.device) -> str:
    if value not in ("auto", "no", "bf16", "fp16"):
        raise BadInput(f"unknown mixed precision {value!r}; use auto, no, bf16 or fp16")
    if value != "auto":
        return value
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def is_pretrained(spec: dict[str, Any]) -> bool:
    return bool(spec.get("pretrained")) or str(spec["model"]).startswith(("hf-hub:", "local-dir:"))


class Run:
    """One training run's model, momentum encoders, queue, optimiser and schedule, and its step."""

    def __init__(self, options: dict[str, Any], pairs: PairSet, folder: Path, total_steps: int) -> None:
        from accelerate import Accelerator

        self.o, self.pairs = options, pairs
        self.spec = preset("encoders", options["model"])
        self.pretrained = is_pretrained(self.spec)
        device = pick_device(options["device"])
        self.acc = Accelerator(mixed_precision=_mixed_precision(options["mixed_precision"], device),
                               cpu=device.type == "cpu")
        self.base = create_encoder(options["model"], device=str(self.acc.device), precision="fp32")
        clip = copy.deepcopy(self.base.model).float().train()
        self.blocks = freeze(clip, image_blocks=options["image_blocks"], text_blocks=options["text_blocks"],
               pretrained=self.pretrained, temperature=options["temperature"])
        self.peft = add_lora(clip, options["lora_rank"]) if options["lora_rank"] else None
        clip.set_grad_checkpointing(bool(options["grad_checkpointing"]))
        self.clip, self.captioner, decoder = clip, None, None
        multitask = options["objective"] == "multitask"
        if multitask:
            self.captioner = start_captioner(pairs, captioner=options["captioner"], model=options["model"],
                                             folder=folder / TRAIN_DIR / "captioner", device=str(self.acc.device),
                                             resume=options["resume"])
            decoder = self.captioner.model.float().train()
        self.net = DualEncoder(clip, decoder)
        self.teacher = momentum_copy(clip) if multitask else None
        self.queue = FeatureQueue(options["queue_size"], self.base.dim).to(self.acc.device) if multitask else None
        lr = options["lr"] if options["lr"] is not None else (1e-5 if self.pretrained else 5e-4)
        self.lr = lr
        optimizer = torch.optim.AdamW(parameter_groups(self.net, options["weight_decay"]), lr=lr, betas=(0.9, 0.98),
                                      eps=1e-6)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, options["warmup"]))
        self.net, self.optimizer = self.acc.prepare(self.net, optimizer)
        self.acc.register_for_checkpointing(self.scheduler)
        if multitask:
            self.acc.register_for_checkpointing(self.teacher, self.queue)

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def forward_backward(self, rows: list[int], pixels: torch.Tensor, rng: random.Random, *,
                         sync: bool = True) -> dict[str, float]:
        """Loss of one micro-batch, gradients accumulated (DDP syncs only when `sync`)."""
        acc, o = self.acc, self.o
        taxa = torch.tensor([self.pairs.specimens[i].taxon for i in rows], device=acc.device)
        texts = [sample_text(self.pairs.taxa[self.pairs.specimens[i].taxon], rng, o["text_weights"])[1] for i in rows]
        tokens = self.base.tokenizer(texts).to(acc.device)
        pixels = pixels.to(acc.device, non_blocking=True)
        with contextlib.nullcontext() if sync else acc.no_sync(self.net):
            caption = None
            if self.teacher is not None:
                with torch.no_grad(), acc.autocast():
                    m_image = image_features(self.teacher, pixels)[0].float()
                    m_text = text_features(self.teacher, tokens).float()
                caption = caption_batch(self.captioner, self.pairs, rows, m_image @ m_image.t(), rng)
                caption = {k: v.to(acc.device) for k, v in caption.items()} if caption else None
            with acc.autocast():
                out = self.net(pixels, tokens, caption)
            if self.teacher is None:
                parts = contrastive_loss(out["image"], out["text"], taxa, out["scale"])
                loss = compose(parts, {"itc": 1.0})
            else:
                q_image, q_text, q_taxa = self.queue.contents()
                parts = momentum_contrastive_loss(out["image"], out["text"], taxa, out["scale"], m_image=m_image,
                                                  m_text=m_text, queue_image=q_image, queue_text=q_text,
                                                  queue_taxa=q_taxa, alpha=o["alpha"])
                parts["caption"] = out["caption"].float()
                loss = compose(parts, {"itc": o["itc_weight"], "caption": o["caption_weight"]})
            acc.backward(loss / o["grad_accum"])
        if self.queue is not None:
            self.queue.push(m_image, m_text, taxa)
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}

    def apply(self) -> None:
        """Optimiser and schedule step, temperature clamp, momentum update."""
        self.acc.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if self.teacher is not None:
            ema_update(self.teacher, self.clip, self.o["momentum"])

    def trained_clip(self) -> torch.nn.Module:
        """A plain open_clip model of the current weights (adapters merged), detached from training."""
        if self.peft is not None:
            return merge_lora(copy.deepcopy(self.peft))
        return copy.deepcopy(self.acc.unwrap_model(self.net).clip)


def _save(acc: Any, folder: Path, state: dict[str, Any]) -> None:
    """A new checkpoint beside the old one, then swapped in; `_find` falls back on `.old` if killed mid-swap."""
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    quiet = logging.getLogger("accelerate.utils.other")  # "removed shared tensor": the decoder's tied embeddings
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        acc.save_state(str(tmp))
    finally:
        quiet.setLevel(level)
    if acc.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _find(folder: Path) -> Path | None:
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / STATE_FILE).exists():
            return candidate
    return None


def _epoch_batches(pairs: PairSet, o: dict[str, Any], epoch: int, processes: int, rank: int) -> list[list[int]]:
    batches = near_taxa_batches(pairs.specimens, pairs.train, pairs.taxa, batch_size=o["batch_size"],
                                per_taxon=o["per_taxon"], rng=random.Random(f"{o['seed']}:batches:{epoch}"))
    batches = batches[:len(batches) - len(batches) % processes]  # every process takes as many steps
    return batches[rank::processes]


def _validate(o: dict[str, Any]) -> None:
    if o["objective"] not in OBJECTIVES:
        raise BadInput(f"unknown objective {o['objective']!r}; use {' or '.join(OBJECTIVES)}")
    if o["epochs"] < 1 or o["batch_size"] < 2 or o["grad_accum"] < 1 or o["per_taxon"] < 1:
        raise BadInput("need epochs >= 1, batch size >= 2, grad accumulation >= 1 and per taxon >= 1")
    if (o["lr"] is not None and o["lr"] <= 0) or o["weight_decay"] < 0 or not 0 <= o["warmup"] < 1:
        raise BadInput("need lr > 0, weight decay >= 0 and warm-up in [0, 1)")
    if not 0 <= o["alpha"] <= 1 or not 0 <= o["momentum"] < 1 or o["queue_size"] < 1 or o["lora_rank"] < 0:
        raise BadInput("need alpha in [0, 1], momentum in [0, 1), queue size >= 1 and LoRA rank >= 0")
    if o["itc_weight"] < 0 or o["caption_weight"] < 0 or o["itc_weight"] + o["caption_weight"] == 0:
        raise BadInput("loss weights must be >= 0 and not both 0")
    o["image_blocks"] = parse_blocks(o["image_blocks"], "image blocks")
    o["text_blocks"] = parse_blocks(o["text_blocks"], "text blocks")
    if o["temperature"] != "learned":
        try:
            o["temperature"] = float(o["temperature"])
        except (TypeError, ValueError):
            raise BadInput("temperature must be 'learned' or a number such as 0.07") from None


def finetune(collection: str | Path | Collection, *, model: str = "bioclip", objective: str = "contrastive",
             out: str | Path | None = None, epochs: int = 10, batch_size: int = 128, per_taxon: int = 2,
             grad_accum: int = 1, lr: float | None = None, weight_decay: float = 0.1, warmup: float = 0.1,
             image_blocks: int | str = "auto", text_blocks: int | str = "auto", lora_rank: int = 0,
             temperature: float | str = "learned", text_weights: dict[str, float] | None = None,
             captioner: str = "auto", itc_weight: float = 1.0, caption_weight: float = 1.0, momentum: float = 0.995,
             queue_size: int = 1024, alpha: float = 0.4, heldout_taxa: float = 0.1, heldout_specimens: float = 0.1,
             mixed_precision: str = "auto", grad_checkpointing: bool = False, device: str | None = None,
             num_workers: int | None = None, cache_images: bool | None = None, seed: int = 0, resume: bool = True,
             save_every: int = 0, max_steps: int | None = None, evaluate: bool = True,
             progress: bool = True) -> dict[str, Any]:
    """Adapt `model` to the collection's sheets and texts; export a `local-dir:` checkpoint to `out`.

    Defaults suit a pretrained model and a few thousand sheets: the last blocks of both
    towers train at lr 1e-5 (a randomly initialised model trains whole, at 5e-4) with
    warm-up and cosine decay. `image_blocks=0` is LiT; `lora_rank>0` trains LoRA adapters.
    `objective="multitask"` adds momentum encoders, a feature queue, momentum distillation
    and the trait decoder's captioning loss (`captioner`: a decoder preset; auto picks the
    one made for `model`). Returns the report: data, training, metrics before and after.
    """
    o = {k: v for k, v in locals().items() if k != "collection"}
    o["text_weights"] = dict(text_weights or DEFAULT_TEXT_WEIGHTS)
    _validate(o)
    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    folder = Path(out) if out else col.path / DEFAULT_OUT
    started = time.perf_counter()
    pairs = collect_pairs(col, heldout_taxa=heldout_taxa, heldout_specimens=heldout_specimens, seed=seed)
    if len(pairs.train) < 2:
        raise BadInput(f"only {len(pairs.train)} training sheets after the held-out splits; lower --heldout-*")
    from accelerate import PartialState

    processes = PartialState(cpu=pick_device(device).type == "cpu")
    plan = [math.ceil(len(_epoch_batches(pairs, o, e, processes.num_processes, processes.process_index)) / grad_accum)
            for e in range(epochs)]
    run = Run(o, pairs, folder, max(1, sum(plan)))
    acc = run.acc
    ckpt = folder / TRAIN_DIR / "checkpoint"
    key = {k: o[k] for k in _RUN_KEYS} | {"train_specimens": len(pairs.train)}
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "history": [], "epoch_losses": [], "key": key}
    found = _find(ckpt) if resume else None
    if found is not None:
        saved = json.loads((found / STATE_FILE).read_text())
        if json.loads(json.dumps(saved.get("key"))) != json.loads(json.dumps(key)):
            raise BadInput(f"the checkpoint in {found} was made with other options or data; resume with the same "
                           "options, or start again with --no-resume (or another --out)")
        acc.load_state(str(found))
        state = saved
    resumed_from = state["step"]
    dataset = SheetDataset([s.image for s in pairs.specimens], train_transform(run.clip), image_size=run.base.image_size,
                           seed=seed, cache=cache_images, progress=progress and acc.is_main_process)
    before = state.get("before")
    if evaluate and before is None and acc.is_main_process:
        before = _evaluate(run.base, pairs)
        state["before"] = before
    workers = num_workers if num_workers is not None else (0 if dataset.cache else min(4, max(0, (os.cpu_count() or 1) - 1)))
    seen, seconds = _train(run, dataset, state, ckpt, total=sum(plan), workers=workers, progress=progress)
    finished = state["epoch"] >= epochs
    summary: dict[str, Any] = {
        "model": model, "objective": objective, "collection": str(col.path), "out": str(folder),
        "data": {"collection": col.path.name, **pairs.summary(), "unreadable": len(dataset.unreadable)},
        "steps": state["step"], "total_steps": sum(plan), "resumed_from": resumed_from, "finished": finished,
        "history": state["history"], "last_losses": state["epoch_losses"][-5:],
        "loss_first": state["history"][0]["loss"] if state["history"] else None,
        "loss_last": state["history"][-1]["loss"] if state["history"] else None,
        "images_per_second": round(seen * acc.num_processes / seconds, 2) if seen and seconds > 0 else None,
        "trainable_parameters": run.trainable, "lr": run.lr, "device": str(acc.device),
        "mixed_precision": acc.mixed_precision, "before": before, "after": None, "encoder": None, "captioner": None,
    }
    if finished and acc.is_main_process:
        _finish(run, summary, folder, o)
    acc.wait_for_everyone()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _train(run: Run, dataset: SheetDataset, state: dict[str, Any], ckpt: Path, *, total: int, workers: int,
           progress: bool) -> tuple[int, float]:
    """The epochs from `state` on, checkpointing as it goes; returns (images seen, seconds)."""
    o, acc = run.o, run.acc
    epochs, grad_accum, seed, max_steps, save_every = o["epochs"], o["grad_accum"], o["seed"], o["max_steps"], o["save_every"]
    bar = tqdm(total=total, initial=state["step"], desc=f"fine-tuning {o['model']} ({o['objective']})", unit="step",
               disable=not (progress and acc.is_main_process))
    seen, t0, stopped = 0, time.perf_counter(), False
    while state["epoch"] < epochs and not stopped:
        epoch = state["epoch"]
        batches = _epoch_batches(run.pairs, o, epoch, acc.num_processes, acc.process_index)
        stream = loader(dataset, batches[state["batch"]:], epoch, num_workers=workers, pin_memory=acc.device.type == "cuda")
        for b, (rows, pixels) in enumerate(stream, start=state["batch"]):
            sync = (b + 1) % grad_accum == 0 or b + 1 == len(batches)
            rng = random.Random(f"{seed}:texts:{epoch}:{b}:{acc.process_index}")
            if len(rows) >= 2:
                metrics = run.forward_backward(rows, pixels, rng, sync=sync)
                state["epoch_losses"].append(round(metrics["loss"], 6))
                seen += len(rows)
            state["batch"] = b + 1
            if not sync:
                continue
            run.apply()
            state["step"] += 1
            bar.update(1)
            rate = seen * acc.num_processes / max(time.perf_counter() - t0, 1e-9)
            if state["epoch_losses"]:
                bar.set_postfix(loss=f"{state['epoch_losses'][-1]:.3f}", img_s=f"{rate:.1f}")
            if max_steps is not None and state["step"] >= max_steps:
                stopped = True
                break
            if save_every and state["step"] % save_every == 0 and b + 1 < len(batches):
                _save(acc, ckpt, state)
        if not stopped:
            losses = state["epoch_losses"]
            state["history"].append({"epoch": epoch + 1, "loss": round(sum(losses) / max(len(losses), 1), 5)})
            state.update(epoch=epoch + 1, batch=0, epoch_losses=[])
        _save(acc, ckpt, state)
    bar.close()
    return seen, time.perf_counter() - t0


def _evaluate(encoder: Any, pairs: PairSet) -> dict[str, Any]:
    from finetuning.evaluate import evaluate_model

    return evaluate_model(encoder, pairs)


def _finish(run: Run, summary: dict[str, Any], folder: Path, o: dict[str, Any]) -> None:
    """Export the encoder (and the decoder), evaluate it as users will load it, write the model card."""
    from finetuning.export import export_checkpoint, load_exported, write_model_card

    clip = run.trained_clip().eval()
    name = export_checkpoint(clip, spec=run.spec, tokenizer=run.base.tokenizer, folder=folder)
    exported = load_exported(folder, device=str(run.acc.device))
    trained, loaded = clip.state_dict(), exported.model.state_dict()  # by name: merging LoRA reorders the keys
    if set(trained) != set(loaded) or any(not torch.equal(trained[k].float(), loaded[k].float()) for k in trained):
        raise HerbariaError(f"the checkpoint written to {folder} does not reload with the trained weights")
    summary.update(encoder=name, fingerprint=exported.fingerprint)
    if o["evaluate"]:
        summary["after"] = _evaluate(exported, run.pairs)
    if run.captioner is not None:
        from captioning.decoder import image_dims

        cap = run.captioner
        cap.model = run.acc.unwrap_model(run.net).decoder.eval()
        cap.refresh()
        width, dim = image_dims(exported)
        cap.save(folder / "model", trained=True, encoder={"name": name, "fingerprint": exported.fingerprint,
                                                          "width": width, "dim": dim},
                 training={"objective": "multitask", "collection": summary["data"]["collection"],
                           "steps": summary["steps"]})
        summary["captioner"] = str(folder / "model")
    summary["base"] = {"name": o["model"], "model": run.spec["model"], "pretrained": run.pretrained}
    summary["training"] = {k: o[k] for k in _RUN_KEYS} | {
        **run.blocks, "lr": run.lr, "steps": summary["steps"], "trainable_parameters": run.trainable,
        "device": summary["device"],
        "mixed_precision": summary["mixed_precision"], "grad_checkpointing": o["grad_checkpointing"],
        "history": summary["history"]}
    write_model_card(folder, summary)
    (folder / "finetune.json").write_text(json.dumps(summary, indent=2, default=str))
