"""Name reconciliation: which description speaks about which specimens, and how we know.

A flora and a herbarium rarely spell a taxon alike: the flora may use an older name
(*Hepatica nobilis* for *Anemone hepatica*), the label may be misspelled ("Geranium
maculata"), identified only to a variety the flora does not treat, or only to genus.
Normalised names (names.py) are the key; this module adds the synonyms the sources
themselves publish (TaxonDescription.synonyms), GBIF backbone matches stored on the
record at `descriptions add` time (TaxonDescription.name_matches, so linking stays
offline and deterministic), fuzzy epithets within a genus, and genus-level fallbacks.
Every link says how it was made, so an answer can say "described as *Hepatica nobilis*".

Ranks and hybrids stay distinct: "Mentha × piperita" never links to "Mentha piperita",
and a description of one variety never reaches the specimens of another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher
from typing import Any

from retrieval.flora.names import normalize_name, species_of

# How a specimen name was linked to a description, most trusted first.
LINK_KINDS = ("exact", "synonym", "gbif", "species", "fuzzy", "genus")
FUZZY_MIN_RATIO = 0.8  # "maculata" vs "maculatum" is 0.82; "canadensis" vs "acutiloba" far below


def genus_of(name: str) -> str:
    parts = name.split(" ")
    return " ".join(parts[:2]) if parts and parts[0] == "×" else (parts[0] if parts else "")


def _epithet_part(name: str) -> str:
    """Everything after the genus ('maculatum', '× piperita', 'calamus var. angustifolius')."""
    genus = genus_of(name)
    return name[len(genus):].strip()


def _shape(rest: str) -> tuple[str, ...]:
    """The non-epithet words (hybrid sign, rank markers): names of different shape never fuzzy-match."""
    return tuple(w for w in rest.split(" ") if w == "×" or w.endswith("."))


def name_tables(records: Sequence[Any]) -> dict[str, Any]:
    """The name tables built from the records: described names, synonyms, GBIF matches, genera."""
    described: dict[str, str] = {}  # normalised name -> record name
    synonyms: dict[str, tuple[str, str]] = {}  # normalised synonym -> (record name, the synonym as printed)
    matches: dict[str, tuple[str, dict[str, Any]]] = {}  # specimen name -> (record name, GBIF match)
    for record in records:
        if record.name:
            described.setdefault(record.name, record.name)
    for record in records:
        for synonym in getattr(record, "synonyms", None) or []:
            key = normalize_name(synonym)
            if key and key not in described:
                synonyms.setdefault(key, (record.name, synonym))
        for name, match in (getattr(record, "name_matches", None) or {}).items():
            key = normalize_name(name) or name
            matches.setdefault(key, (record.name, match))
    by_genus: dict[str, list[str]] = defaultdict(list)
    for name in sorted(described):
        if " " in name.replace("× ", "×"):
            by_genus[genus_of(name)].append(name)
    genera = {r.name for r in records if r.name and (getattr(r, "rank", "") == "genus" or " " not in r.name)}
    return {"described": described, "synonyms": synonyms, "matches": matches, "by_genus": by_genus, "genera": genera}


def _fuzzy(key: str, by_genus: dict[str, list[str]]) -> tuple[str, float] | None:
    """The one described name of the same genus and shape whose epithets are closest, if close enough."""
    rest = _epithet_part(key)
    if not rest:
        return None
    best: list[tuple[float, str]] = []
    words = rest.split(" ")
    for name in by_genus.get(genus_of(key), []):
        other = _epithet_part(name).split(" ")
        if len(other) != len(words) or _shape(" ".join(other)) != _shape(rest):
            continue
        # every epithet close on its own: a variety never fuzzy-matches another variety of the species
        ratios = [SequenceMatcher(None, a, b).ratio() for a, b in zip(words, other) if a != "×" and not a.endswith(".")]
        if ratios and min(ratios) >= FUZZY_MIN_RATIO:
            best.append((sum(ratios) / len(ratios), name))
    if not best:
        return None
    best.sort(key=lambda item: (-item[0], item[1]))
    if len(best) > 1 and best[1][0] == best[0][0]:
        return None  # two equally close names: ambiguous, no guess
    return best[0][1], best[0][0]


def resolve(key: str, tables: dict[str, Any]) -> dict[str, Any] | None:
    """How the normalised specimen name `key` links to a description: {name, kind, via, ...} or None."""
    described, synonyms = tables["described"], tables["synonyms"]
    if key in described:
        return {"name": key, "kind": "exact"}
    if key in synonyms:
        name, printed = synonyms[key]
        return {"name": name, "kind": "synonym", "via": printed}
    if key in tables["matches"]:
        name, match = tables["matches"][key]
        return {"name": name, "kind": "gbif", "via": match.get("acceptedName") or name,
                "matchType": match.get("matchType"), "confidence": match.get("confidence")}
    species = species_of(key)
    if species != key:  # an infraspecific name whose own rank is not described: its species is
        found = resolve(species, {**tables, "genera": set()})
        if found is not None and found["kind"] != "fuzzy":
            return {**found, "kind": "species" if found["kind"] == "exact" else found["kind"],
                    "via": found.get("via") or species}
    fuzzy = _fuzzy(key, tables["by_genus"])
    if fuzzy is not None:
        return {"name": fuzzy[0], "kind": "fuzzy", "via": key, "ratio": round(fuzzy[1], 3)}
    genus = genus_of(key)
    if genus != key and genus in tables["genera"]:
        return {"name": genus, "kind": "genus"}
    return None


def link_specimens(records: Sequence[Any], specimens: Iterable[tuple[int, str]]) -> tuple[dict[str, list[int]], dict[str, list[dict[str, Any]]]]:
    """(record name -> specimen ids, record name -> how each specimen name was linked).

    `specimens` yields (specimen id, scientific name as labelled). Each entry of the second
    dict: {specimen_name, kind, via?, specimens (count), matchType/confidence (gbif), ratio (fuzzy)}."""
    by_name: dict[str, list[int]] = defaultdict(list)
    for sid, name in specimens:
        key = normalize_name(name) if isinstance(name, str) else ""
        if key:
            by_name[key].append(int(sid))
    tables = name_tables(records)
    links: dict[str, set[int]] = defaultdict(set)
    how: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key in sorted(by_name):
        found = resolve(key, tables)
        if found is None:
            continue
        ids = by_name[key]
        links[found["name"]].update(ids)
        how[found["name"]].append({"specimen_name": key, **{k: v for k, v in found.items() if k != "name" and v is not None},
                                   "specimens": len(ids)})
    return {k: sorted(v) for k, v in links.items()}, dict(how)


def link_counts(how: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Per link kind: how many specimen names (taxa) and specimens were linked that way."""
    counts = {kind: {"taxa": 0, "specimens": 0} for kind in LINK_KINDS}
    for entries in how.values():
        for entry in entries:
            counts[entry["kind"]]["taxa"] += 1
            counts[entry["kind"]]["specimens"] += entry["specimens"]
    return counts


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The described names closest to an unlinked one (same genus first), for coverage reports."""
    key = normalize_name(name) or name
    scored = sorted(((genus_of(c) != genus_of(key), -SequenceMatcher(None, key, c).ratio(), c) for c in set(candidates)))
    return [c for _, ratio, c in scored[:n] if -ratio >= 0.5]
