"""Sheets as training tensors: decoded at reduced size, augmented reproducibly.

Why reproducible augmentation: a resumed run must see exactly the crops the killed run
would have seen, so a crop depends only on (seed, epoch, specimen), never on which
worker or which call drew it. Small models on small collections decode every sheet
once and keep it in memory (a 1000 px scan costs more to decode than a 64 px model
costs to run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from retrieval.collections import load_image
from retrieval.errors import ImageError

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 1.5e9


def train_transform(clip: torch.nn.Module) -> Callable:
    """open_clip's training transform for this model's preprocessing (random resized crop, normalisation)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=True)


class SheetDataset(torch.utils.data.Dataset):
    """Items are (specimen index, epoch) keys; a sheet that cannot be read gives None and is dropped from its batch."""

    def __init__(self, paths: Sequence[Path], transform: Callable, *, image_size: int, seed: int,
                 cache: bool | None = None, progress: bool = False) -> None:
        self.paths, self.transform, self.seed = list(paths), transform, seed
        self.reduce_to = 2 * image_size
        self.cache: dict[int, Image.Image | None] = {}
        estimate = len(self.paths) * self.reduce_to ** 2 * 3 * 0.7  # sheets are about 2:3
        if cache if cache is not None else estimate < CACHE_LIMIT_BYTES:
            for i in tqdm(range(len(self.paths)), desc="decoding sheets", unit="img", disable=not progress):
                self.cache[i] = self._load(i)

    def _load(self, i: int) -> Image.Image | None:
        try:
            return load_image(self.paths[i], reduce_to=self.reduce_to)
        except ImageError as err:
            log.warning("skipped sheet: %s", err)
            return None

    @property
    def unreadable(self) -> list[int]:
        return sorted(i for i, im in self.cache.items() if im is None)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, torch.Tensor] | None:
        i, epoch = key
        image = self.cache[i] if i in self.cache else self._load(i)
        if image is None:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + epoch * 100_003 + i)
            return i, self.transform(image)


def collate(items: Sequence[tuple[int, torch.Tensor] | None]) -> tuple[list[int], torch.Tensor]:
    good = [it for it in items if it is not None]
    if not good:
        return [], torch.zeros(0)
    return [i for i, _ in good], torch.stack([t for _, t in good])


def loader(dataset: SheetDataset, batches: Sequence[Sequence[int]], epoch: int, *, num_workers: int,
           pin_memory: bool) -> torch.utils.data.DataLoader:
    keyed = [[(i, epoch) for i in batch] for batch in batches]
    return torch.utils.data.DataLoader(dataset, batch_sampler=keyed, num_workers=num_workers, collate_fn=collate,
                                       pin_memory=pin_memory)
