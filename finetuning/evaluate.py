"""Retrieval quality before and after fine-tuning, on sheets and on taxa kept out of training.

Three measures, each with its chance level so a small number can be read:
- image -> description R@K: a held-out sheet against one text embedding per candidate
  taxon (the mean of its description sentences; its name templates when it has none);
  R@K is the share of sheets whose own taxon ranks in the top K. Chance: K / taxa.
- morphology query -> specimens R@10: a query made of a taxon's first trait phrases
  ("leaf opposite, petal white") against the split's sheets; the share of queries with a
  sheet of that taxon in the top 10. Chance: the hypergeometric probability of that.
- zero-shot species top-1 / top-5: a sheet against the mean of its candidates' name
  templates.
Held-out sheets are ranked among all the collection's taxa; held-out taxa among the
held-out taxa only (true zero-shot: the model never saw them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from finetuning.pairs import PairSet, Taxon

KS = (1, 5, 10)
# The figures every report of a run shows (the CLI summary and the model card), as (label, group, key).
REPORTED = (*((f"image->description R@{k}", "image_to_description", f"R@{k}") for k in KS),
            ("zero-shot top-1", "zero_shot", "top1"), ("zero-shot top-5", "zero_shot", "top5"))
MAX_SENTENCES = 32  # per taxon, for the description embedding


def _mean_unit(vectors: np.ndarray) -> np.ndarray:
    v = vectors.mean(axis=0)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _taxon_texts(taxon: Taxon) -> tuple[list[str], list[str]]:
    """(description texts, name templates) of a taxon; description texts fall back to the templates."""
    sentences = list(dict.fromkeys(s for d in taxon.sentences for s in d))[:MAX_SENTENCES]
    return sentences or taxon.templates(), taxon.templates()


def _hit_chance(n: int, m: int, k: int) -> float:
    """P(at least one of m relevant items in the top k of n, at random)."""
    if m <= 0:
        return 0.0
    if n - m < k:
        return 1.0
    return 1.0 - math.comb(n - m, k) / math.comb(n, k)


def evaluate_split(encoder: Any, pairs: PairSet, split: Sequence[int], candidates: Sequence[int], *,
                   batch_size: int = 32) -> dict[str, Any]:
    if not split or len(candidates) < 2:
        return {"n": 0}
    images = encoder.encode_images([pairs.specimens[i].image for i in split], batch_size=batch_size, skip_errors=True)
    good = np.any(images != 0, axis=1)
    images, split = images[good], [i for i, ok in zip(split, good) if ok]
    if not split:
        return {"n": 0}
    position = {t: j for j, t in enumerate(candidates)}
    truth = np.array([position[pairs.specimens[i].taxon] for i in split])
    texts: list[str] = []
    spans: list[tuple[int, int, int, int]] = []
    for t in candidates:
        described, names = _taxon_texts(pairs.taxa[t])
        start = len(texts)
        texts += described + names
        spans.append((start, start + len(described), start + len(described), start + len(described) + len(names)))
    vectors = encoder.encode_texts(texts)
    descriptions = np.stack([_mean_unit(vectors[a:b]) for a, b, _, _ in spans])
    names = np.stack([_mean_unit(vectors[c:d]) for _, _, c, d in spans])
    n_cand = len(candidates)
    ranks = _ranks(images @ descriptions.T, truth)
    zero_shot = _ranks(images @ names.T, truth)
    result: dict[str, Any] = {
        "n": len(split), "taxa": n_cand,
        "described_taxa": sum(1 for t in candidates if any(pairs.taxa[t].sentences)),
        "image_to_description": {f"R@{k}": round(float(np.mean(ranks < k)), 4) for k in KS},
        "zero_shot": {"top1": round(float(np.mean(zero_shot < 1)), 4), "top5": round(float(np.mean(zero_shot < 5)), 4)},
        "chance": {**{f"R@{k}": round(min(k, n_cand) / n_cand, 4) for k in KS},
                   "top1": round(1 / n_cand, 4), "top5": round(min(5, n_cand) / n_cand, 4)},
    }
    result["morphology_to_specimens"] = _morphology(encoder, pairs, split, images, candidates)
    return result


def _ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """0-based rank of the true column per row; ties count against it (no credit for a tie)."""
    own = scores[np.arange(len(truth)), truth][:, None]
    return (scores >= own).sum(axis=1) - 1


def _morphology(encoder: Any, pairs: PairSet, split: Sequence[int], images: np.ndarray,
                candidates: Sequence[int], k: int = 10) -> dict[str, Any]:
    members: dict[int, int] = {}
    for i in split:
        members[pairs.specimens[i].taxon] = members.get(pairs.specimens[i].taxon, 0) + 1
    queries = [(t, pairs.taxa[t].query()) for t in candidates if members.get(t) and pairs.taxa[t].query()]
    if not queries:
        return {"queries": 0}
    vectors = encoder.encode_texts([q for _, q in queries])
    taxa_of = np.array([pairs.specimens[i].taxon for i in split])
    hits, chance = [], []
    for (t, _), q in zip(queries, vectors):
        top = np.argsort(-(images @ q), kind="stable")[:k]
        hits.append(bool(np.any(taxa_of[top] == t)))
        chance.append(_hit_chance(len(split), members[t], k))
    return {"queries": len(queries), f"R@{k}": round(float(np.mean(hits)), 4), "chance": round(float(np.mean(chance)), 4)}


def evaluate_model(encoder: Any, pairs: PairSet, *, batch_size: int = 32) -> dict[str, Any]:
    """Both held-out splits for one encoder (a ClipEncoder)."""
    return {"heldout_specimens": evaluate_split(encoder, pairs, pairs.heldout_specimens, range(len(pairs.taxa)),
                                                batch_size=batch_size),
            "heldout_taxa": evaluate_split(encoder, pairs, pairs.heldout_taxa, pairs.taxa_of(pairs.heldout_taxa),
                                           batch_size=batch_size)}


def format_report(summary: dict[str, Any]) -> str:
    """The before/after table the CLI prints."""
    lines = [(f"fine-tuned {summary['model']} ({summary['objective']}) on {summary['data']['train_specimens']} sheets "
              f"of {summary['data']['taxa']} taxa: {summary['steps']} steps, loss {summary.get('loss_first')} -> "
              f"{summary.get('loss_last')}, {summary['images_per_second']} img/s")]
    for split in ("heldout_specimens", "heldout_taxa"):
        before = (summary.get("before") or {}).get(split) or {}
        after = (summary.get("after") or {}).get(split) or {}
        if not after.get("n"):
            continue
        lines.append(f"  {split.replace('_', ' ')} (n={after['n']}, {after['taxa']} candidate taxa):")
        for label, group, key in REPORTED:
            lines.append(f"    {label:<26} before {before.get(group, {}).get(key, '-'):<8} after {after[group][key]:<8} "
                         f"chance {after['chance'][key]}")
        morph, morph_before = after.get("morphology_to_specimens", {}), before.get("morphology_to_specimens", {})
        if morph.get("queries"):
            lines.append(f"    {'morphology->sheets R@10':<26} before {morph_before.get('R@10', '-'):<8} "
                         f"after {morph['R@10']:<8} chance {morph['chance']} ({morph['queries']} queries)")
    if summary.get("encoder"):
        lines.append(f"saved to {summary['out']}; index with: herbaria index COLLECTION --model {summary['encoder']} --rebuild")
    return "\n".join(lines)
