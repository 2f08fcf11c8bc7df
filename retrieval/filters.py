"""Metadata filters (family, genus, scientificName, country, institution, year range).

They become the set of allowed specimen ids that FAISS checks *inside* its search,
so a filtered query returns the k best matching specimens, not the matching part
of an unfiltered short list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from retrieval.errors import BadInput
from retrieval.schema import FILTER_FIELDS

Filters = dict[str, list[str] | tuple[int | None, int | None]]

_YEAR = re.compile(r"^\s*(\d{3,4})?\s*(?:-|\.\.|–)\s*(\d{3,4})?\s*$|^\s*(\d{3,4})\s*$")


def parse_year_range(text: str) -> tuple[int | None, int | None]:
    """`1900-1950`, `1900-`, `-1950` or `1923`."""
    m = _YEAR.match(text)
    if not m:
        raise BadInput(f"year filter {text!r} is not a year or range like 1900-1950")
    if m.group(3):
        y = int(m.group(3))
        return y, y
    lo, hi = (int(g) if g else None for g in m.group(1, 2))
    if lo is None and hi is None:
        raise BadInput("year filter needs at least one year, e.g. 1900-1950")
    if lo is not None and hi is not None and lo > hi:
        raise BadInput(f"year range {text!r} ends before it starts")
    return lo, hi


def parse_filters(items: Iterable[str] | Mapping[str, object] | None) -> Filters:
    """`["family=Rosaceae,Rubiaceae", "year=1900-1950"]` or a dict to the normalised form."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else (_split(i) for i in items)
    out: Filters = {}
    for key, value in pairs:
        if key not in FILTER_FIELDS:
            raise BadInput(f"cannot filter on {key!r}; use one of: {', '.join(sorted(FILTER_FIELDS))}")
        column = FILTER_FIELDS[key]
        if value is None or value == "" or value == []:
            continue
        if column == "year":
            out["year"] = tuple(value) if isinstance(value, (tuple, list)) else parse_year_range(str(value))  # type: ignore[assignment]
        else:
            values = value if isinstance(value, (list, tuple)) else str(value).split(",")
            out[column] = [str(v).strip() for v in values if str(v).strip()]
    return out


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise BadInput(f"filter {item!r} must look like field=value, e.g. family=Rosaceae")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def filter_mask(table: pd.DataFrame, filters: Filters) -> np.ndarray:
    """Boolean mask over the specimen table; string fields match case-insensitively."""
    mask = np.ones(len(table), dtype=bool)
    for column, wanted in filters.items():
        if column not in table.columns:
            return np.zeros(len(table), dtype=bool)
        if column == "year":
            lo, hi = wanted  # type: ignore[misc]
            years = pd.to_numeric(table["year"], errors="coerce")
            ok = years.notna().to_numpy().copy()
            if lo is not None:
                ok &= (years >= lo).fillna(False).to_numpy()
            if hi is not None:
                ok &= (years <= hi).fillna(False).to_numpy()
            mask &= ok
        else:
            values = {str(v).casefold() for v in wanted}  # type: ignore[union-attr]
            mask &= table[column].fillna("").astype(str).str.casefold().isin(values).to_numpy()
    return mask


def allowed_ids(table: pd.DataFrame, filters: Filters) -> np.ndarray | None:
    """Specimen ids passing the filters, or None when there is no filter."""
    if not filters:
        return None
    return table.loc[filter_mask(table, filters), "specimen_id"].to_numpy(dtype=np.int64)
