"""Validation metrics: text overlap (BLEU-4, ROUGE-L) and trait F1.

Overlap metrics reward wording; a botanist cares whether the traits are right, so
trait F1 reads the traits back out of the generated and the reference text with the
descriptions issue's extractor and compares (organ group, character, value) sets.
Computed here (a few lines each) rather than pulling in an evaluation package.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], *, max_n: int = 4) -> float:
    """Corpus BLEU with one reference per hypothesis, brevity penalty and add-one smoothing for n > 1."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = words(hyp), words(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hn, rn = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or matches[0] == 0:
        return 0.0
    log_p = sum(math.log((matches[i] + (i > 0)) / (totals[i] + (i > 0))) for i in range(max_n) if totals[i] + (i > 0))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_p / max_n)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 from the longest common subsequence of words."""
    h, r = words(hypothesis), words(reference)
    if not h or not r:
        return 0.0
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def _trait_set(text: str, extract: Callable[[str], list[dict[str, Any]]]) -> set[tuple[str, str, str, bool]]:
    from captioning.grounded import trait_key

    return {trait_key(t) for t in extract(text)}


def trait_scores(hypotheses: Sequence[str], references: Sequence[str], *,
                 extract: Callable[[str], list[dict[str, Any]]] | None = None) -> dict[str, float]:
    """Micro precision / recall / F1 of the traits read from each hypothesis against its reference."""
    if extract is None:
        from retrieval.flora import extract_traits as extract
    tp = fp = fn = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = _trait_set(hyp, extract), _trait_set(ref, extract)
        tp, fp, fn = tp + len(h & r), fp + len(h - r), fn + len(r - h)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"trait_precision": round(precision, 4), "trait_recall": round(recall, 4), "trait_f1": round(f1, 4),
            "reference_traits": tp + fn}


def report(hypotheses: Sequence[str], references: Sequence[str], **kwargs: Any) -> dict[str, float]:
    """BLEU-4, mean ROUGE-L and trait P/R/F1 of hypotheses against references (same order)."""
    if len(hypotheses) != len(references):
        raise ValueError("one reference per hypothesis")
    n = len(hypotheses)
    return {"n": n, "bleu4": round(corpus_bleu(hypotheses, references), 4),
            "rouge_l": round(sum(rouge_l(h, r) for h, r in zip(hypotheses, references)) / n, 4) if n else 0.0,
            **trait_scores(hypotheses, references, **kwargs)}
