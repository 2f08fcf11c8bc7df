"""Trait extraction: flora description text -> (organ, character, value) triples.

Floras write in a telegraphic, organ-first style ("Leaves opposite; blade elliptic to
obovate, 3-5 cm long, margin serrate, glabrous above"): the organ named at the head of a
clause governs what follows, parts ("blade", "lobes") attach to the organ in force,
positions ("margin", "apex", "beneath") qualify single characters, and numbers carry
their own dimension. This is a vocabulary-driven reader of that style, in English and
French, with negation ("not serrate", "sans stipules"), ranges, frequency modifiers
("usually", "rarely") and the organ carried across clauses. Queries are read with the
same code, which is why "opposite serrate leaves" (attributive order) is handled too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from retrieval.flora import guess_language
from retrieval.textnorm import normalize_text
from retrieval.vocab import Vocabulary, fold, vocabulary

# ---------------------------------------------------------------------------- lexical classes
_ARTICLES = {"the", "an", "its", "their", "each", "both", "all", "these", "those", "le", "la", "les", "l", "un", "une",
             "des", "du", "de", "d", "au", "aux", "ses", "sa", "son", "leur", "leurs", "ce", "ces", "cette", "chaque", "tous", "toutes"}
_QUALIFIERS = {"young", "old", "older", "oldest", "mature", "juvenile", "upper", "lower", "uppermost", "lowermost", "basal", "apical",
               "distal", "proximal", "terminal", "lateral", "central", "median", "inner", "outer", "primary", "secondary",
               "tertiary", "main", "major", "minor", "larger", "smaller", "fertile", "sterile", "male", "female", "staminate",
               "pistillate", "bisexual", "fruiting", "flowering", "new", "first", "ultimate", "leafy", "adult", "dry", "fresh",
               "living", "ripe", "unripe", "immature", "developing", "opened", "open", "jeunes", "jeune", "vieux", "vieilles",
               "ages", "adultes", "adulte", "superieures", "inferieures", "superieure", "inferieure", "grandes", "petites",
               "grande", "petite", "large", "small", "long", "short", "lowest", "middle", "other", "sterile", "fertiles"}
_CONJ = {"and", "or", "to", "nor", "&", "and/or", "et", "ou", "jusqu'a", "sometimes", "but", "mais", "then", "puis",
         "becoming", "devenant", "turning"}
_RANGE = {"to", "-", "jusqu'a", "becoming", "devenant", "turning"}
_PREP = {"of", "in", "on", "at", "from", "into", "like", "than", "between", "among", "along", "near", "towards", "toward",
         "under", "over", "beyond", "by", "for", "as", "when", "except", "within", "around", "onto", "upon", "after", "before",
         "during", "until", "about", "across", "against", "behind", "through", "per", "sur", "dans", "sous", "entre", "vers",
         "par", "pour", "comme", "que", "chez", "apres", "avant", "pendant", "contre", "selon", "en", "des", "du", "de", "d",
         "au", "aux", "jusqu'au", "jusqu'aux", "le", "la", "les", "l"}
_WITH = {"with", "having", "bearing", "avec", "muni", "munie", "munis", "munies", "pourvu", "pourvue", "pourvus",
         "pourvues", "portant", "garni", "garnie", "garnis", "garnies"}
_WITHOUT = {"without", "lacking", "sans", "depourvu", "depourvue", "depourvus", "depourvues"}
_BREAK = {"but", "mais", "whereas", "while", "tandis", "alors"}
_UNIT_MM = {"mm": 1.0, "cm": 10.0, "dm": 100.0, "m": 1000.0, "km": 1e6, "µm": 0.001, "μm": 0.001, "um": 0.001}
_DIMENSIONS = [
    (re.compile(r"^(?:long|in length|de long|long(?:ue|s|ues)?|length|longueur)$"), "length"),
    (re.compile(r"^(?:wide|broad|across|in width|de large|larg(?:e|es)|width|largeur)$"), "width"),
    (re.compile(r"^(?:in diam(?:eter|\.)?|diam(?:eter|\.)?|de diam[eè]tre|diam[eè]tre|in diam)$"), "diameter"),
    (re.compile(r"^(?:tall|high|in height|de haut|haut(?:e|s|es)?|height|hauteur)$"), "height"),
    (re.compile(r"^(?:thick|d'[ée]paisseur|[ée]pais(?:se|ses)?|thickness)$"), "thickness"),
]
_SUFFIX_CHARACTER = {"flowered": "flower number", "flore": "flower number", "flores": "flower number", "seeded": "seed number",
                     "merous": "merosity", "mere": "merosity", "meres": "merosity", "locular": "locule number",
                     "loculed": "locule number", "loculaire": "locule number", "loculaires": "locule number",
                     "lobed": "lobe number", "lobe": "lobe number", "lobes": "lobe number", "lobee": "lobe number",
                     "lobees": "lobe number", "foliolate": "leaflet number", "foliole": "leaflet number",
                     "folioles": "leaflet number", "foliolee": "leaflet number", "foliolees": "leaflet number",
                     "nerved": "vein number", "veined": "vein number", "jugate": "leaflet pairs", "fid": "division number",
                     "partite": "division number", "celled": "locule number", "ovulate": "ovule number", "valved": "valve number",
                     "ranked": "ranks", "angled": "angles", "winged": "wings", "ribbed": "ribs", "armed": "arms",
                     "toothed": "teeth", "dentate": "teeth", "ovule": "ovule number", "ovules": "ovule number"}
_ABBREVIATIONS = {"c", "ca", "cf", "e.g", "i.e", "eg", "ie", "var", "subsp", "ssp", "sp", "spp", "f", "fig", "figs", "pl", "vol",
                  "no", "nr", "al", "mt", "st", "dr", "vs", "resp", "incl", "excl", "approx", "sect", "ser", "subg", "tab", "p",
                  "pp", "diam", "s.l", "s.str", "l.c", "op", "cit", "ibid", "ed", "eds", "ex", "cv", "auct", "nom", "comb",
                  "nov", "syn", "sens", "obs", "etc", "env", "hab", "alt"}

_NUM = r"\d+(?:[.,]\d+)?"
# The largest count a flora states ('Seeds 1000-1200'); bigger bare numbers are catalog or collector numbers.
MAX_COUNT = 2000
# Words after which a number identifies something rather than counts organs.
_NOT_A_COUNT_BEFORE = re.compile(
    r"\b(?:al|et al|coll|leg|herb|specimens?|sheets?|vouchers?|catalog(?:ue)?s?|cat|barcodes?|numbers?|num|n°|"
    r"accessions?|acc|holotype|isotype|lectotype|neotype|syntype|paratype|type|spécimens?|échantillons?|numéros?|"
    r"récoltes?|collections?|collectors?|station|plot|page|vol|tab|fig)\.?\s*[:#]?\s*$|#\s*$", re.I)
_RANGE_RE = (rf"(?:\(\s*{_NUM}\s*-?\s*\)\s*-?\s*)?{_NUM}(?:\s*(?:-|–|—)\s*{_NUM})*"
             rf"(?:\s*\(\s*(?:-|–)?\s*{_NUM}\s*\))?")
_MEASURE_RE = re.compile(
    rf"(?P<pre>(?:up to|to|c\.|ca\.|about|jusqu'à|atteignant|de)\s*)?"
    rf"(?P<a>{_RANGE_RE})(?:\s*(?:x|×|X|by|sur)\s*(?P<b>{_RANGE_RE}))?\s*(?P<unit>mm|cm|dm|µm|μm|um|km|m)(?![a-zA-Zà-ÿ])"
    rf"(?:\s*(?P<dim>long|wide|broad|across|in diam(?:eter)?|diam(?:eter)?|thick|tall|high|in height|in length|de long|de large|"
    rf"de diam[eè]tre|de haut|d'[ée]paisseur|long(?:ue|s|ues)?|larg(?:e|es)|haut(?:e|s|es)?|[ée]pais(?:se|ses)?)(?![a-zA-Zà-ÿ])"
    rf"(?:(?<=diam)\.|(?<=diameter)\.(?=\s*[a-z,;]))?)?")
_SUFFIX_RE = re.compile(rf"(?P<a>{_RANGE_RE}(?:\s*-?\s*(?:or|to|ou|à)\s+{_NUM})?)\s*-\s*(?P<suffix>[a-zà-ÿ]{{3,}})")
_COUNT_RE = re.compile(rf"(?P<a>{_RANGE_RE})(?P<pairs>\s+(?:pairs|paires|pair)(?:\s+(?:of|de))?)?(?![\d.,]*\s*(?:mm|cm|dm|m|µm|μm|%|°))")
_CHROMOSOME_RE = re.compile(r"2n\s*=\s*[\d(),\s]+\d\)?")
_TOKEN_RE = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|±|[(),;:\[\]]|\.(?!\d)|\S")


@dataclass
class _Item:
    kind: str  # organ part position type state modifier degree negation measure count suffix chromosome word punct
    value: str
    start: int
    end: int
    text: str
    character: str = ""
    words: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- sentences and tokens


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
        if token in _ABBREVIATIONS:
            # "diam. Flowers": ends a sentence when an organ or a habit word follows
            following = fold(nxt.group(1)) if nxt else ""
            n, term = vocabulary().match([following], 0, "fr" if following and not following.isascii() else "en")
            if not (term and term.kind in ("organ", "type", "part") or following in {"flowers", "fruits", "leaves", "seeds"}):
                continue
        if text[start:end].strip():
            spans.append((start, end))
        start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    # trim leading whitespace
    return [(s + len(text[s:e]) - len(text[s:e].lstrip()), e) for s, e in spans]


def _numeric_items(text: str, start: int, end: int) -> list[_Item]:
    """Measurements, counts with a suffix ('3-5-flowered'), chromosome numbers, plain counts."""
    chunk = text[start:end]
    items: list[_Item] = []
    taken: list[tuple[int, int]] = []

    def free(s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b in taken)

    for m in _CHROMOSOME_RE.finditer(chunk):
        items.append(_Item("chromosome", m.group(0).strip(), start + m.start(), start + m.end(), m.group(0)))
        taken.append((m.start(), m.end()))
    for m in _MEASURE_RE.finditer(chunk):
        if not free(m.start("a"), m.end()):
            continue
        unit = m.group("unit")
        a = _parse_range(m.group("a"))
        b = _parse_range(m.group("b")) if m.group("b") else None
        if a is None:
            continue
        s = m.start("pre") if m.group("pre") and m.group("pre").strip() in ("up to", "jusqu'à", "atteignant", "to") else m.start("a")
        dim = (m.group("dim") or "").strip().rstrip(".")
        items.append(_Item("measure", m.group(0), start + s, start + m.end(), chunk[s:m.end()],
                           data={"a": a, "b": b, "unit": unit, "dim": dim, "upto": bool(m.group("pre") and "to" in m.group("pre") or
                                                                                          (m.group("pre") or "").strip() in ("jusqu'à", "atteignant"))}))
        taken.append((m.start("a"), m.end()))
    for m in _SUFFIX_RE.finditer(chunk):
        if not free(m.start(), m.end()):
            continue
        a = _parse_range(m.group("a"))
        if a is None or a[1] > MAX_COUNT:
            continue
        items.append(_Item("suffix", fold(m.group("suffix")), start + m.start(), start + m.end(), m.group(0), data={"a": a}))
        taken.append((m.start(), m.end()))
    for m in _COUNT_RE.finditer(chunk):
        if not free(m.start(), m.end()) or not m.group("a").strip():
            continue
        before = chunk[:m.start()]
        if re.search(r"(?:fig|plate|pl|no|p|pp|nr)\.?\s*$", before, re.I) or re.search(r"[\d/]\s*$", before) \
                or re.search(r"\b(?:of|de|d'|in|en|by|sur|than|que|x|×)\s*$", before, re.I) \
                or _NOT_A_COUNT_BEFORE.search(before) or re.match(r"\s*/\s*\d", chunk[m.end():]) \
                or _collector(before):
            continue
        a = _parse_range(m.group("a"))
        if a is None or a[1] > MAX_COUNT:
            continue
        items.append(_Item("count", m.group(0), start + m.start(), start + m.end(), m.group(0),
                           data={"a": a, "pairs": bool(m.group("pairs"))}))
        taken.append((m.start(), m.end()))
    return items


def _collector(before: str) -> bool:
    """True after a capitalised word that names no organ: 'Brass 13301', 'Kayap 750' are collector numbers."""
    word = re.search(r"(?<![\w'’-])([A-ZÀ-Ý][\w'’-]*)\s*$", before)
    if not word:
        return False
    folded = fold(word.group(1))
    voc = vocabulary()
    return not any(term is not None and term.kind in ("organ", "part", "type")
                   for term in (voc.match([folded], 0, lang)[1] for lang in ("en", "fr")))


def plausible_count(organ: str | None, low: float | None, high: float | None) -> bool:
    """A count is a number of some organ, within what plants bear (not a catalog, collector or page number)."""
    if not organ or organ == "plant":
        return False
    return all(v is None or 0 <= v <= MAX_COUNT for v in (low, high))


def _parse_range(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    main = re.sub(r"\([^)]*\)", " ", text)  # extremes in parentheses do not bound the usual range
    numbers = [float(n.replace(",", ".")) for n in re.findall(_NUM, main)]
    if not numbers:
        numbers = [float(n.replace(",", ".")) for n in re.findall(_NUM, text)]
    if not numbers:
        return None
    return min(numbers), max(numbers)


def _tokens(text: str, start: int, end: int, lang: str, query: bool, voc: Vocabulary) -> list[_Item]:
    numeric = sorted(_numeric_items(text, start, end), key=lambda i: i.start)
    items: list[_Item] = []
    raw: list[tuple[int, int, str]] = []
    numeric_at: dict[int, _Item] = {}  # index in `raw` -> the numeric item read there (not a text marker: text may hold any)
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
            items.append(numeric_at[i])
            i += 1
            continue
        if t in "(),;:[]." and len(t) == 1:
            items.append(_Item("punct", t, s, e, t))
            i += 1
            continue
        n, term = voc.match(words, i, lang, query=query)
        if term is None and "-" in words[i]:
            items.extend(_compound(raw[i], lang, query, voc))
            i += 1
            continue
        if term is None:
            items.append(_Item("word", words[i], s, e, t, words=[words[i]]))
            i += 1
            continue
        e = raw[i + n - 1][1]
        items.append(_Item(term.kind, term.value, s, e, text[s:e], character=term.character, words=words[i:i + n]))
        i += n
    return items


def _compound(token: tuple[int, int, str], lang: str, query: bool, voc: Vocabulary) -> list[_Item]:
    """'obovate-oblong', 'red-papillose', 'brun-rougeâtre', 'sub-opposées', 'pinna-rachis'."""
    s, e, t = token
    folded = fold(t)
    n, term = voc.match([folded.replace("-", "")], 0, lang, query=query)
    if term is not None:
        return [_Item(term.kind, term.value, s, e, t, character=term.character, words=[folded])]
    parts = folded.split("-")
    terms = [voc.match([p], 0, lang, query=query)[1] for p in parts]
    states = [x for x in terms if x is not None and x.kind == "state"]
    organs = [x for x in terms if x is not None and x.kind in ("organ", "part", "type")]
    if organs and terms[-1] is not None and terms[-1].kind in ("organ", "part", "type"):
        last = terms[-1]
        return [_Item(last.kind, last.value, s, e, t, character=last.character, words=[folded])]
    if states and terms[-1] is not None and terms[-1].kind == "state":
        values = [x.value for x in states]
        return [_Item("state", terms[-1].value, s, e, t, character=terms[-1].character, words=[folded],
                      data={"terms": list(dict.fromkeys(values))})]
    if states and all(x is None or x.kind in ("state", "degree") for x in terms):
        last = states[-1]
        return [_Item("state", last.value, s, e, t, character=last.character, words=[folded],
                      data={"terms": list(dict.fromkeys(x.value for x in states))})]
    return [_Item("word", folded, s, e, t, words=[folded])]


# ---------------------------------------------------------------------------- clause reading


class _Reader:
    """Reads one description (or query) and collects traits."""

    def __init__(self, text: str, lang: str, query: bool) -> None:
        self.text = text
        self.lang = lang
        self.query = query
        self.voc = vocabulary()
        self.traits: list[dict[str, Any]] = []
        # "a" is an article in English and "à" (folded to "a") means "with" or "to" in French
        self.articles = _ARTICLES | ({"a"} if lang == "en" else set())
        self.conj = _CONJ | ({"a"} if lang == "fr" else set())
        self.with_words = _WITH | ({"a"} if lang == "fr" else set())

    # -------------------------------------------------------------- helpers
    def axis(self, organ: str, current: str | None) -> str:
        """Branches, axes and rachises of an inflorescence belong to it ('inflorescence branch')."""
        if organ in _AXES and current and self.voc.group(current) == "inflorescence":
            return f"inflorescence {organ}"
        return organ

    def compose(self, current: str | None, part: str) -> str:
        base = current
        if base:
            head, _, last = base.rpartition(" ")
            if last in self.voc.relative_parts and head:
                base = head
        return f"{base} {part}" if base and base != "plant" else part

    def emit(self, organ: str | None, character: str, value: str, span: tuple[int, int], sentence: tuple[int, int], *,
             terms: list[str] | None = None, negated: bool = False, modifier: str = "", degree: str = "",
             position: str = "", quality: str = "", organ_span: tuple[int, int] | None = None, **extra: Any) -> None:
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
        items = _tokens(self.text, sentence[0], sentence[1], self.lang, self.query, self.voc)
        items = self.drop_parentheticals(items)
        clauses: list[list[_Item]] = [[]]
        for item in items:
            if item.kind == "punct" and item.value == ".":
                continue  # sentence ends were found already: a dot inside is an abbreviation ("c. 1/2")
            if item.kind == "punct" and item.value in ";:":
                clauses.append([])
            else:
                clauses[-1].append(item)
        state = {"sentence_organ": None, "organ_span": None}
        for clause in clauses:
            if clause:
                self.read_clause(clause, sentence, state)

    @staticmethod
    def drop_parentheticals(items: list[_Item]) -> list[_Item]:
        """Remarks in balanced parentheses ('(A. calamus)', '(when dry)') are not traits."""
        opens: list[int] = []
        drop: set[int] = set()
        for i, item in enumerate(items):
            if item.kind == "punct" and item.value in "([":
                opens.append(i)
            elif item.kind == "punct" and item.value in ")]" and opens:
                start = opens.pop()
                drop.update(range(start, i + 1))
        return [item for i, item in enumerate(items) if i not in drop and not (item.kind == "punct" and item.value in "()[]")]

    def read_clause(self, clause: list[_Item], sentence: tuple[int, int], state: dict[str, Any]) -> None:
        segments: list[list[_Item]] = [[]]
        for item in clause:
            if item.kind == "punct" and item.value == ",":
                segments.append([])
            else:
                segments[-1].append(item)
        ctx = {"organ": state["sentence_organ"], "organ_span": state["organ_span"], "position": None, "before_with": None,
               "position_quality": None, "first": True, "clause_organ": None}
        for segment in segments:
            if segment:
                if self.query and not ctx["first"]:
                    # query parts stand alone: "corolla purple, stellate hairs" asks about hairs anywhere
                    ctx["organ"], ctx["organ_span"] = None, None
                self.read_segment(segment, sentence, ctx, state)
                ctx["first"] = False

    def head(self, segment: list[_Item]) -> int:
        """Index of the first content item, skipping articles and organ qualifiers."""
        i = 0
        while i < len(segment) and segment[i].kind in ("word", "degree") and (
                segment[i].value in self.articles or segment[i].value in _QUALIFIERS or segment[i].value in _QUANTIFIERS
                or segment[i].kind == "degree"):
            i += 1
        if i + 1 < len(segment) and segment[i].kind == "count" and segment[i + 1].kind in ("organ", "part", "type"):
            return i  # "5 sépales deltoïdes": the count is read with its organ
        # a qualifier that is also a state ("terminal or axillary") is a state unless an organ follows
        j = 0
        while j < len(segment) and (segment[j].kind == "state" and fold(segment[j].text) in _QUALIFIERS or
                                    j and segment[j].kind == "word" and segment[j].value in ("and", "or", "et", "ou", "&")):
            j += 1
        if j and j < len(segment) and segment[j].kind in ("organ", "part", "type"):
            return j
        return i

    @staticmethod
    def pairs_of(seg: list[_Item]) -> list[_Item]:
        """'with 15-17 parallel pairs of lateral veins' -> 'with lateral veins 15-17 parallel'."""
        for o in range(3, len(seg)):
            if seg[o].kind not in ("organ", "part"):
                continue
            f = o - 1
            while f > 0 and (seg[f].kind in ("word", "state") and fold(seg[f].text) in _QUALIFIERS | _ARTICLES):
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

    def read_segment(self, seg: list[_Item], sentence: tuple[int, int], ctx: dict[str, Any], state: dict[str, Any]) -> None:
        voc = self.voc
        seg = self.pairs_of(seg)
        position: str | None = None
        # a position carried from the previous segment stays while the states fit it ("margin serrate, ciliate")
        carried = ctx.get("position")
        ctx["position"] = None
        i = self.head(seg)
        organs_here: list[tuple[str, tuple[int, int]]] = []
        if i + 1 < len(seg) and seg[i].kind == "count" and seg[i + 1].kind in ("organ", "part", "type"):
            count, nxt = seg[i], seg[i + 1]
            organ = nxt.value if nxt.kind == "organ" else (nxt.character if nxt.kind == "type" else self.compose(ctx["organ"], nxt.value))
            self.emit(organ, "count", count.text.strip(), (count.start, count.end), sentence, terms=[],
                      organ_span=(nxt.start, nxt.end), **_numbers(count.data["a"], None))
            i += 1
        if i < len(seg) and seg[i].kind in ("organ", "part", "type", "position"):
            # head phrase: ORGAN [and ORGAN]* | POSITION [of ORGAN]
            while i < len(seg):
                item = seg[i]
                if item.kind == "organ":
                    organ = self.axis(item.value, ctx["organ"])
                    # organ followed by its part: "calyx tube", "corolla lobes"
                    if i + 1 < len(seg) and seg[i + 1].kind == "part":
                        organ = f"{organ} {seg[i + 1].value}"
                        i += 1
                    organs_here.append((organ, (item.start, seg[i].end)))
                elif item.kind == "part":
                    organs_here.append((self.compose(ctx["organ"], item.value), (item.start, item.end)))
                elif item.kind == "type":
                    organs_here.append((item.character, (item.start, item.end)))
                    self.emit(item.character, "type", item.text, (item.start, item.end), sentence, terms=[item.value],
                              organ_span=(item.start, item.end))
                elif item.kind == "position":
                    position = item.value
                    if ctx.get("before_with") and not organs_here:
                        # "Leaves ..., with 8 pairs of veins, the apex acute": the apex is the leaf's
                        ctx["organ"], ctx["organ_span"] = ctx.pop("before_with")
                    if i + 2 < len(seg) and seg[i + 1].value in ("of", "de", "du", "des") and seg[i + 2].kind in ("organ", "part"):
                        nxt = seg[i + 2]
                        organ = nxt.value if nxt.kind == "organ" else self.compose(ctx["organ"], nxt.value)
                        organs_here.append((organ, (nxt.start, nxt.end)))
                        i += 2
                else:
                    break
                i += 1
                # "Sepals and petals white": organs joined by and/or/et
                if i + 1 < len(seg) and seg[i].kind == "word" and seg[i].value in ("and", "or", "et", "ou", "&") \
                        and seg[i + 1].kind in ("organ", "part", "type"):
                    i += 1
                    continue
                # "bark of older stems": the head organ stays; skip the owner phrase
                if i < len(seg) and seg[i].kind == "word" and seg[i].value in ("of", "de", "du", "des") and organs_here:
                    j = i + 1
                    while j < len(seg) and (seg[j].kind == "word" and (seg[j].value in self.articles or seg[j].value in _QUALIFIERS)):
                        j += 1
                    if j < len(seg) and seg[j].kind in ("organ", "part"):
                        i = j + 1
                break
            if organs_here:
                ctx["organ"], ctx["organ_span"] = organs_here[0]
                if ctx["first"] and state["sentence_organ"] is None:
                    state["sentence_organ"], state["organ_span"] = organs_here[0]
        elif carried:
            position = carried  # kept only if the first state fits, checked below
            ctx["carry_check"] = True
        targets = organs_here or [(ctx["organ"], ctx["organ_span"])]
        self.read_states(seg, i, targets, position, sentence, ctx, state)

    def read_states(self, seg: list[_Item], i: int, targets: list[tuple[str | None, tuple[int, int] | None]],
                    position: str | None, sentence: tuple[int, int], ctx: dict[str, Any], state: dict[str, Any]) -> None:
        voc = self.voc
        run: list[_Item] = []
        run_meta: dict[str, Any] = {"neg": False, "mod": "", "deg": ""}
        pending = {"neg": False, "mod": "", "deg": ""}
        check_carry = ctx.pop("carry_check", False)

        def flush() -> None:
            nonlocal run
            if run:
                self.emit_run(run, targets, position, sentence, run_meta)
            run = []

        j = i
        while j < len(seg):
            item = seg[j]
            kind = item.kind
            if kind == "state":
                if check_carry:
                    check_carry = False
                    if not _fits(position, item.character):
                        position = None
                # habit nouns ("Shrub or small tree") and habit states describe the whole plant
                if item.character == "habit" and (item.value in _HABIT_NOUNS or targets[0][0] in (None, "plant")):
                    if targets[0][0] != "plant":
                        flush()
                    targets = [("plant", None)]
                    ctx["organ"], ctx["organ_span"] = "plant", None
                    if state["sentence_organ"] is None:
                        state["sentence_organ"] = "plant"
                if run and (pending["neg"] != run_meta["neg"] or (pending["mod"] and pending["mod"] != run_meta["mod"])):
                    flush()
                if not run:
                    run_meta = dict(pending)
                run.append(item)
                pending = {"neg": pending["neg"] if pending["neg"] and _joined(seg, j + 1) else False, "mod": "", "deg": ""}
                j += 1
                continue
            if kind == "negation":
                # "glabrous or not": the state before is optional
                if run and j >= 1 and seg[j - 1].kind == "word" and seg[j - 1].value in ("or", "ou") and \
                        not (j + 1 < len(seg) and seg[j + 1].kind == "state"):
                    run_meta["mod"] = run_meta["mod"] or "sometimes"
                    j += 1
                    continue
                flush()
                pending["neg"] = True
                j += 1
                continue
            if kind == "modifier":
                if run and j + 1 < len(seg):
                    flush()
                pending["mod"] = item.value
                j += 1
                continue
            if kind == "degree":
                pending["deg"] = item.value
                j += 1
                continue
            if kind == "position":
                # postposed: "glabrous above, pubescent beneath"
                if run:
                    saved = position
                    position = item.value
                    flush()
                    position = saved
                elif j + 1 < len(seg) and seg[j + 1].kind == "state":
                    position = item.value
                j += 1
                continue
            if kind in ("organ", "part", "type"):
                prev = seg[j - 1] if j > 0 else None
                prev2 = seg[j - 2] if j > 1 else None
                organ = self.axis(item.value, targets[0][0]) if kind == "organ" else (
                    item.character if kind == "type" else self.compose(targets[0][0], item.value))
                if kind == "organ" and j + 1 < len(seg) and seg[j + 1].kind == "part":
                    organ = f"{organ} {seg[j + 1].value}"
                    item = _Item("organ", organ, item.start, seg[j + 1].end, self.text[item.start:seg[j + 1].end])
                    j += 1
                if run and prev is not None and prev.kind in ("state", "degree") and not (prev.kind == "state" and prev.character == "habit"):
                    # attributive: "opposite serrate leaves", "white flowers"; but in "corolla pentagonal and
                    # ovoid fruits" only "ovoid" is the fruit's
                    cut = _last_conj_split(seg, run) if targets[0][0] not in (None, "plant") else 0
                    if cut:
                        self.emit_run(run[:cut], targets, position, sentence, run_meta)
                        run = run[cut:]
                    targets = [(organ, (item.start, item.end))]
                    self.emit_run(run, targets, position, sentence, run_meta)
                    run = []
                    ctx["organ"], ctx["organ_span"] = targets[0]
                    if kind == "type":
                        self.emit(organ, "type", item.text, (item.start, item.end), sentence, terms=[item.value])
                    j += 1
                    continue
                if prev is not None and prev.kind == "word" and prev.value in self.with_words | _WITHOUT or \
                        prev is not None and prev.kind == "negation" or \
                        (prev is not None and prev.kind == "word" and prev.value in self.articles and prev2 is not None and
                         prev2.kind == "word" and prev2.value in self.with_words | _WITHOUT) or \
                        (prev is not None and prev.kind == "count"):
                    flush()
                    absent = prev.kind == "negation" or prev.value in _WITHOUT or \
                        (prev2 is not None and prev2.kind == "word" and prev2.value in _WITHOUT)
                    if prev.kind == "count":
                        self.emit(organ, "count", re.sub(r"\s+(?:of|de)$", "", prev.text.strip()), (prev.start, prev.end), sentence,
                                  terms=[], organ_span=(item.start, item.end), **_numbers(prev.data["a"], None))
                    ctx["before_with"] = (ctx["organ"], ctx["organ_span"])
                    targets = [(organ, (item.start, item.end))]
                    ctx["organ"], ctx["organ_span"] = targets[0]
                    if kind == "type":
                        self.emit(organ, "type", item.text, (item.start, item.end), sentence, terms=[item.value])
                    # nothing said about it but its presence
                    rest = seg[j + 1:]
                    if prev.kind != "count" and (absent or not any(x.kind in ("state", "measure", "count", "suffix") for x in rest)):
                        self.emit(organ, "presence", "absent" if absent else "present", (item.start, item.end), sentence,
                                  terms=["absent" if absent else "present"], organ_span=(item.start, item.end))
                    pending = {"neg": False, "mod": "", "deg": ""}
                    j += 1
                    continue
                if prev is not None and prev.kind == "word" and prev.value in ("and", "et", "&") and prev2 is not None \
                        and prev2.kind in ("state", "measure", "count", "suffix", "organ", "part", "type"):
                    flush()  # "leaves glabrous and fruits red": a new subject
                    targets = [(organ, (item.start, item.end))]
                    ctx["organ"], ctx["organ_span"] = targets[0]
                    if kind == "type":
                        self.emit(organ, "type", item.text, (item.start, item.end), sentence, terms=[item.value])
                    pending = {"neg": False, "mod": "", "deg": ""}
                    j += 1
                    continue
                if prev is not None and prev.kind == "word" and prev.value in ("a", "an", "un", "une", "en") and kind == "type":
                    # "fruit a capsule", "inflorescences en cymes"
                    flush()
                    self.emit(item.character, "type", item.text, (item.start, item.end), sentence, terms=[item.value],
                              organ_span=targets[0][1])
                    j += 1
                    continue
                flush()
                j += 1
                continue
            if kind == "measure":
                flush()
                self.emit_measure(item, targets, position, sentence, pending)
                pending = {"neg": False, "mod": "", "deg": ""}
                j += 1
                continue
            if kind == "count":
                nxt = seg[j + 1] if j + 1 < len(seg) else None
                if nxt is not None and nxt.kind in ("organ", "part", "type"):
                    j += 1
                    continue  # handled with the organ that follows: "5 petals"
                flush()
                for organ, ospan in targets:
                    if not plausible_count(organ, *item.data["a"]):
                        continue  # a bare number with no organ in force says nothing countable
                    value = item.text.strip()
                    self.emit(organ, "count", value, (item.start, item.end), sentence, terms=[], organ_span=ospan,
                              modifier=pending["mod"], **_numbers(item.data["a"], None))
                pending = {"neg": False, "mod": "", "deg": ""}
                j += 1
                continue
            if kind == "suffix":
                flush()
                suffix = item.value
                character = _SUFFIX_CHARACTER.get(suffix, f"{suffix}")
                for organ, ospan in targets:
                    self.emit(organ, character, item.text.strip(), (item.start, item.end), sentence, terms=[],
                              organ_span=ospan, **_numbers(item.data["a"], None))
                j += 1
                continue
            if kind == "chromosome":
                flush()
                self.emit("chromosome", "count", item.text.strip(), (item.start, item.end), sentence, terms=[])
                j += 1
                continue
            # plain words: connectors keep the run going, anything else ends it
            if kind == "word" and item.value in _BREAK:
                flush()
                pending = {"neg": False, "mod": "", "deg": ""}
            elif kind == "word" and (item.value in self.conj or item.value in ("-", "/")):
                pass
            elif kind == "word" and item.value in self.articles and j + 1 < len(seg) and seg[j + 1].kind in ("organ", "part", "type", "state"):
                pass
            else:
                flush()
                if kind == "word" and item.value not in self.conj:
                    pending["deg"] = ""
            j += 1
        flush()
        if position and position in ("margin", "apex", "base"):
            ctx["position"] = position

    def emit_run(self, run: list[_Item], targets: list[tuple[str | None, tuple[int, int] | None]], position: str | None,
                 sentence: tuple[int, int], meta: dict[str, Any]) -> None:
        # one trait per character: "elliptic to obovate" stays one value; "coriaceous, elliptic" does not
        groups: list[list[_Item]] = []
        for item in run:
            if groups and groups[-1][-1].character == item.character:
                groups[-1].append(item)
            else:
                groups.append([item])
        for group in groups:
            span = (group[0].start, group[-1].end)
            value = self.text[span[0]:span[1]]
            terms: list[str] = []
            for item in group:
                for t in item.data.get("terms", [item.value]):
                    if t not in terms:
                        terms.append(t)
            character = group[0].character
            for organ, ospan in targets:
                pos = position if position and _fits(position, character) else ""
                self.emit(organ, character, value, span, sentence, terms=terms, negated=bool(meta.get("neg")),
                          modifier=meta.get("mod", ""), degree=meta.get("deg", ""), position=pos, quality=character,
                          organ_span=ospan)
                for term in terms:  # "unarmed" also says: no prickles
                    implied = self.voc.states.get(term, {}).get("implies")
                    if implied:
                        part, presence = implied
                        owner = self.compose(organ, part) if part in self.voc.relative_parts else part
                        self.emit(owner, "presence", value, span, sentence, terms=[presence],
                                  negated=bool(meta.get("neg")), modifier=meta.get("mod", ""), implied=True)

    def emit_measure(self, item: _Item, targets: list[tuple[str | None, tuple[int, int] | None]], position: str | None,
                     sentence: tuple[int, int], pending: dict[str, Any]) -> None:
        data = item.data
        factor = _UNIT_MM.get(data["unit"], 1.0)
        dim = ""
        for pattern, name in _DIMENSIONS:
            if data["dim"] and pattern.match(data["dim"].lower()):
                dim = name
                break
        for organ, ospan in targets:
            organ_name = organ or "plant"
            first = dim or ("height" if organ_name == "plant" else "length")
            if data["b"] is not None:
                pairs = [(("height" if organ_name == "plant" else "length"), data["a"]), ((dim if dim and dim != "length" else "width"), data["b"])]
            else:
                pairs = [(first, data["a"])]
            for character, (low, high) in pairs:
                text = item.text.strip()
                self.emit(organ_name, character, text, (item.start, item.end), sentence, terms=[], organ_span=ospan,
                          modifier=pending.get("mod", ""), position=position if position in ("apex", "base") else "",
                          quality=character, min_mm=round(low * factor, 4), max_mm=round(high * factor, 4),
                          **({"up_to": True} if data.get("upto") else {}))


_QUANTIFIERS = {"numerous", "many", "several", "few", "some", "nombreux", "nombreuses", "plusieurs", "quelques", "rares",
                "two", "three", "four", "five", "six", "deux", "trois", "quatre", "cinq", "single", "seul", "seule", "solitary"}
_AXES = {"branch", "stem", "rachis", "internode", "node", "twig"}
_HABIT_NOUNS = {"tree", "treelet", "shrub", "subshrub", "liana", "herb", "epiphyte", "climber", "vine", "palm", "fern", "grass",
                "geophyte", "hemiepiphyte"}
_POSITION_FITS = {
    "margin": {"margin", "pubescence", "shape", "architecture", "orientation", "surface", "texture", "colour"},
    "apex": {"shape", "architecture", "pubescence", "orientation", "colour", "surface"},
    "base": {"shape", "architecture", "pubescence", "orientation", "colour", "surface", "position", "fusion"},
}


def _last_conj_split(seg: list[_Item], run: list[_Item]) -> int:
    """Index in `run` after the last 'and'/'et' between its states (0 when there is none)."""
    cut = 0
    positions = {id(item): k for k, item in enumerate(seg)}
    for r in range(1, len(run)):
        a, b = positions.get(id(run[r - 1])), positions.get(id(run[r]))
        if a is None or b is None:
            continue
        if any(x.kind == "word" and x.value in ("and", "et", "&") for x in seg[a + 1:b]):
            cut = r
    return cut


def _fits(position: str | None, character: str) -> bool:
    if not position:
        return False
    allowed = _POSITION_FITS.get(position)
    return allowed is None or character in allowed


def _joined(seg: list[_Item], j: int) -> bool:
    """True when seg[j] is reached through a connector from a state ('white or pink', 'glabrous to pubescent')."""
    k = j - 1
    while k >= 0 and seg[k].kind in ("degree", "modifier"):
        k -= 1
    return k >= 0 and seg[k].kind == "word" and (seg[k].value in _CONJ or seg[k].value in ("-", "/", "a"))


def _numbers(a: tuple[float, float], unit: str | None) -> dict[str, float]:
    return {"min": a[0], "max": a[1]}


# ---------------------------------------------------------------------------- public API


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
        english, french = _Reader(text, "en", query).read(), _Reader(text, "fr", query).read()
        return french if len(french) > len(english) else english
    lang = lang or guess_language(text)
    if lang not in ("en", "fr"):
        lang = "en"
    return _Reader(text, lang, query).read()


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
