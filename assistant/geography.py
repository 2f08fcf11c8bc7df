"""Where a question is, for the assistant: typed points, radius and box filters, EXIF GPS, the geo-prior, range maps.

The router stays about words; this module reads the geography out of a turn first
(`read_question`), so "within 50 km of -12.97, -38.5" becomes a radius filter that the
vector search applies inside FAISS like any other filter, a bare "-12.97, -38.5" becomes
the place of an identification, and "where does X grow?" asks for a map. The place
then reorders the zero-shot identification by the collection's location model
(`location.geo_rerank`) and the answer says so in one line; without a trained model the
identification is left as it is. An upload's EXIF GPS is parsed as numbers only and
range-checked: it says where the photo claims to be, nothing more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from assistant.tools import GENERIC_QUERY
from retrieval.errors import BadInput, HerbariaError
from retrieval.filters import parse_bbox, parse_radius

log = logging.getLogger(__name__)

_NUM = r"[-+−]?\d{1,3}(?:\.\d+)?"
# "-12.97, -38.5" or "12.97 S, 38.5 W" (degrees sign allowed); not inside a longer number or word
_POINT = rf"(?P<lat>{_NUM})\s*°?\s*(?P<ns>[NSns])?\s*[,;]\s*(?P<lon>{_NUM})\s*°?\s*(?P<ew>[EWOewo])?(?![\w.])"
POINT = re.compile(rf"(?<![\w.]){_POINT}")
RADIUS = re.compile(rf"\b(?:within|less than|under|up to|in a radius of)\s+(?P<km>\d+(?:\.\d+)?)\s*km\s+"
                    rf"(?:of|from|around)\s+(?:the point\s+|point\s+)?\(?{_POINT}\)?", re.I)
BBOX = re.compile(rf"\b(?:in\s+|inside\s+|within\s+)?(?:the\s+)?(?:bbox|bounding box|box)\s*[=:]?\s*\(?\s*"
                  rf"(?P<w>{_NUM})\s*,\s*(?P<s>{_NUM})\s*,\s*(?P<e>{_NUM})\s*,\s*(?P<n>{_NUM})\s*\)?", re.I)
WHERE = re.compile(
    r"^\s*(?:(?:and|so|please|tell me)[,\s]+)?(?:"
    r"where\s+(?:does|do|did|can|would)\s+(?P<a>.+?)\s+(?:grow|occur|live|come from|naturally occur)"
    r"|where\s+(?:was|were|is|are|has|have)\s+(?P<b>.+?)\s+(?:been\s+)?(?:collected|found|growing|recorded|seen)"
    r"|(?:what\s+is\s+)?(?:the\s+)?(?:distribution|range|range map|distribution map)\s+of\s+(?P<c>.+?)"
    r"|(?:map|show(?:\s+me)?)\s+(?:the\s+)?(?:range|distribution)\s+of\s+(?P<d>.+?)"
    r")\s*[?.!]*\s*$", re.I)
# "collected near Salvador, Bahia" / "found in Bahia": a capitalised name at the end, after a verb or "near"
PLACE = re.compile(r"[,;]?\s*\b(?:(?:collected|found|photographed|taken|seen|growing|grown|picked)\s+"
                   r"(?:near|in|at|around|from)|near)\s+(?P<place>(?-i:[A-ZÀ-Þ])[^?!;\d]{0,79}?)\s*[?.!]*\s*$", re.I)
_THIS = re.compile(r"^(?:this|it|this (?:plant|specimen|one|species|sheet)|that(?: one| plant)?|they|these)$", re.I)
PRIOR_WEIGHT = 1.0


@dataclass
class GeoTurn:
    """The geography of one question, and the question without it (for the router)."""

    text: str
    filters: dict[str, tuple[float, ...]] = field(default_factory=dict)  # parse_filters' radius / bbox
    point: tuple[float, float] | None = None      # typed coordinates, the place of an identification
    where: str | None = None                      # subject of "where does X grow?" ("" = the photo's taxon)
    place: dict[str, Any] | None = None           # a named place, resolved by assistant.places (or why it was not)

    @property
    def changed(self) -> bool:
        return bool(self.filters) or self.point is not None or self.where is not None or self.place is not None


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def _point(m: re.Match[str]) -> tuple[float, float]:
    lat, lon = _number(m.group("lat")), _number(m.group("lon"))
    if (m.group("ns") or "").upper() == "S":
        lat = -abs(lat)
    if (m.group("ew") or "").upper() in ("W", "O"):
        lon = -abs(lon)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadInput(f"({lat}, {lon}) is not a point: latitude comes first (-90..90), then longitude (-180..180)")
    return lat, lon


def _looks_like_point(m: re.Match[str]) -> bool:
    """Decimals on both, a hemisphere letter or a degree sign: '3, 5 mm' is not a place."""
    return ("." in m.group("lat") and "." in m.group("lon")) or bool(m.group("ns") or m.group("ew")) or "°" in m.group(0)


def read_question(text: str | None) -> GeoTurn:
    """Radius and box filters, a typed point and a "where does X grow?" subject, cut out of the question."""
    text = text or ""
    filters: dict[str, tuple[float, ...]] = {}
    m = RADIUS.search(text)
    if m:
        lat, lon = _point(m)
        filters["radius"] = parse_radius((lat, lon, float(m.group("km"))))
        text = (text[:m.start()] + " " + text[m.end():]).strip()
    m = BBOX.search(text)
    if m:
        filters["bbox"] = parse_bbox(tuple(_number(m.group(k)) for k in ("w", "s", "e", "n")))
        text = (text[:m.start()] + " " + text[m.end():]).strip()
    point = None
    m = next((m for m in POINT.finditer(text) if _looks_like_point(m)), None)
    if m:
        point = _point(m)
        text = (text[:m.start()] + " " + text[m.end():]).strip()
        text = re.sub(r"[,;]?\s*\b(?:(?:collected|found|photographed|taken)\s+)?(?:at|near|around|in)\s*[,.;]?\s*(?=[?.!]*\s*$)",
                      "", text, flags=re.I).strip(" ,;")
    place = None
    m = PLACE.search(text) if point is None else None
    if m:
        from assistant.places import resolve

        place = resolve(m.group("place"))
        text = (text[:m.start()] + text[m.end():]).strip(" ,;?.!") + "?"
    where = None
    m = WHERE.match(text)
    if m:
        subject = next(g for g in m.groups() if g is not None).strip(" *_\"'")
        where = "" if _THIS.match(subject) else subject
        text = where
    return GeoTurn(re.sub(r"\s{2,}", " ", text).strip(), filters, point, where, place)


# ---------------------------------------------------------------------- EXIF GPS
_GPS_IFD = 0x8825


def _degrees(value: Any) -> float:
    """(deg, min, sec) rationals, or one number, to decimal degrees."""
    if isinstance(value, (tuple, list)):
        parts = [float(v) for v in value][:3]
        parts += [0.0] * (3 - len(parts))
        return parts[0] + parts[1] / 60 + parts[2] / 3600
    return float(value)


def exif_point(image: Image.Image | str | Path | None) -> tuple[float, float] | None:
    """The GPS point an upload's EXIF claims (numbers only, range-checked), or None."""
    if image is None:
        return None
    try:
        if isinstance(image, Image.Image):
            exif = image.getexif()
        else:
            with Image.open(image) as opened:
                exif = opened.getexif()
        gps = exif.get_ifd(_GPS_IFD)
        if not gps or 2 not in gps or 4 not in gps:
            return None
        lat, lon = _degrees(gps[2]), _degrees(gps[4])
        if str(gps.get(1, "N")).strip().upper().startswith("S"):
            lat = -lat
        if str(gps.get(3, "E")).strip().upper().startswith("W"):
            lon = -lon
    except (OSError, ValueError, TypeError, ZeroDivisionError, AttributeError, KeyError):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    return round(lat, 6), round(lon, 6)


# ---------------------------------------------------------------------- the location model
_models: dict[str, tuple[float, Any]] = {}
_lock = threading.Lock()


def location_model(collection: Any) -> Any | None:
    """The collection's location model (reloaded when retrained), or None when none is trained or it is refused."""
    from location import load_location_model

    manifest = Path(collection.path) / "location" / "manifest.json"
    if not manifest.is_file():
        return None
    stamp = manifest.stat().st_mtime_ns
    key = str(Path(collection.path).resolve())
    with _lock:
        cached = _models.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
    try:
        model = load_location_model(collection)
    except HerbariaError as err:  # trained against another encoder, damaged: the answer goes on without it
        log.warning("location model of %s not used: %s", Path(collection.path).name, err)
        return None
    with _lock:
        _models[key] = (stamp, model)
    return model


def place_of(geo: GeoTurn, filters: dict[str, Any], exif: tuple[float, float] | None) -> dict[str, Any] | None:
    """Where the specimen was collected, as said most precisely: typed point, EXIF GPS, a radius's centre, one country."""
    if geo.point is not None:
        return {"lat": geo.point[0], "lon": geo.point[1], "said": f"the coordinates given ({geo.point[0]:g}, {geo.point[1]:g})", "explicit": True}
    if geo.place is not None and "unplaced" not in geo.place:  # a named place, as the gazetteer put it
        where = {k: geo.place[k] for k in ("lat", "lon", "country") if k in geo.place}
        return {**where, "said": geo.place["said"], "explicit": True}
    if exif is not None:
        return {"lat": exif[0], "lon": exif[1], "said": f"the photo's GPS ({exif[0]:g}, {exif[1]:g})", "explicit": True}
    radius = filters.get("radius")
    if radius:
        return {"lat": radius[0], "lon": radius[1], "said": f"the search's centre ({radius[0]:g}, {radius[1]:g})"}
    countries = filters.get("country") or []
    if len(countries) == 1:
        return {"country": countries[0], "said": str(countries[0])}
    return None


def apply_prior(collection: Any, taxa: list[dict[str, Any]], place: dict[str, Any] | None) -> str | None:
    """Reorder the identification hits in `taxa` (in place) by image x location prior; the line saying so, or None."""
    ident = [t for t in taxa if t.get("kind") == "identification"]
    if place is None or not ident:
        return None
    model = location_model(collection)
    if model is None:  # said when the place was given for this (a point, the photo's GPS), not for every filter
        return None if not place.get("explicit") else (f"Not ranked by where it was collected ({place['said']}): this collection has no location model; "
                f"train one with `herbaria location train {Path(collection.path).name}`.")
    from location import geo_rerank

    try:
        point = {"lat": place["lat"], "lon": place["lon"]} if "lat" in place else {"country": place["country"]}
        reranked = geo_rerank(ident, model, score_kind="probability", weight=PRIOR_WEIGHT, **point)
    except BadInput as err:  # a country without an outline: said, not fatal
        return f"Not ranked by where it was collected: {err}."
    if all(hit["location_probability"] is None for hit in reranked["ranking"]):
        return (f"Not ranked by where it was collected ({place['said']}): the location model knows none of these "
                f"{ident[0].get('rank', 'species')} names.")
    total = sum(float(t["score"]) for t in ident)
    ranked = [{**{k: v for k, v in hit.items() if k not in ("rank", "rank_image_only", "probability")},
               "rank": ident[0].get("rank", "species"), "score": round(float(hit["probability"]) * total, 4),
               "image_score": hit["score"], "location_probability": hit["location_probability"],
               "rank_image_only": hit["rank_image_only"]} for hit in reranked["ranking"]]
    others = [t for t in taxa if t.get("kind") != "identification"]
    taxa[:] = ranked + others
    top = ranked[0]["taxon"]
    moved = " (this changed the order)" if reranked["changed"] else ""
    return f"Ranked with where it was collected: {place['said']}; most likely there: {top}{moved}."


# ---------------------------------------------------------------------- range maps
def map_dir(collection: Any) -> Path:
    return Path(collection.path) / "cache" / "maps"


def range_map(collection: Any, taxon: str) -> tuple[dict[str, Any], str]:
    """The map of where `taxon` grows (model scores when trained, the collection's records always) and a line.

    Drawn once per (taxon, collection snapshot, location model): a later question reads the PNG and its JSON."""
    from location import render_map, taxon_range_map
    from location.range_map import records_of
    from retrieval.flora import normalize_name

    model = location_model(collection)
    stamp = (Path(collection.path) / "location" / "manifest.json").stat().st_mtime_ns if model is not None else 0
    snapshot = collection.snapshot_path.stat().st_mtime_ns if collection.snapshot_path.is_file() else 0
    digest = hashlib.sha1(repr((normalize_name(taxon) or taxon, snapshot, stamp)).encode()).hexdigest()[:16]
    out = map_dir(collection) / f"range-{digest}.png"
    told = out.with_suffix(".json")
    if out.is_file() and told.is_file():
        try:
            cached = json.loads(told.read_text(encoding="utf-8"))
            return {**cached["map"], "path": str(out)}, cached["line"]
        except (OSError, ValueError, KeyError):
            pass  # drawn again below
    own = records_of(collection.specimens(), taxon)
    tmp = out.with_name(f".{out.stem}-{os.getpid()}-{threading.get_ident()}.png")  # drawn aside, then swapped in
    if model is not None and model.taxon_index(taxon) is not None:
        drawn = taxon_range_map(collection, taxon, tmp, width=900, model=model, records=own)
        label = f"Where {drawn['taxon']} grows (model + {drawn['records_drawn']} records)"
        line = (f"Map: where {drawn['taxon']} grows ({drawn['how']}), with this collection's "
                f"{drawn['records_drawn']} usable records of it on top"
                + (f" ({drawn['records_flagged_skipped']} with flagged coordinates left off)"
                   if drawn.get("records_flagged_skipped") else "") + ".")
    else:
        drawn = render_map(tmp, records=own, width=900, title=f"{taxon}: this collection's records")
        label = f"Where {taxon} was collected ({drawn['records_drawn']} records; no location model)"
        why = (f"{taxon} is not in the location model" if model is not None
               else "no location model is trained for this collection")
        line = (f"Map: this collection's {drawn['records_drawn']} usable records of {taxon} only; {why} "
                f"(`herbaria location train {Path(collection.path).name}`)."
                if drawn["records_drawn"] else
                f"No usable coordinates of {taxon} in this collection, and {why} "
                f"(`herbaria location train {Path(collection.path).name}`).")
    os.replace(tmp, out)
    result = {**drawn, "path": str(out), "label": label, "taxon": drawn.get("taxon", taxon), "model": model is not None}
    told_tmp = told.with_name(f".{told.name}-{os.getpid()}-{threading.get_ident()}")
    told_tmp.write_text(json.dumps({"map": result, "line": line},
                                   default=lambda v: v.item() if hasattr(v, "item") else str(v)), encoding="utf-8")
    os.replace(told_tmp, told)
    return result, line


def publish_map(path: str | Path, cache: str | Path) -> str:
    """A copy of a map in a folder the page serves (content-named, written once)."""
    source = Path(path)
    target = Path(cache) / f"range-{hashlib.sha1(source.read_bytes()).hexdigest()[:20]}.png"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return str(target)


# ---------------------------------------------------------------------- the agent's hooks
def route_text(geo: GeoTurn, text: str | None, *, has_image: bool) -> str:
    """What the router reads: the question without its geography."""
    if geo.where == "" and not has_image:
        raise BadInput("where does what grow? name a taxon (e.g. 'where does Mimosa pudica grow?') or upload a photo")
    if geo.filters and not geo.text.strip(" ?.!,"):  # "within 50 km of ...": all specimens there, best sheets first
        return GENERIC_QUERY
    return geo.text if geo.changed else (text or "")


def after_run(collection: Any, geo: GeoTurn, evidence: Any, exif: tuple[float, float] | None) -> dict[str, Any] | None:
    """Geo-prior on the identification, and the range map of a "where does X grow?" turn (returned, else None)."""
    if geo.place is not None and "unplaced" in geo.place:
        evidence.notes.append(geo.place["line"])
    line = apply_prior(collection, evidence.taxa, place_of(geo, evidence.filters or {}, exif))
    if line:
        evidence.notes.append(line)
    if geo.where is None:
        return None
    ident = [t for t in evidence.taxa if t.get("kind") == "identification"]
    taxon = geo.where or (ident[0]["taxon"] if ident else None)
    if not taxon:
        evidence.notes.append("No taxon to map: the photo could not be identified to a taxon this collection holds.")
        return None
    drawn, line = range_map(collection, taxon)
    evidence.notes.append(line)
    return drawn
