"""What every captioner shares: the one image pass per request and the neighbour records.

The image is encoded once and the pass is shared: its pooled vector finds the
neighbours in the index, its patch tokens feed the neural decoder. Neighbours
arrive as plain dicts so the grounded captioner is a pure function of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from retrieval.vectors import ClipEncoder, ImageInput
from retrieval.errors import BadInput
from retrieval.collections import load_image

# A neighbour: {"specimen_id", "score", "name" (normalised taxon), "scientificName", "family",
#               "sections": {organ: text}, "traits": [trait dicts], "described": bool}
Neighbour = dict[str, Any]


@dataclass
class Encoded:
    """One batch of images through one encoder: pooled (B, dim) float32 normalised, tokens (B, N, width)."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    encoder: str
    fingerprint: str

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    def rows(self, index: Sequence[int]) -> Encoded:
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.pooled.device)
        return Encoded(self.pooled[idx], self.tokens[idx], self.encoder, self.fingerprint)


def load_images(images: Sequence[ImageInput], *, reduce_to: int) -> list[Image.Image]:
    """Paths or PIL images as RGB PIL images (big scans decoded at reduced size)."""
    if not images:
        raise BadInput("no image given")
    return [im.convert("RGB") if isinstance(im, Image.Image) else load_image(im, reduce_to=reduce_to) for im in images]


def encode(encoder: ClipEncoder, images: Sequence[ImageInput]) -> Encoded:
    """The shared image pass: pooled vector for retrieval, patch tokens for a decoder."""
    pixels = torch.stack([encoder.preprocess(im) for im in load_images(images, reduce_to=2 * encoder.image_size)])
    pooled, tokens = encoder.image_features(pixels)
    return Encoded(pooled, tokens, encoder.name, encoder.fingerprint)


class Captioner(Protocol):
    """A captioner turns images (and, when it uses them, their neighbours) into trait descriptions."""

    name: str
    encoder_name: str | None  # the ClipEncoder whose pass it reuses; None when it has its own vision tower

    def caption(self, images: Sequence[ImageInput], *, encoded: Encoded | None = None,
                neighbours: Sequence[Sequence[Neighbour]] | None = None, **options: Any) -> list[dict[str, Any]]:
        """One dict per image with at least `text`."""
        ...
