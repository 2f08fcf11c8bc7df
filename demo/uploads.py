"""What a stranger may send to the public demo, checked before any model sees it.

Two questions for every attached file. Whose is it? A message names files by
path, and an API client can write any path into it, so a file is accepted only
when Gradio's upload route handed it to this same visitor (`UploadRegistry`,
filled by `demo.gate`), or when the app itself offers it to everyone (an
example's image); every other path, URL or other visitor's upload gets the same
one line, which says nothing about the file. Is it a picture we can afford to
decode? It is decoded through `retrieval.collections.images.load_image`, the guard ingest
uses, with tighter limits: a phone photo or a scan of a sheet passes; a
decompression bomb, a renamed PDF, EPS or text file, or a truncated JPEG is
refused with one line. Gradio caps the request size (`max_file_size`).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.gallery import gradio_cache_dir, is_url
from retrieval.errors import BadInput, ImageError
from retrieval.collections import load_image

FOREIGN_FILE = ("Only an image uploaded to this demo in this session can be attached: upload the file first "
                "(the page and gradio_client do), then send the path the upload returned.")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class UploadLimits:
    """Limits for one chat turn; the defaults fit a 50-megapixel phone photo or a 600 dpi A3 scan crop.

    `max_decode_pixels` bounds the CPU one upload costs: a JPEG is decoded at 1/2..1/8 scale, so its
    60 megapixels decode as a few; PNG, WebP, TIFF and GIF are decoded in full (about 0.4 s per 16
    megapixels here), so a bigger one is refused before decoding.
    """

    max_bytes: int = _env_int("HERBARIA_MAX_UPLOAD_MB", 20) * 1024 * 1024
    max_pixels: int = _env_int("HERBARIA_MAX_UPLOAD_MEGAPIXELS", 60) * 1_000_000
    max_decode_pixels: int = _env_int("HERBARIA_MAX_DECODE_MEGAPIXELS", 16) * 1_000_000
    max_chars: int = 1000

    @property
    def max_mb(self) -> int:
        return self.max_bytes // (1024 * 1024)


def _lexical(path: str) -> str:
    """An absolute, normalised path without touching the disk (a foreign path is never looked at)."""
    return os.path.normpath(os.path.abspath(path))


class UploadRegistry:
    """Which visitor was handed which file by Gradio's upload route, plus the files offered to everyone.

    Gradio's upload folder is shared by all visitors, and the same content uploaded twice lands on the
    same path, so a path maps to the set of visitors it was returned to. Entries expire after `ttl_s`
    (Gradio's cache clean-up removes the files after a day) and the oldest go first past `max_entries`.
    """

    def __init__(self, upload_dir: str | Path | None = None, *, max_entries: int = 50_000,
                 ttl_s: float = 86_400.0) -> None:
        self.upload_dir = Path(_lexical(str(upload_dir or gradio_cache_dir())))
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._owners: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()
        self._offered: set[str] = set()
        self._lock = threading.Lock()

    def record(self, visitor: str, paths: Iterable[str]) -> None:
        """`paths` were returned to `visitor` by the upload route."""
        now = time.monotonic()
        with self._lock:
            for path in paths:
                key = _lexical(str(path))
                _, owners = self._owners.pop(key, (now, frozenset()))
                self._owners[key] = (now, owners | {visitor})
            while len(self._owners) > self.max_entries:
                self._owners.popitem(last=False)

    def offer(self, path: str | Path) -> None:
        """A file (or http(s) URL) the app shows to everyone, an example's image or a gallery thumbnail,
        may come back in anyone's request."""
        with self._lock:
            self._offered.add(str(path) if is_url(path) else _lexical(str(path)))

    def offered_url(self, value: Any) -> bool:
        """`value` is an http(s) URL the app itself showed (a remote specimen image): it is never fetched here."""
        with self._lock:
            return is_url(value) and value in self._offered

    def owned(self, visitor: str | None, path: Any) -> Path | None:
        """`path` inside the upload folder when it was uploaded by `visitor` or is offered to all, else None."""
        if not isinstance(path, (str, Path)) or not str(path) or "\0" in str(path):
            return None
        key = _lexical(str(path))
        with self._lock:
            entry = self._owners.get(key)
            fresh = entry is not None and time.monotonic() - entry[0] <= self.ttl_s
            allowed = key in self._offered or (fresh and visitor is not None and visitor in entry[1])
        if not allowed:
            return None
        real = Path(key).resolve()
        if not real.is_relative_to(self.upload_dir.resolve()) or not real.is_file():
            return None
        return Path(key)


def _file_path(item: Any) -> Any:
    """Gradio hands files over as a path string, a dict with "path", or a FileData-like object."""
    if item is None:
        return None
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict):
        return item.get("path") or item.get("url") or item.get("name") or "?"
    return getattr(item, "path", None) or "?"


def check_question(text: str | None, limits: UploadLimits = UploadLimits()) -> str:
    """The question, stripped; refused when it is longer than a question needs to be."""
    question = (text or "").strip()
    if len(question) > limits.max_chars:
        raise BadInput(
            f"Your message is {len(question):,} characters long; please keep it under {limits.max_chars:,}."
        )
    return question


def check_upload(files: Sequence[Any] | None, limits: UploadLimits, uploads: UploadRegistry,
                 visitor: str | None) -> Path | None:
    """The one uploaded image as a path after a (reduced-scale) decode, or None without upload.

    The file must be `visitor`'s own upload (or offered by the app); anything else gets `FOREIGN_FILE`,
    before the file is looked at, so the answer is the same whether the path exists, is an image or not.
    """
    paths = [p for p in (_file_path(f) for f in (files or [])) if p]
    if not paths:
        return None
    if len(paths) > 1:
        raise BadInput(f"Please attach one image per question ({len(paths)} files were attached).")
    path = uploads.owned(visitor, paths[0])
    if path is None:
        raise BadInput(FOREIGN_FILE)
    try:
        # reduce_to decodes JPEG scans at 1/2..1/8 scale: as strict about truncation, much cheaper.
        load_image(path, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, reduce_to=512,
                   max_decode_pixels=limits.max_decode_pixels).close()
    except ImageError as err:
        raise ImageError(f"I could not use that upload: {public_message(str(err))}") from None
    return path


_ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"<>]+/)+([^\s/'\"<>]+)")


def public_message(message: str) -> str:
    """A message safe to show to anyone: absolute paths are cut down to their file name."""
    return _ABS_PATH.sub(lambda m: m.group(1), message).strip()
