"""More description sources: FNA treatments (biosemantics XML), mapped tables (Go Botany), a DwC taxon core's
synonyms, the GBIF species descriptions API (stand-in on 127.0.0.1), and the coverage report after adding."""

from __future__ import annotations

from pathlib import Path

import pytest
from gbif_standin import gbif_standin

from retrieval.collections import Collection
from retrieval.flora import read_descriptions

FNA_MARKED_UP = """<?xml version="1.0" encoding="UTF-8"?>
<bio:treatment xmlns:bio="http://www.github.com/biosemantics">
  <meta><other_info_on_meta type="volume">9</other_info_on_meta></meta>
  <taxon_identification status="ACCEPTED">
    <taxon_name rank="family" authority="Juss.">rosaceae</taxon_name>
    <taxon_name rank="genus" authority="L.">rosa</taxon_name>
    <taxon_name rank="species" authority="Michx.">carolina</taxon_name>
    <taxon_name rank="variety" authority="Fernald">villosa</taxon_name>
  </taxon_identification>
  <taxon_identification status="SYNONYM">
    <taxon_name rank="genus" authority="unknown">Rosa</taxon_name>
    <taxon_name rank="species" authority="Rydb.">lyonii</taxon_name>
  </taxon_identification>
  <description type="morphology"><statement id="d0_s0"><text>Leaflets  5-7, elliptic, serrate.</text>
    <biological_entity id="o0" name="leaflet" type="structure">
      <character name="shape" value="elliptic"/><character name="architecture_or_shape" value="serrate"/>
    </biological_entity></statement>
    <statement id="d0_s1"><text>Petals  pink.</text>
    <biological_entity id="o1" name="petal" type="structure"><character name="coloration" value="pink"/></biological_entity>
    </statement></description>
  <description type="habitat">Dry woods.</description>
</bio:treatment>
"""


def test_fna_treatment_with_character_markup_keeps_traits_beside_text(tmp_path: Path) -> None:
    path = tmp_path / "V9_1.xml"
    path.write_text(FNA_MARKED_UP)
    [record] = read_descriptions(path)
    assert record.name == "Rosa carolina var. villosa" and record.rank == "variety" and record.family == "Rosaceae"
    assert record.taxon == "Rosa carolina var. villosa Fernald" and record.synonyms == ["Rosa lyonii"]
    assert record.source == "Flora of North America" and record.dataset == "vol. 9"
    assert "Dry woods" not in record.text and "elliptic, serrate" in record.text
    assert record.characters == [["leaflet", "shape", "elliptic"], ["leaflet", "architecture_or_shape", "serrate"],
                                 ["petal", "coloration", "pink"]]
    assert sorted(record.sections) == ["leaflets", "petals"]
    for start, end, organ, _ in record.markup:  # the organ spans point at their own heading
        assert record.text[start:end].lower().startswith(organ)


def test_fna_volume_from_shared_data(shared_data: Path) -> None:
    records = read_descriptions(shared_data / "flora" / "fna-v2")
    assert 700 < len(records) <= 817  # treatments without a morphology description give none
    reptans = next(r for r in records if r.name == "Thelypteris reptans")
    assert {"Polypodium reptans", "Dryopteris reptans", "Goniopteris reptans"} <= set(reptans.synonyms)
    assert reptans.family == "Thelypteridaceae" and reptans.dataset == "vol. 2"
    assert "Limestone rocks" not in reptans.text and "stellate-hairy scales" in reptans.text
    assert reptans.sections["sori"].startswith("round, medial")
    ranks = {r.rank for r in records}
    assert {"family", "genus", "species", "variety", "subspecies"} <= ranks


def test_gobotany_table_is_notes_with_synonyms(shared_data: Path) -> None:
    records = read_descriptions(shared_data / "flora" / "gobotany" / "taxa.csv")
    by_name = {r.name: r for r in records}
    huperzia = by_name["Huperzia appressa"]
    assert huperzia.taxon == "Huperzia appressa (Desv.) A. & D. Löve"  # Windows-1252 decoded
    assert huperzia.kind == "notes" and huperzia.source.startswith("Go Botany")
    assert "Lookalikes: Huperzia selago" in huperzia.text
    assert "Huperzia appalachiana" in huperzia.synonyms and "Lycopodium selago var. appressum" in huperzia.synonyms
    assert by_name["Anemone americana"].url == "https://gobotany.nativeplanttrust.org/species/anemone/americana/"


def test_dwc_taxon_core_synonyms_reach_the_description(tmp_path: Path) -> None:
    (tmp_path / "taxa.txt").write_text(
        "taxonID\tscientificName\ttaxonomicStatus\tacceptedNameUsageID\tfamily\n"
        "t1\tAnemone hepatica L.\taccepted\t\tRanunculaceae\n"
        "t2\tHepatica nobilis Schreb.\tsynonym\tt1\tRanunculaceae\n")
    (tmp_path / "description.txt").write_text(
        "coreid\ttype\tdescription\tlicense\treferences\n"
        "t1\tmorphology\tLeaves three-lobed, flowers blue.\tCC BY 4.0\thttps://example.org/t1\n")
    [record] = read_descriptions(tmp_path / "description.txt")
    assert record.name == "Anemone hepatica" and record.synonyms == ["Hepatica nobilis"]
    assert record.licence == "CC BY 4.0" and record.url == "https://example.org/t1"


def _collection(tmp_path: Path) -> Collection:
    coll = Collection.create(tmp_path / "coll")
    rows = [("s1", "Hepatica nobilis Schreb."), ("s2", "Hepatica nobilis Schreb."), ("s3", "Geranium maculatum L."),
            ("s4", "Quercus robur L.")]
    coll.upsert([{"dedupe_key": k, "record_hash": k, "scientificName": n, "catalogNumber": k} for k, n in rows], source="test")
    coll.write_snapshot()
    return coll


def test_gbif_descriptions_source_links_through_the_backbone_and_reports_coverage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from herbaria.cli import main
    from retrieval.flora import add_descriptions, search_descriptions

    coll = _collection(tmp_path)
    with gbif_standin() as server:
        monkeypatch.setenv("HERBARIA_GBIF_API", server["url"])
        summary = add_descriptions(coll, ["gbif"], text_model="tiny-test", progress=False)
        asked = len(server["requests"])
        add_descriptions(coll, ["gbif"], text_model="tiny-test", progress=False)
        assert len(server["requests"]) == asked  # everything answered from the cache the second time
    assert summary["sources"][0]["taxa"] == 2  # two source datasets describe the accepted Anemone hepatica
    cov = summary["coverage"]
    assert (cov["taxa"], cov["linked_taxa"], cov["specimens"], cov["linked_specimens"]) == (3, 1, 4, 2)
    assert cov["by_kind"]["gbif"] == {"taxa": 1, "specimens": 2}
    assert [u["name"] for u in cov["unlinked"]] == ["Geranium maculatum", "Quercus robur"]
    hit = search_descriptions(coll.path, "three-lobed leaves, blue flowers", k=1, signals=("bm25",))[0]
    assert hit["name"] == "Anemone hepatica" and len(hit["specimen_ids"]) == 2
    assert hit["linked_as"][0]["kind"] == "gbif" and hit["linked_as"][0]["specimen_name"] == "Hepatica nobilis"
    assert main(["descriptions", "coverage", str(coll.path)]) == 0
    out = capsys.readouterr().out
    assert "1/3 of the collection's taxa and 2/4 specimens have a description (linked by gbif 1)" in out
    assert "not described: Quercus robur (1 specimens)" in out


def test_gbif_records_keep_source_licence_and_link(tmp_path: Path) -> None:
    from retrieval.flora.gbif import GbifSpecies, gbif_descriptions

    with gbif_standin() as server:
        records = gbif_descriptions(GbifSpecies(tmp_path, base_url=server["url"], min_interval=0), ["Hepatica nobilis"])
    by_source = {r.source: r for r in records}
    first = by_source["GBIF: Flora of Somewhere"]
    assert first.name == "Anemone hepatica" and first.licence == "CC BY 4.0" and first.dataset == "100435"
    assert first.text == "Leaves basal, three-lobed, lobes entire; flowers blue, solitary."  # no distribution, no tags
    assert first.url == "https://www.gbif.org/species/3033405" and first.name_matches["Hepatica nobilis"]["status"] == "SYNONYM"
    assert by_source["GBIF: Another checklist"].licence == "CC0 1.0"
