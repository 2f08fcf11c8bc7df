"""Sentences and tokens: flora text cut into sentence spans, then into vocabulary terms, numbers and punctuation.

Tokens carry their character offsets, so every trait read from them points back at the text it came from.
Numbers are found first (a measurement like '3-5 cm long' is one token), words are matched to the trait
vocabulary longest first, and hyphenated compounds ('obovate-oblong', 'brun-rougeâtre') are read part by part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from retrieval.flora.traits.measures import (
    CHROMOSOME_RE,
    COUNT_RE,
    MAX_COUNT,
    MEASURE_RE,
    SUFFIX_RE,
    identifies_rather_than_counts,
    parse_range,
)
from retrieval.flora.vocab import Vocabulary, fold, vocabulary

ABBREVIATIONS = {"c", "ca", "cf", "e.g", "i.e", "eg", "ie", "var", "subsp", "ssp", "sp", "spp", "f", "fig", "figs", "pl", "vol",
                 "no", "nr", "al", "mt", "st", "dr", "vs", "resp", "incl", "excl", "approx", "sect", "ser", "subg", "tab", "p",
                 "pp", "diam", "s.l", "s.str", "l.c", "op", "cit", "ibid", "ed", "eds", "ex", "cv", "auct", "nom", "comb",
                 "nov", "syn", "sens", "obs", "etc", "env", "hab", "alt"}
_TOKEN_RE = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|±|[(),;:\[\]]|\.(?!\d)|\S")
ORGANISH = ("organ", "part", "type")


@dataclass
class Token:
    """One reading unit: a vocabulary term (organ, state...), a number, a plain word or punctuation, with its span."""

    kind: str  # organ part position type state modifier degree negation measure count suffix chromosome word punct
    value: str
    start: int
    end: int
    text: str
    character: str = ""
    words: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans; abbreviations ('c.', 'diam.', 'A. calamus') do not end a sentence."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in re.finditer(r"[.!?](?=\s+[A-ZÀ-Ý]|[A-Z][a-z])|\n\s*\n", text):
        end = m.end()
        before = text[start:m.start()]
        word = re.search(r"([A-Za-zÀ-ÿ.]+)$", before)
        token = word.group(1).lower().rstrip(".") if word else ""
        nxt = re.match(r"\s*([A-Za-zÀ-ÿ]+)", text[end:])
        if word and (len(word.group(1)) == 1 and word.group(1).isupper()):
            continue  # an initial: "A. calamus"
        if token in ABBREVIATIONS:
            # "diam. Flowers": ends a sentence when an organ or a habit word follows
            following = fold(nxt.group(1)) if nxt else ""
            _, term = vocabulary().match([following], 0, "fr" if following and not following.isascii() else "en")
            if not (term and term.kind in ("organ", "type", "part") or following in {"flowers", "fruits", "leaves", "seeds"}):
                continue
        if text[start:end].strip():
            spans.append((start, end))
        start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    # trim leading whitespace
    return [(s + len(text[s:e]) - len(text[s:e].lstrip()), e) for s, e in spans]


def numeric_tokens(text: str, start: int, end: int) -> list[Token]:
    """Measurements, counts with a suffix ('3-5-flowered'), chromosome numbers, plain counts in text[start:end].

    Each kind claims its characters in that order, so '3-5 cm' is never also read as the count '3-5'.
    """
    chunk = text[start:end]
    tokens: list[Token] = []
    taken: list[tuple[int, int]] = []

    def free(s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b in taken)

    for m in CHROMOSOME_RE.finditer(chunk):
        tokens.append(Token("chromosome", m.group(0).strip(), start + m.start(), start + m.end(), m.group(0)))
        taken.append((m.start(), m.end()))
    for m in MEASURE_RE.finditer(chunk):
        if not free(m.start("a"), m.end()):
            continue
        unit = m.group("unit")
        a = parse_range(m.group("a"))
        b = parse_range(m.group("b")) if m.group("b") else None
        if a is None:
            continue
        s = m.start("pre") if m.group("pre") and m.group("pre").strip() in ("up to", "jusqu'à", "atteignant", "to") else m.start("a")
        dim = (m.group("dim") or "").strip().rstrip(".")
        upto = bool(m.group("pre") and "to" in m.group("pre") or (m.group("pre") or "").strip() in ("jusqu'à", "atteignant"))
        tokens.append(Token("measure", m.group(0), start + s, start + m.end(), chunk[s:m.end()],
                            data={"a": a, "b": b, "unit": unit, "dim": dim, "upto": upto}))
        taken.append((m.start("a"), m.end()))
    for m in SUFFIX_RE.finditer(chunk):
        if not free(m.start(), m.end()):
            continue
        a = parse_range(m.group("a"))
        if a is None or a[1] > MAX_COUNT:
            continue
        tokens.append(Token("suffix", fold(m.group("suffix")), start + m.start(), start + m.end(), m.group(0), data={"a": a}))
        taken.append((m.start(), m.end()))
    for m in COUNT_RE.finditer(chunk):
        if not free(m.start(), m.end()) or not m.group("a").strip():
            continue
        if identifies_rather_than_counts(chunk[:m.start()], chunk[m.end():]):
            continue
        a = parse_range(m.group("a"))
        if a is None or a[1] > MAX_COUNT:
            continue
        tokens.append(Token("count", m.group(0), start + m.start(), start + m.end(), m.group(0),
                            data={"a": a, "pairs": bool(m.group("pairs"))}))
        taken.append((m.start(), m.end()))
    return tokens


def tokenize(text: str, start: int, end: int, lang: str, query: bool, voc: Vocabulary) -> list[Token]:
    """Tokens of text[start:end] in `lang` ('en', 'fr'); `query=True` also matches plain-English equivalents."""
    numeric = sorted(numeric_tokens(text, start, end), key=lambda i: i.start)
    tokens: list[Token] = []
    raw: list[tuple[int, int, str]] = []
    numeric_at: dict[int, Token] = {}  # index in `raw` -> the numeric token read there (not a text marker: text may hold any)
    pos = start
    for num in numeric + [None]:
        stop = num.start if num else end
        for m in _TOKEN_RE.finditer(text, pos, stop):
            raw.append((m.start(), m.end(), m.group(0)))
        if num:
            numeric_at[len(raw)] = num
            raw.append((num.start, num.end, ""))
            pos = num.end
    words = ["" if k in numeric_at else fold(t) for k, (_, _, t) in enumerate(raw)]
    i = 0
    while i < len(raw):
        s, e, t = raw[i]
        if i in numeric_at:
            tokens.append(numeric_at[i])
            i += 1
            continue
        if t in "(),;:[]." and len(t) == 1:
            tokens.append(Token("punct", t, s, e, t))
            i += 1
            continue
        n, term = voc.match(words, i, lang, query=query)
        if term is None and "-" in words[i]:
            tokens.extend(compound_tokens(raw[i], lang, query, voc))
            i += 1
            continue
        if term is None:
            tokens.append(Token("word", words[i], s, e, t, words=[words[i]]))
            i += 1
            continue
        e = raw[i + n - 1][1]
        tokens.append(Token(term.kind, term.value, s, e, text[s:e], character=term.character, words=words[i:i + n]))
        i += n
    return tokens


def compound_tokens(token: tuple[int, int, str], lang: str, query: bool, voc: Vocabulary) -> list[Token]:
    """'obovate-oblong', 'red-papillose', 'brun-rougeâtre', 'sub-opposées', 'pinna-rachis'."""
    s, e, t = token
    folded = fold(t)
    _, term = voc.match([folded.replace("-", "")], 0, lang, query=query)
    if term is not None:
        return [Token(term.kind, term.value, s, e, t, character=term.character, words=[folded])]
    parts = folded.split("-")
    terms = [voc.match([p], 0, lang, query=query)[1] for p in parts]
    states = [x for x in terms if x is not None and x.kind == "state"]
    organs = [x for x in terms if x is not None and x.kind in ORGANISH]
    if organs and terms[-1] is not None and terms[-1].kind in ORGANISH:
        last = terms[-1]
        first = terms[0]
        if len(terms) == 2 and first is not None and first.kind == "organ" and last.kind in ("organ", "part") \
                and first.value != last.value:
            # "pinna-rachis", "receptacle-tube": the second is the first's ("pinna rachis", "receptacle tube")
            return [Token("organ", f"{first.value} {last.value}", s, e, t, words=[folded])]
        return [Token(last.kind, last.value, s, e, t, character=last.character, words=[folded])]
    if states and terms[-1] is not None and terms[-1].kind == "state":
        values = [x.value for x in states]
        return [Token("state", terms[-1].value, s, e, t, character=terms[-1].character, words=[folded],
                      data={"terms": list(dict.fromkeys(values))})]
    if states and all(x is None or x.kind in ("state", "degree") for x in terms):
        last = states[-1]
        return [Token("state", last.value, s, e, t, character=last.character, words=[folded],
                      data={"terms": list(dict.fromkeys(x.value for x in states))})]
    return [Token("word", folded, s, e, t, words=[folded])]
