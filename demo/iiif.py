"""IIIF out: each collection image as a level-0 Image API 3 service, each specimen as a Presentation 3 manifest.

Why static tiles: a level-0 service is a folder of JPEGs cut once per image (a 5,000 px sheet
becomes a few hundred small files), so deep zoom costs the server a file read per tile and
any IIIF viewer (OpenSeadragon, Mirador, Universal Viewer) can open the sheet. Tiles live in
the collection (COLLECTION/iiif/<specimen_id>/) and are cut again only when the image changes.

Safety: nothing from a URL becomes a path. A request names a specimen id (digits, looked up in
the collection) and a tile key; the key must be one this module listed when it cut the tiles.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from retrieval.collections import Collection, load_image

TILE = 512
MAX_SIZE = 2048  # the largest whole-image size offered ("sizes"): thumbnails and the manifest's image
IMAGE_CONTEXT = "http://iiif.io/api/image/3/context.json"
PRESENTATION_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
RIGHTS_PREFIXES = ("http://creativecommons.org/", "https://creativecommons.org/", "http://rightsstatements.org/",
                   "https://rightsstatements.org/")
SPECIMEN_ID = re.compile(r"[0-9]{1,12}")
TILE_KEY = re.compile(r"(full|[0-9]{1,6},[0-9]{1,6},[0-9]{1,6},[0-9]{1,6})/(max|[0-9]{1,6},[0-9]{1,6})/0/default\.jpg")
INDEX = "tiles.json"


def tile_keys(width: int, height: int, tile: int = TILE) -> tuple[list[int], dict[str, tuple[int, ...]]]:
    """Scale factors and every tile key (region/size/0/default.jpg) -> (x, y, w, h, out_w, out_h).

    Keys are the canonical Image API 3 forms OpenSeadragon asks for: region "full" when a tile covers
    the whole image, size "max" when it is the full size, else "w,h" rounded up."""
    factors = [1]
    while math.ceil(width / factors[-1]) > tile or math.ceil(height / factors[-1]) > tile:
        factors.append(factors[-1] * 2)
    keys: dict[str, tuple[int, ...]] = {}
    for s in factors:
        span = tile * s
        level_w, level_h = math.ceil(width / s), math.ceil(height / s)
        for ty in range(math.ceil(height / span)):
            for tx in range(math.ceil(width / span)):
                x, y = tx * span, ty * span
                w, h = min(span, width - x), min(span, height - y)
                out_w, out_h = min(tile, level_w - tx * tile), min(tile, level_h - ty * tile)
                region = "full" if (x, y, w, h) == (0, 0, width, height) else f"{x},{y},{w},{h}"
                size = "max" if (out_w, out_h) == (width, height) else f"{out_w},{out_h}"
                keys[f"{region}/{size}/0/default.jpg"] = (x, y, w, h, out_w, out_h)
    for s in factors:
        out_w, out_h = math.ceil(width / s), math.ceil(height / s)
        if max(out_w, out_h) <= MAX_SIZE:
            size = "max" if (out_w, out_h) == (width, height) else f"{out_w},{out_h}"
            keys.setdefault(f"full/{size}/0/default.jpg", (0, 0, width, height, out_w, out_h))
    return factors, keys


class IIIFStore:
    """Cuts, caches and describes the IIIF tiles of one collection's images."""

    def __init__(self, collection_dir: str | Path) -> None:
        self.root = Path(collection_dir).resolve()
        self.collection = Collection.open(self.root)
        self.images_dir = (self.root / "images").resolve()
        self.cache = self.root / "iiif"
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._index: dict[int, tuple[tuple[int, int], dict[str, Any]]] = {}

    def source(self, specimen_id: int) -> Path | None:
        """The specimen's image file inside the collection's images folder; None for none or a remote image."""
        try:
            path = self.collection.image_path(int(specimen_id))
        except KeyError:
            return None
        if path is None:
            return None
        path = path.resolve()
        return path if path.is_relative_to(self.images_dir) and path.is_file() else None

    def _lock(self, specimen_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(specimen_id, threading.Lock())

    def index(self, specimen_id: int) -> dict[str, Any] | None:
        """{"width", "height", "factors", "keys"} of the specimen's tiles, cut first if needed; None: no image."""
        source = self.source(specimen_id)
        if source is None:
            return None
        stat = source.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._index.get(specimen_id)
        if cached and cached[0] == stamp:
            return cached[1]
        with self._lock(specimen_id):
            folder = self.cache / str(specimen_id)
            try:
                index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
                if tuple(index.get("source")) != stamp:
                    index = None
                else:
                    index["keys"] = set(index["keys"])
            except (OSError, ValueError, TypeError):
                index = None
            if index is None:
                index = self._cut(source, folder, stamp)
            self._index[specimen_id] = (stamp, index)
            return index

    def _cut(self, source: Path, folder: Path, stamp: tuple[int, int]) -> dict[str, Any]:
        image = load_image(source).convert("RGB")
        try:
            width, height = image.size
            factors, keys = tile_keys(width, height)
            self.cache.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(dir=self.cache, prefix=".cut-"))
            try:
                levels: dict[int, Any] = {}
                for key, (x, y, w, h, out_w, out_h) in keys.items():
                    s = max(1, round(w / out_w)) if w > out_w else 1
                    if s not in levels:  # cut each level from one reduced copy, not from the full image each time
                        levels[s] = image if s == 1 else image.resize((math.ceil(width / s), math.ceil(height / s)))
                    level = levels[s]
                    box = (x // s, y // s, x // s + out_w, y // s + out_h)
                    tile = level.crop(box)
                    if tile.size != (out_w, out_h):
                        tile = tile.resize((out_w, out_h))
                    target = work / key
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tile.save(target, "JPEG", quality=85)
                index = {"source": list(stamp), "width": width, "height": height, "factors": factors,
                         "keys": sorted(keys)}
                (work / INDEX).write_text(json.dumps(index), encoding="utf-8")
                old = None
                if folder.exists():
                    old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
                    os.replace(folder, old)
                os.replace(work, folder)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            finally:
                if work.exists():
                    shutil.rmtree(work, ignore_errors=True)
        finally:
            image.close()
        index["keys"] = set(index["keys"])
        return index

    def tile(self, specimen_id: int, key: str) -> Path | None:
        """The file of one listed tile, else None (an unknown key never becomes a path)."""
        if not TILE_KEY.fullmatch(key):
            return None
        index = self.index(specimen_id)
        if index is None:
            return None
        if key not in index["keys"]:
            return None
        path = self.cache / str(specimen_id) / key
        return path if path.is_file() else None

    def info(self, specimen_id: int, base: str) -> dict[str, Any] | None:
        """The Image API 3 info.json for the service at `base` (…/iiif/<id>)."""
        index = self.index(specimen_id)
        if index is None:
            return None
        width, height = index["width"], index["height"]
        sizes = [{"width": math.ceil(width / s), "height": math.ceil(height / s)} for s in reversed(index["factors"])
                 if max(math.ceil(width / s), math.ceil(height / s)) <= MAX_SIZE]
        return {"@context": IMAGE_CONTEXT, "id": base, "type": "ImageService3", "protocol": "http://iiif.io/api/image",
                "profile": "level0", "width": width, "height": height, "sizes": sizes,
                "tiles": [{"width": TILE, "height": TILE, "scaleFactors": index["factors"]}],
                "extraFormats": [], "preferredFormats": ["jpg"]}


def _value(text: Any) -> dict[str, list[str]]:
    return {"none": [str(text)]}


def manifest(record: dict[str, Any], info: dict[str, Any] | None, base: str, *, label: str,
             fields: list[tuple[str, str]], page_url: str | None = None) -> dict[str, Any]:
    """A Presentation 3 manifest for one specimen: label, metadata, rights, one canvas painted with its image.

    `base` is the specimen's IIIF base (…/iiif/<id>); `fields` the (label, value) pairs the specimen page shows."""
    manifest_id = f"{base}/manifest.json"
    out: dict[str, Any] = {
        "@context": PRESENTATION_CONTEXT, "id": manifest_id, "type": "Manifest",
        "label": {"en": [label]},
        "metadata": [{"label": {"en": [name]}, "value": _value(value)} for name, value in fields if value],
    }
    license_ = str(record.get("license") or "")
    if license_.startswith(RIGHTS_PREFIXES):
        out["rights"] = license_.replace("https://", "http://", 1)
    attribution = " · ".join(str(record[k]) for k in ("rightsHolder", "license") if record.get(k))
    if attribution:
        out["requiredStatement"] = {"label": {"en": ["Rights"]}, "value": _value(attribution)}
    homepage = []
    if str(record.get("references") or "").startswith(("http://", "https://")):
        homepage.append({"id": record["references"], "type": "Text", "label": {"en": ["Source record"]},
                         "format": "text/html"})
    if page_url:
        homepage.append({"id": page_url, "type": "Text", "label": {"en": ["Specimen page"]}, "format": "text/html"})
    if homepage:
        out["homepage"] = homepage
    canvas_id = f"{base}/canvas/1"
    if info is None:
        out["items"] = []
        return out
    largest = max(info["sizes"], key=lambda s: s["width"]) if info["sizes"] else {"width": info["width"],
                                                                                    "height": info["height"]}
    size = "max" if (largest["width"], largest["height"]) == (info["width"], info["height"]) else \
        f"{largest['width']},{largest['height']}"
    out["thumbnail"] = [{"id": f"{base}/full/{_thumb_size(info)}/0/default.jpg", "type": "Image",
                         "format": "image/jpeg"}]
    out["items"] = [{
        "id": canvas_id, "type": "Canvas", "label": {"en": [label]},
        "height": info["height"], "width": info["width"],
        "items": [{
            "id": f"{canvas_id}/page/1", "type": "AnnotationPage",
            "items": [{
                "id": f"{canvas_id}/page/1/image", "type": "Annotation", "motivation": "painting",
                "target": canvas_id,
                "body": {"id": f"{base}/full/{size}/0/default.jpg", "type": "Image", "format": "image/jpeg",
                         "width": largest["width"], "height": largest["height"],
                         "service": [{"id": base, "type": "ImageService3", "profile": "level0"}]},
            }],
        }],
    }]
    return out


def _thumb_size(info: dict[str, Any]) -> str:
    sizes = sorted(info["sizes"], key=lambda s: s["width"])
    pick = next((s for s in sizes if max(s["width"], s["height"]) >= 256), sizes[-1] if sizes else None)
    if pick is None or (pick["width"], pick["height"]) == (info["width"], info["height"]):
        return "max"
    return f"{pick['width']},{pick['height']}"


STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"openseadragon.min.js": "text/javascript", "openseadragon-LICENSE.txt": "text/plain"}


def install_routes(app: Any, store: IIIFStore, record_of: Any, *, label_of: Any, fields_of: Any) -> None:
    """GET routes on the FastAPI `app`: the IIIF services and manifests, the viewer page, record downloads.

    `record_of(specimen_id)` gives the public record (KeyError/LookupError or a HerbariaError when unknown);
    `label_of` and `fields_of` give the label and the (name, value) fields the specimen page shows.
    Every route takes the specimen id as digits and looks it up; demo.gate lets only these shapes through."""
    from demo.specimen_page import VIEWER_PAGE, record_csv
    from retrieval.errors import HerbariaError

    not_found = PlainTextResponse("Not found.", status_code=404)
    cors = {"Access-Control-Allow-Origin": "*"}  # IIIF viewers on other sites may read these

    def digits(sid: str) -> int | None:
        """The id as a number (the image lookup in `store` is what makes it known)."""
        return int(sid) if SPECIMEN_ID.fullmatch(sid) else None

    def known(sid: str) -> int | None:
        """The id of a specimen in the collection (its record found), else None."""
        if not SPECIMEN_ID.fullmatch(sid):
            return None
        try:
            record_of(int(sid))
        except (KeyError, LookupError, HerbariaError):
            return None
        return int(sid)

    def base(request: Request, sid: int) -> str:
        return f"{str(request.base_url).rstrip('/')}/iiif/{sid}"

    @app.get("/iiif/{sid}/info.json")
    def iiif_info(sid: str, request: Request) -> Response:
        number = digits(sid)
        info = store.info(number, base(request, number)) if number is not None else None
        if info is None:
            return not_found
        return JSONResponse(info, headers={**cors, "Content-Type": "application/ld+json;profile="
                                                                     "\"http://iiif.io/api/image/3/context.json\""})

    @app.get("/iiif/{sid}/manifest.json")
    def iiif_manifest(sid: str, request: Request) -> Response:
        number = known(sid)
        if number is None:
            return not_found
        record = record_of(number)
        page = f"{str(request.base_url).rstrip('/')}/?specimen={quote(label_of(record), safe='')}"
        body = manifest(record, store.info(number, base(request, number)), base(request, number),
                        label=f"{label_of(record)} — {record.get('scientificName') or 'unnamed specimen'}",
                        fields=fields_of(record), page_url=page)
        profile = 'application/ld+json;profile="http://iiif.io/api/presentation/3/context.json"'
        return JSONResponse(body, headers={**cors, "Content-Type": profile})

    @app.get("/iiif/{sid}/{region}/{size}/{rotation}/{quality}")
    def iiif_tile(sid: str, region: str, size: str, rotation: str, quality: str) -> Response:
        number = digits(sid)
        path = store.tile(number, f"{region}/{size}/{rotation}/{quality}") if number is not None else None
        if path is None:
            return not_found
        return FileResponse(path, media_type="image/jpeg", headers={**cors, "Cache-Control": "public, max-age=86400"})

    @app.get("/viewer/{sid}")
    def viewer(sid: str) -> Response:
        number = known(sid)
        if number is None or store.source(number) is None:
            return not_found
        return Response(VIEWER_PAGE.format(sid=number), media_type="text/html")

    @app.get("/records/{name}")
    def record_file(name: str) -> Response:
        sid, _, ext = name.partition(".")
        number = known(sid)
        if number is None or ext not in ("json", "csv"):
            return not_found
        record = record_of(number)
        disposition = {"Content-Disposition": f'attachment; filename="specimen-{number}.{ext}"'}
        if ext == "json":
            return JSONResponse(record, headers=disposition)
        return Response(record_csv(record), media_type="text/csv; charset=utf-8", headers=disposition)

    @app.get("/records/{sid}/image")
    def record_image(sid: str) -> Response:
        number = known(sid)
        path = store.source(number) if number is not None else None
        if path is None:
            return not_found
        return FileResponse(path, filename=f"specimen-{number}{path.suffix.lower()}")

    @app.get("/herbaria-static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return not_found
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name],
                            headers={"Cache-Control": "public, max-age=86400"})
