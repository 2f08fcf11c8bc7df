"""Gallery items and specimen views built from search results, with thumbnails.

A herbarium scan can be 100 megapixels; twenty people paging through galleries
of them would saturate the server's uplink and the browsers. The gallery shows
small JPEG thumbnails written once into Gradio's own cache folder (so the only
files the app serves are the collection's images and Gradio's cache), and the
specimen view sends the original only when it is of a reasonable size.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from assistant.composer import specimen_label
from retrieval.errors import HerbariaError
from retrieval.collections import load_image
from retrieval.collections import DWC_TERMS

log = logging.getLogger(__name__)

THUMB_SIZE = 480
VIEW_SIZE = 3000
VIEW_MAX_BYTES = 12 * 1024 * 1024


def gradio_cache_dir() -> Path:
    """Gradio's upload/cache folder (GRADIO_TEMP_DIR or <tmp>/gradio): files there are served."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def is_url(value: Any) -> bool:
    return isinstance(value, str) and urlsplit(value).scheme in ("http", "https") and bool(urlsplit(value).netloc)


class ImageStore:
    """Resolves specimen images inside one collection and makes cached thumbnails of them.

    `offer` is told every thumbnail handed out: the page sends a clicked gallery item back
    (its event data names the file), and only files offered, or uploaded, may come back.
    """

    def __init__(self, collection_dir: str | Path, cache_dir: str | Path | None = None,
                 offer: Callable[[str], None] | None = None) -> None:
        self.root = Path(collection_dir).resolve()
        self.images_dir = self.root / "images"
        key = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
        self.cache = Path(cache_dir or gradio_cache_dir()) / "herbaria-thumbs" / key
        self.offer = offer or (lambda path: None)

    def local(self, image: Any) -> Path | None:
        """The image as a path inside the collection's images folder, else None (never outside it)."""
        if not image or is_url(image):
            return None
        path = Path(str(image))
        path = (path if path.is_absolute() else self.root / path).resolve()
        if not path.is_relative_to(self.images_dir) or not path.is_file():
            return None
        return path

    def _derived(self, path: Path, size: int, tag: str) -> Path:
        stat = path.stat()
        name = hashlib.sha1(f"{path}:{stat.st_mtime_ns}:{stat.st_size}:{size}".encode()).hexdigest()[:20]
        target = self.cache / f"{tag}-{name}.jpg"
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        image = load_image(path, reduce_to=size)
        try:
            image.thumbnail((size, size))
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".thumb-", suffix=".jpg")
            os.close(fd)
            try:
                image.save(tmp, "JPEG", quality=85, optimize=True)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        finally:
            image.close()
        return target

    def thumbnail(self, image: Any, size: int = THUMB_SIZE) -> str | None:
        """A small JPEG for the gallery (a cached file path), the URL of a remote image, or None."""
        if is_url(image):
            self.offer(str(image))
            return str(image)
        path = self.local(image)
        if path is None:
            return None
        try:
            thumb = str(self._derived(path, size, f"t{size}"))
            self.offer(thumb)
            return thumb
        except (HerbariaError, OSError) as err:
            log.warning("no thumbnail for %s: %s", path.name, err)
            return None

    def full(self, image: Any) -> str | None:
        """The image for the specimen view: the original when it is small enough, else a large JPEG."""
        if is_url(image):
            return str(image)
        path = self.local(image)
        if path is None:
            return None
        if path.stat().st_size <= VIEW_MAX_BYTES:
            return str(path)
        try:
            return str(self._derived(path, VIEW_SIZE, f"v{VIEW_SIZE}"))
        except (HerbariaError, OSError) as err:
            log.warning("no view image for %s: %s", path.name, err)
            return None


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def caption(specimen: dict[str, Any]) -> str:
    """One line under a gallery image: name, the specimen's label (as answers cite it), and how close it is in the
    words the answer uses ("very close", "close", "loosely similar"), never a raw cosine that can read negative."""
    name = _text(specimen.get("scientificName")) or "unnamed specimen"
    has_label = specimen.get("specimen_id") is not None or bool(specimen.get("catalogNumber"))
    label = specimen_label(specimen) if has_label else ""
    return " — ".join(p for p in (name, label, _text(specimen.get("relevance"))) if p)


def gallery_items(specimens: list[dict[str, Any]], store: ImageStore) -> tuple[list[tuple[str, str]], list[int]]:
    """(image, caption) pairs for gr.Gallery and the specimen ids in the same order (items without an image are left out)."""
    items: list[tuple[str, str]] = []
    ids: list[int] = []
    for specimen in specimens:
        thumb = store.thumbnail(specimen.get("image"))
        if thumb is None or specimen.get("specimen_id") is None:
            continue
        items.append((thumb, caption(specimen)))
        ids.append(int(specimen["specimen_id"]))
    return items, ids


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]#+!|<>~])")  # brackets escaped: no links from data


def md_escape(value: Any) -> str:
    """Data from a collection (names, localities) shown as Markdown text, never as markup or links."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(_text(value), quote=False))


def md_link(label: str, url: Any) -> str:
    """A Markdown link only for http(s) URLs (a `javascript:` reference in a record stays text)."""
    return f"[{md_escape(label)}]({url})" if is_url(url) and not re.search(r"[\s()<>]", str(url)) else md_escape(url)


VIEW_FIELDS = (*DWC_TERMS, "year", "specimen_id")


def field_rows(record: dict[str, Any]) -> list[list[str]]:
    """(field, value) rows of the Darwin Core fields that have a value, in the schema's order."""
    return [[field, _text(record.get(field))] for field in VIEW_FIELDS if _text(record.get(field))]


def public_record(record: dict[str, Any], store: ImageStore) -> dict[str, Any]:
    """A record for API clients: the image as a collection-relative name, never a server path."""
    out = {k: v for k, v in record.items() if k != "image"}
    image = record.get("image")
    if is_url(image):
        out["image"] = image
    else:
        local = store.local(image)
        out["image"] = str(local.relative_to(store.root)) if local else None
    return out
