"""Builders shared by the demo tests and benchmarks: a small collection of drawn sheets.

The sheets are generated (leaf shapes, arrangement and colour differ per taxon)
so that the demo tests run anywhere, without ../shared; the collection goes
through the real ingest and index stages with the tiny-test encoder.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

# (scientificName, family, country, institutionCode, leaf shape, opposite leaves, colour)
TAXA = (
    ("Geranium maculatum", "Geraniaceae", "United States", "HUH", "lobed", True, (54, 110, 40)),
    ("Coffea arabica", "Rubiaceae", "Gabon", "P", "ellipse", True, (30, 90, 45)),
    ("Psychotria viridis", "Rubiaceae", "Gabon", "P", "lanceolate", True, (70, 120, 50)),
    ("Quercus robur", "Fagaceae", "France", "P", "lobed", False, (90, 100, 30)),
    ("Rosa canina", "Rosaceae", "France", "HUH", "serrate", False, (60, 95, 35)),
    ("Iris pseudacorus", "Iridaceae", "United States", "HUH", "linear", False, (80, 130, 70)),
)


def _leaf(draw: ImageDraw.ImageDraw, x: float, y: float, angle: float, size: float, shape: str,
          colour: tuple[int, int, int]) -> None:
    length, width = {"linear": (2.6, 0.18), "lanceolate": (1.8, 0.35), "ellipse": (1.3, 0.6),
                     "lobed": (1.1, 0.9), "serrate": (1.2, 0.5)}[shape]
    points = []
    steps = 24
    for i in range(steps * 2):
        t = i / steps if i < steps else 2 - i / steps
        side = 1 if i < steps else -1
        half = math.sin(math.pi * t) * width * size / 2
        if shape == "lobed":
            half *= 0.7 + 0.3 * abs(math.sin(t * math.pi * 5))
        if shape == "serrate" and i % 2:
            half *= 0.8
        u, v = t * length * size, side * half
        points.append((x + u * math.cos(angle) - v * math.sin(angle), y + u * math.sin(angle) + v * math.cos(angle)))
    draw.polygon(points, fill=colour, outline=(20, 40, 15))


def draw_sheet(path: Path, shape: str, opposite: bool, colour: tuple[int, int, int], seed: int) -> None:
    """A 600x900 'herbarium sheet': a stem with leaves of one shape, a label in the corner."""
    rng = random.Random(seed)
    image = Image.new("RGB", (600, 900), (238 + rng.randint(-6, 6), 232 + rng.randint(-6, 6), 215))
    draw = ImageDraw.Draw(image)
    x0 = 300 + rng.randint(-40, 40)
    draw.line([(x0, 820), (x0 + rng.randint(-30, 30), 120)], fill=(70, 60, 30), width=6)
    for k in range(6):
        y = 760 - k * 105 + rng.randint(-10, 10)
        size = 95 + rng.randint(-15, 15)
        jitter = rng.uniform(-0.2, 0.2)
        _leaf(draw, x0, y, -0.5 + jitter, size, shape, colour)
        if opposite:
            _leaf(draw, x0, y, math.pi + 0.5 + jitter, size, shape, colour)
        elif k % 2:
            _leaf(draw, x0, y - 50, math.pi + 0.5 + jitter, size, shape, colour)
    draw.rectangle([400, 780, 580, 880], fill=(250, 250, 245), outline=(120, 120, 120))
    image.save(path, "JPEG", quality=88)


def make_sheets(folder: Path, per_taxon: int = 4) -> Path:
    """Images plus a labels.csv with Darwin Core columns; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for t, (name, family, country, institution, shape, opposite, colour) in enumerate(TAXA):
        for i in range(per_taxon):
            file = f"{name.replace(' ', '_')}_{i}.jpg"
            draw_sheet(folder / file, shape, opposite, colour, seed=t * 100 + i)
            rows.append({"file": file, "scientificName": name, "family": family, "country": country,
                         "institutionCode": institution, "catalogNumber": f"{institution}{10000 + t * 100 + i}",
                         "eventDate": f"{1900 + t * 15 + i * 3}-06-0{1 + i % 9}",
                         "references": f"https://example.org/specimen/{institution}{10000 + t * 100 + i}"})
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def build_collection(workdir: Path, *, per_taxon: int = 4, model: str = "tiny-test") -> Path:
    """Ingest generated sheets and index them: a ready collection folder."""
    from retrieval.vectors import build_index
    from retrieval.collections import ingest

    sheets = make_sheets(workdir / "sheets", per_taxon=per_taxon)
    out = workdir / "collection"
    ingest(sheets, out, progress=False)
    build_index(out, model=model, progress=False)
    return out


def corrupt_jpeg(path: Path, source: Path) -> Path:
    """The first half of a real JPEG: a header that parses, pixel data that stops."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def decompression_bomb(path: Path, side: int = 12_000) -> Path:
    """A tiny PNG file that would decode to side x side pixels."""
    Image.new("1", (side, side), 0).save(path, "PNG", optimize=True)
    return path
