"""What the encoder and BM25 read of a description: clause chunks, each with its sentence's head organ.

Why clauses: a whole description averages away the one clause a query is about, and a
clause alone ("apex acute") no longer says whose apex it is; so each ';' clause is a
chunk and the sentence's head ("Leaves") is read in front of the later ones.
"""

from __future__ import annotations

import re
from typing import Any

from retrieval.flora.readers import TaxonDescription
from retrieval.flora.traits import split_sentences
from retrieval.flora.vocab import fold, vocabulary

_HEAD_WORDS = {"male", "female", "young", "upper", "lower", "mature", "fruiting", "flowering", "the", "les", "mâles",
               "males", "femelles", "jeunes"}


def chunks_of(record: TaxonDescription, max_chars: int = 400) -> list[tuple[int, int, int, int]]:
    """Clause chunks (start, end, head_start, head_end): each ';' clause of a sentence is one
    chunk, and the sentence's head (its first words up to a comma: "Leaves") is read by the
    encoder in front of the later clauses, so "apex acute" is still the leaf's apex."""
    text = record.text
    out: list[tuple[int, int, int, int]] = []
    for start, end in split_sentences(text):
        sentence = text[start:end]
        head_end = start + _head_length(sentence)
        cuts = [start]
        depth = 0
        for i, ch in enumerate(sentence):
            depth += (ch == "(") - (ch == ")")
            if ch == ";" and depth <= 0:
                cuts.append(start + i + 1)
        cuts.append(end)
        merged: list[tuple[int, int]] = []
        for a, b in zip(cuts, cuts[1:]):
            if not text[a:b].strip():
                continue
            if merged and (b - a < 25 or merged[-1][1] - merged[-1][0] < 25) and b - merged[-1][0] <= max_chars:
                merged[-1] = (merged[-1][0], b)  # very short clauses ride with their neighbour
            else:
                merged.append((a, b))
        for k, (a, b) in enumerate(merged):
            a += len(text[a:b]) - len(text[a:b].lstrip())
            out.append((a, b, start, head_end) if k else (a, b, start, start))
    return out


def _head_length(sentence: str) -> int:
    """Length of the sentence's leading organ phrase ('Male flowers', 'Leaves'), 0 if none."""
    voc = vocabulary()
    end = 0
    found = False
    first = re.split(r"[,;:(.]", sentence[:60], maxsplit=1)[0]
    for m in list(re.finditer(r"[^\W\d_]+(?:[-'][^\W\d_]+)*", first))[:4]:
        word = fold(m.group(0))
        _, term = voc.match([word], 0, "en")
        if term is None:
            _, term = voc.match([word], 0, "fr")
        if term is not None and term.kind in ("organ", "part", "type"):
            found, end = True, m.end()
        elif word in _HEAD_WORDS:
            end = m.end() if found else end
        else:
            break
    return end if found else 0


def chunk_text(text: str, row: Any) -> str:
    """What the encoder reads for a chunk row (…, start, end, head_start, head_end)."""
    start, end, head_start, head_end = (int(v) for v in row[-4:])
    if head_end <= head_start:
        return text[start:end]
    return f"{text[head_start:head_end].strip()}: {text[start:end]}"
