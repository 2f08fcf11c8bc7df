"""What a stranger may send to the public demo, checked before any model sees it.

Gradio already caps the request size (`max_file_size` at mount time); here every
upload is decoded through `retrieval.images.load_image`, the same guard ingest
uses, with tighter limits: a phone photo or a scan of a sheet passes, a
decompression bomb, a renamed PDF or a truncated JPEG is refused with one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.errors import BadInput, ImageError
from retrieval.images import load_image


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class UploadLimits:
    """Limits for one chat turn; the defaults fit a 50-megapixel phone photo or a 600 dpi A3 scan crop."""

    max_bytes: int = _env_int("HERBARIA_MAX_UPLOAD_MB", 20) * 1024 * 1024
    max_pixels: int = _env_int("HERBARIA_MAX_UPLOAD_MEGAPIXELS", 60) * 1_000_000
    max_chars: int = 1000

    @property
    def max_mb(self) -> int:
        return self.max_bytes // (1024 * 1024)


def _file_path(item: Any) -> str | None:
    """Gradio hands files over as a path string, a dict with "path", or a FileData-like object."""
    if item is None:
        return None
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict):
        return item.get("path") or item.get("name")
    return getattr(item, "path", None)


def check_question(text: str | None, limits: UploadLimits = UploadLimits()) -> str:
    """The question, stripped; refused when it is longer than a question needs to be."""
    question = (text or "").strip()
    if len(question) > limits.max_chars:
        raise BadInput(
            f"Your message is {len(question):,} characters long; please keep it under {limits.max_chars:,}."
        )
    return question


def check_upload(files: Sequence[Any] | None, limits: UploadLimits = UploadLimits()) -> Path | None:
    """The one uploaded image as a path after a full (reduced-scale) decode, or None without upload."""
    paths = [p for p in (_file_path(f) for f in (files or [])) if p]
    if not paths:
        return None
    if len(paths) > 1:
        raise BadInput(f"Please attach one image per question ({len(paths)} files were attached).")
    path = Path(paths[0])
    try:
        # reduce_to decodes JPEG scans at 1/2..1/8 scale: as strict about truncation, much cheaper.
        load_image(path, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, reduce_to=512).close()
    except ImageError as err:
        raise ImageError(f"I could not use that upload: {public_message(str(err))}") from None
    return path


_ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"<>]+/)+([^\s/'\"<>]+)")


def public_message(message: str) -> str:
    """A message safe to show to anyone: absolute paths are cut down to their file name."""
    return _ABS_PATH.sub(lambda m: m.group(1), message).strip()
