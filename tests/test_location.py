"""Location as a modality: the encoder, its training and manifest, the geo-prior, coordinate flags,
geographic filters inside the vector search, and offline maps."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from location.encoder import create_location_encoder, equal_earth
from location.eval import read_occurrences
from location.prior import country_prior, geo_rerank, location_prior, score_grid
from location.range_map import RECORD, SEA, render_map, taxon_range_map
from location.train import fit_location_encoder, load_location_model, location_dir, train_location_encoder
from retrieval.collections import Collection
from retrieval.collections import coordinate_flags, coordinate_summary, flag_records
from retrieval.errors import BadInput, HerbariaError, IndexMismatch
from retrieval.filters import allowed_ids, parse_filters
from retrieval.vectors import SpecimenIndex
from retrieval.vectors import index_dir

# Two inland regions 2,300 km apart: A in the Chapada Diamantina (Bahia), B around Manaus (Amazonas).
A, B = (-12.5, -41.5), (-3.1, -60.0)


def _clustered(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    lat = np.r_[rng.normal(A[0], 0.7, n), rng.normal(B[0], 0.7, n)]
    lon = np.r_[rng.normal(A[1], 0.7, n), rng.normal(B[1], 0.7, n)]
    return lat, lon, ["Alseis pickelii"] * n + ["Duroia valesca"] * n


@pytest.fixture(scope="module")
def regional_model():
    torch.set_num_threads(1)
    lat, lon, taxa = _clustered()
    model, report = fit_location_encoder(lat, lon, taxa, target="learned", dim=16, preset="tiny-test", epochs=15,
                                         batch_size=128, lr=5e-3)
    assert report["loss_last"] < report["loss_first"]
    return model


# ---------------------------------------------------------------------- encoder
def test_equal_earth_projection_and_encoder_shapes():
    xy = equal_earth(torch.tensor([0.0, 0.0, 0.0, 90.0, -90.0]), torch.tensor([0.0, 180.0, -180.0, 0.0, 0.0]))
    assert torch.allclose(xy[0], torch.zeros(2))
    assert xy[1, 0] == pytest.approx(1.0, abs=1e-3) and xy[2, 0] == pytest.approx(-1.0, abs=1e-3)  # GeoCLIP's scale
    assert xy[3, 1] == pytest.approx(-xy[4, 1]) and 0.45 < float(xy[3, 1]) < 0.5
    # equal area: a 0.1° cell's projected area is proportional to its area on the sphere, cos(latitude)
    def cell_area(lat: float) -> float:
        corners = equal_earth(torch.tensor([lat, lat, lat + 0.1], dtype=torch.float64),
                              torch.tensor([10.0, 10.1, 10.0], dtype=torch.float64))
        return float((corners[1, 0] - corners[0, 0]) * (corners[2, 1] - corners[0, 1]))
    for lat in (30.0, 60.0, -75.0):
        assert cell_area(lat) / cell_area(0.0) == pytest.approx(math.cos(math.radians(lat + 0.05)), rel=5e-3)
    encoder = create_location_encoder(24, preset="tiny-test")
    assert len(encoder.branches) == 3 and [b.frequencies.shape for b in encoder.branches] == [(8, 2)] * 3
    vectors = encoder.encode(np.array([10.0, -20.0, 45.0]), np.array([0.0, 100.0, -170.0]))
    assert vectors.shape == (3, 24) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again = create_location_encoder(24, preset="tiny-test").encode(np.array([10.0]), np.array([0.0]))
    assert np.allclose(again[0], vectors[0])  # same seed, same random features and weights
    with pytest.raises(BadInput):
        create_location_encoder(24, preset="huge")


# ---------------------------------------------------------------------- training and the prior
def test_training_learns_regions_and_the_prior_ranks_the_local_taxon_first(regional_model):
    at_a = location_prior(regional_model, *A)
    at_b = location_prior(regional_model, *B)
    assert at_a["taxa"][0]["taxon"] == "Alseis pickelii" and at_b["taxa"][0]["taxon"] == "Duroia valesca"
    p_a = {t["taxon"]: t["probability"] for t in at_a["taxa"]}
    assert p_a["Alseis pickelii"] > 0.8 and "p(taxon | -12.5000, -41.5000)" in at_a["how"]
    with pytest.raises(BadInput):
        location_prior(regional_model, 95.0, 0.0)


def test_geo_rerank_changes_an_identification_and_says_how(regional_model):
    # the image slightly prefers the Amazonian taxon; a specimen collected near Salvador flips it
    candidates = [{"taxon": "Duroia valesca", "score": 0.31}, {"taxon": "Alseis pickelii", "score": 0.30},
                  {"taxon": "Inga edulis", "score": 0.10}]
    near_a = geo_rerank(candidates, regional_model, lat=A[0], lon=A[1])
    assert near_a["changed"] and near_a["ranking"][0]["taxon"] == "Alseis pickelii"
    assert near_a["ranking"][0]["rank_image_only"] == 2 and "p(taxon | image) x p(taxon | location)^1" in near_a["how"]
    assert "Inga edulis" in near_a["how"] and near_a["ranking"][-1]["location_probability"] is None
    assert sum(r["probability"] for r in near_a["ranking"]) == pytest.approx(1.0, abs=1e-4)
    near_b = geo_rerank(candidates, regional_model, lat=B[0], lon=B[1])
    assert not near_b["changed"] and near_b["ranking"][0]["taxon"] == "Duroia valesca"
    ignored = geo_rerank(candidates, regional_model, lat=A[0], lon=A[1], weight=0.0)
    assert not ignored["changed"]
    in_brazil = country_prior(regional_model, "Brasil", step=2.0)
    assert in_brazil["country"] == "Brazil" and in_brazil["points"] > 100


def test_score_grid_is_highest_where_the_taxon_grows(regional_model):
    grid = score_grid(regional_model, "Alseis pickelii", extent=(-75, -35, -30, 5), step=1.0)
    values = grid["grid"]
    assert values.shape == (40, 45)
    row_a, col_a = int(A[0] + 35), int(A[1] + 75)
    row_b, col_b = int(B[0] + 35), int(B[1] + 75)
    assert values[row_a, col_a] > 0.5 > values[row_b, col_b]
    with pytest.raises(BadInput, match="not in the location model"):
        score_grid(regional_model, "Nonexistent taxon")


def _collection_with_index(path, encoder: dict, *, n: int = 240) -> Collection:
    """A collection of georeferenced specimens in regions A and B, and an image index of fake vectors
    (one direction per taxon plus noise) standing in for a frozen image tower."""
    lat, lon, taxa = _clustered(n // 2, seed=3)
    col = Collection.create(path)
    rows = [{"dedupe_key": f"occ:{i}", "record_hash": str(i), "occurrenceID": str(i), "scientificName": taxa[i],
             "decimalLatitude": round(float(lat[i]), 5), "decimalLongitude": round(float(lon[i]), 5),
             "country": "Brazil", "image": f"images/{i}.jpg"} for i in range(n)]
    rows.append({"dedupe_key": "occ:zero", "record_hash": "z", "occurrenceID": "zero", "scientificName": taxa[0],
                 "decimalLatitude": 0.0, "decimalLongitude": 0.0, "country": "Brazil", "image": "images/z.jpg"})
    col.upsert(rows, source="test")
    col.write_snapshot()
    _index_fake_vectors(col, encoder)
    return col


def _index_fake_vectors(col: Collection, encoder: dict) -> None:
    table = col.specimens()
    rng = np.random.default_rng(0)
    directions = {"Alseis pickelii": np.eye(encoder["dim"])[0], "Duroia valesca": np.eye(encoder["dim"])[1]}
    vectors = np.stack([directions[name] + 0.3 * rng.normal(size=encoder["dim"]) for name in table["scientificName"]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = SpecimenIndex.create(encoder, preset_name="exact")
    index.add(table["specimen_id"].to_numpy(np.int64), vectors.astype(np.float32))
    index.save(index_dir(col))


FAKE_A = {"name": "fake-a", "fingerprint": "aaaa", "dim": 8}
FAKE_B = {"name": "fake-b", "fingerprint": "bbbb", "dim": 8}


def test_training_against_image_vectors_is_saved_with_a_manifest_and_refused_after_the_encoder_changes(tmp_path):
    torch.set_num_threads(1)
    col = _collection_with_index(tmp_path / "col", FAKE_A)
    summary = train_location_encoder(col, target="auto", preset="tiny-test", epochs=10, batch_size=64, lr=5e-3,
                                     min_images=10)
    assert summary["target"] == "images" and summary["space"]["encoder"] == "fake-a"
    flags = flag_records(col.specimens())
    assert summary["records"] == int(flags["usable"].sum()) >= 230  # flagged points never train: (0,0) at least
    assert summary["flagged_skipped"] == int((~flags["usable"]).sum()) >= 1 and ("zero",) in set(flags["flags"])
    model = load_location_model(col, encoder=FAKE_A)
    assert model.manifest["space"]["fingerprint"] == "aaaa" and sorted(model.taxa) == ["Alseis pickelii", "Duroia valesca"]
    assert location_prior(model, *A)["taxa"][0]["taxon"] == "Alseis pickelii"
    drawn = taxon_range_map(col, "Alseis pickelii", tmp_path / "range.png", width=300)
    assert drawn["records_of_taxon"] == 121 and drawn["records_flagged_skipped"] >= 1
    assert drawn["records_drawn"] + drawn["records_flagged_skipped"] + drawn["records_outside_extent"] == 121
    with pytest.raises(IndexMismatch, match="retrain"):
        load_location_model(col, encoder=FAKE_B)
    _index_fake_vectors(col, FAKE_B)  # the image index is rebuilt with another encoder
    with pytest.raises(IndexMismatch, match="fake-a"):
        load_location_model(col)
    with pytest.raises(IndexMismatch):
        train_location_encoder(col, model="fake-a", preset="tiny-test", epochs=1)
    _index_fake_vectors(col, FAKE_A)
    (location_dir(col) / "taxa.npz").write_bytes(b"damaged")
    with pytest.raises(HerbariaError, match="damaged"):
        load_location_model(col)


def test_a_collection_without_images_trains_a_learned_taxon_table(tmp_path):
    col = Collection.create(tmp_path / "col")
    lat, lon, taxa = _clustered(60, seed=5)
    col.upsert([{"dedupe_key": f"occ:{i}", "record_hash": str(i), "occurrenceID": str(i), "scientificName": taxa[i],
                 "decimalLatitude": round(float(lat[i]), 4), "decimalLongitude": round(float(lon[i]), 4)}
                for i in range(len(taxa))], source="test")
    col.write_snapshot()
    summary = train_location_encoder(col, preset="tiny-test", epochs=15, batch_size=32, lr=5e-3, learned_dim=8)
    assert summary["target"] == "learned" and summary["space"]["kind"] == "learned"
    assert location_prior(load_location_model(col), *B)["taxa"][0]["taxon"] == "Duroia valesca"


# ---------------------------------------------------------------------- coordinates
def test_coordinate_flags_on_crafted_cases():
    brasilia = (-15.7939, -47.8828)
    assert coordinate_flags(*brasilia, country="Brazil") == []
    assert coordinate_flags(0.0, 0.0, country="Brazil") == ["zero"]
    assert coordinate_flags(brasilia[1], brasilia[0], country="Brazil") == ["swapped"]
    assert coordinate_flags(-brasilia[0], brasilia[1], country="Brasil") == ["sign_inverted"]
    assert coordinate_flags(48.8566, 2.3522, country="BR") == ["outside_country"]  # Paris, said to be Brazil
    assert coordinate_flags(48.8566, 2.3522, country="France") == []
    assert coordinate_flags(-15.0, -48.0, country="Brazil") == ["low_precision"]
    assert coordinate_flags(*brasilia, country="Brazil", uncertainty_m=50_000) == ["low_precision"]
    assert coordinate_flags(*brasilia, country="Atlantis") == []  # no outline: not checked, not flagged
    assert coordinate_flags(None, None) == []
    # the coast at 1:110m is coarse: a point on Salvador's shore is inside with the tolerance
    assert coordinate_flags(-13.0105, -38.5322, country="Brazil") == []
    table = pd.DataFrame({"decimalLatitude": [brasilia[0], 0.0, 48.8566, None, -15.0],
                          "decimalLongitude": [brasilia[1], 0.0, 2.3522, None, -48.0],
                          "country": ["Brazil", "Brazil", "Brazil", "Brazil", "Brazil"],
                          "verbatim": ["{}", "{}", "{}", "{}", '{"coordinateUncertaintyInMeters": "5"}']})
    summary = coordinate_summary(table)
    assert summary["records"] == 5 and summary["with_coordinates"] == 4 and summary["usable"] == 1
    assert summary["flagged"] == {"zero": 1, "swapped": 0, "sign_inverted": 0, "outside_country": 1, "low_precision": 1}
    assert list(flag_records(table)["usable"]) == [True, False, False, False, False]


# ---------------------------------------------------------------------- geographic filters
def _great_circle_km(lat1, lon1, lat2, lon2):
    """Independent of the code under test: the angle between unit vectors."""
    def unit(lat, lon):
        la, lo = np.radians(lat), np.radians(lon)
        return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)
    cos = np.clip((unit(lat1, lon1) * unit(lat2, lon2)).sum(-1), -1, 1)
    return np.degrees(np.arccos(cos)) * math.pi / 180 * 6371.0088


def _table(points):
    lat, lon = zip(*points) if points else ((), ())
    return pd.DataFrame({"specimen_id": np.arange(1, len(points) + 1), "decimalLatitude": lat, "decimalLongitude": lon})


lat_st = st.floats(-90, 90, allow_nan=False)
lon_st = st.floats(-180, 180, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(points=st.lists(st.tuples(lat_st, lon_st), min_size=1, max_size=60), centre=st.tuples(lat_st, lon_st),
       km=st.floats(0.5, 21000, allow_nan=False))
def test_radius_filter_never_leaks(points, centre, km):
    table = _table(points)
    allowed = set(allowed_ids(table, parse_filters({"radius": (centre[0], centre[1], km)})).tolist())
    distance = _great_circle_km(centre[0], centre[1], table["decimalLatitude"].to_numpy(), table["decimalLongitude"].to_numpy())
    for sid, d in zip(table["specimen_id"], distance):
        if d > km * (1 + 1e-9) + 1e-6:
            assert sid not in allowed, f"{sid} at {d} km leaked through a {km} km radius"
        elif d < km * (1 - 1e-9) - 1e-6:
            assert sid in allowed


@settings(max_examples=150, deadline=None)
@given(points=st.lists(st.tuples(lat_st, lon_st), min_size=1, max_size=60), west=lon_st, east=lon_st,
       lats=st.tuples(lat_st, lat_st))
def test_bbox_filter_never_leaks_across_the_antimeridian(points, west, east, lats):
    south, north = sorted(lats)
    table = _table(points)
    allowed = set(allowed_ids(table, parse_filters([f"bbox={west},{south},{east},{north}"])).tolist())
    for sid, lat, lon in zip(table["specimen_id"], table["decimalLatitude"], table["decimalLongitude"]):
        # west > east: the box runs from west eastwards over 180° to east
        in_lon = west <= lon <= east if west <= east else (lon >= west or lon <= east)
        assert (sid in allowed) == (south <= lat <= north and in_lon)


def test_geographic_filters_run_inside_faiss_and_reject_bad_input():
    rng = np.random.default_rng(0)
    n = 400
    table = pd.DataFrame({"specimen_id": np.arange(n), "decimalLatitude": rng.uniform(-60, 70, n),
                          "decimalLongitude": rng.uniform(-180, 180, n), "family": ["Rubiaceae"] * n})
    table.loc[5, ["decimalLatitude", "decimalLongitude"]] = np.nan  # no coordinates: never inside
    index = SpecimenIndex.create({"name": "fake", "fingerprint": "f", "dim": 8}, preset_name="exact")
    index.add(table["specimen_id"].to_numpy(np.int64), rng.normal(size=(n, 8)).astype(np.float32))
    filters = parse_filters(["radius=-12.97,-38.51,3000km", "family=rubiaceae"])
    allowed = allowed_ids(table, filters)
    assert 0 < len(allowed) < n and 5 not in allowed
    hits = index.search(rng.normal(size=8).astype(np.float32), k=n, allowed=allowed)[0]
    inside = _great_circle_km(-12.97, -38.51, table.loc[[sid for sid, _ in hits], "decimalLatitude"].to_numpy(),
                              table.loc[[sid for sid, _ in hits], "decimalLongitude"].to_numpy())
    assert len(hits) == len(allowed) and (inside <= 3000 + 1e-6).all()
    pacific = allowed_ids(table, parse_filters({"bbox": {"west": 170, "south": -60, "east": -170, "north": 70}}))
    lons = table.set_index("specimen_id").loc[pacific, "decimalLongitude"]
    assert len(pacific) and ((lons >= 170) | (lons <= -170)).all()
    for bad in (["radius=-12.97,-38.51"], ["radius=95,0,10km"], ["radius=0,0,0"], ["bbox=0,10,5,-10"],
                ["near=a,b,c"], {"radius": {"lat": 1, "lon": 2}}):
        with pytest.raises(BadInput):
            parse_filters(bad)


# ---------------------------------------------------------------------- maps
def test_map_renders_offline_with_scores_records_and_flagged_points_left_off(tmp_path):
    extent = (-75.0, -35.0, -30.0, 5.0)
    scores = np.zeros((40, 45), np.float32)
    scores[20:25, 30:35] = 1.0
    records = pd.DataFrame({"decimalLatitude": [-12.9714, 0.0, -22.9068], "decimalLongitude": [-38.5014, 0.0, -43.1729],
                            "country": ["Brazil", "Brazil", "Brazil"]})
    drawn = render_map(tmp_path / "map.png", scores=scores, extent=extent, records=records, width=450, title="test")
    assert drawn["records_drawn"] == 2 and drawn["records_flagged_skipped"] == 1 and drawn["height"] == 400
    image = np.asarray(Image.open(tmp_path / "map.png").convert("RGB"))
    assert image.shape == (400, 450, 3)
    x, y = int((-38.5014 + 75) / 45 * 450), int((5 + 12.9714) / 40 * 400)
    assert tuple(image[y, x]) == RECORD  # Salvador's record, drawn on top
    sea_x, sea_y = int((-32 + 75) / 45 * 450), int((5 + 27) / 40 * 400)  # the Atlantic off Brazil
    assert tuple(image[sea_y, sea_x]) == SEA
    world = render_map(tmp_path / "world.png", records=[(-12.9714, -38.5014)])
    assert world["records_drawn"] == 1 and Image.open(tmp_path / "world.png").format == "PNG"
    with pytest.raises(BadInput):
        render_map(tmp_path / "bad.png", scores=scores)  # a grid without its extent


# ---------------------------------------------------------------------- real records
@pytest.mark.shared
def test_geo_prior_from_real_records_prefers_the_taxon_common_where_the_specimen_was_collected(shared_data):
    """cncflora herbarium records: of the most collected species, the two whose records lie farthest
    apart; at each one's median collecting point the prior ranks it above the other, and an image
    ranking that slightly prefers the other taxon is turned round."""
    folder = shared_data / "occurrences" / "cncflora"
    if not folder.is_dir():
        pytest.skip(f"no cncflora occurrences at {folder}")
    torch.set_num_threads(1)
    table, counts = read_occurrences(folder)
    assert counts["zero"] > 1000 and counts["usable"] < counts["with_coordinates"]  # (0,0) records are dropped
    top = table["taxon"].value_counts().head(25).index
    table = table[table["taxon"].isin(top)]
    medians = table.groupby("taxon")[["decimalLatitude", "decimalLongitude"]].median()
    names = sorted(medians.index)
    far = max(((a, b) for a in names for b in names if a < b),
              key=lambda p: float(_great_circle_km(*medians.loc[p[0]], *medians.loc[p[1]])))
    model, _ = fit_location_encoder(table["decimalLatitude"].to_numpy(), table["decimalLongitude"].to_numpy(),
                                    table["taxon"].tolist(), target="learned", dim=32, epochs=8, seed=0)
    first, second = far
    p_first = {t["taxon"]: t["probability"] for t in location_prior(model, *medians.loc[first], top=None)["taxa"]}
    p_second = {t["taxon"]: t["probability"] for t in location_prior(model, *medians.loc[second], top=None)["taxa"]}
    assert p_first[first] > p_first[second] and p_second[second] > p_second[first]
    assert p_first[first] > p_second[first]  # common where it was collected, rarer elsewhere
    candidates = [{"taxon": second, "score": 0.31}, {"taxon": first, "score": 0.30}]
    reranked = geo_rerank(candidates, model, lat=medians.loc[first, "decimalLatitude"],
                          lon=medians.loc[first, "decimalLongitude"])
    assert reranked["changed"] and reranked["ranking"][0]["taxon"] == first
