"""The lexical signal: BM25 (bm25s) over clause chunks, on words normalised so languages meet.

Why its own tokens: 'feuilles', 'leaves' and 'leaf' must be one word for BM25, so vocabulary
terms become their canonical English name and other words are lightly stemmed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from retrieval.flora.morphology.dense import best_per_taxon
from retrieval.flora.vocab import fold, vocabulary

BM25_K1, BM25_B = 0.9, 0.4  # short passages: less length normalisation than for whole documents
_STOP = {"the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "with", "by", "for", "from", "as", "is", "are", "be",
         "than", "that", "this", "its", "their", "when", "which", "into", "le", "la", "les", "l", "un", "une", "des", "du",
         "de", "d", "et", "ou", "a", "au", "aux", "en", "sur", "par", "dans", "est", "sont", "plus", "moins", "ne", "se",
         "ce", "ces", "qui", "que", "mm", "cm", "m", "c", "ca"}


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word[-1] in "sx" and word[-2] != "s":
        word = word[:-1]
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def lexical_tokens(text: str, *, query: bool = False) -> list[str]:
    """Folded words, vocabulary terms replaced by their canonical English name (so 'feuilles',
    'leaves' and 'leaf' meet), others lightly stemmed; stopwords dropped."""
    voc = vocabulary()
    out: list[str] = []
    for word in re.findall(r"[^\W\d_]+(?:-[^\W\d_]+)*", fold(text)):
        if word in _STOP:
            continue
        n, term = voc.match([word], 0, "en", query=query)
        if term is None:
            n, term = voc.match([word], 0, "fr", query=query)
        if term is not None and term.kind in ("organ", "state", "part", "position", "type"):
            out.append(term.value.replace(" ", "_"))
        elif "-" in word:
            out.extend(_stem(w) for w in word.split("-") if w and w not in _STOP)
        else:
            out.append(_stem(word))
    return out


class LexicalSignal:
    """BM25 over the same clause chunks the encoder reads (head organ included), so a query
    part ("serrate leaves") scores the clauses where its words occur together."""

    def __init__(self, chunk_texts: Sequence[str], chunk_taxon: np.ndarray, n_taxa: int) -> None:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s forces DEBUG on its logger at import
        self.chunk_taxon, self.n_taxa = chunk_taxon, n_taxa
        self._bm25 = bm25s.BM25(k1=BM25_K1, b=BM25_B)
        corpus = [lexical_tokens(text) or ["_empty_"] for text in chunk_texts]
        if not corpus:
            corpus = [["_empty_"]]
        self._bm25.index(corpus, show_progress=False)
        self._vocab = set(self._bm25.vocab_dict)

    def scores(self, parts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per taxon: sum over query parts of its best clause's BM25 score; and the clause scores."""
        n = self.n_taxa
        taxon = self.chunk_taxon
        total = np.zeros(n, dtype=np.float32)
        clause = np.zeros(len(taxon), dtype=np.float32)
        for part in parts:
            tokens = [t for t in lexical_tokens(part, query=True) if t in self._vocab]
            if not tokens or not len(taxon):
                continue
            scores = np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)
            total += best_per_taxon(scores, taxon, n)
            clause = np.maximum(clause, scores)
        return total, clause
