"""What trains and how fast: the two towers in one module, frozen blocks, LoRA adapters, optimiser groups, schedule.

Why these knobs: with a few thousand sheets a full fine-tune of a pretrained ViT
forgets what it knew, so by default only the last blocks of each tower learn
("auto": the last 4 groups of a pretrained model, everything of a randomly
initialised one); `image_blocks=0` locks the image tower entirely (LiT: only the text
side moves towards the sheets); LoRA adapters train a few low-rank matrices instead
and are merged into plain weights on export. Weight decay skips norms, biases,
embeddings and the temperature, which decay would only pull towards zero.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import BadInput

PRETRAINED_BLOCKS = 4  # groups left trainable by "auto" on a pretrained model
MAX_LOGIT_SCALE = math.log(100.0)
_NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "cls_emb", "token_embedding", "logit_scale", "logit_bias")


def image_features(clip: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised pooled embedding, patch tokens): the same steps as ClipEncoder.image_features, with gradients."""
    visual = clip.visual
    pooled, tokens = visual._pool(visual.transformer(visual._embeds(pixels)))
    if getattr(visual, "proj", None) is not None:
        pooled = pooled @ visual.proj
    return F.normalize(pooled, dim=-1), tokens


def text_features(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(clip.encode_text(tokens), dim=-1)


class DualEncoder(nn.Module):
    """The CLIP model and (multi-task) the trait decoder behind one forward, so DDP sees every parameter."""

    def __init__(self, clip: nn.Module, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.clip, self.decoder = clip, decoder

    def forward(self, pixels: torch.Tensor, text: torch.Tensor,
                caption: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        image, patches = image_features(self.clip, pixels)
        out = {"image": image, "text": text_features(self.clip, text),
               "scale": self.clip.logit_scale.exp().clamp(max=100.0).reshape(())}
        if self.decoder is not None:
            if caption is None:  # no described sheet in this batch: a zero that still reaches every decoder weight
                out["caption"] = sum(p.sum() for p in self.decoder.parameters()) * 0.0
            else:
                rows = caption["rows"]
                out["caption"] = self.decoder(caption["input_ids"], caption["attention_mask"], caption["labels"],
                                              pooled=image[rows], tokens=patches[rows])
        return out


def parse_blocks(value: int | str, name: str) -> int | str:
    """'auto', 'all' or a number of trailing groups left trainable (0: the tower is locked)."""
    if isinstance(value, str) and value in ("auto", "all"):
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be auto, all or a number of trailing blocks (0 locks the tower), not {value!r}") from None
    if n < 0:
        raise BadInput(f"{name} must be at least 0")
    return n


def freeze(clip: nn.Module, *, image_blocks: int | str, text_blocks: int | str, pretrained: bool,
           temperature: float | str) -> dict[str, int | str]:
    """Lock whole towers or all but their last groups (open_clip's grouping: embeddings, blocks, last block with
    its final norm, projection); learn the temperature or fix it. Returns what "auto" resolved to."""
    resolved: dict[str, int | str] = {}
    for tower, blocks in (("image", image_blocks), ("text", text_blocks)):
        n = (PRETRAINED_BLOCKS if pretrained else "all") if blocks == "auto" else blocks
        resolved[f"{tower}_blocks"] = n
        if n == "all":
            continue
        if tower == "image":
            clip.lock_image_tower(unlocked_groups=int(n))
        else:
            clip.lock_text_tower(unlocked_layers=int(n))
    if temperature == "learned":
        clip.logit_scale.requires_grad_(True)
    else:
        t = float(temperature)
        if not 0 < t <= 1:
            raise BadInput("temperature must be 'learned' or a number in (0, 1], e.g. 0.07")
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(1.0 / t))
        clip.logit_scale.requires_grad_(False)
    return resolved


def add_lora(clip: nn.Module, rank: int, alpha: float | None = None) -> Any:
    """LoRA adapters on every attention and MLP layer of both towers (peft); returns the peft model.

    Only the adapters (and a learned temperature) train; `merge_lora` folds them back into
    plain open_clip weights."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise BadInput("LoRA needs the peft package: pip install peft") from err
    learn_scale = clip.logit_scale.requires_grad
    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, target_modules=["attn", "c_fc", "c_proj"])
    peft_model = get_peft_model(clip, config)
    clip.logit_scale.requires_grad_(learn_scale)
    return peft_model


def merge_lora(peft_model: Any) -> nn.Module:
    return peft_model.merge_and_unload()


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: matrices decay; norms, biases, embeddings, temperature do not."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        skip = p.ndim < 2 or leaf == "bias" or any(n in name for n in _NO_DECAY_NAMES) or "norm" in name or ".ln_" in name
        (plain if skip else decay).append(p)
    if not decay and not plain:
        raise BadInput("nothing to train: every block of both towers is frozen")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup: float) -> Any:
    """lr factor: linear warm-up over `warmup` of the steps, then cosine decay to zero."""
    warm = max(1, round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor
