"""Retrieval-grounded trait captions: what the most similar specimens' taxa say, and how strongly they agree.

Needs no training and works with any encoder: the caption is assembled from the
traits of the neighbours' taxa (from the collection's flora descriptions), so it
never states a trait no neighbour carries, and it says how many neighbours carry
each one ("leaves opposite (7 of 8 similar specimens)"). A neighbour whose taxon
has no description still counts in the "of 8" but supports nothing. A count is stated
only when it is a plausible number of some organ: a catalog or collector number that an
older extraction stored as a "count" (or that a planted sentence put there) is not a trait.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from captioning.base import Encoded, Neighbour
from retrieval.encoder import ImageInput
from retrieval.errors import BadInput
from retrieval.traits import plausible_count

# Description order of organ groups (the vocabulary's coarse groups); other groups follow alphabetically.
GROUP_ORDER = ("plant", "root", "stem", "leaf", "inflorescence", "flower", "fruit", "seed")
# Characters whose value reads on its own ("leaves opposite", "5-lobed"); others read "margin toothed".
VALUE_ONLY = {"", "arrangement", "shape", "colour", "color", "habit", "type", "form", "life form", "duration",
              "position", "symmetry", "division", "insertion", "phyllotaxy", "presence", "growth form", "architecture",
              "general", "count", "number", "state", "fusion", "composition", "texture", "surface", "indumentum",
              "pubescence", "vestiture", "colour pattern", "orientation", "persistence", "sex"}


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
        from retrieval.vocab import vocabulary

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


def aggregate_traits(neighbours: Sequence[Neighbour], *, temperature: float = 0.05) -> list[dict[str, Any]]:
    """Every trait any neighbour carries, grouped by organ then character, with count and weighted support."""
    weights = neighbour_weights([float(nb.get("score", 0.0)) for nb in neighbours], temperature=temperature)
    carriers: dict[tuple[str, str, str, bool], list[int]] = defaultdict(list)
    shown: dict[tuple[str, str, str, bool], str] = {}
    for i, nb in enumerate(neighbours):
        keys = set()
        for t in nb.get("traits") or []:
            key = trait_key(t)
            if key[2] and key not in keys and countable(t):  # a taxon stating a trait twice supports it once
                keys.add(key)
                carriers[key].append(i)
                shown.setdefault(key, clean_value(t.get("value")) or key[2])
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


def _phrase(trait: dict[str, Any], organ: dict[str, Any]) -> str:
    value = ("not " if trait["negated"] else "") + trait["value"]
    text = value if trait["character"] in VALUE_ONLY or trait["character"].endswith(" number") \
        else f"{trait['character']} {value}"
    return text if organ["organ"] == organ["group"] else f"{organ['label']} {text}"


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


def describe(organs: list[dict[str, Any]], taxa: list[dict[str, Any]], n_neighbours: int, *,
             max_taxa: int = 3) -> str:
    """'Leaves: opposite (7 of 8 similar specimens), margin toothed (5 of 8). ... Candidate taxa: ...'"""
    groups: dict[str, list[str]] = {}
    first = True
    for organ in organs:
        for t in organ["traits"]:
            agreement = f"{t['count']} of {n_neighbours} similar specimens" if first else f"{t['count']} of {n_neighbours}"
            first = False
            groups.setdefault(organ["group"], []).append(f"{_phrase(t, organ)} ({agreement})")
    sentences = [f"{group_label(group)}: {', '.join(phrases)}." for group, phrases in groups.items()]
    if not sentences:
        described = any(t["described"] for t in taxa)
        sentences.append(f"No trait is shared by enough of the {n_neighbours} similar specimens"
                         + ("" if described else " (none of their taxa has a description in this collection)") + ".")
    if taxa:
        names = [f"{t['name']} ({t['count']} of {n_neighbours})" for t in taxa[:max_taxa]]
        sentences.append("Candidate taxa: " + "; ".join(names) + ".")
    return " ".join(sentences)


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
                "taxa": taxa, "described_neighbours": sum(1 for nb in neighbours if nb.get("described"))}

    def caption(self, images: Sequence[ImageInput] = (), *, encoded: Encoded | None = None,
                neighbours: Sequence[Sequence[Neighbour]] | None = None, **_: Any) -> list[dict[str, Any]]:
        if neighbours is None:
            raise BadInput("the grounded captioner needs the image's neighbours: caption through a collection with an index")
        return [self.caption_one(nbs) for nbs in neighbours]
