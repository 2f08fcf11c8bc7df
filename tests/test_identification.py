"""Zero-shot identification in array operations: the same ranking as the per-taxon loop it replaced,
prompt vectors encoded once per encoder and kept on disk."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from assistant.identification import PROMPT, TaxonPrompts, prompt_vectors


class CountingEncoder:
    """A text encoder with fixed random vectors per prompt, counting what it is asked to encode."""

    name, fingerprint, dim = "counting", "f00", 16

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.encoded += texts
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts]
        vectors = np.array(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    genera = [f"Genus{g}" for g in range(max(1, n // 7))]
    rows = []
    for i in range(n):
        genus = genera[int(rng.integers(len(genera)))]
        family = "" if i % 11 == 0 else f"Family{zlib.crc32(genus.encode()) % 5}"
        rows.append({"name": f"{genus} species{i:05d}", "genus": genus, "family": family,
                     "specimen_ids": [int(x) for x in rng.integers(0, 10**6, int(rng.integers(1, 4)))]})
    return pd.DataFrame(rows).sort_values("name").set_index("name")


def _loop(table: pd.DataFrame, vectors: np.ndarray, vector: np.ndarray, scale: float, rank: str, top: int) -> list:
    """The per-taxon loop identification used before (assistant/resources.py at 51d512c)."""
    logits = scale * (vectors @ vector)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    scores, members = {}, {}
    for name, p in zip(table.index.tolist(), probs):
        row = table.loc[name]
        label = {"species": name, "genus": row["genus"], "family": row["family"]}[rank]
        if not label:
            continue
        scores[label] = scores.get(label, 0.0) + float(p)
        members.setdefault(label, []).extend(row["specimen_ids"])
    best = sorted(scores.items(), key=lambda item: -item[1])[:top]
    return [(label, round(score, 4), members[label][:20]) for label, score in best]


@pytest.mark.parametrize("rank", ["species", "genus", "family"])
def test_the_same_ranking_as_the_loop(rank: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HERBARIA_CACHE", str(tmp_path))
    table = _table(700)
    prompts = TaxonPrompts.build(table, CountingEncoder())
    rng = np.random.default_rng(1)
    for _ in range(5):
        vector = rng.normal(size=16).astype(np.float32)
        vector /= np.linalg.norm(vector)
        got = [(h["taxon"], h["score"], h["specimen_ids"]) for h in prompts.identify(vector, 30.0, rank=rank, top=5)]
        want = _loop(table, prompts.vectors, vector, 30.0, rank, 5)
        assert [g[1] for g in got] == [w[1] for w in want]  # scores in the same order (random floats: no ties)
        assert {g[0]: (g[1], g[2]) for g in got} == {w[0]: (w[1], w[2]) for w in want}


def test_prompt_vectors_are_encoded_once_per_encoder_and_kept_on_disk(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HERBARIA_CACHE", str(tmp_path))
    prompts = [PROMPT.format(name=f"Viola {i}") for i in range(50)]
    first = CountingEncoder()
    vectors = prompt_vectors(first, prompts)
    assert len(first.encoded) == 50 and vectors.shape == (50, 16)
    again = CountingEncoder()  # a new process: nothing in memory, the disk cache answers
    assert np.array_equal(prompt_vectors(again, prompts + [PROMPT.format(name="Viola new")])[:50], vectors)
    assert again.encoded == [PROMPT.format(name="Viola new")]


def test_no_taxa_identifies_nothing() -> None:
    empty = TaxonPrompts(pd.DataFrame(columns=["genus", "family", "specimen_ids"]), np.zeros((0, 16), np.float32))
    assert empty.identify(np.ones(16, np.float32), 30.0) == []
