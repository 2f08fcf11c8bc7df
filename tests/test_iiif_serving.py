"""IIIF out: level-0 Image API 3 tiles and Presentation 3 manifests served by the demo, behind demo.gate.

The manifest checks are written from the IIIF Presentation 3.0 specification (§3 resource types, §4 properties:
@context, id, type, label as a language map, Canvas height/width, AnnotationPage, painting Annotation, Image
body with an ImageService3 service); the info.json checks from the Image API 3.0 (§5 image information).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from demo_support import make_sheets

pytestmark = pytest.mark.slow

PLACES = {"United States": (42.37, -72.52), "Gabon": (-0.62, 11.6), "France": (46.5, 2.5)}
BIG_SHEET = "Geranium_maculatum_0.jpg"


def located_collection(workdir: Path) -> Path:
    """The generated sheets with what a botanist reads on a label (collector, locality, coordinates, licence),
    one sheet scanned large (1600x2400: three zoom levels), and catalog number 17348 at two herbaria."""
    from retrieval.collections import ingest
    from retrieval.vectors import build_index

    sheets = make_sheets(workdir / "sheets", per_taxon=2)
    with open(sheets / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        lat, lon = PLACES[row["country"]]
        row.update(decimalLatitude=f"{lat + i * 0.05:.4f}", decimalLongitude=f"{lon + i * 0.05:.4f}",
                   recordedBy="M. L. Fernald", locality=f"Locality {i}", occurrenceID=f"urn:uuid:0000-{i:04d}",
                   license="http://creativecommons.org/licenses/by/4.0/", rightsHolder="Test Herbarium",
                   collectionCode="A")
    rows[0]["catalogNumber"], rows[0]["institutionCode"] = "17348", "HUH"
    rows[-1]["catalogNumber"], rows[-1]["institutionCode"] = "17348", "P"
    with open(sheets / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with Image.open(sheets / BIG_SHEET) as im:
        im.resize((1600, 2400)).save(sheets / BIG_SHEET, "JPEG", quality=85)
    out = workdir / "collection"
    ingest(sheets, out, progress=False)
    build_index(out, model="tiny-test", progress=False)
    return out


def large_sheet_id(collection: Path) -> int:
    """The specimen id of the one sheet scanned at 1600x2400."""
    from retrieval.collections import Collection

    for row in Collection.open(collection).specimens().to_dict("records"):
        with Image.open(collection / row["image"]) as im:
            if im.size == (1600, 2400):
                return int(row["specimen_id"])
    raise AssertionError("no large sheet in the collection")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from demo.server import create_server, start_server

    work = tmp_path_factory.mktemp("iiif")
    collection = located_collection(work)
    server = start_server(create_server(collection, model="tiny-test"))
    try:
        yield {"url": server.url.rstrip("/"), "collection": collection,
               "big": large_sheet_id(collection)}
    finally:
        server.close()


def test_tile_keys_cover_every_level_in_canonical_form() -> None:
    from demo.iiif import tile_keys

    factors, keys = tile_keys(1600, 2400)
    assert factors == [1, 2, 4, 8]
    assert "0,0,512,512/512,512/0/default.jpg" in keys
    assert "1536,2048,64,352/64,352/0/default.jpg" in keys  # the last tile of full resolution: cut, not padded
    assert "full/200,300/0/default.jpg" in keys  # scale 8: the whole image in one tile
    assert sum(1 for k in keys if not k.startswith("full")) == 4 * 5 + 2 * 3 + 1 * 2
    _, small = tile_keys(300, 200)
    assert "full/max/0/default.jpg" in small and len(small) == 1


def check_info(info: dict[str, Any], base: str) -> None:
    assert info["@context"] == "http://iiif.io/api/image/3/context.json"
    assert info["id"] == base and info["type"] == "ImageService3" and info["protocol"] == "http://iiif.io/api/image"
    assert info["profile"] == "level0" and info["width"] > 0 and info["height"] > 0
    assert info["tiles"] and all(isinstance(f, int) for f in info["tiles"][0]["scaleFactors"])


def check_presentation3(manifest: dict[str, Any]) -> dict[str, Any]:
    """The Presentation 3 shape a viewer relies on; returns the painting annotation's body."""
    assert manifest["@context"] == "http://iiif.io/api/presentation/3/context.json"
    assert manifest["type"] == "Manifest" and manifest["id"].startswith("http")
    label = manifest["label"]
    assert isinstance(label, dict) and all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                           for v in label.values())
    for entry in manifest.get("metadata", []):
        assert set(entry) == {"label", "value"} and all(isinstance(entry[k], dict) for k in entry)
    if "rights" in manifest:
        assert manifest["rights"].startswith(("http://creativecommons.org/", "http://rightsstatements.org/"))
    canvases = manifest["items"]
    assert len(canvases) == 1
    canvas = canvases[0]
    assert canvas["type"] == "Canvas" and canvas["id"].startswith("http")
    assert isinstance(canvas["height"], int) and isinstance(canvas["width"], int)
    page = canvas["items"][0]
    assert page["type"] == "AnnotationPage" and page["id"].startswith("http")
    annotation = page["items"][0]
    assert annotation["type"] == "Annotation" and annotation["motivation"] == "painting"
    assert annotation["target"] == canvas["id"]
    body = annotation["body"]
    assert body["type"] == "Image" and body["format"] == "image/jpeg" and body["id"].startswith("http")
    service = body["service"][0]
    assert service["type"] == "ImageService3" and service["profile"] == "level0"
    return body


def test_info_json_tiles_and_manifest(served: dict[str, Any]) -> None:
    url, sid = served["url"], served["big"]
    reply = httpx.get(f"{url}/iiif/{sid}/info.json", timeout=60)
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "*"
    info = reply.json()
    check_info(info, f"{url}/iiif/{sid}")
    assert (info["width"], info["height"]) == (1600, 2400) and info["tiles"][0]["scaleFactors"] == [1, 2, 4, 8]
    assert (served["collection"] / "iiif" / str(sid) / "tiles.json").is_file()  # cut once, kept in the collection

    tile = httpx.get(f"{url}/iiif/{sid}/512,1024,512,512/512,512/0/default.jpg", timeout=30)
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"
    from io import BytesIO

    assert Image.open(BytesIO(tile.content)).size == (512, 512)
    level = 2
    w, h = math.ceil(1600 / level), math.ceil(2400 / level)
    assert {"width": w, "height": h} in info["sizes"]
    assert httpx.get(f"{url}/iiif/{sid}/full/{w},{h}/0/default.jpg", timeout=30).status_code == 200
    # a size that was never cut is not a tile (level 0 serves only what it lists)
    assert httpx.get(f"{url}/iiif/{sid}/0,0,512,512/256,256/0/default.jpg", timeout=30).status_code == 404

    manifest = httpx.get(f"{url}/iiif/{sid}/manifest.json", timeout=30).json()
    body = check_presentation3(manifest)
    assert body["service"][0]["id"] == f"{url}/iiif/{sid}"
    assert manifest["items"][0]["width"] == 1600 and manifest["items"][0]["height"] == 2400
    assert httpx.get(body["id"], timeout=30).status_code == 200  # the painted image itself is served
    names = {e["label"]["en"][0] for e in manifest["metadata"]}
    assert {"Identification", "Collector and number", "Coordinates", "Licence"} <= names
    assert manifest["rights"] == "http://creativecommons.org/licenses/by/4.0/"
    assert "Test Herbarium" in manifest["requiredStatement"]["value"]["none"][0]


def test_records_download_as_json_and_darwin_core_csv(served: dict[str, Any]) -> None:
    url, sid = served["url"], served["big"]
    record = httpx.get(f"{url}/records/{sid}.json", timeout=30)
    assert record.status_code == 200 and record.json()["specimen_id"] == sid
    assert str(served["collection"]) not in record.text
    rows = list(csv.DictReader(httpx.get(f"{url}/records/{sid}.csv", timeout=30).text.splitlines()))
    assert len(rows) == 1 and rows[0]["scientificName"] == "Geranium maculatum"
    assert rows[0]["decimalLatitude"] and rows[0]["recordedBy"] == "M. L. Fernald"
    image = httpx.get(f"{url}/records/{sid}/image", timeout=30)
    assert image.status_code == 200 and Image.open(__import__("io").BytesIO(image.content)).size == (1600, 2400)
    viewer = httpx.get(f"{url}/viewer/{sid}", timeout=30)
    assert viewer.status_code == 200 and f"/iiif/{sid}/info.json" in viewer.text
    script = httpx.get(f"{url}/herbaria-static/openseadragon.min.js", timeout=30)
    assert script.status_code == 200 and "OpenSeadragon" in script.text[:5000]


@pytest.mark.parametrize("path", [
    "/iiif/../collection.json", "/iiif/%2e%2e/collection.json", "/iiif/1/..%2f..%2fcollection.json",
    "/iiif//etc/passwd/info.json", "/iiif/%2Fetc%2Fpasswd/info.json", "/iiif/1/../../specimens.parquet",
    "/iiif/1/info.json%00", "/iiif/1/info.json%0A", "/iiif/99999/info.json", "/iiif/-1/info.json",
    "/iiif/1/0,0,512,512/512,512/0/..%2F..%2Ftiles.json", "/iiif/1/tiles.json",
    "/records/1.parquet", "/records/..%2Fcollection.json", "/records/1/../../collection.json",
    "/viewer/1%2F..%2F..", "/herbaria-static/..%2Fapp.py", "/herbaria-static/gate.py",
    "/iiif/1/full/max/0/default.png", "/iiif/1/full/max/90/default.jpg",
])
def test_path_tricks_get_404(served: dict[str, Any], path: str) -> None:
    with httpx.Client(timeout=30) as client:
        reply = client.get(served["url"] + path)
    assert reply.status_code == 404, (path, reply.status_code, reply.text[:200])
    assert "root:" not in reply.text and "PAR1" not in reply.text


def test_only_get_reaches_the_iiif_routes(served: dict[str, Any]) -> None:
    reply = httpx.post(f"{served['url']}/iiif/{served['big']}/info.json", json={}, timeout=30)
    assert reply.status_code == 404
