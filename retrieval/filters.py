"""Metadata filters (family, genus, scientificName, country, institution, year range) and
geographic ones (a radius around a point, a bounding box).

They become the set of allowed specimen ids that FAISS checks *inside* its search,
so a filtered query returns the k best matching specimens, not the matching part
of an unfiltered short list. Geographic filters test the coordinates as recorded
(great-circle distance; a box whose west edge is east of its east edge crosses the
antimeridian); a record without coordinates never passes one.

Text columns are matched through dictionary codes computed once per loaded table (`pd.factorize` of the
case-folded values): a filter then compares small integer arrays instead of running string operations over
every row (at 1M specimens about 1 ms instead of about 0.2 s a column). Loaded tables are replaced whole,
never changed in place, which is what makes the per-table cache safe. A `SpecimenTable` (the serving table,
retrieval/collections/table.py) carries its codes from disk; a DataFrame (small and offline callers) gets them
at its first filter.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from retrieval.collections import FILTER_FIELDS, MISSING_NUMBER, RowIds, SpecimenTable, codes_mask, haversine_km
from retrieval.errors import BadInput

Filters = dict[str, list[str] | tuple[int | None, int | None] | tuple[float, ...]]
Table = pd.DataFrame | SpecimenTable

# Geographic filter names (aliases first) -> the normalised key; values are tuples of floats.
GEO_FILTERS = {"radius": "radius", "near": "radius", "bbox": "bbox", "box": "bbox"}

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
        if key in GEO_FILTERS:
            if value is not None and value != "" and value != []:
                out[GEO_FILTERS[key]] = parse_radius(value) if GEO_FILTERS[key] == "radius" else parse_bbox(value)
            continue
        if key not in FILTER_FIELDS:
            raise BadInput(f"cannot filter on {key!r}; use one of: {', '.join(sorted([*FILTER_FIELDS, 'radius', 'bbox']))}")
        column = FILTER_FIELDS[key]
        if value is None or value == "" or value == []:
            continue
        if column == "year":
            out["year"] = tuple(value) if isinstance(value, (tuple, list)) else parse_year_range(str(value))  # type: ignore[assignment]
        else:
            values = value if isinstance(value, (list, tuple)) else str(value).split(",")
            out[column] = [str(v).strip() for v in values if str(v).strip()]
    return out


def _numbers(value: object, names: tuple[str, ...], example: str) -> tuple[float, ...]:
    """Floats from 'a,b,c' (a trailing 'km' allowed), a sequence, or a dict keyed by `names`."""
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise BadInput(f"{'/'.join(names)} filter lacks {', '.join(missing)}; e.g. {example}")
        value = [value[n] for n in names]
    if isinstance(value, str):
        parts = value.replace("km", "").split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise BadInput(f"geographic filter {value!r} must look like {example}")
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise BadInput(f"geographic filter {value!r} must be {len(names)} numbers, e.g. {example}") from None
    if len(numbers) != len(names) or not all(np.isfinite(numbers)):
        raise BadInput(f"geographic filter {value!r} must be {len(names)} numbers ({', '.join(names)}), e.g. {example}")
    return numbers


def _check_lat_lon(lat: float, lon: float, what: str) -> None:
    if not -90 <= lat <= 90:
        raise BadInput(f"{what}: latitude {lat} is outside -90..90 (give latitude before longitude)")
    if not -180 <= lon <= 180:
        raise BadInput(f"{what}: longitude {lon} is outside -180..180")


def parse_radius(value: object) -> tuple[float, float, float]:
    """`"-12.97,-38.51,50km"` (latitude, longitude, kilometres) or a dict lat/lon/km -> (lat, lon, km)."""
    lat, lon, km = _numbers(value, ("lat", "lon", "km"), "radius=-12.97,-38.51,50km")
    _check_lat_lon(lat, lon, "radius filter")
    if km <= 0:
        raise BadInput(f"radius filter: the radius must be more than 0 km, not {km}")
    return lat, lon, km


def parse_bbox(value: object) -> tuple[float, float, float, float]:
    """`"west,south,east,north"` in degrees (GeoJSON order); west > east crosses the antimeridian."""
    west, south, east, north = _numbers(value, ("west", "south", "east", "north"), "bbox=-48,-25,-34,-2")
    _check_lat_lon(south, west, "bbox filter")
    _check_lat_lon(north, east, "bbox filter")
    if south > north:
        raise BadInput(f"bbox filter: south {south} is north of north {north} (order: west,south,east,north)")
    return west, south, east, north


def numbers(table: Table, column: str) -> np.ndarray:
    """A numeric column as float64, missing or unreadable values NaN."""
    if isinstance(table, SpecimenTable):
        return table.numbers(column)
    return pd.to_numeric(table[column], errors="coerce").astype("Float64").to_numpy(float, na_value=np.nan)


def geo_mask(table: Table, key: str, value: tuple[float, ...], rows: np.ndarray | None = None) -> np.ndarray:
    """Records (or those at `rows` alone) inside a radius or box; missing coordinates are outside."""
    if "decimalLatitude" not in table.columns or "decimalLongitude" not in table.columns:
        return np.zeros(len(table) if rows is None else len(rows), dtype=bool)
    lat, lon = numbers(table, "decimalLatitude"), numbers(table, "decimalLongitude")
    if rows is not None:
        lat, lon = lat[rows], lon[rows]
    known = np.isfinite(lat) & np.isfinite(lon)
    lat, lon = np.where(known, lat, 0.0), np.where(known, lon, 0.0)
    if key == "radius":
        clat, clon, km = value
        return known & (haversine_km(clat, clon, lat, lon) <= km)
    west, south, east, north = value
    in_lon = (lon >= west) & (lon <= east) if west <= east else (lon >= west) | (lon <= east)
    return known & (lat >= south) & (lat <= north) & in_lon


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise BadInput(f"filter {item!r} must look like field=value, e.g. family=Rosaceae")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


# id(table) -> (a weak reference to it, {column: (codes, case-folded values), ("filters",): recent filters' ids});
# entries leave with their table
_COLUMN_CODES: dict[int, tuple[weakref.ref, dict]] = {}
_MEMORY_LOCK = threading.Lock()
FILTER_MEMORY, FILTER_MEMORY_BYTES = 16, 64 << 20  # recent filters' ids kept per table, and their bytes
# A condition passing at most this share of rows is read from its postings (filter_rows). Measured at 5M (fresh,
# ids included): a 25% family 7.3 ms by whole-column masks, 1.7 from postings; 95% of rows 15.1 vs 8.0; family +
# country + years 2.5 vs 1.7: postings win at every share, so always (the masks stay for geographic filters alone).
SELECTIVE = 1.0
# A year range passing more than this share of rows is read by one pass over the year column instead of sorting its
# slice of the sorted years (5M, numpy 2.4: 20% of rows sort in 4.7 ms, the pass 4.3 ms; 32% 7.4 vs 4.3; 65% 18.8 vs 5.4).
WIDE_YEARS = 0.2


def _table_entry(table: Table) -> dict:
    key = id(table)
    with _MEMORY_LOCK:
        entry = _COLUMN_CODES.get(key)
        if entry is None or entry[0]() is not table:
            entry = (weakref.ref(table, lambda _, key=key: _COLUMN_CODES.pop(key, None)), {})
            _COLUMN_CODES[key] = entry
        return entry[1]


def column_codes(table: Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes per row, distinct case-folded values) of a text column, computed once per table object."""
    if isinstance(table, SpecimenTable):
        return table.codes(column)
    columns = _table_entry(table)
    if column not in columns:
        codes, values = pd.factorize(table[column].fillna("").astype(str).str.casefold(), use_na_sentinel=False)
        columns[column] = (np.asarray(codes), np.asarray(values, dtype=object))
    return columns[column]


def filter_mask(table: Table, filters: Filters) -> np.ndarray:
    """Boolean mask over the specimen table; string fields match case-insensitively."""
    mask = np.ones(len(table), dtype=bool)
    for column, wanted in filters.items():
        if column in ("radius", "bbox"):
            mask &= geo_mask(table, column, wanted)  # type: ignore[arg-type]
            continue
        if column not in table.columns:
            return np.zeros(len(table), dtype=bool)
        if column == "year":
            years = numbers(table, "year")
            mask &= _in_years(years, np.isfinite(years), wanted)
        else:
            codes, values = column_codes(table, column)
            mask &= codes_mask(codes, _lookup(values, wanted))
    return mask


def _in_years(years: np.ndarray, known: np.ndarray, wanted: object) -> np.ndarray:
    """Which `years` (`known`: not missing; a fresh array, returned narrowed) lie in a year range, ends inclusive."""
    lo, hi = wanted  # type: ignore[misc]
    if lo is not None:
        known &= years >= lo
    if hi is not None:
        known &= years <= hi
    return known


def _lookup(values: np.ndarray, wanted: object) -> np.ndarray:
    """One flag per distinct case-folded value: whether a text filter wants it."""
    folded = {str(v).casefold() for v in wanted}  # type: ignore[union-attr]
    return np.fromiter((v in folded for v in values), dtype=bool, count=len(values))


def allowed_contains(allowed: np.ndarray | RowIds, ids: Iterable[int]) -> np.ndarray:
    """Which of `ids` are among `allowed` (what allowed_ids returned), without a Python set of millions of ids."""
    wanted = np.fromiter(ids, dtype=np.int64) if not isinstance(ids, np.ndarray) else ids.astype(np.int64, copy=False)
    return allowed.contains(wanted) if isinstance(allowed, RowIds) else np.isin(wanted, allowed)


def allowed_ids(table: Table, filters: Filters) -> np.ndarray | RowIds | None:
    """Specimen ids passing the filters (sorted, read-only for a SpecimenTable; RowIds where its ids are one run:
    `np.asarray` gives them), or None when there is no filter.

    A SpecimenTable keeps the last FILTER_MEMORY filters' ids: a chat's follow-up questions under the same
    filters skip the work (the table never changes in place, so the ids stay right)."""
    if not filters:
        return None
    if not isinstance(table, SpecimenTable):
        return table.loc[filter_mask(table, filters), "specimen_id"].to_numpy(dtype=np.int64)
    memory = _table_entry(table).setdefault(("filters",), OrderedDict())
    key = _filter_key(filters)
    with _MEMORY_LOCK:
        if key in memory:
            memory.move_to_end(key)
            return memory[key]
    ids = table.id_set(filter_rows(table, filters))
    with _MEMORY_LOCK:
        memory[key] = ids
        while len(memory) > 1 and (len(memory) > FILTER_MEMORY or sum(a.nbytes for a in memory.values()) > FILTER_MEMORY_BYTES):
            memory.popitem(last=False)
    return ids


def _filter_key(filters: Filters) -> tuple:
    """One key for filters that select the same rows: text values case-folded and unordered."""
    def norm(column: str, value: object) -> tuple:
        if column in ("year", "radius", "bbox"):
            return tuple(value)  # type: ignore[arg-type]
        return tuple(sorted({str(v).casefold() for v in value}))  # type: ignore[union-attr]
    return tuple(sorted((column, norm(column, value)) for column, value in filters.items()))


def filter_rows(table: SpecimenTable, filters: Filters) -> np.ndarray:
    """Sorted row positions (id order) passing the filters.

    The condition passing the fewest rows, counted without a pass over the rows (a text value's postings, a year
    range in the sorted years), gives its rows as slices; the other conditions are tested on those rows alone. At
    5M a 4.8% family and a year range and a country: about 1 ms of gathers against 11 ms of whole-column masks
    and their row list. Whole-column masks when no condition passes at most SELECTIVE of the rows (a geographic
    filter alone)."""
    n = len(table)
    counts: dict[str, int] = {}
    for column, wanted in filters.items():
        if column in ("radius", "bbox"):
            continue
        if column not in table.columns:
            return np.zeros(0, np.int64)
        counts[column] = _count(table, column, wanted)
    if not counts or min(counts.values()) > SELECTIVE * n:
        return np.flatnonzero(filter_mask(table, filters))
    first, *others = sorted(filters, key=lambda c: (c not in counts, counts.get(c, 0)))  # fewest rows first
    rows = _rows(table, first, filters[first])
    for column in others:
        if len(rows):  # tested at numpy's own index type: gathers at int32 positions cost about twice as much
            rows = rows[np.flatnonzero(_test(table, column, filters[column], rows.astype(np.intp, copy=False)))]
    return rows


def _wanted_codes(table: SpecimenTable, column: str, wanted: object) -> np.ndarray:
    return np.flatnonzero(_lookup(table.codes(column)[1], wanted))


def _year_span(table: SpecimenTable, wanted: object) -> tuple[int, int]:
    """Positions of a year range in the table's sorted years (missing years sort last, outside every range)."""
    lo, hi = wanted  # type: ignore[misc]
    _, ordered = table.sorted_numbers("year")
    start = 0 if lo is None else int(np.searchsorted(ordered, lo, side="left"))
    end = int(np.searchsorted(ordered, np.inf if hi is None else hi, side="right"))
    return start, max(start, end)


def _count(table: SpecimenTable, column: str, wanted: object) -> int:
    if column == "year":
        start, end = _year_span(table, wanted)
        return end - start
    _, starts = table.postings(column)
    codes = _wanted_codes(table, column, wanted)
    return int((starts[codes + 1] - starts[codes]).sum())


def _rows(table: SpecimenTable, column: str, wanted: object) -> np.ndarray:
    """The rows of one condition, sorted, from its postings or sorted values."""
    if column == "year":
        order, _ = table.sorted_numbers("year")
        start, end = _year_span(table, wanted)
        if end - start > WIDE_YEARS * len(order):  # sorting that many rows costs more than one pass over the column
            return np.flatnonzero(_years_in(table, wanted))
        return np.sort(order[start:end])
    order, starts = table.postings(column)
    parts = [order[starts[c]:starts[c + 1]] for c in _wanted_codes(table, column, wanted)]
    if len(parts) == 1:
        return parts[0]  # a slice of the postings: no copy
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return np.sort(rows, kind="stable")  # sorted runs: merged, not sorted from scratch


def _test(table: SpecimenTable, column: str, wanted: object, rows: np.ndarray) -> np.ndarray:
    """Which of `rows` pass one condition (gathers at those rows only)."""
    if column in ("radius", "bbox"):
        return geo_mask(table, column, wanted, rows)  # type: ignore[arg-type]
    if column == "year":
        return _years_in(table, wanted, rows)
    codes, values = table.codes(column)
    return codes_mask(codes[rows], _lookup(values, wanted))


def _years_in(table: SpecimenTable, wanted: object, rows: np.ndarray | None = None) -> np.ndarray:
    """Which of `rows` (None: every row) have a year in the range; missing years never do."""
    whole = table.whole_numbers("year")  # 16-bit when every year is a whole number that fits
    if whole is not None:
        return _in_short_years(whole if rows is None else whole[rows], wanted)
    years = numbers(table, "year") if rows is None else numbers(table, "year")[rows]
    return _in_years(years, np.isfinite(years), wanted)


def _in_short_years(years: np.ndarray, wanted: object) -> np.ndarray:
    """`_in_years` for 16-bit years (missing: MISSING_NUMBER, the largest) in one subtraction and one comparison:
    shifted to start at the range's first year and read unsigned, the range is 0..its width and every other year
    (wrapped around) lies above. 5M years: 1.3 ms instead of 4.5 for three comparisons and a missing test."""
    lo, hi = wanted  # type: ignore[misc]
    short = np.iinfo(np.int16)
    lo = short.min if lo is None else max(int(np.ceil(lo)), short.min)
    hi = MISSING_NUMBER - 1 if hi is None else min(int(np.floor(hi)), MISSING_NUMBER - 1)
    if lo > hi:
        return np.zeros(len(years), dtype=bool)
    return (years - np.int16(lo)).view(np.uint16) <= np.uint16(hi - lo)
