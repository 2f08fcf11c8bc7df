"""Metadata filters: parsing and the allowed-id mask."""

from __future__ import annotations

import pandas as pd
import pytest

from retrieval.errors import BadInput
from retrieval.filters import allowed_ids, filter_mask, parse_filters, parse_year_range

TABLE = pd.DataFrame({
    "specimen_id": [1, 2, 3, 4],
    "family": ["Rosaceae", "rubiaceae", "Rosaceae", None],
    "country": ["Gabon", "France", "France", "Gabon"],
    "institutionCode": ["P", "P", "GH", "GH"],
    "scientificName": ["Rosa canina", "Coffea arabica", "Rubus idaeus", "Iris sp."],
    "year": pd.array([1890, 1950, None, 2001], dtype="Int64"),
})


def test_year_ranges():
    assert parse_year_range("1900-1950") == (1900, 1950)
    assert parse_year_range("1900-") == (1900, None)
    assert parse_year_range("-1950") == (None, 1950)
    assert parse_year_range("1923") == (1923, 1923)
    for bad in ("abc", "1950-1900", "-"):
        with pytest.raises(BadInput):
            parse_year_range(bad)


def test_filters_combine_and_ignore_case():
    f = parse_filters(["family=rosaceae,Rubiaceae", "country=France"])
    assert list(allowed_ids(TABLE, f)) == [2, 3]
    assert list(allowed_ids(TABLE, parse_filters({"institution": "GH", "year": "1990-2010"}))) == [4]
    assert allowed_ids(TABLE, {}) is None
    assert not filter_mask(TABLE, parse_filters(["year=1800-1850"])).any()


def test_bad_filters_are_bad_input():
    with pytest.raises(BadInput, match="field=value"):
        parse_filters(["familyRosaceae"])
    with pytest.raises(BadInput, match="cannot filter"):
        parse_filters(["colour=red"])


def test_text_filters_use_codes_computed_once_per_table(monkeypatch):
    """Issue 11: a filter compares dictionary codes; the string work happens once per loaded table."""
    import retrieval.filters as filters_module

    table = pd.DataFrame({"specimen_id": range(6), "family": ["Rosaceae", "rosaceae", None, "Poaceae", "ROSACEAE", ""]})
    calls = []
    real = filters_module.pd.factorize
    monkeypatch.setattr(filters_module.pd, "factorize", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        assert filter_mask(table, parse_filters(["family=Rosaceae"])).tolist() == [True, True, False, False, True, False]
    assert len(calls) == 1
    other = table.assign(family=["Poaceae"] * 6)  # another table object: its own codes, never the first one's
    assert filter_mask(other, parse_filters(["family=Rosaceae"])).tolist() == [False] * 6
    assert filter_mask(other, parse_filters(["family=poaceae,Rosaceae"])).all()
