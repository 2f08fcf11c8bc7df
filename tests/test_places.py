"""Place names in a question: the offline gazetteer (assistant/places.py) and the geo-prior it feeds."""

from __future__ import annotations

import pytest
from PIL import Image

from assistant.geography import place_of, read_question
from assistant.places import BRAZIL_STATES, _gazetteer, resolve
from retrieval.collections.coordinates import find_country
from test_location_assistant import _ident, _km, real_collection, trained  # noqa: F401  (fixtures reused)


def test_a_city_with_its_region_resolves_to_the_city():
    place = resolve("Salvador, Bahia")
    assert _km(place["lat"], place["lon"], -12.97, -38.50) < 30 and place["kind"] == "city"
    geo = read_question("what is this, collected near Salvador, Bahia?")
    assert geo.text == "what is this?" and _km(geo.place["lat"], geo.place["lon"], -12.97, -38.50) < 30
    said = place_of(geo, {}, None)
    assert said["explicit"] and "Salvador, Bahia, Brazil" in said["said"]
    assert resolve("sao paulo, Brazil")["name"] == "São Paulo, São Paulo, Brazil"  # case and accents do not matter


def test_a_region_resolves_inside_it():
    for name, country in (("Bahia", "Brazil"), ("Minas Gerais", "Brazil"), ("California", "United States")):
        place = resolve(name)
        assert place["kind"] == "region" and place["cities"] > 50, place
        assert find_country(country).contains([place["lat"]], [place["lon"]], tolerance_km=0.0)[0], (name, place)
    bahia = read_question("what is this? collected in Bahia").place
    assert bahia["name"] == "Bahia, Brazil" and -18.5 < bahia["lat"] < -8.5 and -46.7 < bahia["lon"] < -37.3
    california = resolve("California")
    assert 32.5 < california["lat"] < 42 and -124.5 < california["lon"] < -114


def test_brazil_state_codes_match_geonames_capitals():
    """The one table written here by hand: each state's capital carries that state's GeoNames admin1 code."""
    capitals = {"Salvador": "05", "Belo Horizonte": "15", "Recife": "30", "Manaus": "04", "Curitiba": "18",
                "Porto Alegre": "23", "Goiânia": "29", "Cuiabá": "14", "Campo Grande": "11", "Brasília": "07"}
    cities = _gazetteer()["cities"]
    for capital, code in capitals.items():
        codes = {c["admin1code"] for c in cities if c["countrycode"] == "BR" and c["name"] == capital}
        assert code in codes, (capital, BRAZIL_STATES[code], codes)


def test_unknown_ambiguous_and_contradicted_places_say_so():
    for text, why in (("Xyzzyville", "no town"), ("Santa Cruz", "places bear that name"),
                      ("Salvador, Texas", "no town"), ("Salvador, Atlantis", "no region or country")):
        place = resolve(text)
        assert "lat" not in place and place["line"].startswith(f"I could not place '{text}'") and why in place["line"]
        assert "give coordinates" in place["line"]
    geo = read_question("what is this, found near Xyzzyville?")
    assert geo.place["unplaced"] == "Xyzzyville" and place_of(geo, {}, None) is None
    assert read_question("collected in flower, what is it?").place is None  # not capitalised: not a place
    assert "lat" not in resolve("CA") and "country" not in resolve("CA")  # a bare code is neither Canada nor a town
    hostile = resolve("../../etc/passwd, " + "A" * 500)
    assert "lat" not in hostile and "not a place name" in hostile["line"]


@pytest.mark.shared
def test_a_named_place_turns_an_identification_like_its_coordinates(trained, tmp_path):
    """Near each taxon's collecting area, the town named in words ranks the identification as its coordinates do."""
    bot = trained["assistant"]
    photo = tmp_path / "sheet.jpg"
    Image.new("RGB", (96, 128), (200, 196, 170)).save(photo, "JPEG")
    g = _gazetteer()
    tops = {}
    for name in (trained["first"], trained["second"]):
        lat, lon = trained["medians"][name]
        towns = sorted((c for c in g["cities"] if c["countrycode"] == "BR" and ("BR", c["admin1code"]) in g["regions"]),
                       key=lambda c: (_km(lat, lon, c["latitude"], c["longitude"]), c["geonameid"]))
        town = next(c for c in towns if resolve(f"{c['name']}, {g['regions'][('BR', c['admin1code'])]}").get("lat")
                    == c["latitude"])
        region = g["regions"][("BR", town["admin1code"])]
        named = bot.ask(f"what is this, collected near {town['name']}, {region}?", photo)
        typed = bot.ask(f"what is this? collected at {town['latitude']:.5f}, {town['longitude']:.5f}", photo)
        assert f"Ranked with where it was collected: {town['name']}, {region}, Brazil" in named.text, named.text
        assert _ident(named) == _ident(typed)
        tops[name] = _ident(named)[0]
    assert tops == {trained["first"]: trained["first"], trained["second"]: trained["second"]}
    unknown = bot.ask("what is this, collected near Xyzzyville?", photo)
    assert "I could not place 'Xyzzyville'" in unknown.text and "Ranked with where it was collected" not in unknown.text
