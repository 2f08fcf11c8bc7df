"""Retrieval-grounded trait captions: what the most similar specimens' taxa say, and how strongly they agree.

Needs no training and works with any encoder: the caption is assembled from the
traits of the neighbours' taxa (from the collection's flora descriptions), so it
never states a trait no neighbour carries, and it says how many neighbours carry
each one ("Leaves opposite (7/8; alternate 1/8)"). A neighbour whose taxon
has no description still counts in the "of 8" but supports nothing. A count is stated
only when it is a plausible number of some organ: a catalog or collector number that an
older extraction stored as a "count" (or that a planted sentence put there) is not a trait.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from captioning.base import Encoded, Neighbour
from retrieval.vectors import ImageInput
from retrieval.errors import BadInput
from retrieval.flora import plausible_count

# Description order of organ groups (the vocabulary's coarse groups); other groups follow alphabetically.
GROUP_ORDER = ("plant", "root", "stem", "leaf", "inflorescence", "flower", "fruit", "seed")
# Characters whose value reads on its own ("leaves opposite", "5-lobed"); others read "margin toothed".
VALUE_ONLY = {"", "arrangement", "shape", "colour", "color", "habit", "type", "form", "life form", "duration",
              "position", "symmetry", "division", "insertion", "phyllotaxy", "presence", "growth form", "architecture",
              "general", "count", "number", "state", "fusion", "composition", "texture", "surface", "indumentum",
              "pubescence", "vestiture", "colour pattern", "orientation", "persistence", "sex"}

# Measured characters, read as flora do: '3-5 cm', '2 cm wide'.
SIZE_WORDS = {"length": "", "size": "", "width": "wide", "height": "tall", "diameter": "across", "thickness": "thick"}

# The order flora state a organ's characters in ('Leaves opposite, elliptic, 3-5 cm'); others follow by support.
FLORA_ORDER = {c: i for i, c in enumerate(("habit", "life form", "duration", "count", "arrangement", "phyllotaxy", "type",
                                            "composition", "division", "shape", "length", "size", "width", "height",
                                            "diameter", "colour", "color"))}


def _norm(text: Any) -> str:
    return " ".join(str(text or "").replace("_", " ").lower().split())


def clean_value(value: Any) -> str:
    return _norm(value).strip(" .,;:")


def trait_key(trait: dict[str, Any]) -> tuple[str, str, str, bool]:
    """What makes two trait statements the same: organ, character, canonical value, negation (modifiers ignored)."""
    terms = trait.get("terms") or []
    value = _norm(" ".join(sorted(terms))) if terms else clean_value(trait.get("value"))
    return _norm(trait.get("organ")), _norm(trait.get("character")), value, bool(trait.get("negated"))


def countable(trait: dict[str, Any]) -> bool:
    """False for a count that is no organ count: no organ ('plant'), or beyond what plants bear ('999999')."""
    character = _norm(trait.get("character"))
    if character != "count" and not character.endswith(" number"):
        return True
    numbers = [float(v) for v in (trait.get("min"), trait.get("max")) if isinstance(v, (int, float))] or \
        [float(n) for n in re.findall(r"\d+(?:\.\d+)?", str(trait.get("value") or ""))]
    organ = _norm(trait.get("organ")) if character == "count" else "organ"  # '5-flowered' needs no organ of its own
    return plausible_count(organ, min(numbers, default=None), max(numbers, default=None))


def _vocab() -> Any:
    try:
        from retrieval.flora import vocabulary

        return vocabulary()
    except (ImportError, OSError, ValueError):  # the captioner still works with raw organ names
        return None


def organ_group(organ: str) -> str:
    voc = _vocab()
    return voc.group(organ) if voc is not None and organ else (organ or "plant")


def group_label(group: str) -> str:
    return "Habit" if group == "plant" else organ_plural(group).capitalize()


def organ_plural(organ: str) -> str:
    voc = _vocab()
    label = voc.organ_label(organ, plural=True) if voc is not None else organ
    return label or organ


def neighbour_weights(scores: Sequence[float], *, temperature: float = 0.05) -> list[float]:
    """Softmax of similarities: closer neighbours count more, equal ones equally."""
    if not scores:
        return []
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


def _measure(trait: dict[str, Any]) -> tuple[float, float] | None:
    """A size in millimetres (lo, hi) when the trait is a measurement ('3-5 cm long')."""
    lo, hi = trait.get("min_mm"), trait.get("max_mm")
    if not isinstance(lo, (int, float)) and not isinstance(hi, (int, float)):
        return None
    lo = float(lo if isinstance(lo, (int, float)) else hi)
    hi = float(hi if isinstance(hi, (int, float)) else lo)
    return (min(lo, hi), max(lo, hi))


def format_size(lo_mm: float, hi_mm: float) -> str:
    """One unit for both ends, chosen by size: '2-4 mm', '3-5 cm', '1.5-2 m'."""
    unit, scale = ("mm", 1.0) if hi_mm < 10 else ("cm", 10.0) if hi_mm < 1000 else ("m", 1000.0)

    def num(v: float) -> str:
        return f"{v / scale:.1f}".rstrip("0").rstrip(".")
    lo, hi = num(lo_mm), num(hi_mm)
    return f"{lo} {unit}" if lo == hi else f"{lo}-{hi} {unit}"


def aggregate_traits(neighbours: Sequence[Neighbour], *, temperature: float = 0.05) -> list[dict[str, Any]]:
    """Every trait any neighbour carries, grouped by organ then character, with count and weighted support.

    Measurements of one organ and character are reconciled into one range (the median of the carriers' lower and
    upper ends, so that one outlying description cannot stretch it); implied traits ('petiole present' read from
    'long-petiolate') are left to the phrase that implies them."""
    weights = neighbour_weights([float(nb.get("score", 0.0)) for nb in neighbours], temperature=temperature)
    carriers: dict[tuple[str, str, str, bool], list[int]] = defaultdict(list)
    shown: dict[tuple[str, str, str, bool], str] = {}
    sizes: dict[tuple[str, str, str, bool], dict[int, tuple[float, float]]] = defaultdict(dict)
    for i, nb in enumerate(neighbours):
        keys = set()
        for t in nb.get("traits") or []:
            if t.get("implied"):
                continue
            key = trait_key(t)
            size = _measure(t)
            if size is not None:
                key = (key[0], key[1], "", key[3])
                sizes[key].setdefault(i, size)  # a taxon giving two sizes of one organ counts once, its first
                continue
            if key[2] and key not in keys and countable(t):  # a taxon stating a trait twice supports it once
                keys.add(key)
                carriers[key].append(i)
                shown.setdefault(key, clean_value(t.get("value")) or key[2])
    for key, by_neighbour in sizes.items():
        idx = sorted(by_neighbour)
        lo = statistics.median(by_neighbour[i][0] for i in idx)
        hi = statistics.median(by_neighbour[i][1] for i in idx)
        size_key = (key[0], key[1], format_size(lo, max(lo, hi)), key[3])
        carriers[size_key] = idx
        shown[size_key] = size_key[2]
    by_organ: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for key, idx in carriers.items():
        organ, character, value, negated = key
        by_organ[organ][character].append({
            "character": character, "value": shown[key], "negated": negated, "count": len(idx), "of": len(neighbours),
            "support": round(sum(weights[i] for i in idx), 4), "specimens": [neighbours[i].get("specimen_id") for i in idx],
        })
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    organs = []
    for organ in by_organ:
        characters = []
        for values in by_organ[organ].values():
            values.sort(key=lambda v: (-v["support"], -v["count"], v["value"]))
            characters.append(values)
        characters.sort(key=lambda vs: (-vs[0]["support"], vs[0]["character"]))
        group = organ_group(organ)
        organs.append({"organ": organ, "group": group, "label": organ_plural(organ),
                       "traits": [v for vs in characters for v in vs]})
    organs.sort(key=lambda o: (order.get(o["group"], len(order)), o["group"], o["organ"] != o["group"], o["organ"]))
    return organs


def candidate_taxa(neighbours: Sequence[Neighbour], *, temperature: float = 0.05) -> list[dict[str, Any]]:
    """The neighbours' taxa, most supported first."""
    weights = neighbour_weights([float(nb.get("score", 0.0)) for nb in neighbours], temperature=temperature)
    taxa: dict[str, dict[str, Any]] = {}
    for nb, w in zip(neighbours, weights):
        name = nb.get("name") or nb.get("scientificName") or ""
        if not name:
            continue
        entry = taxa.setdefault(name, {"name": name, "family": nb.get("family") or "", "count": 0, "of": len(neighbours),
                                       "support": 0.0, "best_score": -1.0, "described": bool(nb.get("described"))})
        entry["count"] += 1
        entry["support"] = round(entry["support"] + w, 4)
        entry["best_score"] = round(max(entry["best_score"], float(nb.get("score", 0.0))), 4)
    return sorted(taxa.values(), key=lambda t: (-t["support"], -t["count"], t["name"]))


def _phrase(trait: dict[str, Any]) -> str:
    """'opposite', 'margin serrate', 'not hairy'; never 'dehiscence dehiscing' (a value that names its character)."""
    value = ("not " if trait["negated"] else "") + trait["value"]
    character = trait["character"]
    if character in SIZE_WORDS:
        return f"{value} {SIZE_WORDS[character]}".strip()
    if character in VALUE_ONLY or character.endswith(" number") or (len(character) >= 4 and character[:4] in trait["value"]):
        return value
    return f"{character} {value}"


def select_traits(organs: list[dict[str, Any]], *, min_support: float = 0.25, min_count: int = 1,
                  max_values: int = 2) -> list[dict[str, Any]]:
    """Per character, the values enough neighbours agree on (at most `max_values`, best first)."""
    kept = []
    for organ in organs:
        per_character: dict[str, int] = defaultdict(int)
        traits = []
        for t in organ["traits"]:
            if t["support"] >= min_support and t["count"] >= min_count and per_character[t["character"]] < max_values:
                per_character[t["character"]] += 1
                traits.append(t)
        if traits:
            kept.append({**organ, "traits": traits})
    return kept


def organ_lines(organs: list[dict[str, Any]], n_neighbours: int) -> list[str]:
    """One flora-style line per organ group: 'Leaves opposite (7/8; alternate 1/8), elliptic (5/8); margin serrate
    (7/8).' Per character the best-supported value leads, with the others that passed selection after it."""
    groups: dict[str, list[str]] = {}
    for organ in organs:
        by_character: dict[str, list[dict[str, Any]]] = {}
        for t in organ["traits"]:
            by_character.setdefault(t["character"], []).append(t)
        plain, qualified = [], []
        for values in sorted(by_character.values(), key=lambda vs: FLORA_ORDER.get(vs[0]["character"], len(FLORA_ORDER))):
            lead, others = values[0], values[1:]
            support = f"{lead['count']}/{n_neighbours}" + "".join(
                f"; {_phrase({**o, 'character': ''})} {o['count']}/{n_neighbours}" for o in others)
            text = f"{_phrase(lead)} ({support})"
            (plain if not text.startswith(lead["character"] + " ") else qualified).append(text)
        phrases = ", ".join(plain)
        if qualified:
            phrases = "; ".join(([phrases] if phrases else []) + qualified)
        if organ["organ"] != organ["group"]:
            phrases = f"{organ['label']} {phrases}"
        groups.setdefault(organ["group"], []).append(phrases)
    return [f"{group_label(group)} {'; '.join(parts)}." for group, parts in groups.items()]


def describe(organs: list[dict[str, Any]], taxa: list[dict[str, Any]], n_neighbours: int, *,
             max_taxa: int = 3) -> str:
    """The organ lines, then the candidate taxa by neighbour votes; lines joined by newlines."""
    lines = organ_lines(organs, n_neighbours)
    if lines:
        lines.insert(0, f"From the {n_neighbours} most similar specimens (n/{n_neighbours}: how many share a trait):")
    else:
        described = any(t["described"] for t in taxa)
        lines.append(f"No trait is shared by enough of the {n_neighbours} similar specimens"
                     + ("" if described else " (none of their taxa has a description in this collection)") + ".")
    if taxa:
        names = [f"{t['name']} ({t['count']}/{n_neighbours})" for t in taxa[:max_taxa]]
        lines.append("Candidate taxa: " + "; ".join(names) + ".")
    return "\n".join(lines)


def support_for(traits: Sequence[dict[str, Any]], neighbours: Sequence[Neighbour]) -> list[dict[str, Any]]:
    """How many neighbours carry each of `traits` (e.g. those read back from a neural caption)."""
    carried = [{trait_key(t) for t in nb.get("traits") or []} for nb in neighbours]
    out = []
    seen = set()
    for t in traits:
        key = trait_key(t)
        if key in seen or not key[2]:
            continue
        seen.add(key)
        count = sum(1 for keys in carried if key in keys)
        out.append({"organ": key[0], "character": key[1], "value": key[2], "negated": key[3],
                    "count": count, "of": len(neighbours)})
    return out


class TraitCaptioner:
    """The retrieval-grounded captioner: a pure function of the neighbours and their taxa's traits."""

    name = "grounded"
    kind = "grounded"
    encoder_name: str | None = None  # any encoder: it reuses whatever pass found the neighbours

    def __init__(self, *, min_support: float = 0.25, min_count: int = 1, max_values: int = 2,
                 temperature: float = 0.05, max_taxa: int = 3) -> None:
        if not 0 <= min_support <= 1 or min_count < 1 or max_values < 1 or temperature <= 0:
            raise BadInput("need 0 <= min_support <= 1, min_count >= 1, max_values >= 1, temperature > 0")
        self.min_support, self.min_count, self.max_values = min_support, min_count, max_values
        self.temperature, self.max_taxa = temperature, max_taxa

    def caption_one(self, neighbours: Sequence[Neighbour]) -> dict[str, Any]:
        organs = aggregate_traits(neighbours, temperature=self.temperature)
        chosen = select_traits(organs, min_support=self.min_support, min_count=self.min_count,
                               max_values=self.max_values)
        taxa = candidate_taxa(neighbours, temperature=self.temperature)
        return {"text": describe(chosen, taxa, len(neighbours), max_taxa=self.max_taxa), "organs": chosen,
                "lines": organ_lines(chosen, len(neighbours)),
                "taxa": taxa, "described_neighbours": sum(1 for nb in neighbours if nb.get("described"))}

    def caption(self, images: Sequence[ImageInput] = (), *, encoded: Encoded | None = None,
                neighbours: Sequence[Sequence[Neighbour]] | None = None, **_: Any) -> list[dict[str, Any]]:
        if neighbours is None:
            raise BadInput("the grounded captioner needs the image's neighbours: caption through a collection with an index")
        return [self.caption_one(nbs) for nbs in neighbours]
