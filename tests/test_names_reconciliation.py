"""Name reconciliation: descriptions reach specimens through accepted names, synonyms, GBIF matches,
fuzzy epithets and genera, each link saying how it was made; ranks and hybrids stay distinct."""

from __future__ import annotations

from pathlib import Path

import pytest
from gbif_standin import gbif_standin

from retrieval.flora import TaxonDescription, read_descriptions
from retrieval.flora.taxonomy import closest_names, link_counts, link_specimens


def _record(name: str, *, rank: str = "species", synonyms: list[str] | None = None) -> TaxonDescription:
    return TaxonDescription(taxon=name, name=name, text="Leaves opposite.", rank=rank, synonyms=synonyms or [])


def _how(records: list[TaxonDescription], labels: list[str]) -> dict[str, dict]:
    """Specimen label -> (described name, link entry)."""
    links, how = link_specimens(records, list(enumerate(labels)))
    out = {}
    for name, entries in how.items():
        for entry in entries:
            out[entry["specimen_name"]] = {"described": name, **entry}
    assert sum(len(v) for v in links.values()) == sum(e["specimens"] for e in out.values())
    return out


def test_exact_and_synonym_links_say_how_they_were_made() -> None:
    records = [_record("Hepatica nobilis", synonyms=["Anemone hepatica"]), _record("Geranium maculatum")]
    how = _how(records, ["Anemone hepatica L.", "Geranium maculatum L.", "Geranium maculatum"])
    assert how["Anemone hepatica"]["described"] == "Hepatica nobilis"
    assert how["Anemone hepatica"]["kind"] == "synonym" and how["Anemone hepatica"]["via"] == "Anemone hepatica"
    assert how["Geranium maculatum"] == {"described": "Geranium maculatum", "specimen_name": "Geranium maculatum",
                                         "kind": "exact", "specimens": 2}


def test_a_misspelling_matches_fuzzily_within_its_genus_and_is_flagged() -> None:
    records = [_record("Geranium maculatum"), _record("Geranium robertianum"), _record("Gentiana clausa")]
    how = _how(records, ["Geranium maculata", "Geranium robertiana", "Gerania maculatum"])
    assert how["Geranium maculata"]["described"] == "Geranium maculatum" and how["Geranium maculata"]["kind"] == "fuzzy"
    assert how["Geranium robertiana"]["described"] == "Geranium robertianum"
    assert "Gerania maculatum" not in how  # fuzzy never crosses genera


def test_ranks_and_hybrids_stay_distinct() -> None:
    records = [_record("Acorus calamus var. americanus", rank="variety"), _record("Mentha × piperita"),
               _record("Quercus alba"), _record("Salix alba")]
    how = _how(records, ["Acorus calamus var. angustifolius", "Acorus calamus", "Mentha piperita",
                         "Quercus alba x Quercus macrocarpa", "Salix alba L. x S. fragilis L."])
    assert how == {}  # no variety reaches another's specimens, no hybrid its parent's, nor the reverse


def test_species_description_reaches_unlisted_varieties_and_genus_fallback() -> None:
    records = [_record("Robinia hispida"), _record("Juniperus", rank="genus")]
    how = _how(records, ["Robinia hispida var. nana", "Juniperus chinensis L."])
    assert how["Robinia hispida var. nana"]["kind"] == "species"
    assert how["Juniperus chinensis"] == {"described": "Juniperus", "specimen_name": "Juniperus chinensis",
                                          "kind": "genus", "specimens": 1}
    counts = link_counts(link_specimens(records, [(1, "Robinia hispida var. nana"), (2, "Juniperus chinensis")])[1])
    assert counts["species"] == {"taxa": 1, "specimens": 1} and counts["genus"] == {"taxa": 1, "specimens": 1}
    assert counts["exact"] == {"taxa": 0, "specimens": 0}


def test_gbif_backbone_matches_are_cached_and_kept_with_confidence(tmp_path: Path) -> None:
    from retrieval.flora.gbif import GbifSpecies, match_names

    with gbif_standin() as server:
        client = GbifSpecies(tmp_path / "cache", base_url=server["url"], min_interval=0)
        found = match_names(client, ["Hepatica nobilis", "Geranium maculata", "Nonexistent thing"],
                            {"Anemone hepatica", "Geranium maculatum"})
        asked = len(server["requests"])
        again = match_names(GbifSpecies(tmp_path / "cache", base_url=server["url"], min_interval=0),
                            ["Hepatica nobilis", "Geranium maculata", "Nonexistent thing"], {"Anemone hepatica", "Geranium maculatum"})
        assert len(server["requests"]) == asked == 3  # the second run is answered from the disk cache
    assert again == found
    assert found["Hepatica nobilis"]["acceptedName"] == "Anemone hepatica"
    assert found["Hepatica nobilis"]["status"] == "SYNONYM" and found["Hepatica nobilis"]["confidence"] == 97
    assert found["Geranium maculata"]["matchType"] == "FUZZY" and "Nonexistent thing" not in found
    record = _record("Anemone hepatica")
    record.name_matches = {"Hepatica nobilis": found["Hepatica nobilis"]}
    how = _how([record], ["Hepatica nobilis Schreb."])
    assert how["Hepatica nobilis"]["kind"] == "gbif" and how["Hepatica nobilis"]["matchType"] == "EXACT"
    assert how["Hepatica nobilis"]["confidence"] == 97


def test_unreachable_gbif_is_one_clear_error(tmp_path: Path) -> None:
    from conftest import closed_port

    from retrieval.errors import BadInput
    from retrieval.flora import GbifSpecies

    client = GbifSpecies(tmp_path, base_url=f"http://127.0.0.1:{closed_port()}/v1", min_interval=0, timeout=2)
    with pytest.raises(BadInput, match="GBIF API unreachable"):
        client.match("Anemone hepatica")


def test_closest_names_prefer_the_same_genus() -> None:
    assert closest_names("Anemone hepatica", ["Anemone americana", "Anemone acutiloba", "Hepatica nobilis"])[0].startswith("Anemone")


def test_real_sources_link_the_harvard_sheets_through_synonyms(shared_data: Path) -> None:
    gobotany = read_descriptions(shared_data / "flora" / "gobotany" / "taxa.csv")
    fna = read_descriptions(shared_data / "flora" / "fna-v2")
    how = _how(gobotany + fna, ["Hepatica americana (DC.) Ker Gawl.", "Impatiens biflora Walter", "Dryopteris reptans",
                                "Geranium maculata"])
    assert how["Hepatica americana"]["described"] == "Anemone americana"  # Go Botany's synonymy columns
    assert how["Impatiens biflora"]["described"] == "Impatiens capensis" and how["Impatiens biflora"]["kind"] == "synonym"
    assert how["Dryopteris reptans"]["described"] == "Thelypteris reptans"  # an FNA treatment's synonym element
    assert how["Geranium maculata"]["kind"] == "fuzzy" and how["Geranium maculata"]["described"] == "Geranium maculatum"


def test_descriptions_add_with_gbif_names_links_an_older_label(tmp_path: Path) -> None:
    from retrieval.collections import Collection
    from retrieval.flora import add_descriptions, open_descriptions

    coll = Collection.create(tmp_path / "coll")
    rows = [("s1", "Hepatica nobilis Schreb."), ("s2", "Geranium maculata")]
    coll.upsert([{"dedupe_key": k, "record_hash": k, "scientificName": n, "catalogNumber": k} for k, n in rows], source="test")
    coll.write_snapshot()
    source = tmp_path / "flora.csv"
    source.write_text("taxon,text\nAnemone hepatica L.,Leaves three-lobed.\nGeranium maculatum L.,Petals pink.\n")
    with gbif_standin() as server:
        summary = add_descriptions(coll, [source], text_model="tiny-test", progress=False, gbif_names=True,
                                   gbif_api=server["url"])
        assert server["requests"] == ["/v1/species/match"]  # only the name not linked offline is asked
    assert summary["coverage"]["by_kind"]["gbif"] == {"taxa": 1, "specimens": 1}
    assert summary["coverage"]["by_kind"]["fuzzy"] == {"taxa": 1, "specimens": 1}
    reopened = open_descriptions(coll)  # the match is stored with the descriptions: linking again is offline
    assert reopened.link_details["Anemone hepatica"][0]["kind"] == "gbif"


def test_an_answer_says_what_name_a_description_used() -> None:
    from assistant.composer import Evidence, compose

    spec = {"specimen_id": 7, "catalogNumber": "102822", "institutionCode": "HUH", "scientificName": "Anemone hepatica",
            "score": 0.5}
    hit = {"kind": "description", "taxon": "Hepatica nobilis", "display": "Hepatica nobilis Schreb.", "family": "",
           "source": "Flora X", "score": 0.9, "evidence": ["Leaves three-lobed."], "specimen_ids": [7],
           "linked_as": [{"specimen_name": "Anemone hepatica", "kind": "synonym", "via": "Anemone hepatica", "specimens": 1}]}
    answer = compose(Evidence(route="morphology", query="three-lobed leaves", specimens=[spec], taxa=[hit]))
    assert "(held as *Anemone hepatica*, described as *Hepatica nobilis*)" in answer
    exact = compose(Evidence(route="morphology", query="three-lobed leaves", specimens=[spec],
                             taxa=[{**hit, "linked_as": [{"specimen_name": "Hepatica nobilis", "kind": "exact", "specimens": 1}]}]))
    assert "described as" not in exact
