"""Momentum encoders and the feature queue of the multi-task objective (ALBEF, MoCo).

Why: with a few thousand sheets a batch holds few negatives and its targets are noisy
(two taxa that look alike are still "wrong"). An exponential moving average of the
model changes slowly, so features it produced several steps ago are still comparable:
they fill a first-in first-out queue of extra negatives, and its similarity
distribution serves as soft targets. Both are modules with buffers, so a checkpoint
saves and restores them with the model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def momentum_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` to be updated only by `ema_update`."""
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum·teacher + (1 - momentum)·student, parameter by parameter (buffers copied)."""
    if not 0 <= momentum <= 1:
        raise ValueError("momentum must be in [0, 1]")
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student do not have the same parameters")
    for t, s in zip(t_params, s_params):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


class FeatureQueue(nn.Module):
    """A ring buffer of (image feature, text feature, taxon) rows; the oldest rows are overwritten first."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError("queue size must be at least 1")
        self.size = size
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("text", torch.zeros(size, dim))
        self.register_buffer("taxa", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pushed", torch.zeros((), dtype=torch.long))  # rows ever pushed

    def __len__(self) -> int:
        return int(min(int(self.pushed), self.size))

    @torch.no_grad()
    def push(self, image: torch.Tensor, text: torch.Tensor, taxa: torch.Tensor) -> None:
        n = image.shape[0]
        if n > self.size:  # only the newest rows can stay
            image, text, taxa, skipped = image[-self.size:], text[-self.size:], taxa[-self.size:], n - self.size
        else:
            skipped = 0
        start = int(self.pushed + skipped) % self.size
        slots = (torch.arange(image.shape[0], device=self.taxa.device) + start) % self.size
        self.image[slots] = image.detach().to(self.image)
        self.text[slots] = text.detach().to(self.text)
        self.taxa[slots] = taxa.detach().to(self.taxa)
        self.pushed += n

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, text, taxa) of the rows held, oldest first."""
        n = len(self)
        order = (torch.arange(n, device=self.taxa.device) + int(self.pushed) - n) % self.size
        return self.image[order], self.text[order], self.taxa[order]
