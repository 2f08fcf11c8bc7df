"""The GPU image route (nvJPEG decode + preprocess on the device), exercised on CPU.

torchvision decodes JPEGs on CPU with the same call, so the route's logic is tested here; the
speed it exists for is measured by bench/bench_gpu.py on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.collections import load_image
from retrieval.vectors import create_encoder
from retrieval.vectors.gpu_pixels import PixelRecipe, decode_jpegs, read_jpeg_bytes


def _sheet(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour fields with a few dark strokes: JPEG-friendly like a scanned sheet, not noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([(x / width) * 200 + 30, (y / height) * 180 + 40, ((x + y) / (width + height)) * 150 + 60], -1)
    for _ in range(4):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(5, 20)
        base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 120, 3)
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("tiny-test", device="cpu", precision="fp32")


def test_device_decode_is_chosen_only_on_cuda(encoder, monkeypatch):
    assert encoder.device.type == "cpu" and not encoder.decodes_on_device()
    assert encoder.pixel_recipe is not None  # open_clip's plain Resize + CenterCrop + Normalize
    monkeypatch.setattr(encoder, "device", torch.device("cuda"))
    assert encoder.decodes_on_device() and encoder.default_batch_size() > 32
    monkeypatch.setenv("HERBARIA_GPU_DECODE", "0")
    assert not encoder.decodes_on_device()


def test_unreplayable_preprocess_stays_on_cpu():
    from torchvision import transforms as T

    assert PixelRecipe.from_preprocess(T.Compose([T.Resize((64, 64)), T.ToTensor()])) is None


def test_batched_decode_matches_the_pil_path(tmp_path, encoder):
    recipe = encoder.pixel_recipe
    paths = []
    for i, (w, h) in enumerate([(160, 120), (90, 140), (100, 100), (127, 65)]):
        paths.append(tmp_path / f"{i}.jpg")
        _sheet(w, h, i).save(paths[-1], quality=92)
    gray = tmp_path / "gray.jpg"
    _sheet(120, 90, 9).convert("L").save(gray)
    paths.append(gray)
    datas = [read_jpeg_bytes(p) for p in paths]
    assert all(d is not None for d in datas)
    batched = decode_jpegs(datas, recipe, "cpu")
    for path, pixels in zip(paths, batched):
        reference = encoder.preprocess(load_image(path, reduce_to=2 * encoder.image_size))
        assert pixels.shape == reference.shape == (3, 64, 64)
        diff = (pixels - reference).abs()
        assert float(diff.mean()) < 0.003 and float(diff.max()) < 0.05, path.name  # rounding, ~1/255


def test_other_formats_and_rotated_jpegs_take_the_cpu_path(tmp_path):
    img = _sheet(80, 60, 1)
    img.save(tmp_path / "a.png")
    img.save(tmp_path / "a.tif")
    img.convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for name in ("a.png", "a.tif", "cmyk.jpg", "rotated.jpg", "broken.jpg"):
        assert read_jpeg_bytes(tmp_path / name) is None, name
    img.save(tmp_path / "plain.jpg")
    assert read_jpeg_bytes(tmp_path / "plain.jpg") is not None


def test_device_route_encodes_like_the_cpu_route(tmp_path, encoder, monkeypatch):
    """The whole device route, run on CPU: JPEGs by the batched decoder, PNG/TIFF/rotated JPEG by
    PIL in the workers, a broken file skipped; rows stay in input order."""
    paths = []
    for i, suffix in enumerate([".jpg", ".png", ".jpg", ".tif", ".jpg"]):
        paths.append(tmp_path / f"{i}{suffix}")
        _sheet(150 + 10 * i, 110, i).save(paths[-1])
    exif = Image.Exif()
    exif[0x0112] = 6
    paths.append(tmp_path / "rotated.jpg")
    _sheet(140, 100, 7).save(paths[-1], exif=exif)
    paths.append(tmp_path / "broken.jpg")
    paths[-1].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cpu = encoder.encode_images(paths, batch_size=3, num_workers=0, skip_errors=True)
    monkeypatch.setattr(type(encoder), "decodes_on_device", lambda self: True)
    device = encoder.encode_images(paths, batch_size=3, num_workers=0, skip_errors=True)
    assert not device[-1].any() and not cpu[-1].any()
    cosine = (cpu[:-1] * device[:-1]).sum(axis=1)
    assert cosine.min() > 0.999, cosine
    np.testing.assert_allclose(device[[1, 3, 5]], cpu[[1, 3, 5]], atol=1e-6)  # same PIL path, same numbers


def test_faiss_stays_on_cpu_without_gpus_and_trains_ivf_on_them_when_present(monkeypatch):
    import faiss

    from retrieval.vectors.faiss_gpu import faiss_gpu_count, searcher, train_on_gpus

    vecs = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    ivf = faiss.index_factory(16, "IDMap2,IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert faiss_gpu_count() == 0 and not train_on_gpus(ivf) and searcher(ivf) is ivf
    # With GPUs reported, k-means goes through the clustering index the GPU helper hands back
    # (a CPU stand-in here, counting its use); the trained index itself stays a CPU index.
    used = []

    def to_gpus(index):
        used.append(index)
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    flat = faiss.index_factory(16, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    assert not train_on_gpus(flat)  # nothing to cluster
    assert train_on_gpus(ivf) and len(used) == 1
    ivf.train(vecs)
    assert ivf.is_trained and not train_on_gpus(ivf)  # already trained: nothing moves
    monkeypatch.setenv("HERBARIA_FAISS_GPU", "0")
    assert faiss_gpu_count() == 0
