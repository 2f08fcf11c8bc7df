"""Safe image loading: real images decode upright in RGB; everything else is one ImageError naming the file."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from retrieval.errors import BadInput, ImageError
from retrieval.collections import image_format, load_image, verify_image


def _jpeg(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (30, 140, 60), **save) -> Path:
    Image.new("RGB", size, color).save(path, "JPEG", quality=90, **save)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but holds almost no data: a decompression bomb, cheaply."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_jpeg_and_png_load_as_rgb(tmp_path):
    jpg = load_image(_jpeg(tmp_path / "sheet.jpg"))
    assert jpg.mode == "RGB" and jpg.size == (64, 48)
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (200, 0, 0, 255))
    rgba.save(tmp_path / "leaf.png")
    png = load_image(tmp_path / "leaf.png")
    assert png.mode == "RGB"
    assert png.getpixel((0, 0)) == (200, 0, 0)
    assert png.getpixel((5, 5)) == (255, 255, 255)  # transparency flattened onto white paper, not black


def test_bytes_and_file_objects(tmp_path):
    data = _jpeg(tmp_path / "a.jpg").read_bytes()
    assert load_image(data).size == (64, 48)
    with open(tmp_path / "a.jpg", "rb") as handle:
        assert load_image(handle).size == (64, 48)
    with pytest.raises(ImageError, match="uploaded image: not an image"):
        load_image(b"hello, I am text")


def test_truncated_jpeg_is_refused(tmp_path):
    good = _jpeg(tmp_path / "good.jpg", size=(400, 300))
    data = good.read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated.jpg: corrupt or truncated") as err:
        load_image(bad)
    assert str(tmp_path) not in str(err.value)  # basename only: messages may reach the web demo
    with pytest.raises(ImageError, match="truncated.jpg"):
        verify_image(bad)
    with pytest.raises(ImageError, match="truncated.jpg"):  # also when decoding at reduced scale
        load_image(bad, reduce_to=64)


def test_text_file_named_jpg(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("collector: A. Gray\n")
    with pytest.raises(ImageError, match="notes.jpg: not an image"):
        load_image(fake)
    with pytest.raises(BadInput):  # ImageError is bad input: exit code 2 in the CLI
        verify_image(fake)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: file is empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="gone.jpg: image file not found"):
        load_image(tmp_path / "gone.jpg")


def test_decompression_bomb_refused_from_header(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 12_500, 12_500)  # 156 Mpx: over our limit, under Pillow's
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageError, match=r"bomb.png: image is 12500x12500 pixels, over the 150,000,000 pixel"):
        load_image(bomb)
    with pytest.raises(ImageError, match="bomb.png"):
        verify_image(bomb)


def test_pillow_bomb_guard_becomes_image_error(tmp_path):
    """Even with our limit raised, Pillow's own DecompressionBombError surfaces as an ImageError."""
    bomb = _png_header_only(tmp_path / "huge.png", 50_000, 50_000)
    with pytest.raises(ImageError, match="huge.png: image is too large to decode safely"):
        load_image(bomb, max_pixels=10**12)


def test_small_pixel_limit(tmp_path):
    with pytest.raises(ImageError, match="64x48 pixels"):
        load_image(_jpeg(tmp_path / "a.jpg"), max_pixels=1000)


def test_huge_file_refused_before_decoding(tmp_path):
    path = _jpeg(tmp_path / "scan.jpg", size=(300, 300))
    with pytest.raises(ImageError, match="scan.jpg: file is .* over the"):
        load_image(path, max_bytes=1024)
    with pytest.raises(ImageError, match="larger than"):
        load_image(path.read_bytes(), max_bytes=1024)
    with open(path, "rb") as handle, pytest.raises(ImageError, match="scan.jpg: file is larger than"):
        load_image(handle, max_bytes=1024)


def test_exif_orientation_is_applied(tmp_path):
    """A camera stores the sheet sideways with Orientation=6; it must come out upright (rotated 90 deg clockwise)."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", "JPEG", quality=95, exif=exif)
    upright = load_image(tmp_path / "rotated.jpg")
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # stored left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    assert verify_image(tmp_path / "rotated.jpg") == (20, 40)


def test_reduce_to_uses_draft_for_jpeg_and_reduce_for_others(tmp_path):
    big = Image.new("RGB", (2000, 1600), (90, 120, 30))
    big.save(tmp_path / "big.jpg", "JPEG", quality=80)
    big.save(tmp_path / "big.png")
    jpg = load_image(tmp_path / "big.jpg", reduce_to=224)
    assert jpg.size == (500, 400)  # 1/4 scale: the smallest JPEG scale whose sides stay >= 224
    png = load_image(tmp_path / "big.png", reduce_to=224)
    assert 224 <= min(png.size) < 448
    assert load_image(tmp_path / "big.jpg").size == (2000, 1600)


def test_verify_returns_size(tmp_path):
    assert verify_image(_jpeg(tmp_path / "a.jpg", size=(33, 77))) == (33, 77)


def test_real_herbarium_sheet(shared_data):
    sheet = next((shared_data / "specimens" / "harvard").glob("*.jpg"))
    full = verify_image(sheet)
    small = load_image(sheet, reduce_to=224)
    assert small.mode == "RGB"
    assert min(small.size) >= 224 and small.size[0] < full[0]


def test_grey_and_palette_images(tmp_path):
    Image.new("L", (8, 8), 128).save(tmp_path / "grey.png")
    Image.new("P", (8, 8), 3).save(tmp_path / "pal.gif")
    assert load_image(tmp_path / "grey.png").getpixel((0, 0)) == (128, 128, 128)
    assert load_image(tmp_path / "pal.gif").mode == "RGB"
    buf = io.BytesIO()
    Image.new("I;16", (4, 4), 65535).save(buf, "PNG")
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


# ---------------------------------------------------------------------------- the decoding allow-list


def _psd_header(path: Path) -> Path:
    """A Photoshop file's header (Pillow reads PSD, but cannot write it)."""
    path.write_bytes(b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, 64, 64, 8, 3) + b"\0" * 64)
    return path


@pytest.mark.parametrize("fmt", ["EPS", "PDF", "BMP", "ICO", "PPM", "TGA", "SGI", "PCX", "PSD"])
def test_only_five_formats_are_decoded_whatever_the_name(tmp_path, fmt):
    """Every other format Pillow reads is refused by content, also renamed .png (BMP and PSD used to decode)."""
    path = tmp_path / "leaf.png"
    if fmt == "PSD":
        _psd_header(path)
    else:
        Image.new("RGB", (64, 64), (30, 140, 60)).save(path, fmt)
    with pytest.raises(ImageError, match=r"leaf.png: not an image \(only JPEG, PNG, WebP, TIFF or GIF"):
        load_image(path)
    with pytest.raises(ImageError, match="only JPEG, PNG, WebP, TIFF or GIF"):
        verify_image(path)
    with pytest.raises(ImageError, match="only JPEG, PNG, WebP, TIFF or GIF"):
        image_format(path)


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []

    def ghostscript(*args, **kwargs):
        calls.append(args)
        return Image.new("RGB", (64, 64))

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    Image.new("RGB", (64, 64), (30, 140, 60)).save(tmp_path / "scan.png", "EPS")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "scan.png")
    assert calls == []


@pytest.mark.parametrize("fmt, name, extension", [
    ("JPEG", "a.png", "jpg"), ("PNG", "a.jpg", "png"), ("WEBP", "a.gif", "webp"), ("TIFF", "a.jpg", "tif"),
    ("GIF", "a.webp", "gif"),
])
def test_the_five_formats_are_read_by_content_not_name(tmp_path, fmt, name, extension):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / name, fmt)
    image = load_image(tmp_path / name)
    assert image.size == (40, 30) and image.mode == "RGB"
    assert image.getpixel((5, 5))[0] > 150
    assert image_format(tmp_path / name) == extension


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    red, blue = Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 255))
    red.save(tmp_path / "anim.gif", save_all=True, append_images=[blue, blue], duration=100)
    pixel = load_image(tmp_path / "anim.gif").getpixel((10, 10))
    assert pixel[0] > 200 and pixel[2] < 50


def test_our_pixel_limit_answers_before_pillows_bomb_guard(tmp_path):
    """A 200-megapixel header is over Pillow's 179 MP guard too: the message is still our documented limit."""
    bomb = _png_header_only(tmp_path / "huge.png", 20_000, 10_000)
    for call in (lambda: load_image(bomb, max_pixels=60_000_000), lambda: verify_image(bomb, max_pixels=60_000_000)):
        with pytest.raises(ImageError, match=r"huge.png: image is over the 60,000,000 pixel limit"):
            call()
    over = _png_header_only(tmp_path / "over.png", 9_000, 7_000)  # 63 MP: under Pillow's guard, over ours
    with pytest.raises(ImageError, match=r"9000x7000 pixels, over the 60,000,000 pixel limit"):
        load_image(over, max_pixels=60_000_000)


@pytest.fixture(scope="module")
def webp_bomb(tmp_path_factory) -> Path:
    """2.3 KB of lossless WebP that decodes to 16383x3600 (59 megapixels) of flat colour."""
    path = tmp_path_factory.mktemp("webp") / "flat.webp"
    Image.new("RGB", (16383, 3600), (255, 255, 255)).save(path, "WEBP", lossless=True)
    return path


def test_a_tiny_lossless_webp_claiming_59_megapixels_is_refused_before_decoding(webp_bomb, monkeypatch):
    from PIL import ImageFile

    assert webp_bomb.stat().st_size < 10_000

    def no_decoding(self):
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match=r"flat.webp: a WEBP image of 16383x3600 pixels is too slow to decode") as err:
        load_image(webp_bomb, max_pixels=60_000_000, reduce_to=512, max_decode_pixels=16_000_000)
    assert "send a JPEG or a smaller image" in str(err.value)


def test_a_large_jpeg_fits_the_decode_budget_at_reduced_scale(tmp_path):
    """The same 30 megapixels: the JPEG decodes at 1/8 scale within 16 MP; the PNG would decode in full."""
    sheet = Image.new("RGB", (6000, 5000), (240, 235, 220))
    sheet.save(tmp_path / "scan.jpg", "JPEG", quality=80)
    sheet.save(tmp_path / "scan.png", "PNG")
    small = load_image(tmp_path / "scan.jpg", reduce_to=512, max_decode_pixels=16_000_000)
    assert 512 <= min(small.size) < 1024
    with pytest.raises(ImageError, match="PNG image of 6000x5000 pixels is too slow to decode"):
        load_image(tmp_path / "scan.png", reduce_to=512, max_decode_pixels=16_000_000)
    assert load_image(tmp_path / "scan.png", reduce_to=512).size[0] < 6000  # no budget: ingest decodes it
