"""The structured signal: the query's traits matched against each taxon's extracted traits.

Why: it is the one signal that knows which organ a state belongs to and that "not hairy"
contradicts "tomentose"; a negative score marks a taxon that contradicts the query. A taxon's
traits are those read from its text plus, for sources that publish their own structure markup
(FNA), those the markup places on an organ the reader did not (`record_traits`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
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
    """Every taxon trait row as integer arrays (taxon, organ id, negation, modifier factors; its states as concept
    ids), so a query trait scores all taxa with array operations.

    Why arrays: matching each candidate row in Python cost 80% of a fused query over 2,734 taxa and grew with the
    taxa. What a query trait finds and how it scores are those of the per-row rules (`support` below): candidate
    rows are those naming the query's states, their broader or narrower states or their opposites; a row's score
    is its best (state, query state) agreement, + or -, times the modifier and organ fits, the rarity weight and
    the rank weight. The pairwise vocabulary answers (state vs state, organ vs organ) are computed once per pair
    the queries meet and kept."""

    def __init__(self, traits: list[list[dict[str, Any]]], ranks: Sequence[str]) -> None:
        voc = vocabulary()
        self.traits = traits
        self.n = len(traits)
        concepts: dict[str, int] = {}
        organs: dict[str, int] = {}
        row_taxon, row_j, row_organ, row_neg, pos_factor, neg_factor, row_ptr, pair_concept = [], [], [], [], [], [], [0], []
        measures: dict[str, list[tuple[int, int, int, float, float]]] = defaultdict(list)
        for t, table in enumerate(traits):
            for j, trait in enumerate(table):
                if "min_mm" in trait:
                    organ = organs.setdefault(trait["organ"], len(organs))
                    measures[trait["character"]].append((t, j, organ, _log(trait["min_mm"]), _log(trait["max_mm"])))
                terms = trait.get("terms", [])
                if not terms:
                    continue
                row_taxon.append(t)
                row_j.append(j)
                row_organ.append(organs.setdefault(trait["organ"], len(organs)))
                row_neg.append(bool(trait.get("negated")))
                modifier = trait.get("modifier", "")
                pos_factor.append(_MODIFIER_WEIGHT.get(modifier, 1.0))
                neg_factor.append(0.3 if modifier in ("rarely", "occasionally", "sometimes") else 1.0)
                pair_concept.extend(concepts.setdefault(voc.concept(term), len(concepts)) for term in terms)
                row_ptr.append(len(pair_concept))
        self._concepts, self._organs = list(concepts), list(organs)
        self._concept_id = concepts
        self._row_taxon = np.array(row_taxon, dtype=np.int64)
        self._row_j = np.array(row_j, dtype=np.int64)
        self._row_organ = np.array(row_organ, dtype=np.int64)
        self._row_neg = np.array(row_neg, dtype=bool)
        self._pos_factor = np.array(pos_factor, dtype=np.float64)
        self._neg_factor = np.array(neg_factor, dtype=np.float64)
        self._row_ptr = np.array(row_ptr, dtype=np.int64)
        self._pair_concept = np.array(pair_concept, dtype=np.int64)
        self._pair_row = np.repeat(np.arange(len(row_taxon), dtype=np.int64), np.diff(self._row_ptr))
        # rows naming each concept, and the concepts a posting key reaches: the concept itself and its broader ones
        by_concept = np.argsort(self._pair_concept, kind="stable")
        bounds = np.searchsorted(self._pair_concept[by_concept], np.arange(len(concepts) + 1))
        self._concept_rows = [np.unique(self._pair_row[by_concept[bounds[c]:bounds[c + 1]]]) for c in range(len(concepts))]
        keys: dict[str, list[int]] = defaultdict(list)
        for concept, c in concepts.items():
            keys[concept].append(c)
            for broad in voc.broader(concept):
                if broad != concept:
                    keys[broad].append(c)
        self._key_concepts = {k: np.array(v, dtype=np.int64) for k, v in keys.items()}
        self._df = {k: int(np.unique(self._row_taxon[np.concatenate([self._concept_rows[c] for c in v])]).size)
                    for k, v in self._key_concepts.items()}
        self._measures = {character: tuple(np.array(col, dtype=dtype) for col, dtype in
                                           zip(zip(*rows), (np.int64, np.int64, np.int64, np.float64, np.float64)))
                          for character, rows in measures.items()}
        # pairwise vocabulary answers met so far: per query state, its agreement with each index concept
        # (NaN: not asked yet); per query organ, its fit with each index organ
        self._agreement: dict[str, np.ndarray] = {}
        self._organ_fit: dict[str, np.ndarray] = {}
        # descriptions of genera and families summarise their species ("leaves opposite or alternate"):
        # they match many queries weakly, so their trait scores count a little less than a species'
        self._rank_weight = np.array([0.8 if rank in _HIGHER_RANKS else 1.0 for rank in ranks], dtype=np.float32)
        self._row_rank_weight = self._rank_weight[self._row_taxon].astype(np.float64)

    def scores(self, qtraits: list[dict[str, Any]]) -> tuple[np.ndarray, TraitEvidence]:
        """Sum over query traits of the best matching (or contradicting) taxon trait; and per taxon
        the (trait index, score) pairs that made it (the lowest trait index among equal best)."""
        total = np.zeros(self.n, dtype=np.float32)
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for q in qtraits:
            if q.get("terms"):
                taxa, js, ss = self._terms(q)
            elif "min_mm" in q:
                taxa, js, ss = self._measure(q)
            else:
                continue
            if len(taxa):
                total[taxa] += ss.astype(np.float32)  # float32 sums in query-trait order, as one taxon at a time did
                found.append((taxa, js, ss))
        return total, TraitEvidence(found)

    # ------------------------------------------------------------------ one query trait
    def _terms(self, q: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        voc = vocabulary()
        qterms = [voc.concept(t) for t in q.get("terms", [])]
        reach: set[str] = set()  # posting keys: rows naming the key or a state it is broader than
        exact: set[str] = set()  # concepts named themselves
        for term in qterms:
            reach.add(term)
            exact.update(voc.broader(term))  # "puberulent" asked, the flora says "hairy"
            reach.update(voc.members(term))
            opposite = {a for c in {term} | voc.broader(term) for a in voc.states.get(c, {}).get("ant", [])}
            for ant in opposite:  # "puberulent" contradicts "glabrous" through "hairy"'s opposite
                reach.add(voc.concept(ant))
                reach.update(voc.members(voc.concept(ant)))
        hit = [self._key_concepts[k] for k in reach if k in self._key_concepts]
        hit += [np.array([self._concept_id[c]]) for c in exact if c in self._concept_id]
        if not hit:
            return _nothing()
        rows = np.unique(np.concatenate([self._concept_rows[c] for c in np.unique(np.concatenate(hit))]))
        organ = self._organ_fits(q.get("organ", "plant"), self._row_organ[rows])
        rows, organ = rows[organ != 0], organ[organ != 0]
        if not len(rows):
            return _nothing()
        # every (row, state) pair of the candidate rows, with the query's best agreement with that state
        starts, ends = self._row_ptr[rows], self._row_ptr[rows + 1]
        lengths = ends - starts
        pair_of = np.repeat(np.arange(len(rows)), lengths)
        pairs = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        same_polarity = self._row_neg[rows] == bool(q.get("negated"))
        value = self._agreements(qterms, self._pair_concept[pairs], same_polarity[pair_of])
        # per row the pair of largest |value|, the positive one between equals
        order = np.lexsort((value, np.abs(value), pair_of))
        best = value[order[np.cumsum(lengths) - 1]]
        best = np.where(best > 0, best * self._pos_factor[rows], np.where(best < 0, best * self._neg_factor[rows], best))
        df = max((self._df.get(t, 0) for t in qterms), default=0)
        weight = math.log((self.n + 1) / (df + 1)) + 1.0
        s = best * organ * weight
        s = np.where(s > 0, s * self._row_rank_weight[rows], s)
        keep = s != 0
        rows, s = rows[keep], s[keep]
        return _best_per_taxon(self._row_taxon[rows], self._row_j[rows], s)

    def _measure(self, q: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if q.get("character") not in self._measures:
            return _nothing()
        taxa, js, organs, tlo, thi = self._measures[q["character"]]
        lo, hi = _log(q["min_mm"]), _log(q["max_mm"])
        overlap = np.minimum(hi, thi) - np.maximum(lo, tlo)
        span = np.maximum(hi, thi) - np.minimum(lo, tlo)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(span <= 0, 1.0, np.where(overlap >= 0, np.maximum(0.0, overlap / span),
                                                  np.maximum(0.0, 1 + overlap / 0.7) * 0.3))
        s = np.where(self._organ_fits(q["organ"], organs) == 0, 0.0, s)
        keep = s > 0
        return _best_per_taxon(taxa[keep], js[keep], s[keep])

    # ------------------------------------------------------------------ vocabulary answers, kept
    def _organ_fits(self, query_organ: str, organ_ids: np.ndarray) -> np.ndarray:
        table = self._organ_fit.get(query_organ)
        if table is None:
            table = self._organ_fit[query_organ] = np.full(len(self._organs), np.nan)
        needed = np.unique(organ_ids)
        for o in needed[np.isnan(table[needed])]:
            table[o] = organ_fit(query_organ, self._organs[o])
        return table[organ_ids]

    def _agreements(self, qterms: list[str], concept_ids: np.ndarray, same_polarity: np.ndarray) -> np.ndarray:
        """Per (row, state) pair, the best over query states of their agreement signed by the polarities
        (+1 same concept, +0.8 broader or narrower, -0.8 opposed; negated on one side flips the sign)."""
        needed = np.unique(concept_ids)
        best_same = np.zeros(len(concept_ids))
        best_flip = np.zeros(len(concept_ids))
        for a in qterms:
            table = self._agreement.get(a)
            if table is None:
                table = self._agreement[a] = np.full(len(self._concepts), np.nan)
            for c in needed[np.isnan(table[needed])]:
                table[c] = agreement(a, self._concepts[c])
            v = table[concept_ids]
            best_same = _stronger(best_same, v)
            best_flip = _stronger(best_flip, -v)
        return np.where(same_polarity, best_same, best_flip)


class TraitEvidence(Mapping):
    """Taxon -> [(trait index, score)] in query-trait order, read from the per-query-trait arrays when asked
    (a query reaches thousands of taxa; a page shows ten)."""

    def __init__(self, found: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self._found = found  # per query trait: taxa (ascending), trait indices, scores

    def __getitem__(self, t: int) -> list[tuple[int, float]]:
        out = []
        for taxa, js, ss in self._found:
            at = int(np.searchsorted(taxa, t))
            if at < len(taxa) and taxa[at] == t:
                out.append((int(js[at]), float(ss[at])))
        if not out:
            raise KeyError(t)
        return out

    def _taxa(self) -> np.ndarray:
        return np.unique(np.concatenate([f[0] for f in self._found])) if self._found else np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(int(t) for t in self._taxa())

    def __len__(self) -> int:
        return len(self._taxa())


def _nothing() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """No taxon reached: empty taxa, trait indices and scores."""
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)


def _best_per_taxon(taxa: np.ndarray, js: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per taxon (ascending) one row: its best supporting one (largest score), else its most contradicting one
    (most negative); the lowest trait index among equals."""
    positive = s > 0
    order = np.lexsort((js, np.where(positive, -s, s), ~positive, taxa))
    first = order[np.r_[True, taxa[order][1:] != taxa[order][:-1]]] if len(order) else order
    return taxa[first], js[first], s[first]


def _stronger(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise the value of larger magnitude, the positive one between equal magnitudes."""
    return np.where((np.abs(b) > np.abs(a)) | ((np.abs(b) == np.abs(a)) & (b > a)), b, a)


def _log(mm: float) -> float:
    return math.log(max(mm, 1e-3))


def agreement(a: str, b: str) -> float:
    """A query state against a taxon state, both affirmed: +1 the same concept, +BROADER_MATCH one broader than
    the other, -0.8 opposed (glabrous vs pubescent), 0 unrelated. A negation on one side flips the sign."""
    voc = vocabulary()
    same = voc.equivalent(a, b)
    if same:
        return same
    return -0.8 if voc.opposed(a, b) else 0.0


def organ_fit(query_organ: str, organ: str) -> float:
    """How far a taxon trait's organ answers the query's: 1 the same, down to 0.4 the same group, else 0."""
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
