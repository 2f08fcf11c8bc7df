"""The trait reader: a text read sentence by sentence, clause by clause, segment by segment.

It holds what every level shares (the text, its language's function words, the vocabulary and the traits found
so far) and hands each segment to the head reader (`clauses`) and then to the state reader (`states`).
"""

from __future__ import annotations

from typing import Any

from retrieval.flora.readers import guess_language
from retrieval.flora.traits.clauses import (
    drop_parentheticals,
    head_index,
    pairs_of,
    read_head,
    split_clauses,
    split_segments,
)
from retrieval.flora.traits.measures import bounds
from retrieval.flora.traits.states import StateReader
from retrieval.flora.traits.tokens import ORGANISH, Token, split_sentences, tokenize
from retrieval.flora.traits.words import AXES, articles, conjunctions, with_words
from retrieval.flora.vocab import fold, vocabulary
from retrieval.textnorm import normalize_text


class Reader:
    """Reads one description (or query) and collects traits."""

    def __init__(self, text: str, lang: str, query: bool) -> None:
        self.text = text
        self.lang = lang
        self.query = query
        self.voc = vocabulary()
        self.traits: list[dict[str, Any]] = []
        self.articles = articles(lang)
        self.conj = conjunctions(lang)
        self.with_words = with_words(lang)

    # -------------------------------------------------------------- organ names and traits
    def axis(self, organ: str, current: str | None) -> str:
        """Branches, axes and rachises of an inflorescence belong to it ('inflorescence branch'); a glossary
        structure the vocabulary does not place belongs to the organ in force ('fruit beak')."""
        if organ in AXES and current and self.voc.group(current) == "inflorescence":
            return f"inflorescence {organ}"
        if current and current not in ("plant", organ) and self.voc.carried(organ) and not current.endswith(f" {organ}"):
            return self.compose(current, organ)
        return organ

    def compose(self, current: str | None, part: str) -> str:
        """The name of `part` of the organ in force: 'leaf' + 'blade' -> 'leaf blade' (not 'leaf blade apex blade')."""
        base = current
        if base:
            head, _, last = base.rpartition(" ")
            if last in self.voc.relative_parts and head:
                base = head
        return f"{base} {part}" if base and base != "plant" else part

    def emit(self, organ: str | None, character: str, value: str, span: tuple[int, int], sentence: tuple[int, int], *,
             terms: list[str] | None = None, negated: bool = False, modifier: str = "", degree: str = "",
             position: str = "", quality: str = "", organ_span: tuple[int, int] | None = None, **extra: Any) -> None:
        """Records one trait (of the plant when no organ is given)."""
        organ = organ or "plant"
        trait: dict[str, Any] = {
            "organ": organ, "character": position or character, "value": value, "terms": terms or [],
            "negated": negated, "modifier": modifier, "span": list(span),
            "sentence": self.text[sentence[0]:sentence[1]].strip(), "sentence_span": list(sentence),
        }
        if quality or position:
            trait["quality"] = quality or character
        if position:
            trait["position"] = position
        if degree:
            trait["degree"] = degree
        if organ_span:
            trait["organ_span"] = list(organ_span)
        trait.update(extra)
        self.traits.append(trait)

    # -------------------------------------------------------------- reading
    def read(self) -> list[dict[str, Any]]:
        for sentence in split_sentences(self.text):
            self.read_sentence(sentence)
        return self.traits

    def read_sentence(self, sentence: tuple[int, int]) -> None:
        tokens = drop_parentheticals(tokenize(self.text, sentence[0], sentence[1], self.lang, self.query, self.voc))
        # the organ named first in the sentence, in force in each clause until one names another
        state = {"sentence_organ": None, "organ_span": None}
        for clause in split_clauses(tokens):
            if self.query:
                # a query's ';' parts stand alone, as query_parts cuts them: "Male flowers; ripening whitish"
                # does not make whitish a flower colour
                state = {"sentence_organ": None, "organ_span": None}
            if clause:
                self.read_clause(clause, sentence, state)

    def read_clause(self, clause: list[Token], sentence: tuple[int, int], state: dict[str, Any]) -> None:
        ctx = {"organ": state["sentence_organ"], "organ_span": state["organ_span"], "position": None, "before_with": None,
               "position_quality": None, "first": True, "clause_organ": None}
        for segment in split_segments(clause):
            if segment:
                if self.query and not ctx["first"]:
                    # query parts stand alone: "corolla purple, stellate hairs" asks about hairs anywhere
                    ctx["organ"], ctx["organ_span"] = None, None
                self.read_segment(segment, sentence, ctx, state)
                ctx["first"] = False

    def read_segment(self, seg: list[Token], sentence: tuple[int, int], ctx: dict[str, Any], state: dict[str, Any]) -> None:
        seg = pairs_of(seg)
        position: str | None = None
        # a position carried from the previous segment stays while the states fit it ("margin serrate, ciliate")
        carried = ctx.get("position")
        ctx["position"] = None
        i = head_index(seg, self.articles)
        organs_here: list[tuple[str, tuple[int, int]]] = []
        if i + 1 < len(seg) and seg[i].kind == "count" and seg[i + 1].kind in ORGANISH:
            # "5 sépales": the count is the organ's
            count, nxt = seg[i], seg[i + 1]
            organ = nxt.value if nxt.kind == "organ" else (nxt.character if nxt.kind == "type" else self.compose(ctx["organ"], nxt.value))
            self.emit(organ, "count", count.text.strip(), (count.start, count.end), sentence, terms=[],
                      organ_span=(nxt.start, nxt.end), **bounds(count.data["a"]))
            i += 1
        if i < len(seg) and seg[i].kind in ("organ", "part", "type", "position"):
            i, organs_here, position = read_head(self, seg, i, sentence, ctx)
            if organs_here:
                ctx["organ"], ctx["organ_span"] = organs_here[0]
                if ctx["first"] and state["sentence_organ"] is None:
                    state["sentence_organ"], state["organ_span"] = organs_here[0]
        elif carried:
            position = carried  # kept only if the first state fits, checked by the state reader
            ctx["carry_check"] = True
        targets = organs_here or [(ctx["organ"], ctx["organ_span"])]
        before = len(self.traits)
        StateReader(self, seg, targets, position, sentence, ctx, state).read(i)
        if unknown_organ(seg):
            # "Fleur femelle inconnue", "female flowers not seen": nothing is known of the organ, so nothing
            # read in this segment ("female") is a trait of the taxon
            del self.traits[before:]


_UNKNOWN = {"unknown", "inconnu", "inconnue", "inconnus", "inconnues", "undescribed", "unseen"}
_NOT_SEEN = {"seen", "known", "vu", "vue", "vus", "vues", "connu", "connue", "connus", "connues", "described", "observed"}


def unknown_organ(seg: list[Token]) -> bool:
    """True when the segment says its organ is unknown or was not seen ('unknown', 'not seen', 'non vues')."""
    words = [fold(t.text).strip(".") for t in seg]
    if any(w in _UNKNOWN for w in words):
        return True
    return any(w in _NOT_SEEN and k and words[k - 1] in ("not", "non", "never", "pas", "jamais") for k, w in enumerate(words))


def extract_traits(text: str, lang: str | None = None, *, query: bool = False) -> list[dict[str, Any]]:
    """(organ, character, value) triples from a description or a query.

    Each trait is a dict: organ, character, value (as written), terms (canonical English
    states), negated, modifier ('usually', 'rarely'...), span (character offsets of the
    value), sentence; measurements add min_mm/max_mm, counts min/max. `query=True` also
    accepts plain-English equivalents ("saw-toothed", "hairless"). The text is read in its
    normal form (`normalize_text`: no control characters, NFC); spans index that form, which
    is the text itself for anything the description readers or the router produced.
    """
    text = normalize_text(text)
    if not text or not text.strip():
        return []
    if lang is None and len(text) < 300:
        # too short to tell the language by its function words ("pétioles poilus; bractéoles ciliés"):
        # read it both ways and keep the reading that understood more
        english, french = Reader(text, "en", query).read(), Reader(text, "fr", query).read()
        return french if len(french) > len(english) else english
    lang = lang or guess_language(text)
    if lang not in ("en", "fr"):
        lang = "en"
    return Reader(text, lang, query).read()


def triple(trait: dict[str, Any]) -> tuple[str, str, str]:
    """The (organ, character, value) view of a trait, negation and modifier folded into the value."""
    value = trait["value"]
    if trait.get("negated"):
        value = f"not {value}"
    if trait.get("modifier"):
        value = f"{trait['modifier']} {value}"
    return trait["organ"], trait["character"], value


def trait_table(traits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Compact rows (no sentence text) for storage and matching."""
    keep = ("organ", "character", "quality", "value", "terms", "negated", "modifier", "position", "span", "min_mm", "max_mm",
            "min", "max", "sentence_span")
    return [{k: t[k] for k in keep if k in t} for t in traits]
