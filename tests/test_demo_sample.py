"""The pieces of `herbaria demo`'s described sample, offline and fast: flora volumes, taxa, sheets, examples.

The whole path (the CLI, real files, the browser) is tests/test_demo_whole_path.py; here each
piece meets the inputs that break it: hostile volume names and bodies, GBIF answers with
sheets filed under another name, names GBIF does not know, a tampered examples file.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from demo.sample import (
    EXAMPLES_FILE,
    candidate_taxa,
    demo_examples,
    fetch_volumes,
    flora_base_url,
    gbif_api_url,
    read_demo_examples,
    sample_occurrences,
)
from gbif_standin import file_host, gbif_standin
from retrieval.errors import BadInput, NetworkUnavailable

FLORML = """<?xml version="1.0" encoding="UTF-8"?>
<publication lang="en"><treatment>
{taxa}
</treatment></publication>"""
TAXON = """<taxon><nomenclature><homotypes><nom class="accepted"><name class="genus">{genus}</name>
<name class="species">{epithet}</name></nom></homotypes></nomenclature><feature class="description">
<char class="leaves">{text}</char></feature></taxon>"""


def test_base_urls_come_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERBARIA_GBIF_API", raising=False)
    monkeypatch.delenv("HERBARIA_FLORA_URL", raising=False)
    assert gbif_api_url() == "https://api.gbif.org/v1"
    assert flora_base_url().startswith("https://raw.githubusercontent.com/") and flora_base_url().endswith("/")
    monkeypatch.setenv("HERBARIA_GBIF_API", "http://127.0.0.1:8000/v1/")
    monkeypatch.setenv("HERBARIA_FLORA_URL", "http://127.0.0.1:8001/files")
    assert gbif_api_url() == "http://127.0.0.1:8000/v1" and flora_base_url() == "http://127.0.0.1:8001/files/"
    assert gbif_api_url("https://gbif.example.org/v1") == "https://gbif.example.org/v1"
    for bad in ("file:///etc/passwd", "javascript:alert(1)", "http://", "ftp://host/x"):
        with pytest.raises(BadInput, match="--flora-url must be an http"):
            flora_base_url(bad)


def test_volumes_are_fetched_once_and_hostile_ones_refused(tmp_path: Path) -> None:
    good = tmp_path / "served" / "vol.xml"
    good.parent.mkdir()
    good.write_text(FLORML.format(taxa=""))
    (tmp_path / "served" / "page.xml").write_text("Not XML, an error page")
    with file_host({"flora/vol.xml": good, "flora/page.xml": tmp_path / "served" / "page.xml"}) as host:
        first = fetch_volumes(host["url"], ["flora/vol.xml"], tmp_path / "cache", progress=False)
        again = fetch_volumes(host["url"], ["flora/vol.xml"], tmp_path / "cache", progress=False)
        assert first == again and first[0].name == "vol.xml" and host["requests"] == ["flora/vol.xml"]
        with pytest.raises(NetworkUnavailable, match="answered 404"):
            fetch_volumes(host["url"], ["flora/missing.xml"], tmp_path / "cache", progress=False)
        with pytest.raises(BadInput, match="not a FlorML file"):
            fetch_volumes(host["url"], ["flora/page.xml"], tmp_path / "cache", progress=False)
        for name in ("../etc/passwd.xml", "/abs.xml", "vol.txt", "a/../../b.xml", "http://evil/x.xml"):
            with pytest.raises(BadInput, match="relative path ending in .xml"):
                fetch_volumes(host["url"], [name], tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").rglob("*.part"))


def _volume(path: Path, taxa: list[tuple[str, str]]) -> Path:
    body = "\n".join(TAXON.format(genus=n.split()[0], epithet=n.split()[1], text=t) for n, t in taxa)
    path.write_text(FLORML.format(taxa=body))
    return path


LONG = ("Leaves opposite, elliptic to obovate, 5-12 cm long, glabrous above, margin entire, apex acuminate, base "
        "cuneate; petiole 5-10 mm long, grooved above; secondary veins 6-9 pairs, looping near the margin.")


def test_candidate_taxa_alternate_volumes_and_skip_thin_descriptions(tmp_path: Path) -> None:
    a = _volume(tmp_path / "a.xml", [("Zeta alba", LONG), ("Alpha alba", LONG), ("Beta nana", "Leaves small.")])
    b = _volume(tmp_path / "b.xml", [("Gamma rubra", LONG), ("Delta rubra", LONG)])
    taxa = candidate_taxa([a, b])
    assert [t["name"] for t in taxa] == ["Alpha alba", "Delta rubra", "Zeta alba", "Gamma rubra"]
    assert {t["volume"] for t in taxa} == {a, b}


def _occurrence(key: int, taxon_key: int, species: str, media: bool = True) -> dict:
    return {"key": key, "institutionCode": "P", "catalogNumber": f"P{key:08d}", "scientificName": f"{species} L.",
            "species": species, "taxonKey": taxon_key, "basisOfRecord": "PRESERVED_SPECIMEN",
            "media": [{"type": "StillImage", "identifier": f"http://images.example.org/{key}.jpg"}] if media else []}


def test_sheets_are_those_of_the_described_taxa_through_the_gbif_search(tmp_path: Path) -> None:
    from retrieval.flora import GbifSpecies

    matches = {"Alpha alba": {"usageKey": 11, "canonicalName": "Alpha alba", "rank": "SPECIES", "status": "ACCEPTED",
                              "matchType": "EXACT", "confidence": 99, "synonym": False},
               "Gamma rubra": {"usageKey": 12, "canonicalName": "Gamma rubra", "rank": "SPECIES", "status": "ACCEPTED",
                               "matchType": "EXACT", "confidence": 99, "synonym": False}}
    occurrences = {11: [_occurrence(1, 11, "Alpha alba"), _occurrence(2, 11, "Mangifera indica"),
                        _occurrence(3, 11, "Alpha alba", media=False), _occurrence(4, 11, "Alpha alba"),
                        _occurrence(5, 11, "Alpha alba")],
                   12: [_occurrence(6, 12, "Gamma rubra"), {**_occurrence(7, 12, "Gamma rubra"), "species": None,
                                                             "scientificName": "Gammella rubra Hook."}]}
    taxa = [{"name": "Unknown thing", "synonyms": []}, {"name": "Alpha alba", "synonyms": []},
            {"name": "Gamma rubra", "synonyms": ["Gammella rubra"]}]
    with gbif_standin(matches=matches, occurrences=occurrences) as gbif:
        client = GbifSpecies(tmp_path / "api", base_url=gbif["url"], min_interval=0)
        picked: dict[str, int] = {}
        found = sample_occurrences(client, taxa, 10, per_taxon=2, progress=False, picked=picked,
                                   image_cache=gbif["url"] + "/image/cache/occurrence/{key}/media/{md5}")
    assert [o["key"] for o in found] == [1, 4, 6, 7]  # another name, no image, over per_taxon: left out
    assert picked == {"Alpha alba": 2, "Gamma rubra": 2}
    first = found[0]["media"][0]
    assert first["originalIdentifier"] == "http://images.example.org/1.jpg"
    assert first["identifier"].endswith(f"/image/cache/occurrence/1/media/{hashlib.md5(b'http://images.example.org/1.jpg').hexdigest()}")
    searches = [q for p, q in gbif["queries"] if p == "/v1/occurrence/search"]
    assert [q["taxonKey"] for q in searches] == ["11", "12"]  # the unknown name was never searched
    assert all(q["institutionCode"] == "P" and q["mediaType"] == "StillImage" for q in searches)


def test_the_sample_stops_at_n(tmp_path: Path) -> None:
    from retrieval.flora import GbifSpecies

    matches = {"Alpha alba": {"usageKey": 11, "canonicalName": "Alpha alba", "rank": "SPECIES", "matchType": "EXACT"}}
    with gbif_standin(matches=matches, occurrences={11: [_occurrence(k, 11, "Alpha alba") for k in range(1, 9)]}) as gbif:
        client = GbifSpecies(tmp_path / "api", base_url=gbif["url"], min_interval=0)
        found = sample_occurrences(client, [{"name": "Alpha alba", "synonyms": []}], 3, per_taxon=5, progress=False)
    assert [o["key"] for o in found] == [1, 2, 3]


def _index(tmp_path: Path, rows: list[tuple[str, str]]):
    from retrieval.flora import DescriptionIndex
    from retrieval.flora.readers import read_csv_descriptions

    table = tmp_path / "flora.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["taxon", "text", "source"])
        writer.writerows([(n, t, "Test flora") for n, t in rows])
    return DescriptionIndex.build(read_csv_descriptions(table), text_model="tiny-test", progress=False)


def test_examples_are_built_from_traits_of_held_described_taxa(tmp_path: Path) -> None:
    index = _index(tmp_path, [
        ("Coffea arabica", "Shrub. Leaves opposite, elliptic, glabrous, margin entire. Flowers white, fragrant. Fruit red."),
        ("Psychotria alba", "Shrub. Leaves opposite, lanceolate, margin entire. Flowers yellow. Fruit a drupe."),
        ("Quercus robur", "Tree. Leaves alternate, lobed, glabrous. Flowers green. Fruit an acorn."),
    ])
    links = {"Coffea arabica": [1, 2, 3], "Psychotria alba": [4]}  # Quercus robur is described, not held
    examples = demo_examples(index, links)
    texts = [e["text"] for e in examples]
    assert examples[0]["taxon"] == "Coffea arabica" and texts[0].startswith("Which specimens have ")
    assert "Quercus" not in " ".join(texts) and "lobed" not in texts[0] and "acorn" not in texts[0]
    assert any(w in texts[0] for w in ("elliptic", "white", "fragrant", "red"))  # its own, rarer traits
    assert "How do the leaves of Coffea arabica look?" in texts
    assert demo_examples(index, {}) == []  # nothing held: no example that cannot be answered


def test_a_tampered_examples_file_gives_no_odd_example(tmp_path: Path) -> None:
    assert read_demo_examples(tmp_path) == []
    (tmp_path / EXAMPLES_FILE).write_text("{not json")
    assert read_demo_examples(tmp_path) == []
    (tmp_path / EXAMPLES_FILE).write_text(json.dumps({"text": "a dict, not a list"}))
    assert read_demo_examples(tmp_path) == []
    items = [{"text": "x" * 5000, "label": "L" * 500}, {"text": 3, "label": "n"}, "string", {"label": "no text"}]
    (tmp_path / EXAMPLES_FILE).write_text(json.dumps(items + [{"text": "ok", "label": "ok"}] * 10))
    got = read_demo_examples(tmp_path)
    assert len(got) == 6 and len(got[0]["text"]) == 300 and len(got[0]["label"]) == 120
    assert all(set(e) == {"text", "label"} for e in got)


def test_the_about_panel_shows_coverage_and_licences() -> None:
    from demo.app import about_markdown
    from demo.uploads import UploadLimits

    summary = {"taxa": 10, "linked_taxa": 9, "specimens": 300, "linked_specimens": 288,
               "sources": [{"source": "Flora Malesiana, Series I, Volume 20", "licence": "", "taxa": 12},
                           {"source": "GBIF: Plazi", "licence": "CC BY 4.0", "taxa": 3}]}
    text = about_markdown({"collection": "sample", "specimens": 300}, UploadLimits(), summary)
    assert "9 of 10 taxa and 288 of 300 specimens have a description" in text
    assert "GBIF: Plazi (3 taxa, licence CC BY 4.0)" in text and "Volume 20 (12 taxa)" in text
    assert "Description coverage" not in about_markdown({"collection": "c"}, UploadLimits())


def test_the_demo_checks_the_hosts_it_is_given_and_stops_in_one_line(tmp_path: Path) -> None:
    from conftest import closed_port
    from demo.sample import prepare_demo

    port = closed_port()
    with file_host({}) as flora:
        with pytest.raises(NetworkUnavailable) as err:
            prepare_demo(cache=tmp_path, model="tiny-test", gbif_api=f"http://127.0.0.1:{port}/v1",
                         flora_url=flora["url"], progress=False)
    assert "127.0.0.1" in str(err.value) and "--collection" in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir()) and flora["requests"] == []  # nothing fetched, nothing half-written
    with pytest.raises(BadInput, match="--sample must be at least 1"):
        prepare_demo(cache=tmp_path, sample=0, network_check=lambda: None)
    with pytest.raises(BadInput, match="--gbif-api must be an http"):
        prepare_demo(cache=tmp_path, gbif_api="gopher://x", network_check=lambda: None)
