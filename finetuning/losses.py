"""The training losses, and how they compose.

Contrastive (`objective="contrastive"`): in-batch image-text contrastive loss with
multi-positive targets (every text of a sheet's taxon is a positive of that sheet):

    L_itc = ½ (CE(s·I·Tᵀ, Y) + CE(s·T·Iᵀ, Yᵀ))

Multi-task momentum (`objective="multitask"`, after ALBEF): student features are
contrasted against the momentum (EMA) encoders' features of the batch plus the
queue of earlier momentum features, which adds negatives; the targets mix the
multi-positive labels with the momentum model's own similarity distribution
(momentum distillation), which softens the labels where two taxa truly look alike:

    L_i2t = CE(s·I·[T', Q_T]ᵀ, (1-α)·Y + α·softmax(s·I'·[T', Q_T]ᵀ))    (and L_t2i symmetrically)
    L_itc = ½ (L_i2t + L_t2i)
    L     = w_itc·L_itc + w_cap·L_caption

with I, T student features, I', T' momentum features, Q the queues, s the logit scale,
α the distillation weight and L_caption the trait decoder's teacher-forced loss on the
same image encoder's tokens. Since CE is linear in its target, each L_i2t equals
(1-α)·CE(·, Y) + α·CE(·, soft), which is what `itc_terms` reports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetuning.batching import multi_positive_targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -Σ target·log_softmax(logits)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def directional(query: torch.Tensor, keys: torch.Tensor, query_taxa: torch.Tensor, key_taxa: torch.Tensor,
                scale: torch.Tensor, soft: torch.Tensor | None = None, alpha: float = 0.0) -> dict[str, torch.Tensor]:
    """One direction (image->text or text->image): the hard and soft parts and their mix."""
    logits = scale * query.float() @ keys.float().t()
    hard = soft_cross_entropy(logits, multi_positive_targets(query_taxa, key_taxa))
    if soft is None or alpha == 0:
        return {"loss": hard, "hard": hard}
    distilled = soft_cross_entropy(logits, soft)
    return {"loss": (1 - alpha) * hard + alpha * distilled, "hard": hard, "soft": distilled}


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, taxa: torch.Tensor,
                     scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """In-batch multi-positive loss between student image and text features."""
    i2t = directional(image, text, taxa, taxa, scale)["loss"]
    t2i = directional(text, image, taxa, taxa, scale)["loss"]
    return {"itc": (i2t + t2i) / 2, "i2t": i2t, "t2i": t2i}


def momentum_contrastive_loss(image: torch.Tensor, text: torch.Tensor, taxa: torch.Tensor, scale: torch.Tensor, *,
                              m_image: torch.Tensor, m_text: torch.Tensor, queue_image: torch.Tensor,
                              queue_text: torch.Tensor, queue_taxa: torch.Tensor,
                              alpha: float) -> dict[str, torch.Tensor]:
    """Student features against momentum features of the batch and the queue, with momentum distillation."""
    keys_text = torch.cat([m_text, queue_text.to(m_text)])
    keys_image = torch.cat([m_image, queue_image.to(m_image)])
    key_taxa = torch.cat([taxa, queue_taxa.to(taxa)])
    with torch.no_grad():
        soft_i2t = F.softmax(scale * m_image.float() @ keys_text.float().t(), dim=-1)
        soft_t2i = F.softmax(scale * m_text.float() @ keys_image.float().t(), dim=-1)
    i2t = directional(image, keys_text, taxa, key_taxa, scale, soft_i2t, alpha)
    t2i = directional(text, keys_image, taxa, key_taxa, scale, soft_t2i, alpha)
    return {"itc": (i2t["loss"] + t2i["loss"]) / 2, "i2t": i2t["loss"], "t2i": t2i["loss"],
            "itc_hard": (i2t["hard"] + t2i["hard"]) / 2,
            "itc_soft": (i2t.get("soft", i2t["hard"]) + t2i.get("soft", t2i["hard"])) / 2}


def compose(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ weight·part over the weighted parts (L = w_itc·L_itc + w_cap·L_caption)."""
    missing = [k for k in weights if k not in parts]
    if missing:
        raise KeyError(f"no loss part {', '.join(missing)}")
    return sum(w * parts[k] for k, w in weights.items() if w)  # type: ignore[return-value]
