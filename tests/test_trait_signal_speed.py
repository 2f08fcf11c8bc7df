"""The array trait signal scores exactly as the per-row Python matcher it replaced (kept below as the reference).

Why: the trait signal was vectorised for speed (issue 9, item 7: 81% of a fused query over 2,734 taxa went to
matching rows one by one); fusion ranks by these scores and shares ties, so "exactly" means bit for bit: the same
float32 totals, the same per-taxon scores, and as evidence a trait row of the same score (the lowest index among
equals; the reference below iterates its candidates sorted so that it picks the same one).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.flora import extract_traits, read_descriptions
from retrieval.flora.morphology import TraitSignal
from retrieval.flora.morphology.trait_signal import organ_fit, record_traits  # the organ rule both scorers share
from retrieval.flora.traits import split_sentences, trait_table
from retrieval.flora.vocab import vocabulary

# ---------------------------------------------------------------------------------------------- the reference
# retrieval/flora/morphology/trait_signal.py as of 2ae6afa, unchanged but for `sorted(candidates)` (a set's order
# picked the evidence row among equal scores; sorted picks the lowest index, as the array scorer does).
_HIGHER_RANKS = {"family", "subfamily", "tribe", "subtribe", "genus", "subgenus", "section", "subsection", "series"}
_MODIFIER_WEIGHT = {"rarely": 0.3, "occasionally": 0.5, "sometimes": 0.6, "often": 0.9, "usually": 0.95}


class ReferenceTraitSignal:
    ordered = True  # False: the candidates' set order, as shipped before (bench/bench_flora_speed.py times that)

    def __init__(self, traits: list[list[dict[str, Any]]], ranks: Sequence[str]) -> None:
        voc = vocabulary()
        self.traits = traits
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._exact: dict[str, list[tuple[int, int]]] = defaultdict(list)
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
        self._rank_weight = np.array([0.8 if rank in _HIGHER_RANKS else 1.0 for rank in ranks], dtype=np.float32)

    def scores(self, qtraits: list[dict[str, Any]]) -> tuple[np.ndarray, dict[int, list[tuple[int, float]]]]:
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
                    for broad in voc.broader(term):
                        candidates.update(self._exact.get(broad, []))
                    for member in voc.members(term):
                        candidates.update(self._postings.get(member, []))
                    opposite = {a for c in {term} | voc.broader(term) for a in voc.states.get(c, {}).get("ant", [])}
                    for ant in sorted(opposite):
                        candidates.update(self._postings.get(voc.concept(ant), []))
                        for member in voc.members(voc.concept(ant)):
                            candidates.update(self._postings.get(member, []))
                df = max((self._df.get(t, 0) for t in qterms), default=0)
                weight = math.log((n + 1) / (df + 1)) + 1.0
                for t, j in sorted(candidates) if self.ordered else candidates:
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
    voc = vocabulary()
    organ = organ_fit(q.get("organ", "plant"), trait["organ"])
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
        best *= 0.3
    return best * organ


def _match_measure(q: dict[str, Any], trait: dict[str, Any]) -> float:
    if organ_fit(q["organ"], trait["organ"]) == 0 or "min_mm" not in trait:
        return 0.0
    lo, hi = math.log(max(q["min_mm"], 1e-3)), math.log(max(q["max_mm"], 1e-3))
    tlo, thi = math.log(max(trait["min_mm"], 1e-3)), math.log(max(trait["max_mm"], 1e-3))
    overlap = min(hi, thi) - max(lo, tlo)
    span = max(hi, thi) - min(lo, tlo)
    if span <= 0:
        return 1.0
    return max(0.0, overlap / span) if overlap >= 0 else max(0.0, 1 + overlap / 0.7) * 0.3


# ---------------------------------------------------------------------------------------------- the comparison
def assert_same(new: TraitSignal, ref: ReferenceTraitSignal, qtraits: list[dict[str, Any]], what: str) -> None:
    total, evidence = new.scores(qtraits)
    ref_total, ref_evidence = ref.scores(qtraits)
    assert total.dtype == ref_total.dtype == np.float32
    assert np.array_equal(total, ref_total), f"{what}: taxa {np.flatnonzero(total != ref_total)[:5]} differ"
    assert set(evidence) == set(ref_evidence), what
    for t in ref_evidence:
        assert evidence[t] == ref_evidence[t], f"{what}: taxon {t}"


def _queries(records: list, traits: list[list[dict[str, Any]]], rng: random.Random) -> list[str]:
    """Real wording: sentences copied from descriptions, and organ + state phrases built from their trait rows,
    affirmed, negated, qualified, and measured."""
    out: list[str] = []
    for record in rng.sample(records, 60):
        for s, e in split_sentences(record.text)[:4]:
            out.append(record.text[s:e][:200])
    voc = vocabulary()
    rows = [row for table in traits for row in table if row.get("terms")]
    for row in rng.sample(rows, 300):
        organ = voc.organ_label(row["organ"].split(" ")[0], plural=True) if row["organ"] in voc.organs else row["organ"]
        state = row["terms"][0]
        out.append(rng.choice(["{o} {s}", "{o} not {s}", "{s} {o}", "{o} rarely {s}", "{o} {s}, flowers white",
                               "{s}", "{o} glabrous or {s}", "{o} {s} and hairy"]).format(o=organ, s=state))
    out += ["leaves 5-10 cm long", "petals 2-3 mm long", "fruit 1-2 cm across", "leaves not hairy",
            "stellate hairs", "puberulent twigs", "flowers unisexual; male flowers unknown"]
    return out


@pytest.fixture(scope="module")
def malesiana(shared_data: Path) -> tuple[list, list[list[dict[str, Any]]]]:
    records = read_descriptions(shared_data / "flora" / "malesiana")
    sample = [records[i] for i in sorted(random.Random(7).sample(range(len(records)), 250))]
    return sample, [record_traits(r) for r in sample]


def test_array_scores_equal_the_per_row_matcher_on_real_descriptions(malesiana) -> None:
    records, traits = malesiana
    ranks = [r.rank for r in records]
    new, ref = TraitSignal(traits, ranks), ReferenceTraitSignal(traits, ranks)
    queries = _queries(records, traits, random.Random(11))
    reached = 0
    for text in queries:
        qtraits = extract_traits(text, "en", query=True)
        assert_same(new, ref, qtraits, text)
        for q in qtraits:  # each query trait alone too: a sum can hide two compensating differences
            assert_same(new, ref, [q], f"{text} / {q.get('organ')} {q.get('terms')}")
        reached += bool(new.scores(qtraits)[0].any())
    assert len(queries) > 500 and reached > 0.8 * len(queries)  # the comparison saw real matches, not empty ones
    assert any((ref.scores(extract_traits(t, "en", query=True))[0] < 0).any() for t in queries)  # and contradictions


def test_array_scores_equal_the_reference_on_hand_made_rows() -> None:
    """Negations, modifiers, genus ranks, measures, broader and opposed states, rows without terms."""
    texts = ["Leaves glabrous, rarely pubescent. Petals white, 3-5 mm long.", "Leaves densely hairy; petals not white.",
             "Leaves glabrous.", "Flowers white. Leaves sometimes puberulent, 5-12 cm long.", "Stems stellate-hairy.",
             "Leaves opposite, usually elliptic, not serrate.", "Fruit a capsule 1-2 cm long.", ""]
    ranks = ["species", "species", "genus", "species", "family", "species", "species", "species"]
    traits = [trait_table(extract_traits(t, "en")) for t in texts]
    new, ref = TraitSignal(traits, ranks), ReferenceTraitSignal(traits, ranks)
    for query in ["leaves not hairy", "hairy leaves", "puberulent leaves", "petals white", "petals 2-4 mm long",
                  "leaves 6-9 cm", "leaves alternate, not elliptic", "stellate hairs", "capsule", "white",
                  "leaves serrate", "zzz"]:
        assert_same(new, ref, extract_traits(query, "en", query=True), query)
    assert new.scores(extract_traits("leaves not hairy", "en", query=True))[0][1] < 0


def test_an_index_without_traits_scores_nothing() -> None:
    signal = TraitSignal([[], []], ["species", "genus"])
    total, evidence = signal.scores(extract_traits("leaves glabrous, petals 2-3 mm", "en", query=True))
    assert total.tolist() == [0.0, 0.0] and dict(evidence) == {}
