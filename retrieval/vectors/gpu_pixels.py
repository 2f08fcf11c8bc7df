"""JPEG files to model-ready pixels on the accelerator, in batches.

Why: on a GPU the encoder outruns any CPU pool that decodes scans with PIL; nvJPEG decodes a
batch of JPEGs on the device (`torchvision.io.decode_jpeg(list, device="cuda")`), and resize,
crop and normalisation follow there, so CPU workers only read bytes. Every other format, and any
JPEG the batched decoder refuses (CMYK, progressive quirks, damage), goes through the CPU path
(`retrieval.collections.load_image` + the model's own preprocess), so results do not depend on
which route an image took beyond resampling noise. Runs on CPU too (tests, smoke benchmarks).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize
from torchvision.transforms.v2 import functional as TF

from retrieval.collections import MAX_BYTES, MAX_PIXELS, load_image
from retrieval.errors import ImageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelRecipe:
    """The model's preprocess as plain numbers: shorter side to `size`, centre crop, normalise."""

    size: int
    crop: tuple[int, int]
    interpolation: InterpolationMode
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_preprocess(cls, preprocess: Callable) -> PixelRecipe | None:
        """None when the transform is not the plain Resize + CenterCrop + Normalize that we can replay on a device."""
        steps = list(getattr(preprocess, "transforms", []))
        resize = next((s for s in steps if isinstance(s, Resize)), None)
        crop = next((s for s in steps if isinstance(s, CenterCrop)), None)
        norm = next((s for s in steps if isinstance(s, Normalize)), None)
        if resize is None or crop is None or norm is None or getattr(resize, "max_size", None):
            return None
        size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
        if size is None:
            return None
        return cls(int(size), tuple(int(c) for c in crop.size), resize.interpolation,
                   tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 CxHxW (any device) to normalised float32 CxHxW on the same device."""
        image = TF.resize(image, [self.size], interpolation=self.interpolation, antialias=True)
        image = TF.center_crop(image, list(self.crop))
        image = image.float().div_(255.0)
        return TF.normalize(image, list(self.mean), list(self.std))


def read_jpeg_bytes(path: str | Path, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> torch.Tensor | None:
    """The file's bytes as a uint8 tensor when it is a baseline-decodable RGB/grey JPEG within the
    limits; None when it should take the CPU path (another format, CMYK, EXIF-rotated, too large)."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            return None
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:  # header only: format, mode, size, orientation
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            if im.size[0] * im.size[1] > max_pixels or im.getexif().get(0x0112, 1) not in (1, None):
                return None
    except (OSError, ValueError, SyntaxError):
        return None  # the CPU path names the problem
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_jpegs(datas: list[torch.Tensor], recipe: PixelRecipe, device: torch.device | str) -> list[torch.Tensor | None]:
    """Batched JPEG decode + preprocess on `device`; None where this image must take the CPU path."""
    if not datas:
        return []
    device = torch.device(device)
    try:
        decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        return [recipe.apply(img) for img in decoded]
    except RuntimeError as err:  # one bad image fails the batch: retry one by one
        log.debug("batched JPEG decode failed (%s); decoding one by one", err)
    out: list[torch.Tensor | None] = []
    for data in datas:
        try:
            out.append(recipe.apply(decode_jpeg(data, mode=ImageReadMode.RGB, device=device)))
        except RuntimeError:
            out.append(None)
    return out


def cpu_pixels(path: Any, preprocess: Callable, reduce_to: int) -> torch.Tensor:
    """The CPU path for one image (raises ImageError naming it)."""
    img = path.convert("RGB") if isinstance(path, Image.Image) else load_image(path, reduce_to=reduce_to)
    return preprocess(img)


class BytesDataset(torch.utils.data.Dataset):
    """Worker side of the GPU route: JPEG bytes pass through undecoded, every other image is
    decoded and preprocessed here. Items: (kind, tensor, error) with kind 'jpeg', 'pixels' or 'error'."""

    def __init__(self, images: list[Any], preprocess: Callable, reduce_to: int) -> None:
        self.images, self.preprocess, self.reduce_to = images, preprocess, reduce_to

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, str]:
        item = self.images[i]
        if not isinstance(item, Image.Image):
            data = read_jpeg_bytes(item)
            if data is not None:
                return "jpeg", data, ""
        try:
            return "pixels", cpu_pixels(item, self.preprocess, self.reduce_to), ""
        except ImageError as err:
            return "error", torch.zeros(0), str(err)


def collate_items(batch: list[tuple[str, torch.Tensor, str]]) -> list[tuple[str, torch.Tensor, str]]:
    return batch


def assemble_batch(items: list[tuple[str, torch.Tensor, str]], recipe: PixelRecipe, device: torch.device,
                   preprocess: Callable, reduce_to: int, paths: list[Any]) -> tuple[torch.Tensor | None, list[bool], list[str]]:
    """Decode the JPEG items on `device`, join them with the CPU-decoded ones in input order.
    `paths` are the items' sources, for the CPU retry of a JPEG the device decoder refused."""
    jpeg_at = [i for i, (kind, _, _) in enumerate(items) if kind == "jpeg"]
    decoded = decode_jpegs([items[i][1] for i in jpeg_at], recipe, device)
    rows: list[torch.Tensor | None] = [None] * len(items)
    errors = [err for _, _, err in items]
    for i, pixels in zip(jpeg_at, decoded):
        if pixels is None:
            try:
                pixels = cpu_pixels(paths[i], preprocess, reduce_to).to(device)
            except ImageError as err:
                errors[i] = str(err)
        rows[i] = pixels
    for i, (kind, tensor, _) in enumerate(items):
        if kind == "pixels":
            rows[i] = tensor.to(device, non_blocking=True)
    oks = [r is not None for r in rows]
    good = [r for r in rows if r is not None]
    return (torch.stack(good) if good else None), oks, errors
