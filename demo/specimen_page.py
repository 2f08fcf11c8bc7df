"""The specimen page: what a herbarium portal shows for one sheet, and how a visitor names a sheet.

A botanist names a sheet by what is written on it: "HUH 17348", the catalog number alone, or
the occurrenceID a GBIF download gives; the internal id ("#130") only for sheets without a
catalog number. `SpecimenNames` turns any of those into the specimen id; `specimen_label`
(assistant.composer) makes the label the other way, the same one answers cite.

The page itself is HTML built here: the sheet in a deep-zoom viewer (an iframe to the
demo's /viewer/<id>, OpenSeadragon over the IIIF tiles of demo.iiif), the label fields in a
botanist's words, the higher taxonomy, a citation, downloads. Maps are PNGs drawn offline by
location.range_map.render_map.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import math
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from assistant.composer import specimen_label
from retrieval.collections import DWC_TERMS
from retrieval.errors import BadInput

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")
PERMALINK = "?specimen={}"


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


def permalink(record: dict[str, Any]) -> str:
    """The page-relative permalink of a specimen: `?specimen=HUH%2017348` (its label)."""
    return PERMALINK.format(quote(specimen_label(record), safe=""))


class SpecimenNames:
    """Catalog numbers, labels and occurrenceIDs of one collection's table -> specimen ids."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.ids = {int(i) for i in table["specimen_id"]}
        self.by_occurrence: dict[str, int] = {}
        self.by_label: dict[str, list[int]] = {}
        self.by_catalog: dict[str, list[int]] = {}
        for row in table.to_dict("records"):
            sid = int(row["specimen_id"])
            occurrence = _text(row.get("occurrenceID"))
            if occurrence:
                self.by_occurrence.setdefault(occurrence.casefold(), sid)
            catalog = _text(row.get("catalogNumber"))
            if catalog:
                self.by_catalog.setdefault(catalog.casefold(), []).append(sid)
                self.by_label.setdefault(specimen_label(row).casefold(), []).append(sid)
        self.institutions = {int(r["specimen_id"]): _text(r.get("institutionCode")) for r in table.to_dict("records")}

    def resolve(self, text: Any) -> int:
        """The specimen id for a label, catalog number, occurrenceID or "#id"; BadInput saying why not."""
        query = " ".join(_text(text).split())
        if isinstance(text, float) and text.is_integer():
            query = str(int(text))
        if not query:
            raise BadInput("Choose a specimen in the gallery, or type its catalog number (e.g. HUH 17348).")
        key = query.casefold()
        if key in self.by_occurrence:
            return self.by_occurrence[key]
        for table in (self.by_label, self.by_catalog):
            hits = table.get(key) or []
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                held = sorted({self.institutions.get(h) or "?" for h in hits})
                raise BadInput(f"Catalog number {query} is used by {len(hits)} specimens ({', '.join(held)}); "
                               f"add the institution, e.g. \"{held[0]} {query}\".")
        number = query[1:] if query.startswith("#") else query
        if number.isdigit() and int(number) in self.ids:
            return int(number)
        raise BadInput(f"There is no specimen {query} in this collection (try a catalog number such as "
                       "\"HUH 17348\", or an occurrenceID).")


def _coordinates(record: dict[str, Any]) -> str:
    try:
        lat, lon = float(record.get("decimalLatitude")), float(record.get("decimalLongitude"))
    except (TypeError, ValueError):
        return ""
    if math.isnan(lat) or math.isnan(lon):
        return ""
    return f"{abs(lat):.4f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.4f}° {'E' if lon >= 0 else 'W'}"


def botanist_fields(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs in a herbarium label's words and order; empty values are left out."""
    collector = " ".join(p for p in (_text(record.get("recordedBy")), _text(record.get("recordNumber"))) if p)
    identification = _text(record.get("scientificName"))
    if _text(record.get("identifiedBy")):
        identification += f" (det. {_text(record.get('identifiedBy'))})"
    holder = " ".join(p for p in (_text(record.get("institutionCode")), _text(record.get("collectionCode"))) if p)
    rows = [
        ("Identification", identification), ("Collector and number", collector),
        ("Date", _text(record.get("eventDate")) or _text(record.get("year"))),
        ("Locality", _text(record.get("locality"))), ("Country", _text(record.get("country"))),
        ("Coordinates", _coordinates(record)), ("Herbarium", holder),
        ("Catalog number", _text(record.get("catalogNumber"))), ("Occurrence ID", _text(record.get("occurrenceID"))),
        ("Licence", _text(record.get("license"))), ("Rights holder", _text(record.get("rightsHolder"))),
        ("Source record", _text(record.get("references"))),
    ]
    return [(k, v) for k, v in rows if v]


def taxonomy(record: dict[str, Any]) -> list[tuple[str, str]]:
    """Higher taxonomy the record gives, kingdom to genus (ranks it lacks are left out)."""
    return [(rank.capitalize(), _text(record.get(rank))) for rank in RANKS if _text(record.get(rank))]


def citation_text(record: dict[str, Any], collection: str, url: str | None = None, today: date | None = None) -> str:
    """A citation to copy, in the usual specimen-citation order (label, taxon, collector, date, place, holder)."""
    parts = [specimen_label(record), _text(record.get("scientificName"))]
    collector = " ".join(p for p in (_text(record.get("recordedBy")), _text(record.get("recordNumber"))) if p)
    if collector:
        parts.append(f"leg. {collector}")
    parts += [_text(record.get("eventDate")),
              ": ".join(p for p in (_text(record.get("country")), _text(record.get("locality"))) if p),
              _text(record.get("rightsHolder")) or _text(record.get("institutionCode"))]
    text = ", ".join(p for p in parts if p) + "."
    link = _text(record.get("references")) or url
    if link:
        text += f" {link} (accessed {(today or date.today()).isoformat()} via Herbaria, {collection})."
    return text


def record_csv(record: dict[str, Any]) -> str:
    """The record as a one-row Darwin Core CSV (dwc term names as the header)."""
    terms = [*DWC_TERMS, *(t for t in ("recordNumber", "identifiedBy", *RANKS) if t not in DWC_TERMS
                           and _text(record.get(t)))]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(terms)
    writer.writerow([_text(record.get(t)) for t in terms])
    return out.getvalue()


def _esc(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _is_url(value: str) -> bool:
    return value.startswith(("https://", "http://")) and not any(c in value for c in " \"'<>")


def fields_html(record: dict[str, Any], specimen_id: int, has_image: bool) -> str:
    """The label fields, the taxonomy and the download links as one HTML block (every value escaped)."""
    rows = []
    for name, value in botanist_fields(record):
        shown = f'<a href="{_esc(value)}" target="_blank" rel="noopener">{_esc(value)}</a>' if _is_url(value) \
            else _esc(value)
        rows.append(f"<tr><th scope=\"row\">{_esc(name)}</th><td>{shown}</td></tr>")
    ranks = taxonomy(record)
    tax = ""
    if ranks:
        tax = ('<p class="herbaria-taxonomy"><b>Classification</b>: ' + " › ".join(
            f'<span title="{_esc(r)}">{_esc(v)}</span>' for r, v in ranks) + "</p>")
    links = [f'<a href="/records/{specimen_id}.json" download>record (JSON)</a>',
             f'<a href="/records/{specimen_id}.csv" download>record (Darwin Core CSV)</a>',
             f'<a href="/iiif/{specimen_id}/manifest.json" target="_blank">IIIF manifest</a>']
    if has_image:
        links.insert(0, f'<a href="/records/{specimen_id}/image" download>image</a>')
    return (f'<table class="herbaria-label">{"".join(rows)}</table>{tax}'
            f'<p class="herbaria-downloads"><b>Download</b>: {" · ".join(links)}</p>')


def viewer_html(specimen_id: int) -> str:
    """The deep-zoom viewer of the sheet, as an iframe to the demo's viewer page."""
    return (f'<iframe class="herbaria-viewer" src="/viewer/{specimen_id}" title="Sheet viewer (zoom and pan)" '
            'style="width:100%;height:560px;border:1px solid #ccc;border-radius:6px;background:#222" '
            'loading="eager"></iframe>')


VIEWER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sheet {sid}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>html,body{{margin:0;height:100%;background:#222;font:13px sans-serif}}#osd{{width:100%;height:100%}}
#bar{{position:absolute;top:6px;left:6px;z-index:10;display:flex;gap:4px}}
#bar button{{font-size:16px;width:32px;height:32px;border-radius:4px;border:1px solid #888;background:#fff}}</style>
<script src="/herbaria-static/openseadragon.min.js"></script></head>
<body><div id="bar"><button id="zoom-in" title="Zoom in">+</button><button id="zoom-out" title="Zoom out">−</button>
<button id="home" title="Whole sheet">⌂</button><button id="full" title="Full screen"><svg width="14" height="14"
viewBox="0 0 14 14" aria-hidden="true"><path d="M1 5V1h4M9 1h4v4M13 9v4H9M5 13H1V9" fill="none" stroke="#333"
stroke-width="2"/></svg></button></div>
<div id="osd"></div>
<script>
window.viewer = OpenSeadragon({{id: "osd", tileSources: "/iiif/{sid}/info.json", showNavigationControl: true,
  zoomInButton: "zoom-in", zoomOutButton: "zoom-out", homeButton: "home", fullPageButton: "full",
  showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", maxZoomPixelRatio: 2, crossOriginPolicy: false}});
</script></body></html>
"""


def map_png(points: list[tuple[float, float]], cache: Path, title: str, width: int = 640) -> str | None:
    """A PNG map of (lat, lon) points, drawn offline once per point set; None when there is nothing to draw."""
    if not points:
        return None
    from location.range_map import render_map

    key = hashlib.sha1(repr((sorted(points), title, width)).encode()).hexdigest()[:20]
    target = Path(cache) / f"map-{key}.png"
    if not target.is_file():
        render_map(target, records=points, title=title, width=width)
    return str(target)


def points_of(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(lat, lon) of the records that have both coordinates."""
    out = []
    for record in records:
        try:
            lat, lon = float(record.get("decimalLatitude")), float(record.get("decimalLongitude"))
        except (TypeError, ValueError):
            continue
        if not (math.isnan(lat) or math.isnan(lon)):
            out.append((lat, lon))
    return out
