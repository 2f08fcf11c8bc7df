"""Clauses, segments and their heads: where a flora sentence says which organ it is about.

A sentence splits into clauses at ';' and ':', a clause into segments at ','. A segment opens with its head
('Leaves', 'calyx tube', 'margin of the blade', 'Sepals and petals'), which names the organs the states after it
describe; a segment without a head keeps the organ in force. Remarks in parentheses are set aside first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrieval.flora.traits.tokens import ORGANISH, Token
from retrieval.flora.traits.words import ARTICLES, BREAKS, CONJUNCTIONS, QUALIFIERS, QUANTIFIERS, WITH, WITHOUT
from retrieval.flora.vocab import fold

if TYPE_CHECKING:
    from retrieval.flora.traits.reader import Reader

Organs = list[tuple[str, tuple[int, int]]]


# what a parenthesis may hold and still be an alternative of the description around it: '(elliptic-)oblong',
# '(greenish)', '(0.1-0.2 mm long)', '(or rarely pubescent)'
_ALTERNATIVE = {"state", "degree", "modifier", "measure", "count", "suffix", "negation"}
_ALTERNATIVE_WORDS = {"or", "to", "and", "-", "/", "ou", "a", "et", "rarely", "sometimes", "usually", "often", "long", "wide",
                      "broad", "diam", "across", "high", "thick", "in", "c", "ca", "up", "more", "less", "than"}


def drop_parentheticals(tokens: list[Token]) -> list[Token]:
    """Remarks in balanced parentheses ('(A. calamus)', '(when dry)') are not traits; unbalanced brackets go too.
    A parenthesis holding only states and numbers ('(elliptic-)oblong', '(0.1-0.2 mm)') is an alternative within
    the description: its words stay, its brackets go."""
    opens: list[int] = []
    drop: set[int] = set()
    for i, token in enumerate(tokens):
        if token.kind == "punct" and token.value in "([":
            opens.append(i)
        elif token.kind == "punct" and token.value in ")]" and opens:
            start = opens.pop()
            inside = tokens[start + 1:i]
            if any(t.kind in ("state", "measure", "count", "suffix") for t in inside) and all(
                    t.kind in _ALTERNATIVE or t.kind == "word" and t.value in _ALTERNATIVE_WORDS for t in inside):
                continue
            drop.update(range(start, i + 1))
    return [token for i, token in enumerate(tokens) if i not in drop and not (token.kind == "punct" and token.value in "()[]")]


def split_clauses(tokens: list[Token]) -> list[list[Token]]:
    """Clauses at ';' and ':' (possibly empty); a '.' left inside a sentence is an abbreviation's and is dropped."""
    clauses: list[list[Token]] = [[]]
    for token in tokens:
        if token.kind == "punct" and token.value == ".":
            continue  # sentence ends were found already: a dot inside is an abbreviation ("c. 1/2")
        if token.kind == "punct" and token.value in ";:":
            clauses.append([])
        else:
            clauses[-1].append(token)
    return clauses


def split_segments(clause: list[Token]) -> list[list[Token]]:
    """Segments at ',' (possibly empty)."""
    segments: list[list[Token]] = [[]]
    for token in clause:
        if token.kind == "punct" and token.value == ",":
            segments.append([])
        else:
            segments[-1].append(token)
    return segments


def head_index(segment: list[Token], articles: set[str]) -> int:
    """Index of the first content token, skipping articles and organ qualifiers."""
    i = 0
    while i < len(segment) and segment[i].kind in ("word", "degree") and (
            segment[i].value in articles or segment[i].value in QUALIFIERS or segment[i].value in QUANTIFIERS
            or segment[i].kind == "degree"):
        i += 1
    if i + 1 < len(segment) and segment[i].kind == "count" and segment[i + 1].kind in ORGANISH:
        return i  # "5 sépales deltoïdes": the count is read with its organ
    # a qualifier that is also a state ("terminal or axillary") is a state unless an organ follows
    j = 0
    while j < len(segment) and (segment[j].kind == "state" and fold(segment[j].text) in QUALIFIERS or
                                j and segment[j].kind == "word" and segment[j].value in ("and", "or", "et", "ou", "&")):
        j += 1
    if j and j < len(segment) and segment[j].kind in ORGANISH:
        return j
    # head-noun rule: "False indusia", "Trophophore blade", "Pollen cones": one or two words the vocabulary does not
    # know, then an organ, head the segment; the organ is what the segment describes
    k = i
    while k < len(segment) and k - i < 2 and segment[k].kind == "word" and segment[k].value.isalpha() \
            and segment[k].value not in _NOT_MODIFIERS:
        k += 1
    if k > i and k < len(segment) and segment[k].kind in ("organ", "part"):
        return k
    return i


# words that cannot modify a head noun: prepositions, connectors, verbs of bearing
_NOT_MODIFIERS = WITH | WITHOUT | CONJUNCTIONS | BREAKS | {
    "in", "on", "at", "from", "of", "by", "for", "into", "onto", "within", "without", "along", "between", "among", "above",
    "below", "beneath", "near", "over", "under", "after", "before", "than", "as", "like", "if", "when", "where", "which",
    "that", "is", "are", "be", "being", "been", "was", "were", "has", "have", "not", "no", "also", "only", "except",
    "dans", "sur", "entre", "sous", "par", "pour", "vers", "chez", "selon", "que", "qui", "est", "sont", "ne", "pas", "plus",
    "moins", "per", "very", "more", "less", "most", "least", "nearly", "almost", "about", "up", "down", "out", "off",
    "forming", "becoming", "covered", "arising", "borne", "inserted", "attached", "composed", "consisting", "divided"}


def pairs_of(seg: list[Token]) -> list[Token]:
    """'with 15-17 parallel pairs of lateral veins' -> 'with lateral veins 15-17 parallel'."""
    for o in range(3, len(seg)):
        if seg[o].kind not in ("organ", "part"):
            continue
        f = o - 1
        while f > 0 and (seg[f].kind in ("word", "state") and fold(seg[f].text) in QUALIFIERS | ARTICLES):
            f -= 1
        if seg[f].kind != "word" or seg[f].value not in ("of", "de", "d"):
            continue
        k = f - 1
        if seg[k].kind != "word" or seg[k].value not in ("pairs", "pair", "paires", "paire"):
            continue
        c = k - 1
        while c >= 0 and seg[c].kind in ("state", "degree"):
            c -= 1
        if c >= 0 and seg[c].kind == "count":
            return seg[:c] + [seg[o], seg[c]] + seg[c + 1:k] + seg[o + 1:]
    return seg


def read_head(reader: Reader, seg: list[Token], i: int, sentence: tuple[int, int],
              ctx: dict[str, Any]) -> tuple[int, Organs, str | None]:
    """The head phrase at seg[i]: ORGAN [and ORGAN]* | POSITION [of ORGAN].

    Returns the index after it, the organs it names and the position it names (or None). Types in the head
    ('Shrub', 'Fruit a capsule') are recorded as they are read.
    """
    organs_here: Organs = []
    position: str | None = None
    while i < len(seg):
        token = seg[i]
        if token.kind == "organ":
            organ = reader.axis(token.value, ctx["organ"])
            # organ followed by its part: "calyx tube", "corolla lobes"
            if i + 1 < len(seg) and seg[i + 1].kind == "part":
                organ = f"{organ} {seg[i + 1].value}"
                i += 1
            organs_here.append((organ, (token.start, seg[i].end)))
        elif token.kind == "part":
            organs_here.append((reader.compose(ctx["organ"], token.value), (token.start, token.end)))
        elif token.kind == "type":
            organs_here.append((token.character, (token.start, token.end)))
            reader.emit(token.character, "type", token.text, (token.start, token.end), sentence, terms=[token.value],
                        organ_span=(token.start, token.end))
        elif token.kind == "position" and i + 1 < len(seg) and seg[i + 1].kind in ("organ", "part") and not organs_here:
            i += 1  # "Underside leaves", "Upper surface scales": the position says which of the organs; the organ heads
            continue
        elif token.kind == "position":
            position = token.value
            if ctx.get("before_with") and not organs_here:
                # "Leaves ..., with 8 pairs of veins, the apex acute": the apex is the leaf's
                ctx["organ"], ctx["organ_span"] = ctx.pop("before_with")
            if i + 2 < len(seg) and seg[i + 1].value in ("of", "de", "du", "des") and seg[i + 2].kind in ("organ", "part"):
                nxt = seg[i + 2]
                organ = nxt.value if nxt.kind == "organ" else reader.compose(ctx["organ"], nxt.value)
                organs_here.append((organ, (nxt.start, nxt.end)))
                i += 2
        else:
            break
        i += 1
        # "Sepals and petals white": organs joined by and/or/et
        if i + 1 < len(seg) and seg[i].kind == "word" and seg[i].value in ("and", "or", "et", "ou", "&") \
                and seg[i + 1].kind in ORGANISH:
            i += 1
            continue
        # "bark of older stems": the head organ stays; skip the owner phrase
        if i < len(seg) and seg[i].kind == "word" and seg[i].value in ("of", "de", "du", "des") and organs_here:
            j = i + 1
            while j < len(seg) and (seg[j].kind == "word" and (seg[j].value in reader.articles or seg[j].value in QUALIFIERS)):
                j += 1
            if j < len(seg) and seg[j].kind in ("organ", "part"):
                i = j + 1
        break
    return i, organs_here, position
