"""The fine-tuned model as a `local-dir:` open_clip checkpoint Herbaria already knows how to load.

The folder holds what open_clip's `local-dir:` loader reads (open_clip_config.json with
the base model's config and preprocessing, open_clip_model.safetensors in fp32, LoRA
adapters merged) and a model card (README.md: base model, data, objective, metrics).
`herbaria index COLLECTION --model local-dir:FOLDER --rebuild` then uses it; the index
manifest records its name and weights fingerprint, so an index built with the old
encoder is refused by searches with the new one, and the reverse.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from finetuning.evaluate import REPORTED
from retrieval.errors import HerbariaError
from retrieval.registry import preset, preset_path
from retrieval.vectors import ClipEncoder, pick_device, pick_dtype

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
CARD = "README.md"
METRICS = "metrics.json"


def model_name(folder: str | Path) -> str:
    return f"local-dir:{Path(folder).resolve()}"


def base_model_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The open_clip model config of a preset or checkpoint (what the exported folder must rebuild)."""
    import open_clip

    if spec.get("config"):
        open_clip.add_model_config(preset_path(spec["config"]))
    config = open_clip.get_model_config(spec["model"])
    if config is None:
        raise HerbariaError(f"no open_clip config for {spec['model']!r}; cannot export a local-dir checkpoint")
    return copy.deepcopy(config)


def _write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def export_checkpoint(clip: torch.nn.Module, *, spec: dict[str, Any], tokenizer: Any, folder: str | Path) -> str:
    """Write weights then config (each atomically) into `folder`; returns the `local-dir:` model name."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in clip.state_dict().items()}
    _write(folder / WEIGHTS, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in clip.visual.preprocess_cfg.items()}
    config = {"model_cfg": base_model_config(spec), "preprocess_cfg": preprocess}
    _write(folder / CONFIG, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    if config["model_cfg"].get("text_cfg", {}).get("hf_tokenizer_name") and hasattr(tokenizer, "tokenizer"):
        tokenizer.tokenizer.save_pretrained(folder)  # open_clip reads an HF tokenizer from the local dir
    return model_name(folder)


def load_exported(folder: str | Path, *, device: str | None = None, precision: str = "fp32") -> ClipEncoder:
    """The exported checkpoint as a ClipEncoder, loaded afresh (create_encoder caches by name, and a
    re-export into the same folder must be seen)."""
    from retrieval.vectors import load_open_clip

    name = model_name(folder)
    spec = preset("encoders", name)
    dev = pick_device(device)
    model, preprocess, tokenizer = load_open_clip(spec, dev)
    return ClipEncoder(model, preprocess, tokenizer, name=name, spec=spec, device=dev, dtype=pick_dtype(dev, precision))


def _metric_rows(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    rows = []
    for split in ("heldout_specimens", "heldout_taxa"):
        a, b = after.get(split) or {}, before.get(split) or {}
        if not a.get("n"):
            continue
        for _, group, key in REPORTED:
            rows.append(f"| {split.replace('_', ' ')} (n={a['n']}, {a['taxa']} taxa) | {group.replace('_', ' ')} {key} "
                        f"| {b.get(group, {}).get(key, '-')} | {a[group][key]} | {a['chance'][key]} |")
        m, mb = a.get("morphology_to_specimens", {}), b.get("morphology_to_specimens", {})
        if m.get("queries"):
            rows.append(f"| {split.replace('_', ' ')} | morphology query -> sheets R@10 ({m['queries']} queries) "
                        f"| {mb.get('R@10', '-')} | {m['R@10']} | {m['chance']} |")
    return rows


def write_model_card(folder: str | Path, summary: dict[str, Any]) -> Path:
    """README.md (Hugging Face model card layout) and metrics.json beside the weights."""
    folder = Path(folder)
    base = summary["base"]
    base_ref = base["model"][len("hf-hub:"):] if str(base["model"]).startswith("hf-hub:") else base["model"]
    data, train = summary["data"], summary["training"]
    rows = _metric_rows(summary.get("before") or {}, summary.get("after") or {})
    card = "\n".join([
        "---", "library_name: open_clip", f"base_model: {base_ref}", "pipeline_tag: zero-shot-image-classification",
        "tags: [clip, herbarium, botany, herbaria]", "---", "",
        f"# {base['name']} fine-tuned on the herbarium collection `{data['collection']}`", "",
        "Made by `herbaria finetune`. Use it with Herbaria:", "", "```bash",
        f"herbaria index COLLECTION --model {summary['encoder']} --rebuild",
        "herbaria search COLLECTION \"opposite serrate leaves\"",
        *([f"herbaria caption COLLECTION SHEET.jpg --captioner {summary['encoder']}"] if summary.get("captioner") else []),
        "```", "",
        "## Base model", "",
        f"`{base['name']}` ({base['model']}{'' if base['pretrained'] else ', random initialisation'}).", "",
        "## Data", "",
        (f"{data['train_specimens']} specimen images of {data['taxa'] - data['heldout_taxa']} taxa trained on; "
         f"{data['heldout_specimens']} sheets of trained taxa and {data['heldout_taxa_specimens']} sheets of "
         f"{data['heldout_taxa']} taxa kept out for evaluation. {data['described_taxa']} taxa have linked flora "
         "descriptions: their sheets were paired with sampled organ sentences and trait phrases as well as name "
         "templates; the others with name templates only."), "",
        "## Objective", "", f"`{summary['objective']}`: " + (
            "image-text contrastive loss with multi-positive targets (a taxon is never its own negative) over batches "
            "of near taxa." if summary["objective"] == "contrastive" else
            "contrastive loss against momentum (EMA) features of the batch and a queue, with momentum distillation, "
            "plus the trait decoder's captioning loss on the same image tower."), "",
        "## Training", "", "```json", json.dumps(train, indent=2, default=str), "```", "",
        "## Evaluation (before = the base model, after = this checkpoint)", "",
        "| split | measure | before | after | chance |", "| --- | --- | --- | --- | --- |", *rows, "",
        "## Limitations", "",
        ("Trained on one collection: its taxa, its scanning, its label conventions. Figures above come from sheets of "
         "that collection kept out of training; other herbaria will differ. A model trained from random initialisation "
         "on a few hundred sheets knows nothing outside them."), ""])
    _write(folder / CARD, lambda p: Path(p).write_text(card, encoding="utf-8"))
    _write(folder / METRICS, lambda p: Path(p).write_text(json.dumps(
        {"before": summary.get("before"), "after": summary.get("after")}, indent=2)))
    return folder / CARD
