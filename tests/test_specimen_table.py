"""The serving specimen table (issue 11): a memory-mapped Arrow copy of the snapshot that filters, looks rows up
and lists taxa without pandas, and answers exactly what the pandas table answered."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from retrieval.collections import ARROW, Collection, SpecimenTable
from retrieval.filters import allowed_ids, filter_mask, parse_filters

FAMILIES = ["Rosaceae", "ROSACEAE", "Poaceae", "", "Violaceae"]
NAMES = ["Rosa canina L.", "Rosa canina var. alba", "Rubus idaeus", "Viola", "", "Poa annua", "rosa Canina"]


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append({"dedupe_key": f"k{i}", "record_hash": "h", "scientificName": NAMES[rng.integers(len(NAMES))],
                    "family": FAMILIES[rng.integers(len(FAMILIES))], "genus": ["Rosa", "Rubus", "", "Poa"][i % 4],
                    "country": ["Brazil", "France", "brazil", ""][rng.integers(4)], "institutionCode": ["P", "HUH", "K"][i % 3],
                    "catalogNumber": f"Ab{i}" if i % 5 else str(1000 + i), "occurrenceID": f"urn:occ:{i}" if i % 2 else "",
                    "recordedBy": ["M. L. Fernald", "A. Gray", ""][i % 3], "locality": ["Serra do Mar", "", "Rio"][i % 3],
                    "eventDate": f"{1850 + i % 170}-01-01" if i % 7 else "", "decimalLatitude": -10.0 + i % 20 if i % 3 else None,
                    "decimalLongitude": -50.0 + i % 30 if i % 3 else None, "image": f"images/{i}.png" if i % 4 else ""})
    return out


@pytest.fixture()
def collection(tmp_path) -> Collection:
    col = Collection.create(tmp_path / "c")
    col.upsert(_records(120), source="s")
    col.write_snapshot()
    return col


FILTERS = [{"family": "rosaceae"}, {"family": ["Poaceae", "violaceae"], "country": "BRAZIL"}, {"year": "1900-1950"},
           {"institution": "huh", "year": "-1900"}, {"radius": "-5,-45,800km"}, {"bbox": "-60,-12,-40,0"},
           {"scientificName": "Rosa canina L."}, {"family": "Nothing"}]


def test_filters_on_the_served_table_match_the_pandas_table(collection):
    table = collection.table()
    frame = collection.specimens()
    assert table.source.endswith(ARROW) and len(table) == len(frame) == 120
    for flt in FILTERS:
        parsed = parse_filters(flt)
        assert filter_mask(table, parsed).tolist() == filter_mask(frame, parsed).tolist(), flt
        ids = allowed_ids(table, parsed)
        assert ids.tolist() == allowed_ids(frame, parsed).tolist() and np.all(np.diff(ids) > 0), flt
    assert filter_mask(table, parse_filters({"family": "rosaceae"})).sum() > 0  # the check above is not vacuous


def test_rows_by_id_and_the_pandas_view(collection):
    table, frame = collection.table(), collection.specimens()
    pd.testing.assert_frame_equal(table.to_pandas(), frame, check_dtype=False)
    wanted = [77, 3, 999, 120, 1]
    rows = table.rows(wanted)
    assert [r["specimen_id"] for r in rows] == [77, 3, 120, 1]  # the order asked, unknown ids left out
    for row in rows:
        expected = frame.loc[frame["specimen_id"] == row["specimen_id"]].iloc[0]
        for column in ("scientificName", "family", "catalogNumber", "image", "year", "decimalLatitude"):
            value = expected[column]
            assert row[column] == (None if pd.isna(value) else value), column
    assert table.row(999) is None and table.has(3) and not table.has(0)
    assert collection.image_path(1) is None and collection.image_path(2) == collection.path / "images/1.png"
    with pytest.raises(KeyError):
        collection.image_path(999)


def test_text_columns_are_dictionary_encoded_on_disk(collection):
    with ipc.open_file(str(collection.path / ARROW)) as reader:
        schema = reader.schema
    assert str(schema.field("family").type).startswith("dictionary")
    assert str(schema.field("catalogNumber").type) == "string"  # unique values: no dictionary
    codes, values = collection.table().codes("family")
    assert codes.dtype == np.int8 and set(values) <= {f.casefold() for f in FAMILIES}  # the smallest type that holds them


def test_an_old_collection_without_the_arrow_file_still_opens(collection):
    os.unlink(collection.path / ARROW)
    reopened = Collection.open(collection.path)
    table = reopened.table()
    assert len(table) == 120 and (collection.path / ARROW).is_file()  # rebuilt on first open, then mapped
    assert table.source.endswith(ARROW)
    assert allowed_ids(table, parse_filters({"family": "poaceae"})).tolist() == allowed_ids(
        reopened.specimens(), parse_filters({"family": "poaceae"})).tolist()


def test_a_stale_arrow_file_is_never_served(collection, tmp_path):
    stale = (collection.path / ARROW).read_bytes()
    collection.upsert([{**_records(1)[0], "dedupe_key": "new", "family": "Fabaceae"}], source="s")
    collection.write_snapshot()
    (collection.path / ARROW).write_bytes(stale)  # e.g. a writer killed between its two renames
    table = Collection.open(collection.path).table()
    assert len(table) == 121 and allowed_ids(table, parse_filters({"family": "fabaceae"})).tolist() == [121]


def test_a_damaged_arrow_file_is_rebuilt(collection):
    path = collection.path / ARROW
    path.write_bytes(path.read_bytes()[:200])  # cut short (a full disk, a bad copy)
    table = Collection.open(collection.path).table()
    assert len(table) == 120 and table.row(5)["catalogNumber"] == "Ab4"
    assert SpecimenTable.open(collection.path).source.endswith(ARROW)  # written whole again


def test_a_read_only_copy_without_the_arrow_file_is_served_from_memory(collection, tmp_path):
    os.unlink(collection.path / ARROW)
    folder = collection.path
    modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
    try:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        table = SpecimenTable.open(folder)
        assert len(table) == 120 and "memory" in table.source and not (folder / ARROW).exists()
    finally:
        folder.chmod(modes[folder])


def test_a_table_changes_only_with_the_snapshot(collection):
    first = collection.table()
    assert collection.table() is first  # one table per snapshot and process
    collection.upsert([{**_records(1)[0], "dedupe_key": "another"}], source="s")
    collection.write_snapshot()
    assert collection.table() is not first and len(collection.table()) == 121 and len(first) == 120


def test_empty_and_in_memory_tables():
    assert len(SpecimenTable.empty()) == 0 and SpecimenTable.empty().rows([1]) == []
    frame = pd.DataFrame({"specimen_id": [5, 2, 9], "family": ["Rosaceae", None, "rosaceae"],
                          "year": pd.array([1900, None, 2000], dtype="Int64")})
    table = SpecimenTable.from_pandas(frame)  # not in id order: positions still found
    assert table.ids.tolist() == [2, 5, 9] and [r["specimen_id"] for r in table.rows([9, 5])] == [9, 5]
    assert allowed_ids(table, parse_filters({"family": "ROSACEAE"})).tolist() == [5, 9]
    assert allowed_ids(table, parse_filters({"year": "1950-"})).tolist() == [9]
    assert table.to_pandas()["specimen_id"].tolist() == [2, 5, 9]


def test_lookups_by_identifier(collection):
    table = collection.table()
    frame = collection.specimens()
    assert table.ids_where(table.equal("occurrenceID", "urn:occ:7")).tolist() == [8]
    assert table.ids_where(table.equal("catalogNumber", "ab7")).tolist() == []
    assert table.ids_where(table.equal("catalogNumber", "ab7", fold=True)).tolist() == [8]
    assert table.ids_where(table.contains("recordedBy", "fernald")).tolist() == \
        frame.loc[frame["recordedBy"].str.contains("Fernald"), "specimen_id"].tolist()
    assert table.ids_where(table.contains("locality", "SERRA")).tolist() == \
        frame.loc[frame["locality"] == "Serra do Mar", "specimen_id"].tolist()
    assert table.has_text("locality") and not table.has_text("rightsHolder")
    assert table.distinct("country") == ["Brazil", "France", "brazil"]


def _old_taxon_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The pandas version Resources used before the served table, the reference for the array version."""
    from retrieval.flora import normalize_name

    names = frame["scientificName"].fillna("").astype(str).map(normalize_name)
    rows = pd.DataFrame({"specimen_id": frame["specimen_id"].to_numpy(), "name": names.to_numpy(),
                         "family": frame["family"].fillna("").astype(str).to_numpy()})
    rows = rows[rows["name"] != ""]
    rows["genus"] = rows["name"].str.split(" ").str[0]

    def most_common(values: pd.Series) -> str:
        values = values[values != ""]
        return str(values.mode().iloc[0]) if len(values) else ""
    grouped = rows.groupby("name", sort=True).agg(genus=("genus", "first"), family=("family", most_common),
                                                 specimen_ids=("specimen_id", list))
    return grouped.reset_index()


def test_taxa_vocabulary_and_ids_match_the_pandas_versions(collection):
    from types import SimpleNamespace

    from assistant.resources import Resources, _Names, _vocabulary_frame
    from assistant.vocab import Vocabulary
    from retrieval.flora import normalize_name, species_of

    table, frame = collection.table(), collection.specimens()
    state = SimpleNamespace(table=table, names=_Names(table))
    got = Resources.taxon_table(None, state)  # type: ignore[arg-type]
    want = _old_taxon_table(frame)
    assert got["name"].tolist() == want["name"].tolist() and got["genus"].tolist() == want["genus"].tolist()
    assert got["family"].tolist() == want["family"].tolist()
    assert [list(map(int, v)) for v in got["specimen_ids"]] == [list(map(int, v)) for v in want["specimen_ids"]]
    old, new = Vocabulary.from_table(frame), Vocabulary.from_table(_vocabulary_frame(table))
    for field in ("species_values", "genus_family", "families", "countries", "institutions"):
        assert getattr(new, field) == getattr(old, field), field
    assert dict(new.terms) == dict(old.terms)
    res = SimpleNamespace(_state=state)
    names = frame["scientificName"].fillna("").astype(str).map(normalize_name)
    for taxon in ("Rosa canina", "Rosa", "Rubus idaeus", "Poaceae", "Viola"):
        ids = Resources.taxon_ids(res, taxon)  # type: ignore[arg-type]
        if taxon.endswith("aceae"):
            expect = frame["family"].str.casefold() == taxon.casefold()
        elif " " in taxon:
            expect = (names == taxon) | (names.map(species_of) == taxon)
        else:
            expect = names.str.split(" ").str[0] == taxon
        assert ids == frame.loc[expect.to_numpy(), "specimen_id"].tolist() and ids, taxon


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), selective=st.sampled_from([0.0, 0.05, 1.0]), int_years=st.booleans(),
       picks=st.lists(st.sampled_from(range(len(FILTERS) + 5)), min_size=1, max_size=3, unique=True),
       wide_years=st.sampled_from([0.0, 0.2, 1.0]))
@example(seed=0, selective=1.0, int_years=True, picks=[len(FILTERS) + 3], wide_years=1.0).via("the year route's lower end")
@example(seed=1, selective=1.0, int_years=False, picks=[len(FILTERS) + 4, 0], wide_years=1.0).via("the year route's upper end")
@example(seed=2, selective=1.0, int_years=True, picks=[6, len(FILTERS)], wide_years=1.0).via("an open year range tested on a name's rows")
@example(seed=2, selective=1.0, int_years=False, picks=[6, len(FILTERS)], wide_years=1.0).via("the same with float years")
@example(seed=3, selective=1.0, int_years=True, picks=[len(FILTERS)], wide_years=0.0).via("a year range by one pass")
@example(seed=3, selective=1.0, int_years=False, picks=[len(FILTERS) + 3], wide_years=0.0).via("the same, float years")
def test_filters_from_postings_match_whole_column_masks(seed, selective, int_years, picks, wide_years, monkeypatch):
    """Issue 11: the most selective condition's rows come from postings (or sorted years, or one pass over the years
    for a wide range) and the others are tested on those rows; whatever route `SELECTIVE` and `WIDE_YEARS` pick, the
    ids are the whole-column masks' ids."""
    import retrieval.filters as filters_module

    monkeypatch.setattr(filters_module, "SELECTIVE", selective)
    monkeypatch.setattr(filters_module, "WIDE_YEARS", wide_years)
    frame = pd.DataFrame(_records(200, seed)).assign(specimen_id=np.random.default_rng(seed).permutation(200) * 3 + 7,
                                                     year=lambda f: pd.to_numeric(f["eventDate"].str[:4], errors="coerce"))
    if int_years:  # as a collection stores them (int64 with nulls); else floats with NaN
        frame["year"] = frame["year"].astype("Int64")
    table = SpecimenTable.from_pandas(frame)
    extra = [{"year": "1990-"}, {"country": "brazil", "genus": "Rosa"}, {"year": "1900-1950", "family": "rosaceae"},
             {"year": "1900"}, {"year": "-1851"}]  # single years: the range's ends are inclusive
    flt: dict = {}
    for pick in picks:
        flt.update((FILTERS + extra)[pick])
    parsed = parse_filters(flt)
    want = frame.loc[filter_mask(frame, parsed), "specimen_id"].sort_values().to_numpy()
    got = allowed_ids(table, parsed)
    assert got.tolist() == want.tolist(), flt
    assert allowed_ids(table, parsed) is got  # remembered: the same filters again cost nothing
    assert not got.flags.writeable


def test_remembered_filters_are_per_table_and_ignore_case_and_order():
    frame = pd.DataFrame(_records(60)).assign(specimen_id=range(60))
    first, second = SpecimenTable.from_pandas(frame), SpecimenTable.from_pandas(frame.assign(family="Poaceae"))
    ids = allowed_ids(first, parse_filters({"family": ["Rosaceae", "Poaceae"]}))
    assert allowed_ids(first, parse_filters({"family": ["poaceae", "ROSACEAE"]})) is ids
    assert len(allowed_ids(second, parse_filters({"family": ["Rosaceae", "Poaceae"]}))) == 60 != len(ids)


@pytest.mark.parametrize("years", ["Int64", "float64"])
def test_a_year_range_tested_on_another_conditions_rows_skips_missing_years(years, monkeypatch):
    import retrieval.filters as filters_module

    monkeypatch.setattr(filters_module, "SELECTIVE", 1.0)
    frame = pd.DataFrame({"specimen_id": range(10), "family": ["A"] * 3 + ["B"] * 7,
                          "year": pd.array([2001, None, 1999] + [2010] * 7, dtype=years)})
    table = SpecimenTable.from_pandas(frame)
    assert allowed_ids(table, parse_filters({"family": "a", "year": "2000-"})).tolist() == [0]
    assert allowed_ids(table, parse_filters({"family": "a", "year": "-2000"})).tolist() == [2]
    assert allowed_ids(table, parse_filters({"family": "b", "year": "2010"})).tolist() == list(range(3, 10))


@pytest.mark.parametrize("wanted", [(1980, 2000), (None, 1900), (1900, None), (None, None), (2000, 1980), (1999, 1999),
                                    (-40000, 40000), (1899.5, 1950.2), (-32768, -32768), (32766, 40000)])
def test_short_years_in_a_range_by_one_comparison_match_three(wanted):
    """Every 16-bit year against the plain comparisons: the shifted, unsigned test keeps exactly the years in the range
    and never the missing marker."""
    import retrieval.filters as filters_module
    from retrieval.collections import MISSING_NUMBER

    years = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    plain = filters_module._in_years(years.astype(np.int64), years != MISSING_NUMBER, wanted)
    np.testing.assert_array_equal(filters_module._in_short_years(years, wanted), plain)
