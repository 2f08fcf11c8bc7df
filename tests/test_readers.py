"""Readers: image folders with CSV labels, Darwin Core Archives (every shared sample) and GBIF API JSON."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from retrieval.errors import BadInput
from retrieval.collections.readers import (
    complete_names,
    detect_source,
    read_dwca,
    read_gbif_json,
    read_image_folder,
)
from retrieval.collections import DWC_TERMS

# Every sample in ../shared/data/dwca and what it must do. python-dwca-reader itself
# calls the first five invalid; the checklists are valid archives of taxa, not specimens.
BROKEN = {
    "dwca-invalid-lacks-metadata",
    "dwca-invalid-simple-toomuch.zip",
    "dwca-invalid-simple-two.zip",
    "dwca-malformed-descriptor",
    "dwca-missing-extension-details",
}
CHECKLISTS = {"dwca-2extensions.zip", "dwca-ids.zip", "dwca-orphaned-rows.zip", "dwca-star-test-archive.zip"}
READABLE = {
    "dwca-csv-quote-dir": 2,
    "dwca-default-metadata-filename.zip": 2,
    "dwca-meta-default-values": 2,
    "dwca-metadata-windows1252-encoding": 4,
    "dwca-noheaders-1.zip": 2,
    "dwca-noheaders-2.zip": 2,
    "dwca-nometadata.zip": 2,
    "dwca-partial-default.zip": 2,
    "dwca-simple-csv-dos.zip": 3,
    "dwca-simple-csv-eml.zip": 3,
    "dwca-simple-csv-notenclosed.zip": 3,
    "dwca-simple-csv.zip": 3,
    "dwca-simple-dir": 4,
    "dwca-simple-subdir.zip": 2,
    "dwca-simple-test-archive-enclosed.zip": 2,
    "dwca-simple-test-archive.tgz": 2,
    "dwca-simple-test-archive.zip": 2,
    "dwca-test-default.zip": 2,
    "dwca-utf8-eol-test.zip": 1,
    "gbif-results-lacks-s-metadata.zip": 158,
    "gbif-results-whitespace-in-xml.zip": 158,
    "gbif-results.zip": 158,
}


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- image folders


def test_harvard_folder(shared_data):
    records = list(read_image_folder(shared_data / "specimens" / "harvard"))
    assert len(records) == 45
    assert all(Path(r["media"]).is_file() for r in records)
    first = records[0]
    assert first["scientificName"] == "Anemone canadensis"
    assert first["genus"] == "Anemone" and first["specificEpithet"] == "canadensis"
    assert first["catalogNumber"] == "102822"


def test_names_are_completed_from_scientific_name(shared_data):
    records = list(read_image_folder(shared_data / "specimens" / "ml-herbarium"))
    assert len(records) == 118
    alnus = next(r for r in records if r["scientificName"].startswith("Alnus viridis"))
    assert (alnus["genus"], alnus["specificEpithet"]) == ("Alnus", "viridis")
    assert all(r.get("genus") for r in records)


def test_violaceae_species_code_kept_verbatim(shared_data):
    folder = shared_data / "specimens" / "violaceae"
    records = list(read_image_folder(folder))
    assert len(records) == 345
    assert not any(r.get("scientificName") for r in records)  # a code is not a name
    assert records[0]["verbatim"] == {"speciesCode": "V01"}
    assert Path(records[0]["media"]).is_file()
    mapped = next(read_image_folder(folder, mapping={"speciesCode": "scientificName"}))
    assert mapped["scientificName"] == "V01" and "speciesCode" not in mapped["verbatim"]


def test_common_column_names_are_mapped(tmp_path):
    _write_csv(tmp_path / "labels.csv", ["Image", "Species", "catalog_number", "Collector", "Lat", "Notes"],
               [["a.jpg", "Viola odorata L.", "A-1", "J. Smith", "48.5", "on limestone"]])
    (record,) = read_image_folder(tmp_path)
    assert record["media"] == str((tmp_path / "a.jpg").resolve())
    assert record["scientificName"] == "Viola odorata L."
    assert record["catalogNumber"] == "A-1"
    assert record["recordedBy"] == "J. Smith"
    assert record["decimalLatitude"] == "48.5"
    assert record["verbatim"] == {"Notes": "on limestone"}
    assert (record["genus"], record["specificEpithet"]) == ("Viola", "odorata")


def test_explicit_mapping_overrides_auto_mapping(tmp_path):
    _write_csv(tmp_path / "labels.csv", ["file", "photo", "taxon"], [["thumb.jpg", "sheet.jpg", "Viola alba"]])
    (record,) = read_image_folder(tmp_path, mapping={"photo": "media", "file": "occurrenceID"})
    assert record["media"].endswith("sheet.jpg")
    assert record["occurrenceID"] == "thumb.jpg"
    assert record["scientificName"] == "Viola alba"


def test_missing_image_column_names_the_columns(tmp_path):
    _write_csv(tmp_path / "labels.csv", ["species", "barcode"], [["Viola alba", "1"]])
    with pytest.raises(BadInput, match=r"labels.csv: no image file column .*columns found: species, barcode"):
        list(read_image_folder(tmp_path))


def test_bad_mappings(tmp_path):
    _write_csv(tmp_path / "labels.csv", ["file", "sp"], [["a.jpg", "Viola alba"]])
    with pytest.raises(BadInput, match="no column 'species' to map .*columns found: file, sp"):
        list(read_image_folder(tmp_path, mapping={"species": "scientificName"}))
    with pytest.raises(BadInput, match="'sp' to 'scientificname_typo'"):
        list(read_image_folder(tmp_path, mapping={"sp": "scientificname_typo"}))


def test_semicolon_csv_and_csv_path(tmp_path):
    (tmp_path / "my labels.csv").write_text("filename;scientific_name\nx.png;Rosa canina\n", encoding="utf-8")
    (record,) = read_image_folder(tmp_path / "my labels.csv")
    assert record["scientificName"] == "Rosa canina" and record["media"].endswith("x.png")


def test_media_outside_folder_is_flagged(tmp_path):
    _write_csv(tmp_path / "labels.csv", ["file"], [["../../etc/passwd"]])
    (record,) = read_image_folder(tmp_path)
    assert record["media"] == "" and "outside" in str(record["problem"])


def test_folder_without_labels_uses_the_images(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "one.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "two.png")
    records = list(read_image_folder(tmp_path))
    assert sorted(r["locator"] for r in records) == ["sub/one.jpg", "two.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match="no labels.csv and no image files"):
        list(read_image_folder(empty))


def test_complete_names_keeps_given_values():
    assert complete_names({"scientificName": "Mentha x piperita L."})["specificEpithet"] == "piperita"
    assert complete_names({"scientificName": "Carex sp."}).get("specificEpithet") is None
    kept = complete_names({"scientificName": "Iris pseudacorus", "genus": "Limniris"})
    assert kept["genus"] == "Limniris" and kept["specificEpithet"] == "pseudacorus"


# --------------------------------------------------------------------------- Darwin Core Archives


def test_sample_list_is_complete(shared_data):
    """The parametrised cases below cover every archive in the shared folder, no more, no less."""
    on_disk = {p.name for p in (shared_data / "dwca").iterdir() if p.name != "description.rst"}
    assert on_disk == BROKEN | CHECKLISTS | set(READABLE)
    assert len(BROKEN) == 5


@pytest.mark.parametrize("name", sorted(BROKEN | CHECKLISTS | set(READABLE)))
def test_every_shared_archive_reads_or_fails_clearly(shared_data, name):
    path = shared_data / "dwca" / name
    assert detect_source(path) is read_dwca
    if name in READABLE:
        records = list(read_dwca(path))
        assert len(records) == READABLE[name]
        assert all(r.get("scientificName") for r in records)
        assert all(set(r) <= set(DWC_TERMS) | {"media", "locator", "verbatim"} for r in records)
        return
    with pytest.raises(BadInput) as err:
        list(read_dwca(path))
    message = str(err.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    if name in BROKEN:
        assert "invalid Darwin Core Archive" in message
    else:
        assert "core is Taxon, not Occurrence" in message


def test_gbif_download_archive_fields(shared_data):
    records = list(read_dwca(shared_data / "dwca" / "gbif-results.zip"))
    first = records[0]
    assert first["occurrenceID"] == "607759330"
    assert (first["institutionCode"], first["catalogNumber"]) == ("CAS", "37109")
    assert first["scientificName"] == "Chelonodon fluviatilis (Hamilton, 1822)"
    assert all(r["media"] == "" for r in records)  # no multimedia extension: specimens without images


def test_simple_csv_archive_lowercase_headers(shared_data):
    first = next(read_dwca(shared_data / "dwca" / "dwca-simple-csv.zip"))
    assert first["institutionCode"] == "KAUM" and first["catalogNumber"] == "42685"
    assert first["eventDate"].startswith("2011-10-22")
    assert first["references"] == "https://www.gbif.org/occurrence/699220990"  # from gbifid
    assert first["verbatim"]["countrycode"] == "JP"


META = """<archive xmlns="http://rs.tdwg.org/dwc/text/">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0"/>
    <field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
    <field index="2" term="http://rs.tdwg.org/dwc/terms/catalogNumber"/>
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="{rowtype}">
    <files><location>media.txt</location></files>
    <coreid index="0"/>
    <field index="1" term="{location}"/>
    <field index="2" term="http://purl.org/dc/terms/type"/>
    <field index="3" term="http://purl.org/dc/terms/license"/>
  </extension>
</archive>
"""


@pytest.mark.parametrize(
    ("rowtype", "location"),
    [
        ("http://rs.gbif.org/terms/1.0/Multimedia", "http://purl.org/dc/terms/identifier"),
        ("http://rs.tdwg.org/ac/terms/Multimedia", "http://rs.tdwg.org/ac/terms/accessURI"),
    ],
    ids=["gbif-simple-multimedia", "audubon-core"],
)
def test_multimedia_extensions_give_images(tmp_path, rowtype, location):
    archive = tmp_path / "herbarium-dwca.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("meta.xml", META.format(rowtype=rowtype, location=location))
        zf.writestr("occurrence.txt", "id\tscientificName\tcatalogNumber\n1\tViola alba\tB-1\n2\tViola hirta\tB-2\n")
        zf.writestr("media.txt", "coreid\tloc\ttype\tlicense\n"
                                 "1\thttps://img.example.org/sound.mp3\tSound\tCC0\n"
                                 "1\thttps://img.example.org/b1.jpg\tStillImage\tCC-BY\n")
    records = list(read_dwca(archive))
    assert [r["media"] for r in records] == ["https://img.example.org/b1.jpg", ""]
    assert records[0]["license"] == "CC-BY"
    assert records[1]["catalogNumber"] == "B-2"  # a specimen without image is still a record


def test_damaged_archives_give_one_clear_line(tmp_path):
    (tmp_path / "garbage.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BadInput, match=r"^garbage.zip: not a Darwin Core Archive"):
        list(read_dwca(tmp_path / "garbage.zip"))
    folder = tmp_path / "bad-xml"
    folder.mkdir()
    (folder / "meta.xml").write_text("<archive><core>")
    (folder / "occurrence.txt").write_text("id\n1\n")
    with pytest.raises(BadInput, match=r"^bad-xml: invalid Darwin Core Archive"):
        list(read_dwca(folder))
    (folder / "meta.xml").write_text('<archive><core rowType="http://rs.tdwg.org/dwc/terms/Occurrence">'
                                     '<id index="0"/></core></archive>')  # no <files> section
    with pytest.raises(BadInput, match=r"^bad-xml: invalid Darwin Core Archive"):
        list(read_dwca(folder))


# --------------------------------------------------------------------------- GBIF JSON


@pytest.mark.parametrize("name", ["occurrence_search_taxon2431762.json", "occurrence_search_taxon3329049.json"])
def test_gbif_search_json(shared_data, name):
    path = shared_data / "gbif" / name
    results = json.loads(path.read_text())["results"]
    records = list(read_gbif_json(path))
    assert len(records) == len(results) == 300
    with_images = [r for r in records if r["media"]]
    expected = sum(1 for o in results if any(m.get("type") == "StillImage" and m.get("identifier")
                                             for m in o.get("media", [])))
    assert len(with_images) == expected > 250
    assert all(r["media"].startswith("https://") for r in with_images)
    for record, occ in zip(records, results, strict=True):
        assert record["occurrenceID"] == occ["occurrenceID"]
        assert record["scientificName"] == occ["scientificName"]
        assert record["license"] == occ["license"]
        assert record["references"] == occ.get("references", f"https://www.gbif.org/occurrence/{occ['key']}")
        still = [m["identifier"] for m in occ.get("media", []) if m.get("type") == "StillImage"]
        assert record["media"] == (still[0] if still else "")


def test_gbif_fallbacks_and_errors(tmp_path):
    page = {"results": [{"key": 42, "scientificName": "Rosa canina L.", "decimalLatitude": 50.1,
                         "media": [{"type": "Sound", "identifier": "https://x/s.mp3"}]}]}
    (tmp_path / "page.json").write_text(json.dumps(page))
    (record,) = read_gbif_json(tmp_path / "page.json")
    assert record["occurrenceID"] == "42"
    assert record["references"] == "https://www.gbif.org/occurrence/42"
    assert record["media"] == "" and record["decimalLatitude"] == 50.1
    (tmp_path / "broken.json").write_text('{"results": [')
    with pytest.raises(BadInput, match="broken.json: not valid JSON"):
        list(read_gbif_json(tmp_path / "broken.json"))
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(BadInput, match="other.json: not a GBIF occurrence response"):
        list(read_gbif_json(tmp_path / "other.json"))


# --------------------------------------------------------------------------- detection


def test_detect_source(tmp_path, shared_data):
    assert detect_source(shared_data / "specimens" / "harvard") is read_image_folder
    assert detect_source(shared_data / "specimens" / "harvard" / "labels.csv") is read_image_folder
    assert detect_source(shared_data / "dwca" / "dwca-simple-dir") is read_dwca
    assert detect_source(shared_data / "dwca" / "dwca-simple-test-archive.tgz") is read_dwca
    assert detect_source(shared_data / "gbif" / "occurrence_search_taxon2431762.json") is read_gbif_json
    (tmp_path / "notes.docx").write_bytes(b"x")
    with pytest.raises(BadInput, match="notes.docx: unknown source type"):
        detect_source(tmp_path / "notes.docx")
    with pytest.raises(BadInput, match="source not found"):
        detect_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="empty: folder has no meta.xml, labels.csv or images"):
        detect_source(tmp_path / "empty")
