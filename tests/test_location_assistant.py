"""Location through the assistant: the geo-prior on an identification, EXIF GPS, geographic filters in the chat,
"where does this grow?" maps, and the map in a real browser (screenshot in tests/artifacts/location_map.png)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from assistant.geography import exif_point, read_question
from retrieval.errors import BadInput

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CNCFLORA = "occurrences/cncflora"


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0088 * math.acos(max(-1.0, min(1.0, c)))


def _gps_jpeg(path: Path, lat: float, lon: float, *, colour=(120, 140, 90)) -> Path:
    """A JPEG whose EXIF GPS IFD says (lat, lon) in degrees/minutes/seconds rationals, as cameras write it."""
    def dms(value: float) -> tuple[float, float, float]:
        value = abs(value)
        d = int(value)
        m = int((value - d) * 60)
        return (float(d), float(m), round((value - d - m / 60) * 3600, 4))

    image = Image.new("RGB", (96, 128), colour)
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update({1: "S" if lat < 0 else "N", 2: dms(lat), 3: "W" if lon < 0 else "E", 4: dms(lon)})
    image.save(path, "JPEG", exif=exif)
    return path


# ---------------------------------------------------------------------- parsing
def test_exif_gps_is_read_from_a_jpeg_and_checked(tmp_path):
    path = _gps_jpeg(tmp_path / "gps.jpg", -12.9714, -38.5014)
    lat, lon = exif_point(path)
    assert abs(lat + 12.9714) < 1e-3 and abs(lon + 38.5014) < 1e-3
    with Image.open(path) as im:  # the decoded image the agent holds reads the same
        assert exif_point(im) == (lat, lon)
    assert exif_point(_gps_jpeg(tmp_path / "north.jpg", 48.8566, 2.3522)) == pytest.approx((48.8566, 2.3522), abs=1e-3)
    Image.new("RGB", (8, 8)).save(path, "JPEG")  # no EXIF at all
    assert exif_point(path) is None


def test_question_geography_is_cut_out_for_the_router():
    geo = read_question("opposite leaves within 50 km of -12.97, -38.5")
    assert geo.filters == {"radius": (-12.97, -38.5, 50.0)} and geo.text == "opposite leaves" and geo.point is None
    geo = read_question("what is this, collected at 12.97 S, 38.5 W?")
    assert geo.point == (-12.97, -38.5) and geo.text == "what is this?"
    assert read_question("Rubiaceae in bbox -48,-25,-34,-2").filters == {"bbox": (-48.0, -25.0, -34.0, -2.0)}
    assert read_question("where does Mimosa pudica grow?").where == "Mimosa pudica"
    assert read_question("distribution of Inga sessilis").where == "Inga sessilis"
    assert read_question("where does this grow?").where == ""
    assert read_question("leaves 3, 5 mm long").point is None  # integers with a comma are not a place
    with pytest.raises(BadInput, match="latitude"):
        read_question("what is this? 95.5, 10.2")


# ---------------------------------------------------------------------- a collection from real records
def _far_pair(folder: Path, work: Path) -> tuple[Any, str, str]:
    """Of the 12 largest cncflora species files, the two species whose median collecting points lie farthest apart."""
    from location.eval import read_occurrences

    files = sorted(folder.rglob("*.csv"), key=lambda p: (-p.stat().st_size, p.name))[:12]
    links = work / "picked"
    links.mkdir()
    for path in files:  # links, not copies: the data stays in ../shared
        (links / path.name).symlink_to(path)
    table, _ = read_occurrences(links)
    medians = table.groupby("taxon")[["decimalLatitude", "decimalLongitude"]].median()
    names = sorted(medians.index)
    first, second = max(((a, b) for a in names for b in names if a < b),
                        key=lambda p: _km(*medians.loc[p[0]], *medians.loc[p[1]]))
    return table, first, second


def medians_of(table: Any, name: str) -> tuple[float, float]:
    rows = table[table["taxon"] == name]
    return float(rows["decimalLatitude"].median()), float(rows["decimalLongitude"].median())


@pytest.fixture(scope="module")
def real_collection(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Any]:
    """Sheets (all drawn alike: the image cannot tell the two species apart) labelled with real cncflora records
    of two species collected far apart; tiny-test image index; a location model trained in seconds."""
    folder = shared_data / CNCFLORA
    if not folder.is_dir():
        pytest.skip(f"no cncflora occurrences at {folder} (clone ../shared beside the repo to run this test)")
    from location import train_location_encoder
    from retrieval.collections import ingest
    from retrieval.vectors import build_index

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("geo-real")
    table, first, second = _far_pair(folder, work)
    sheets = work / "sheets"
    sheets.mkdir()
    Image.new("RGB", (96, 128), (200, 196, 170)).save(sheets / "blank.jpg", "JPEG")
    rows = []
    for name in (first, second):
        picked = table[table["taxon"] == name].sample(n=min(60, int((table["taxon"] == name).sum())), random_state=0)
        for i, rec in enumerate(picked.itertuples()):
            file = f"{name.replace(' ', '_')}_{i}.jpg"
            (sheets / file).write_bytes((sheets / "blank.jpg").read_bytes())
            rows.append({"file": file, "scientificName": name, "country": rec.country if isinstance(rec.country, str) else "",
                         "decimalLatitude": f"{rec.decimalLatitude:.5f}", "decimalLongitude": f"{rec.decimalLongitude:.5f}",
                         "catalogNumber": f"G{len(rows)}"})
    (sheets / "blank.jpg").rename(sheets / "zero.jpg")  # one (0,0) and one swapped point: kept, counted, not used
    lat, lon = medians_of(table, first)
    rows.append({**rows[0], "file": "zero.jpg", "decimalLatitude": "0", "decimalLongitude": "0", "catalogNumber": "Z0",
                 "country": "Brazil"})
    (sheets / "swapped.jpg").write_bytes((sheets / "zero.jpg").read_bytes())
    rows.append({**rows[0], "file": "swapped.jpg", "decimalLatitude": f"{lon:.5f}", "decimalLongitude": f"{lat:.5f}",
                 "catalogNumber": "Z1", "country": "Brazil"})
    with open(sheets / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = work / "collection"
    summary = ingest(sheets, out, progress=False)
    build_index(out, model="tiny-test", progress=False)
    medians = {n: medians_of(table, n) for n in (first, second)}
    return {"path": out, "first": first, "second": second, "medians": medians, "summary": summary, "work": work,
            "train": lambda: train_location_encoder(out, target="taxa", taxon_space="learned", preset="tiny-test",
                                                    epochs=12, batch_size=32, lr=5e-3, learned_dim=16, seed=0)}


@pytest.fixture(scope="module")
def trained(real_collection: dict[str, Any]) -> dict[str, Any]:
    from assistant.agent import HerbariaAssistant

    untrained = HerbariaAssistant(real_collection["path"], model="tiny-test", captioner="none")
    untrained_map = untrained.ask(f"where does {real_collection['first']} grow?")
    photo = real_collection["work"] / "query.jpg"
    Image.new("RGB", (96, 128), (200, 196, 170)).save(photo, "JPEG")
    untrained_ident = untrained.ask("what is this? collected at -12.9714, -38.5014", photo)
    real_collection["train"]()
    return {**real_collection, "assistant": HerbariaAssistant(real_collection["path"], model="tiny-test", captioner="none"),
            "untrained_map": untrained_map, "untrained_ident": untrained_ident}


def _ident(result) -> list[str]:
    return [t["taxon"] for t in result.taxa if t.get("kind") == "identification"]


@pytest.mark.shared
def test_ingest_summary_counts_coordinate_flags(real_collection):
    coords = real_collection["summary"]["coordinates"]
    assert coords["records"] == coords["with_coordinates"] == 122
    assert coords["usable"] == 120  # the picked records passed the same checks when they were read
    assert coords["flagged"]["zero"] == 1 and coords["flagged"]["swapped"] == 1
    assert set(coords["flagged"]) >= {"zero", "swapped", "outside_country", "low_precision"}


@pytest.mark.shared
def test_geo_prior_turns_an_identification_round_where_each_taxon_was_collected(trained, tmp_path):
    bot, first, second = trained["assistant"], trained["first"], trained["second"]
    photo = tmp_path / "sheet.jpg"
    Image.new("RGB", (96, 128), (200, 196, 170)).save(photo, "JPEG")
    assert "this collection has no location model" in trained["untrained_ident"].text  # said, not silently ignored
    plain = bot.ask("what is this?", photo)
    assert sorted(_ident(plain)) == sorted([first, second]) and "where it was collected" not in plain.text
    tops = {}
    for name in (first, second):
        lat, lon = trained["medians"][name]
        result = bot.ask(f"what is this? collected at {lat:.4f}, {lon:.4f}", photo)
        assert "Ranked with where it was collected" in result.text, result.text
        tops[name] = _ident(result)[0]
    assert tops == {first: first, second: second}  # the same picture, two places, two answers
    # the photo's own GPS is a place too
    lat, lon = trained["medians"][second]
    gps = _gps_jpeg(tmp_path / "gps.jpg", lat, lon, colour=(200, 196, 170))
    result = bot.ask("what is this?", gps)
    assert _ident(result)[0] == second and "the photo's GPS" in result.text


@pytest.mark.shared
def test_where_does_it_grow_returns_a_map_with_and_without_a_model(trained, tmp_path):
    first = trained["first"]
    before = trained["untrained_map"]
    assert before.map and Path(before.map["path"]).is_file() and not before.map["model"]
    assert "no location model is trained" in before.text and "herbaria location train" in before.text
    result = trained["assistant"].ask(f"where does {first} grow?")
    drawn = result.map
    assert drawn["model"] and drawn["scores"] and drawn["records_drawn"] >= 50
    assert drawn["label"].startswith(f"Where {first} grows (model + ")
    with Image.open(drawn["path"]) as im:
        assert im.format == "PNG" and im.size[0] == drawn["width"]
        colours = len(set(im.convert("RGB").getdata()))
    assert colours > 20 and f"Map: where {first} grows (presence from the location encoder" in result.text
    photo = tmp_path / "sheet.jpg"
    Image.new("RGB", (96, 128), (200, 196, 170)).save(photo, "JPEG")
    by_photo = trained["assistant"].ask("where does this grow?", photo)
    assert by_photo.map and by_photo.map["taxon"] == _ident(by_photo)[0]
    with pytest.raises(BadInput, match="name a taxon"):
        trained["assistant"].ask("where does this grow?")


@pytest.mark.shared
def test_a_range_map_is_drawn_once_per_taxon_and_collection_state(trained, monkeypatch):
    """The second "where" question reads the map drawn for the first; nothing is rendered again."""
    import location

    first = trained["first"]
    drawn = trained["assistant"].ask(f"where does {first} grow?")
    stamp = Path(drawn.map["path"]).stat().st_mtime_ns
    monkeypatch.setattr(location, "taxon_range_map", lambda *a, **k: pytest.fail("the map was drawn again"))
    monkeypatch.setattr(location, "render_map", lambda *a, **k: pytest.fail("the map was drawn again"))
    again = trained["assistant"].ask(f"where does {first} grow?")
    assert again.map["path"] == drawn.map["path"] and Path(again.map["path"]).stat().st_mtime_ns == stamp
    assert again.map["label"] == drawn.map["label"] and again.map["records_drawn"] == drawn.map["records_drawn"]
    assert f"Map: where {first} grows" in again.text


@pytest.mark.shared
def test_radius_and_box_filters_never_leak_through_the_chat(trained):
    bot = trained["assistant"]
    table = bot.res.table.to_pandas()
    for name in (trained["first"], trained["second"]):
        mlat, mlon = trained["medians"][name]  # the record nearest the taxon's median point: never an empty circle
        lat, lon = min(zip(table["decimalLatitude"], table["decimalLongitude"]), key=lambda p: _km(mlat, mlon, *p))
        for km in (30, 300):
            result = bot.ask(f"within {km} km of {lat:.4f}, {lon:.4f}")
            inside = table[[_km(lat, lon, a, b) <= km for a, b in zip(table["decimalLatitude"], table["decimalLongitude"])]]
            got = [r["specimen_id"] for r in result.specimens]
            assert got and len(got) == min(len(inside), bot.k) and set(got) <= set(inside["specimen_id"])
            assert all(_km(lat, lon, r["decimalLatitude"], r["decimalLongitude"]) <= km for r in result.specimens)
            assert f"within {km} km of" in result.text
            followup = bot.ask("more", state=result.state)  # the filter stays on for the next turn
            assert all(_km(lat, lon, r["decimalLatitude"], r["decimalLongitude"]) <= km for r in followup.specimens)
    lat, lon = trained["medians"][trained["first"]]
    box = (lon - 2, lat - 2, lon + 2, lat + 2)
    result = bot.ask("in bbox " + ",".join(f"{v:.3f}" for v in box))
    assert result.specimens and all(box[0] <= r["decimalLongitude"] <= box[2] and box[1] <= r["decimalLatitude"] <= box[3]
                                    for r in result.specimens)
    nowhere = bot.ask("within 5 km of 60.1, 20.5")  # the Baltic: no record there
    assert nowhere.specimens == []


# ---------------------------------------------------------------------- the command line
def test_cli_ingest_prints_coordinate_flags_and_location_train_trains(tmp_path, capsys):
    from herbaria.cli import main
    from location import load_location_model

    sheets = tmp_path / "sheets"
    sheets.mkdir()
    points = [("good", -12.9714, -38.5014), ("zero", 0.0, 0.0), ("swapped", -38.5014, -12.9714),
              ("coarse", -13.0, -40.0), ("good2", -12.8712, -38.4413)] + [(f"n{i}", -3.1 - i * 0.0371, -60.02 + i * 0.0419)
                                                                          for i in range(8)]
    rows = []
    for i, (name, lat, lon) in enumerate(points):
        Image.new("RGB", (32, 48), (40 + 10 * i, 120, 90)).save(sheets / f"{name}.jpg", "JPEG")
        rows.append({"file": f"{name}.jpg", "scientificName": "Tabebuia aurea" if lat < -10 or lat == 0 else "Inga edulis",
                     "country": "Brazil", "decimalLatitude": lat, "decimalLongitude": lon, "catalogNumber": f"C{i}"})
    with open(sheets / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["ingest", str(sheets), "--out", str(tmp_path / "col"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "coordinates: 13 with coordinates, 10 usable; 1 zero, 1 swapped, 1 low precision (" in printed, printed
    assert main(["location", "train", str(tmp_path / "col"), "--epochs", "3"]) == 0
    assert "location model trained on 10 records" in capsys.readouterr().out
    assert sorted(load_location_model(tmp_path / "col").taxa) == ["Inga edulis", "Tabebuia aurea"]


# ---------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from conftest import need_chromium

    need_chromium()
    from demo.server import create_server, start_server
    from location import train_location_encoder
    from test_iiif_serving import located_collection

    torch.set_num_threads(1)
    collection = located_collection(tmp_path_factory.mktemp("geo-browser"))
    train_location_encoder(collection, target="taxa", taxon_space="learned", preset="tiny-test", epochs=10,
                           batch_size=16, lr=5e-3, learned_dim=8, seed=0)
    server = start_server(create_server(collection, model="tiny-test"))
    try:
        yield {"url": server.url}
    finally:
        server.close()


@pytest.mark.browser
@pytest.mark.slow
def test_where_does_it_grow_shows_the_map_in_the_browser(served):
    from conftest import browser_page

    ARTIFACTS.mkdir(exist_ok=True)
    with browser_page() as page:
        page.goto(served["url"], wait_until="domcontentloaded")
        box = page.locator("#herbaria-input textarea")
        box.wait_for()
        box.fill("where does Geranium maculatum grow?")
        box.press("Enter")
        page.wait_for_function("() => { const img = document.querySelector('#herbaria-results-map img');"
                               " return img && img.complete && img.naturalWidth > 0 && /range-/.test(img.src); }")
        answer = page.locator("#herbaria-chat .bot").last
        answer.wait_for()
        assert "Map: where Geranium maculatum grows" in answer.inner_text()
        size = page.evaluate("() => { const i = document.querySelector('#herbaria-results-map img');"
                             " return [i.naturalWidth, i.naturalHeight]; }")
        assert size[0] >= 300 and size[1] >= 100
        page.locator("#herbaria-results-map").screenshot(path=str(ARTIFACTS / "location_map.png"))
        page.screenshot(path=str(ARTIFACTS / "location_answer.png"), full_page=True)


def test_ingest_counts_the_coordinates_of_the_records_it_stored(tmp_path):
    """Counted batch by batch over what each run stored: a second source's summary is about it alone."""
    from retrieval.collections import ingest

    def source(name: str, points: list[tuple[float, float]]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        rows = []
        for i, (lat, lon) in enumerate(points):
            Image.new("RGB", (32, 48), (40 + 20 * i, 120, len(name) * 9)).save(folder / f"{name}{i}.jpg", "JPEG")
            rows.append({"file": f"{name}{i}.jpg", "scientificName": "Inga edulis", "country": "Brazil",
                         "decimalLatitude": lat, "decimalLongitude": lon, "catalogNumber": f"{name}{i}"})
        with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return folder

    out = tmp_path / "col"
    first = ingest(source("a", [(0.0, 0.0), (-12.9714, -38.5014), (-3.1371, -60.0213)]), out, progress=False, batch_size=2)
    assert first["coordinates"]["records"] == 3 and first["coordinates"]["flagged"]["zero"] == 1
    second = ingest(source("b", [(-12.8712, -38.4413)]), out, progress=False)
    assert second["coordinates"]["records"] == 1 and second["coordinates"]["flagged"]["zero"] == 0
    assert second["coordinates"]["usable"] == 1
