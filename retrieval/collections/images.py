"""Safe image loading shared by ingest, the encoder's data loader and the web demo's uploads.

Images arrive from untrusted places (archives, URLs, browser uploads), so every
entry point goes through one function that refuses what Pillow would otherwise
choke on or be abused with: non-images, truncated files, decompression bombs and
huge files. Only five decoders are ever used (JPEG, PNG, WebP, TIFF, GIF's first
frame), chosen from the file's first bytes, never its name: Pillow knows thirty
formats, and some of them hand the file to other programs (EPS to Ghostscript).
Our pixel limit is checked from the header, before any decoding, and before
Pillow's own 179-megapixel guard can answer instead. Large JPEG scans are decoded
at a reduced scale when the caller only needs a small image (an encoder at 224 px
does not need a 6000 px sheet decoded fully); the other formats cannot be, so
`max_decode_pixels` bounds the CPU one image may cost (a 2 KB lossless WebP can
claim 59 megapixels of flat colour).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from PIL import (  # noqa: F401  (the plugins are imported so that exactly these five are registered)
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from retrieval.errors import ImageError

# Herbarium scans at 600 dpi are about 100 megapixels and rarely over 100 MB.
MAX_BYTES: int = 256 * 1024 * 1024
MAX_PIXELS: int = 150_000_000

ImageSource = str | Path | bytes | bytearray | BinaryIO

# Pillow format ids tried, by content; MPO (a phone's multi-picture JPEG) opens through the JPEG one.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "TIFF", "GIF")
ALLOWED_NAMES = "JPEG, PNG, WebP, TIFF or GIF"

# EXIF orientations 5..8 rotate by 90 degrees: width and height swap on display.
_SWAPS_AXES = {5, 6, 7, 8}


@contextmanager
def _quiet() -> Iterator[None]:
    """Our own limits decide on size, and "Corrupt EXIF data" is common and harmless on scans."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message="Corrupt EXIF data")
        warnings.filterwarnings("ignore", message="Possibly corrupt EXIF")
        yield


def _name(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name or str(source)
    if isinstance(source, (bytes, bytearray)):
        return "uploaded image"
    return Path(str(getattr(source, "name", "uploaded image"))).name


def _read_limited(stream: BinaryIO, name: str, max_bytes: int) -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"{name}: file is larger than the {max_bytes // (1024 * 1024)} MB limit")
    return data


def _open(source: ImageSource, name: str, max_bytes: int, max_pixels: int | None = None) -> Image.Image:
    """Open lazily (header only, allowed formats only) after the size check; the decoder runs later.

    With `max_pixels`, an image over it is refused here with our message, also when it is so
    large that Pillow's own guard (2 x `Image.MAX_IMAGE_PIXELS`) fires while reading the header.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: image file not found")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{name}: file is {size // (1024 * 1024)} MB, over the {max_bytes // (1024 * 1024)} MB limit")
        if size == 0:
            raise ImageError(f"{name}: file is empty")
        fp: str | io.BytesIO = str(path)
    elif isinstance(source, (bytes, bytearray)):
        if len(source) > max_bytes:
            raise ImageError(f"{name}: data is larger than the {max_bytes // (1024 * 1024)} MB limit")
        if not source:
            raise ImageError(f"{name}: file is empty")
        fp = io.BytesIO(bytes(source))
    else:
        data = _read_limited(source, name, max_bytes)
        if not data:
            raise ImageError(f"{name}: file is empty")
        fp = io.BytesIO(data)
    try:
        with _quiet():
            im = Image.open(fp, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as err:
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels is not None and max_pixels < pillow_limit:
            raise ImageError(f"{name}: image is over the {max_pixels:,} pixel limit") from None
        raise ImageError(f"{name}: image is too large to decode safely ({err})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (only {ALLOWED_NAMES} images are read)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{name}: unreadable image header ({err})") from None
    if max_pixels is not None:
        width, height = im.size
        if width * height > max_pixels:
            im.close()
            raise ImageError(f"{name}: image is {width}x{height} pixels, over the {max_pixels:,} pixel limit")
    return im


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    width, height = im.size
    try:
        with _quiet():
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not hide a usable image
        orientation = 1
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def load_image(
    source: ImageSource,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    reduce_to: int | None = None,
    max_decode_pixels: int | None = None,
) -> Image.Image:
    """Decode `source` into an upright RGB image or raise `ImageError` naming it.

    With `reduce_to`, the shorter side of the result is at least `reduce_to`
    (when the image is that large) but the image may be decoded at 1/2, 1/4 or
    1/8 scale (JPEG draft mode) or box-reduced, which is much faster for scans.
    `max_decode_pixels` bounds the pixels the decoder itself produces (after any
    reduced-scale decoding), so the CPU one image can cost: checked before decoding.
    """
    name = _name(source)
    im = _open(source, name, max_bytes, max_pixels)
    try:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError(f"{name}: image has no pixels")
        if reduce_to is not None and reduce_to > 0 and isinstance(im, JpegImagePlugin.JpegImageFile):
            im.draft("RGB", (reduce_to, reduce_to))
        decoded = im.size[0] * im.size[1]
        if max_decode_pixels is not None and decoded > max_decode_pixels:
            raise ImageError(
                f"{name}: a {im.format} image of {width}x{height} pixels is too slow to decode here "
                f"(at most {max_decode_pixels / 1e6:g} megapixels decoded; a JPEG is decoded at reduced scale, "
                "so send a JPEG or a smaller image)"
            )
        try:
            with _quiet():
                im.load()
        except Image.DecompressionBombError as err:
            raise ImageError(f"{name}: image is too large to decode safely ({err})") from None
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise ImageError(f"{name}: corrupt or truncated image ({err})") from None
        if not isinstance(im, JpegImagePlugin.JpegImageFile) and reduce_to:
            factor = min(im.size) // reduce_to
            if factor >= 2:
                im = im.reduce(min(factor, 8))
        try:
            with _quiet():
                im = ImageOps.exif_transpose(im) or im
        except Exception:  # an unreadable orientation tag: keep the pixels as stored
            pass
        return _to_rgb(im)
    except ImageError:
        im.close()
        raise
    except Exception as err:  # any other decoder failure is still a bad image, not a crash
        im.close()
        raise ImageError(f"{name}: cannot decode image ({type(err).__name__}: {err})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Flatten transparency onto white: sheets are photographed on white paper."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode.startswith("I;16"):  # 16-bit greyscale scans: keep the top 8 bits
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return im.convert("RGB")


def verify_image(path: str | Path, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Fully decode `path` (at reduced scale, so it is cheap) and return its upright (width, height).

    Decoding, not just `Image.verify()`, is what catches truncated JPEGs.
    """
    name = _name(path)
    im = _open(path, name, max_bytes, max_pixels)
    try:
        size = _oriented_size(im)
    finally:
        im.close()
    load_image(path, max_bytes=max_bytes, max_pixels=max_pixels, reduce_to=64).close()
    return size


def image_format(path: str | Path, *, max_bytes: int = MAX_BYTES) -> str:
    """The file's real format (from its content, not its name) as a lowercase extension; only allowed formats."""
    with _open(path, _name(path), max_bytes) as im:
        fmt = (im.format or "").lower()
    return {"jpeg": "jpg", "mpo": "jpg", "tiff": "tif"}.get(fmt, fmt)
