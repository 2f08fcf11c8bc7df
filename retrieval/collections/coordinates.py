"""Coordinates you can trust: flags for the georeferencing errors herbarium records are known for.

A specimen keeps its coordinates as recorded; these flags only decide whether they
may feed a location model, a range map or a count. The checks are the common ones
(CoordinateCleaner's): (0,0), latitude and longitude swapped or a sign lost (the
point falls in the stated country once corrected), a point outside the stated
country, and low precision (at most one decimal in both, or a stated
coordinateUncertaintyInMeters above a threshold).

Country outlines are Natural Earth's 1:110m polygons as shipped by the `countryinfo`
package (its data/*.json `geoJSON`, from johan/world.geo.json), read offline. They are
coarse, so a point counts as inside when it lies within `tolerance_km` of the outline;
a country the package has no polygon for (small islands, a few others) is not checked.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0
TOLERANCE_KM = 25.0          # coarse outlines: coasts and borders move by up to tens of km at 1:110m
MAX_UNCERTAINTY_M = 10_000.0  # coarser than ~10 km is too vague to place a plant in its habitat
FLAGS = ("zero", "swapped", "sign_inverted", "outside_country", "low_precision")


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance in km; broadcasts like numpy."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2, dtype=float) - np.asarray(lon1, dtype=float))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass(frozen=True)
class CountryShape:
    """One country's outline: rings of (lon, lat) vertices (outer rings and holes alike) and their box."""

    name: str
    iso3: str
    rings: tuple[np.ndarray, ...]
    bbox: tuple[float, float, float, float]  # west, south, east, north

    def contains(self, lat: Any, lon: Any, *, tolerance_km: float = TOLERANCE_KM) -> np.ndarray:
        """True where a point is inside the outline or within `tolerance_km` of it."""
        lat, lon = np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float))
        margin = tolerance_km / KM_PER_DEGREE
        west, south, east, north = self.bbox
        slack = margin / max(math.cos(math.radians(max(abs(south), abs(north)))), 0.05)
        near = (lat >= south - margin) & (lat <= north + margin) & (lon >= west - slack) & (lon <= east + slack)
        out = np.zeros(len(lat), dtype=bool)
        if not near.any():
            return out
        idx = np.flatnonzero(near)
        inside = _inside_rings(self.rings, lat[idx], lon[idx])
        if tolerance_km > 0 and not inside.all():
            rest = idx[~inside]
            inside[~inside] = _distance_to_rings_km(self.rings, lat[rest], lon[rest]) <= tolerance_km
        out[idx] = inside
        return out


def _inside_rings(rings: Iterable[np.ndarray], lat: np.ndarray, lon: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Even-odd rule over every ring, so holes count as outside."""
    inside = np.zeros(len(lat), dtype=bool)
    for ring in rings:
        x1, y1, x2, y2 = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
        dy = np.where(y2 == y1, 1.0, y2 - y1)
        for s in range(0, len(lat), chunk):
            py, px = lat[s:s + chunk, None], lon[s:s + chunk, None]
            crosses = ((y1 > py) != (y2 > py)) & (px < x1 + (py - y1) * (x2 - x1) / dy)
            inside[s:s + chunk] ^= (crosses.sum(axis=1) % 2).astype(bool)
    return inside


def _distance_to_rings_km(rings: Iterable[np.ndarray], lat: np.ndarray, lon: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Distance to the nearest outline edge, on a local equirectangular plane per point (fine at tens of km)."""
    best = np.full(len(lat), np.inf)
    for ring in rings:
        ax, ay, bx, by = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
        for s in range(0, len(lat), chunk):
            py, px = lat[s:s + chunk, None], lon[s:s + chunk, None]
            k = np.cos(np.radians(py))
            ux, uy, vx, vy = (bx - ax) * k, by - ay, (px - ax) * k, py - ay
            t = np.clip((ux * vx + uy * vy) / np.maximum(ux * ux + uy * uy, 1e-12), 0.0, 1.0)
            d = np.hypot(vx - t * ux, vy - t * uy).min(axis=1) * KM_PER_DEGREE
            best[s:s + chunk] = np.minimum(best[s:s + chunk], d)
    return best


def _key(name: str) -> str:
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode().casefold()
    return " ".join(text.replace(".", " ").replace("-", " ").split())


@cache
def country_shapes() -> dict[str, CountryShape]:
    """Every outline countryinfo ships, by lookup key (name, ISO codes, alternative spellings, translations)."""
    try:
        folder = resources.files("countryinfo") / "data"
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("country outlines need the countryinfo package: pip install countryinfo") from err
    by_key: dict[str, CountryShape] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text(encoding="utf-8"))
        rings = []
        for feature in (data.get("geoJSON") or {}).get("features", []):
            geometry = feature.get("geometry") or {}
            polygons = [geometry["coordinates"]] if geometry.get("type") == "Polygon" else geometry.get("coordinates", [])
            rings += [np.asarray(ring, dtype=float) for polygon in polygons for ring in polygon if len(ring) >= 4]
        if not rings:
            continue
        stacked = np.concatenate(rings)
        iso = data.get("ISO") or {}
        shape = CountryShape(data["name"], iso.get("alpha3", ""), tuple(rings),
                             (float(stacked[:, 0].min()), float(stacked[:, 1].min()),
                              float(stacked[:, 0].max()), float(stacked[:, 1].max())))
        names = [data["name"], data.get("nativeName") or "", *data.get("altSpellings", []),
                 *(data.get("translations") or {}).values(), iso.get("alpha2", ""), iso.get("alpha3", "")]
        for name in names:
            if name:
                by_key.setdefault(_key(name), shape)
    return by_key


def find_country(name: str | None) -> CountryShape | None:
    """The outline for a country name or ISO code ('Brazil', 'Brasil', 'BR', 'BRA'), None when unknown."""
    if not name or not str(name).strip():
        return None
    shapes = country_shapes()
    key = _key(name)
    if key in shapes:
        return shapes[key]
    if "," in key:  # ISO style "Congo, Democratic Republic of the" -> "Democratic Republic of the Congo"
        head, _, tail = key.partition(",")
        return shapes.get(_key(f"{tail} {head}"))
    return None


def _decimals_at_most(values: np.ndarray, places: int) -> np.ndarray:
    scaled = values * 10 ** places
    return np.isclose(scaled, np.round(scaled), rtol=0.0, atol=1e-6)


def _uncertainty(table: pd.DataFrame) -> np.ndarray:
    """coordinateUncertaintyInMeters from its own column, or from the `verbatim` JSON the readers keep."""
    if "coordinateUncertaintyInMeters" in table.columns:
        return pd.to_numeric(table["coordinateUncertaintyInMeters"], errors="coerce").to_numpy(float)
    out = np.full(len(table), np.nan)
    if "verbatim" not in table.columns:
        return out
    text = table["verbatim"].fillna("").astype(str)
    for i in np.flatnonzero(text.str.contains("coordinateUncertaintyInMeters", regex=False).to_numpy()):
        try:
            out[i] = float(json.loads(text.iloc[i]).get("coordinateUncertaintyInMeters"))
        except (ValueError, TypeError, AttributeError):
            pass
    return out


def _as_table(records: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    table = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    for column in ("decimalLatitude", "decimalLongitude", "country"):
        if column not in table.columns:
            table = table.assign(**{column: None})
    return table


def flag_records(records: pd.DataFrame | Iterable[Mapping[str, Any]], *, tolerance_km: float = TOLERANCE_KM,
                 max_uncertainty_m: float = MAX_UNCERTAINTY_M) -> pd.DataFrame:
    """Per record: `has_coordinates`, `flags` (a tuple of FLAGS names), `usable` (coordinates and no flag),
    `country_checked` (the stated country had an outline to test against). Same index as the input."""
    table = _as_table(records)
    lat = pd.to_numeric(table["decimalLatitude"], errors="coerce").to_numpy(float)
    lon = pd.to_numeric(table["decimalLongitude"], errors="coerce").to_numpy(float)
    has = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    flags: list[list[str]] = [[] for _ in range(len(table))]
    zero = has & (lat == 0) & (lon == 0)
    coarse = has & _decimals_at_most(np.nan_to_num(lat), 1) & _decimals_at_most(np.nan_to_num(lon), 1)
    uncertainty = _uncertainty(table)
    coarse |= has & (np.nan_to_num(uncertainty, nan=0.0) > max_uncertainty_m)
    checked = np.zeros(len(table), dtype=bool)
    countries = table["country"].fillna("").astype(str).to_numpy()
    for name in pd.unique(countries[has & ~zero]):
        shape = find_country(name)
        if shape is None:
            continue
        rows = np.flatnonzero(has & ~zero & (countries == name))
        checked[rows] = True
        outside = rows[~shape.contains(lat[rows], lon[rows], tolerance_km=tolerance_km)]
        if not len(outside):
            continue
        y, x = lat[outside], lon[outside]
        swapped = (np.abs(x) <= 90) & shape.contains(x, y, tolerance_km=tolerance_km)
        inverted = np.zeros(len(outside), dtype=bool)
        for sy, sx in ((-1, 1), (1, -1), (-1, -1)):  # swap and sign together: too loose to call either
            inverted |= shape.contains(sy * y, sx * x, tolerance_km=tolerance_km)
        for row, is_swapped, is_inverted in zip(outside, swapped, inverted & ~swapped):
            flags[row].append("swapped" if is_swapped else "sign_inverted" if is_inverted else "outside_country")
    for row in np.flatnonzero(zero):
        flags[row].append("zero")
    for row in np.flatnonzero(coarse & ~zero):
        flags[row].append("low_precision")
    result = pd.DataFrame({"has_coordinates": has, "flags": [tuple(f) for f in flags], "country_checked": checked},
                          index=table.index)
    result["usable"] = has & np.array([not f for f in flags], dtype=bool)
    return result


def coordinate_flags(lat: float | None, lon: float | None, *, country: str | None = None,
                     uncertainty_m: float | None = None, tolerance_km: float = TOLERANCE_KM) -> list[str]:
    """The flags of one point (empty: usable, or no coordinates at all)."""
    record = {"decimalLatitude": lat, "decimalLongitude": lon, "country": country,
              "coordinateUncertaintyInMeters": uncertainty_m}
    return list(flag_records([record], tolerance_km=tolerance_km)["flags"].iloc[0])


def usable_coordinates(records: pd.DataFrame | Iterable[Mapping[str, Any]], **options: Any) -> np.ndarray:
    """Boolean mask: records whose coordinates may feed training, maps and counts."""
    return flag_records(records, **options)["usable"].to_numpy()


def coordinate_summary(records: pd.DataFrame | Iterable[Mapping[str, Any]], **options: Any) -> dict[str, Any]:
    """Counts for the ingest summary: with coordinates, usable, each flag, and how many had a country to check."""
    flagged = flag_records(records, **options)
    counts = Counter(flag for flags in flagged["flags"] for flag in flags)
    return {"records": int(len(flagged)), "with_coordinates": int(flagged["has_coordinates"].sum()),
            "usable": int(flagged["usable"].sum()), "flagged": {flag: int(counts.get(flag, 0)) for flag in FLAGS},
            "country_checked": int(flagged["country_checked"].sum()),
            "country_outlines": "Natural Earth 1:110m via the countryinfo package"}
