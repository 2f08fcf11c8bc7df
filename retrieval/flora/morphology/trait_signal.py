"""The structured signal: the query's traits matched against each taxon's extracted traits.

Why: it is the one signal that knows which organ a state belongs to and that "not hairy"
contradicts "tomentose"; a negative score marks a taxon that contradicts the query. A taxon's
traits are those read from its text plus, for sources that publish their own structure markup
(FNA), those the markup places on an organ the reader did not (`record_traits`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.flora.vocab import vocabulary

_HIGHER_RANKS = {"family", "subfamily", "tribe", "subtribe", "genus", "subgenus", "section", "subsection", "series"}
_MODIFIER_WEIGHT = {"rarely": 0.3, "occasionally": 0.5, "sometimes": 0.6, "often": 0.9, "usually": 0.95}


MARKUP_SOURCES = ("Flora of North America",)  # sources whose organ markup is the publisher's, not a benchmark's gold


def record_traits(record: Any) -> list[dict[str, Any]]:
    """A description's trait rows: those read from its text, plus those its own structure markup gives (FNA's
    organ headings and CharaParser's (structure, character, value) statements), which `TraitSignal` treats alike."""
    from retrieval.flora.traits import extract_traits, trait_table

    rows = trait_table(extract_traits(record.text, record.language))
    if getattr(record, "source", "") in MARKUP_SOURCES:
        rows += markup_traits(record, rows)
    return rows


def markup_traits(record: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trait rows from the treatment's own structure markup, where it places a state on another organ than the
    text reader did (or the reader missed it).

    - `record.characters`: CharaParser's [structure, character, value]; the value's vocabulary states become a row of
      that structure ('sorus', 'shape', 'round' -> sorus round), pointed at the value's first place in the text;
    - `record.markup`: the organ headings ('Sori  round, medial'): a state read inside a heading's section on an organ
      that is neither the heading's organ nor a part of it is also recorded on the heading's organ.
    Rows carry `"source": "markup"`; nothing is repeated that a text row already says of the same organ."""
    from retrieval.flora.traits import split_sentences, tokenize
    from retrieval.flora.vocab import fold

    voc = vocabulary()
    text = record.text
    sentences = split_sentences(text)
    have = {(r["organ"], tuple(r.get("terms", [])), bool(r.get("negated"))) for r in rows}
    out: list[dict[str, Any]] = []

    def sentence_of(start: int) -> list[int]:
        return next(([s, e] for s, e in sentences if s <= start < e), [start, start])

    def add(organ: str, row: dict[str, Any]) -> None:
        key = (organ, tuple(row.get("terms", [])), bool(row.get("negated")))
        if key in have:
            return
        have.add(key)
        out.append({**row, "organ": organ, "source": "markup"})

    for structure, character, value in getattr(record, "characters", None) or []:
        organ = voc.resolve_organ(structure.replace("_", " "), record.language or "en")
        if not organ:
            continue
        tokens = tokenize(value, 0, len(value), record.language or "en", False, voc)
        terms = [t.value for t in tokens if t.kind == "state"]
        if not terms:
            continue
        negated = any(t.kind == "negation" for t in tokens)
        first = next(t for t in tokens if t.kind == "state")
        at = fold(text).find(fold(first.text))
        span = [at, at + len(first.text)] if at >= 0 else [0, 0]
        add(organ, {"character": voc.character(terms[0]) or character, "quality": character, "value": value,
                    "terms": list(dict.fromkeys(terms)), "negated": negated, "modifier": "", "span": span,
                    "sentence_span": sentence_of(span[0])})
    sections = []
    for start, end, cls, parent in getattr(record, "markup", None) or []:
        organ = voc.resolve_organ(cls, record.language or "en") if not parent else None
        if organ:
            sections.append((start, end, organ))
    for row in rows:
        if not row.get("terms") or row.get("character") in ("type", "count") or "span" not in row:
            continue
        at = row["span"][0]
        inside = [sec for sec in sections if sec[0] <= at < sec[1]]
        if not inside:
            continue
        heading = min(inside, key=lambda sec: sec[1] - sec[0])[2]
        if row["organ"] == heading or heading in voc.ancestors(row["organ"]):
            continue
        add(heading, {k: v for k, v in row.items() if k != "organ"})
    return out


class TraitSignal:
    """Postings from vocabulary concepts (and their broader ones) to the taxon traits that name them."""

    def __init__(self, traits: list[list[dict[str, Any]]], ranks: Sequence[str]) -> None:
        voc = vocabulary()
        self.traits = traits
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._exact: dict[str, list[tuple[int, int]]] = defaultdict(list)  # the concept itself, not its members
        self._measures: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for t, table in enumerate(traits):
            for j, trait in enumerate(table):
                for term in trait.get("terms", []):
                    concept = voc.concept(term)
                    self._postings[concept].append((t, j))
                    self._exact[concept].append((t, j))
                    for broad in voc.broader(concept):
                        self._postings[broad].append((t, j))
                if "min_mm" in trait:
                    self._measures[trait["character"]].append((t, j))
        self._df = {c: len({t for t, _ in posts}) for c, posts in self._postings.items()}
        # descriptions of genera and families summarise their species ("leaves opposite or alternate"):
        # they match many queries weakly, so their trait scores count a little less than a species'
        self._rank_weight = np.array([0.8 if rank in _HIGHER_RANKS else 1.0 for rank in ranks], dtype=np.float32)

    def scores(self, qtraits: list[dict[str, Any]]) -> tuple[np.ndarray, dict[int, list[tuple[int, float]]]]:
        """Sum over query traits of the best matching (or contradicting) taxon trait; and per taxon
        the (trait index, score) pairs that made it."""
        voc = vocabulary()
        n = len(self.traits)
        total = np.zeros(n, dtype=np.float32)
        evidence: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for q in qtraits:
            qterms = [voc.concept(t) for t in q.get("terms", [])]
            per_taxon: dict[int, tuple[float, int]] = {}
            if qterms:
                candidates: set[tuple[int, int]] = set()
                for term in qterms:
                    candidates.update(self._postings.get(term, []))
                    for broad in voc.broader(term):  # "puberulent" asked, the flora says "hairy"
                        candidates.update(self._exact.get(broad, []))
                    for member in voc.members(term):
                        candidates.update(self._postings.get(member, []))
                    opposite = {a for c in {term} | voc.broader(term) for a in voc.states.get(c, {}).get("ant", [])}
                    for ant in sorted(opposite):  # "puberulent" contradicts "glabrous" through "hairy"'s opposite
                        candidates.update(self._postings.get(voc.concept(ant), []))
                        for member in voc.members(voc.concept(ant)):
                            candidates.update(self._postings.get(member, []))
                df = max((self._df.get(t, 0) for t in qterms), default=0)
                weight = math.log((n + 1) / (df + 1)) + 1.0
                for t, j in candidates:
                    trait = self.traits[t][j]
                    s = _match(q, trait, qterms) * weight
                    if s > 0:
                        s *= float(self._rank_weight[t])
                    if s == 0:
                        continue
                    old = per_taxon.get(t)
                    if old is None or (s > 0 and (old[0] <= 0 or s > old[0])) or (s < 0 and old[0] < 0 and s < old[0]):
                        per_taxon[t] = (s, j)
            elif "min_mm" in q:
                for t, j in self._measures.get(q["character"], []):
                    s = _match_measure(q, self.traits[t][j])
                    if s > 0 and s > per_taxon.get(t, (0.0, 0))[0]:
                        per_taxon[t] = (s, j)
            for t, (s, j) in per_taxon.items():
                total[t] += s
                evidence[t].append((j, s))
        return total, evidence


def _match(q: dict[str, Any], trait: dict[str, Any], qterms: list[str]) -> float:
    """+ when the taxon trait supports the query trait, - when it contradicts it, 0 otherwise."""
    voc = vocabulary()
    organ = _organ_fit(q.get("organ", "plant"), trait["organ"])
    if organ == 0:
        return 0.0
    best = 0.0
    for a in qterms:
        for b in trait.get("terms", []):
            same = voc.equivalent(a, b)
            if same:
                polarity = 1.0 if bool(q.get("negated")) == bool(trait.get("negated")) else -1.0
                value = same * polarity
            elif voc.opposed(a, b):
                value = 1.0 if bool(q.get("negated")) != bool(trait.get("negated")) else -1.0
                value *= 0.8
            else:
                continue
            if abs(value) > abs(best) or (abs(value) == abs(best) and value > best):
                best = value
    if best > 0:
        best *= _MODIFIER_WEIGHT.get(trait.get("modifier", ""), 1.0)
    elif best < 0 and trait.get("modifier") in ("rarely", "occasionally", "sometimes"):
        best *= 0.3  # "rarely pubescent" barely contradicts "not hairy"
    return best * organ


def _organ_fit(query_organ: str, organ: str) -> float:
    voc = vocabulary()
    if query_organ == organ:
        return 1.0
    if query_organ == "plant":
        return 0.6
    if query_organ in voc.relative_parts and organ.rsplit(" ", 1)[-1] == query_organ:
        return 0.8  # "stellate hairs" matches the hairs of any organ
    if query_organ in voc.ancestors(organ):  # "leaves" vs a leaf-blade trait
        return 0.9
    if organ in voc.ancestors(query_organ):  # "petals" vs a flower trait
        return 0.5
    if voc.group(query_organ) == voc.group(organ):
        return 0.4
    return 0.0


def _match_measure(q: dict[str, Any], trait: dict[str, Any]) -> float:
    if _organ_fit(q["organ"], trait["organ"]) == 0 or "min_mm" not in trait:
        return 0.0
    lo, hi = math.log(max(q["min_mm"], 1e-3)), math.log(max(q["max_mm"], 1e-3))
    tlo, thi = math.log(max(trait["min_mm"], 1e-3)), math.log(max(trait["max_mm"], 1e-3))
    overlap = min(hi, thi) - max(lo, tlo)
    span = max(hi, thi) - min(lo, tlo)
    if span <= 0:
        return 1.0
    return max(0.0, overlap / span) if overlap >= 0 else max(0.0, 1 + overlap / 0.7) * 0.3
