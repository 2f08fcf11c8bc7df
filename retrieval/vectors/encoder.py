"""CLIP-family encoder for specimen images and texts (open_clip under the hood).

Why a class of our own: the index, the captioner and the chat must agree on one
model, one precision and one preprocessing; and herbarium sheets are big scans
whose JPEG decoding dominates unless it runs at reduced size in worker processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from retrieval.errors import BadInput, HerbariaError, ImageError, NetworkUnavailable
from retrieval.collections import load_image
from retrieval.registry import preset, preset_path

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image


@cache
def cpu_has_fast_bf16() -> bool:
    """True where bf16 matmuls beat fp32 on this CPU (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """`auto`: bf16 on GPUs and on CPUs with fast bf16 (measured 3x faster for ViT-B/16), else fp32."""
    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in named:
        return named[precision]
    if precision != "auto":
        raise BadInput(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights, so an index can refuse a model that is not the one it was built with."""
    digest = hashlib.sha1()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            t = tensor.detach().float()
            stats = (tuple(t.shape), round(float(t.sum()), 3), round(float(t.abs().sum()), 3))
            digest.update(f"{name}{stats}".encode())
    return digest.hexdigest()[:16]


def _looks_offline(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(
        s in text
        for s in ("connection", "offline", "resolve", "network", "max retries", "hub", "couldn't find", "not find")
    )


def load_open_clip(spec: dict[str, Any], device: torch.device) -> tuple[Any, Callable, Callable]:
    import open_clip

    if spec.get("config"):
        open_clip.add_model_config(preset_path(spec["config"]))
    name = spec["model"]
    random_init = spec.get("seed") is not None  # random weights by intent: open_clip's warning is noise
    with torch.random.fork_rng(devices=[]), _quiet_root_logger(random_init):
        if spec.get("seed") is not None:
            torch.manual_seed(int(spec["seed"]))
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=spec.get("pretrained"), device=device
            )
        except Exception as err:
            if _looks_offline(err):
                raise NetworkUnavailable(
                    f"cannot load encoder {spec['name']!r} ({name}): its weights are not cached here and the "
                    "network is unreachable; use --model tiny-test, or --model local-dir:PATH with a downloaded checkpoint"
                ) from err
            raise HerbariaError(f"cannot load encoder {spec['name']!r} ({name}): {err}") from err
    tokenizer = open_clip.get_tokenizer(name)
    return model, preprocess, tokenizer


@contextmanager
def _quiet_root_logger(active: bool) -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    if active:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes in worker processes; a bad image gives a flag instead of killing the batch."""

    def __init__(self, images: Sequence[ImageInput], preprocess: Callable, reduce_to: int) -> None:
        self.images, self.preprocess, self.reduce_to = images, preprocess, reduce_to

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool, str]:
        item = self.images[i]
        try:
            img = item.convert("RGB") if isinstance(item, Image.Image) else load_image(item, reduce_to=self.reduce_to)
            return self.preprocess(img), True, ""
        except ImageError as err:
            return torch.zeros(0), False, str(err)


def _collate(batch: list[tuple[torch.Tensor, bool, str]]) -> tuple[torch.Tensor, list[bool], list[str]]:
    shapes = [t.shape for t, ok, _ in batch if ok]
    zeros = torch.zeros(shapes[0]) if shapes else torch.zeros(0)
    pixels = torch.stack([t if ok else zeros for t, ok, _ in batch]) if shapes else torch.zeros(0)
    return pixels, [ok for _, ok, _ in batch], [e for _, _, e in batch]


class ClipEncoder:
    """Images and texts to L2-normalised float32 vectors in one shared space."""

    def __init__(self, model: Any, preprocess: Callable, tokenizer: Callable, *, name: str, spec: dict[str, Any],
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.name, self.spec, self.device, self.dtype = name, spec, device, dtype
        self.fingerprint = weights_fingerprint(model)
        model.to(device=device, dtype=dtype).eval()
        self.dim = int(model.text_projection.shape[1] if hasattr(model, "text_projection") and model.text_projection is not None
                       else model.visual.output_dim)
        self.image_size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size)

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.spec["model"], "pretrained": self.spec.get("pretrained"),
                "fingerprint": self.fingerprint, "dim": self.dim, "device": str(self.device), "dtype": str(self.dtype)}

    @torch.inference_mode()
    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised pooled embedding, patch tokens) for a preprocessed batch; the captioner shares this pass.

        Runs the tower's own steps rather than flipping its `output_tokens` flag, so concurrent
        requests (the web demo) cannot see each other's setting."""
        visual = self.model.visual
        x = pixels.to(self.device, self.dtype)
        if not all(hasattr(visual, a) for a in ("_embeds", "transformer", "_pool")):
            raise HerbariaError(f"encoder {self.name!r} has no patch-token output (not an open_clip ViT)")
        pooled, tokens = visual._pool(visual.transformer(visual._embeds(x)))
        if getattr(visual, "proj", None) is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled.float(), dim=-1), tokens

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        feats = self.model.encode_image(pixels.to(self.device, self.dtype))
        return F.normalize(feats.float(), dim=-1).cpu().numpy()

    @property
    def pixel_recipe(self) -> Any:
        """The preprocess as numbers a device can replay (None: not replayable; CPU decoding only)."""
        from retrieval.vectors.gpu_pixels import PixelRecipe

        if not hasattr(self, "_pixel_recipe"):
            self._pixel_recipe = PixelRecipe.from_preprocess(self.preprocess)
        return self._pixel_recipe

    def decodes_on_device(self) -> bool:
        """JPEGs are decoded on the GPU (nvJPEG) only on CUDA; HERBARIA_GPU_DECODE=0 turns it off."""
        return (self.device.type == "cuda" and os.environ.get("HERBARIA_GPU_DECODE", "1") != "0"
                and self.pixel_recipe is not None)

    def default_batch_size(self) -> int:
        """Large batches where the encoder runs in bf16/fp16 on a GPU; small ones on CPU (no gain, more RAM)."""
        return 256 if self.device.type == "cuda" else 32

    def encode_images(self, images: Sequence[ImageInput], *, batch_size: int | None = None, num_workers: int | None = None,
                      progress: bool = False, skip_errors: bool = False) -> np.ndarray:
        """Encode paths or PIL images. With skip_errors, an unreadable image gives an all-zero row
        (no normalised vector is zero) so callers can drop it; otherwise its ImageError is raised."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        if not len(images):
            return out
        batch_size = batch_size or self.default_batch_size()
        if num_workers is None:
            paths = not isinstance(images[0], Image.Image)
            num_workers = min(4, max(1, (os.cpu_count() or 1) - 1)) if paths and len(images) > 2 * batch_size else 0
        batches = (self._device_decoded_batches if self.decodes_on_device() else self._cpu_decoded_batches)(
            list(images), batch_size, num_workers)
        row = 0
        with tqdm(total=len(images), desc="encoding images", unit="img", disable=not progress) as bar:
            for pixels, oks, errors in batches:
                if not all(oks) and not skip_errors:
                    raise ImageError(next(e for e in errors if e))
                if any(oks):
                    out[np.arange(row, row + len(oks))[np.asarray(oks)]] = self.encode_pixels(pixels)
                for err in filter(None, errors):
                    log.warning("skipped image: %s", err)
                row += len(oks)
                bar.update(len(oks))
        return out

    def _cpu_decoded_batches(self, images: list[ImageInput], batch_size: int,
                             num_workers: int) -> Iterator[tuple[torch.Tensor, list[bool], list[str]]]:
        """PIL decoding (JPEG draft mode) in worker processes; pinned batches when a GPU waits for them."""
        loader = torch.utils.data.DataLoader(
            _ImageDataset(images, self.preprocess, reduce_to=2 * self.image_size), batch_size=batch_size,
            num_workers=num_workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
        )
        for pixels, oks, errors in loader:
            yield (pixels[torch.tensor(oks)] if any(oks) else pixels), oks, errors

    def _device_decoded_batches(self, images: list[ImageInput], batch_size: int,
                                num_workers: int) -> Iterator[tuple[torch.Tensor | None, list[bool], list[str]]]:
        """Workers read JPEG bytes (other formats are decoded there); the GPU decodes and preprocesses."""
        from retrieval.vectors.gpu_pixels import BytesDataset, assemble_batch, collate_items

        reduce_to = 2 * self.image_size
        loader = torch.utils.data.DataLoader(
            BytesDataset(images, self.preprocess, reduce_to), batch_size=batch_size, num_workers=num_workers,
            collate_fn=collate_items, pin_memory=self.device.type == "cuda",
        )
        row = 0
        for items in loader:
            yield assemble_batch(items, self.pixel_recipe, self.device, self.preprocess, reduce_to,
                                 images[row:row + len(items)])
            row += len(items)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        if any(not t or not t.strip() for t in texts):
            raise BadInput("empty text query: type a few words, e.g. 'opposite serrate leaves'")
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
            feats = self.model.encode_text(tokens)
            chunks.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)


@cache
def _cached_encoder(name: str, device: str, precision: str) -> ClipEncoder:
    spec = preset("encoders", name)
    dev = torch.device(device)
    model, preprocess, tokenizer = load_open_clip(spec, dev)
    return ClipEncoder(model, preprocess, tokenizer, name=name, spec=spec, device=dev, dtype=pick_dtype(dev, precision))


def create_encoder(name: str = "bioclip", *, device: str | None = None, precision: str = "auto") -> ClipEncoder:
    """The encoder for a preset name or an `hf-hub:` / `local-dir:` checkpoint; loaded once per process."""
    return _cached_encoder(name, str(pick_device(device)), precision)
