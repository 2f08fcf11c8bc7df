"""Batches that put near taxa together, and the targets that keep a taxon from being its own negative.

Why: in a random batch of a few thousand sheets the negatives are mostly other families,
which a pretrained model already tells apart; what a herbarium needs is what separates
two violets. So a batch starts from a random taxon and fills with its congeners, then
its confamilials, then anything, taking at most `per_taxon` sheets of each. A taxon
then appears several times in a batch, and its texts are positives of all its sheets
(multi-positive targets), never negatives.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import torch

from finetuning.pairs import Specimen, Taxon


def near_taxa_batches(specimens: Sequence[Specimen], indices: Sequence[int], taxa: Sequence[Taxon], *,
                      batch_size: int, per_taxon: int = 2, rng: random.Random) -> list[list[int]]:
    """Every index of `indices` exactly once, in batches of taxa close to each other; batches under 2 are dropped."""
    if batch_size < 2 or per_taxon < 1:
        raise ValueError("batch_size must be at least 2 and per_taxon at least 1")
    pools: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        pools[specimens[i].taxon].append(i)
    for pool in pools.values():
        rng.shuffle(pool)
    genus: dict[str, list[int]] = defaultdict(list)
    family: dict[str, list[int]] = defaultdict(list)
    for t in sorted(pools):
        genus[taxa[t].genus or f"?{t}"].append(t)
        family[taxa[t].family or f"?{t}"].append(t)
    batches: list[list[int]] = []
    while pools:
        live = sorted(pools)
        seed = rng.choices(live, weights=[len(pools[t]) for t in live])[0]
        ring = [seed]
        for group in (genus[taxa[seed].genus or f"?{seed}"], family[taxa[seed].family or f"?{seed}"], live):
            extra = [t for t in group if t in pools and t not in ring]
            rng.shuffle(extra)
            ring += extra
        batch: list[int] = []
        for t in ring:
            take = min(per_taxon, batch_size - len(batch), len(pools[t]))
            batch += [pools[t].pop() for _ in range(take)]
            if not pools[t]:
                del pools[t]
            if len(batch) >= batch_size:
                break
        if len(batch) >= 2:
            batches.append(batch)
    return batches


def multi_positive_targets(row_taxa: torch.Tensor, col_taxa: torch.Tensor) -> torch.Tensor:
    """(R, C) targets: each row spreads its mass evenly over the columns of its own taxon.

    A row with no column of its taxon (possible against a queue) gets an all-zero row and
    so adds nothing to the loss."""
    same = (row_taxa[:, None] == col_taxa[None, :]).float()
    return same / same.sum(dim=1, keepdim=True).clamp(min=1.0)
