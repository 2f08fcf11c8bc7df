"""Weighted reciprocal rank fusion of the signals' ranks, taxa that contradict the query last.

Why ranks, not scores: BM25, cosine and trait scores live on unrelated scales; a rank means
the same thing in each. Why ranks are shared before the pool is cut: the trait signal ties
often (hundreds of taxa with the same matched traits); cutting such a tie at the pool in file
order would let the order of the files decide which tied taxa vote, so a tie is ranked whole
and kept or dropped whole.
"""

from __future__ import annotations

import numpy as np

SIGNALS = ("bm25", "dense", "traits")
# One RRF constant for every caller (passing weights never changes it). Constant, weights and tie rule are
# what bench/eval_morphology.py picked on Flora Malesiana volumes 12-14 for both query styles (paraphrased
# trait lists, phrases copied from the flora); figures on the other volumes in BENCHMARKS.md.
DEFAULT_RRF_K = 5
RRF_K = DEFAULT_RRF_K
DEFAULT_WEIGHTS: dict[str, float] = {"bm25": 3.0, "dense": 1.0, "traits": 3.0}
DEFAULT_TIES = "mean"


def competition_ranks(score: np.ndarray, pool: int, ties: str = "min") -> tuple[np.ndarray, np.ndarray]:
    """The taxa a signal retrieved (score > 0) ranked within its `pool` best, best first, and
    their ranks. Tied taxa share one rank computed over the whole tie before the cut: 'min'
    gives each the tie's first position (competition ranking, 1224), 'mean' its average
    position (a 700-way tie says little about any one of them). A tie that starts inside the
    pool is kept whole; the order of taxa inside a tie is by taxon number only for display."""
    if ties not in ("min", "mean"):
        raise ValueError(f"ties must be 'min' or 'mean', not {ties!r}")
    positive = np.flatnonzero(score > 0)
    order = positive[np.lexsort((positive, -score[positive]))]
    values = score[order]
    n = len(order)
    if not n:
        return order, np.zeros(0, dtype=np.float64)
    change = np.r_[True, values[1:] != values[:-1]]
    starts = np.flatnonzero(change)
    ends = np.r_[starts[1:], n]  # exclusive
    group = np.cumsum(change) - 1
    first = starts[group] + 1.0
    ranks = first if ties == "min" else (starts[group] + 1 + ends[group]) / 2.0
    keep = first <= pool
    return order[keep], ranks[keep]


def fuse(scores: dict[str, np.ndarray], contradicted: np.ndarray, *, weights: dict[str, float] | None = None,
         pool: int = 100, rrf_k: int | None = None, ties: str = DEFAULT_TIES) -> tuple[np.ndarray, dict[str, dict[int, int]]]:
    """Fused score per taxon (0: no signal retrieved it) and each signal's ranks {taxon: rank}
    (competition ranks, as shown; the fusion itself scores ties by `ties`).

    `weights` missing a signal count it 1.0; `rrf_k` is DEFAULT_RRF_K unless given, whatever the weights."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    rrf_k = DEFAULT_RRF_K if rrf_k is None else rrf_k
    n = len(contradicted)
    ranks: dict[str, dict[int, float]] = {}
    fused = np.zeros(n, dtype=np.float64)
    for name, score in scores.items():
        order, shown = competition_ranks(score, pool)
        shared = shown if ties == "min" else competition_ranks(score, pool, ties)[1]
        ranks[name] = {int(t): int(r) for t, r in zip(order, shown)}
        w = weights.get(name, 1.0)
        if w:
            fused[order] += w / (rrf_k + shared)
    if contradicted.any():  # negation-aware: a taxon whose traits contradict the query goes after all others
        fused[contradicted] *= 1e-3
    return fused, ranks
