"""Numbers in flora text: ranges, measurements with units and dimensions, counts, and which numbers count organs.

Kept apart from the clause reader because the number grammar ('(0.7-)1-2(-2.5) cm long', '3-5-flowered',
'Brass 13301', '2n = 24') is the part most often corrected, and each rule here can be checked on a string.
"""

from __future__ import annotations

import re

from retrieval.flora.vocab import fold, vocabulary

NUM = r"\d+(?:[.,]\d+)?"
# The largest count a flora states ('Seeds 1000-1200'); bigger bare numbers are catalog or collector numbers.
MAX_COUNT = 2000
# Words after which a number identifies something rather than counts organs.
_NOT_A_COUNT_BEFORE = re.compile(
    r"\b(?:al|et al|coll|leg|herb|specimens?|sheets?|vouchers?|catalog(?:ue)?s?|cat|barcodes?|numbers?|num|n°|"
    r"accessions?|acc|holotype|isotype|lectotype|neotype|syntype|paratype|type|spécimens?|échantillons?|numéros?|"
    r"récoltes?|collections?|collectors?|station|plot|page|vol|tab|fig)\.?\s*[:#]?\s*$|#\s*$", re.IGNORECASE)
_RANGE_RE = (rf"(?:\(\s*{NUM}\s*-?\s*\)\s*-?\s*)?{NUM}(?:\s*(?:-|–|—)\s*{NUM})*"
             rf"(?:\s*\(\s*(?:-|–)?\s*{NUM}\s*\))?")
MEASURE_RE = re.compile(
    rf"(?P<pre>(?:up to|to|c\.|ca\.|about|jusqu'à|atteignant|de)\s*)?"
    rf"(?P<a>{_RANGE_RE})(?:\s*(?:x|×|X|by|sur)\s*(?P<b>{_RANGE_RE}))?\s*(?P<unit>mm|cm|dm|µm|μm|um|km|m)(?![a-zA-Zà-ÿ])"
    rf"(?:\s*(?P<dim>long|wide|broad|across|in diam(?:eter)?|diam(?:eter)?|thick|tall|high|in height|in length|de long|de large|"
    rf"de diam[eè]tre|de haut|d'[ée]paisseur|long(?:ue|s|ues)?|larg(?:e|es)|haut(?:e|s|es)?|[ée]pais(?:se|ses)?)(?![a-zA-Zà-ÿ])"
    rf"(?:(?<=diam)\.|(?<=diameter)\.(?=\s*[a-z,;]))?)?")
SUFFIX_RE = re.compile(rf"(?P<a>{_RANGE_RE}(?:\s*-?\s*(?:or|to|ou|à)\s+{NUM})?)\s*-\s*(?P<suffix>[a-zà-ÿ]{{3,}})")
COUNT_RE = re.compile(rf"(?P<a>{_RANGE_RE})(?P<pairs>\s+(?:pairs|paires|pair)(?:\s+(?:of|de))?)?(?![\d.,]*\s*(?:mm|cm|dm|m|µm|μm|%|°))")
CHROMOSOME_RE = re.compile(r"2n\s*=\s*[\d(),\s]+\d\)?")

UNIT_MM = {"mm": 1.0, "cm": 10.0, "dm": 100.0, "m": 1000.0, "km": 1e6, "µm": 0.001, "μm": 0.001, "um": 0.001}
_DIMENSIONS = [
    (re.compile(r"^(?:long|in length|de long|long(?:ue|s|ues)?|length|longueur)$"), "length"),
    (re.compile(r"^(?:wide|broad|across|in width|de large|larg(?:e|es)|width|largeur)$"), "width"),
    (re.compile(r"^(?:in diam(?:eter|\.)?|diam(?:eter|\.)?|de diam[eè]tre|diam[eè]tre|in diam)$"), "diameter"),
    (re.compile(r"^(?:tall|high|in height|de haut|haut(?:e|s|es)?|height|hauteur)$"), "height"),
    (re.compile(r"^(?:thick|d'[ée]paisseur|[ée]pais(?:se|ses)?|thickness)$"), "thickness"),
]
# '5-merous', '3-5-flowered': the suffix names the character counted
SUFFIX_CHARACTER = {"flowered": "flower number", "flore": "flower number", "flores": "flower number", "seeded": "seed number",
                    "merous": "merosity", "mere": "merosity", "meres": "merosity", "locular": "locule number",
                    "loculed": "locule number", "loculaire": "locule number", "loculaires": "locule number",
                    "lobed": "lobe number", "lobe": "lobe number", "lobes": "lobe number", "lobee": "lobe number",
                    "lobees": "lobe number", "foliolate": "leaflet number", "foliole": "leaflet number",
                    "folioles": "leaflet number", "foliolee": "leaflet number", "foliolees": "leaflet number",
                    "nerved": "vein number", "veined": "vein number", "jugate": "leaflet pairs", "fid": "division number",
                    "partite": "division number", "celled": "locule number", "ovulate": "ovule number", "valved": "valve number",
                    "ranked": "ranks", "angled": "angles", "winged": "wings", "ribbed": "ribs", "armed": "arms",
                    "toothed": "teeth", "dentate": "teeth", "ovule": "ovule number", "ovules": "ovule number"}


def parse_range(text: str | None) -> tuple[float, float] | None:
    """(low, high) of '3-5', '(0.7-)1-2(-2.5)' or '2,5': extremes in parentheses count only when nothing else does."""
    if not text:
        return None
    main = re.sub(r"\([^)]*\)", " ", text)  # extremes in parentheses do not bound the usual range
    numbers = [float(n.replace(",", ".")) for n in re.findall(NUM, main)]
    if not numbers:
        numbers = [float(n.replace(",", ".")) for n in re.findall(NUM, text)]
    if not numbers:
        return None
    return min(numbers), max(numbers)


def identifies_rather_than_counts(before: str, after: str) -> bool:
    """True when a bare number between `before` and `after` is a figure, page, catalog, collector or ratio number."""
    return bool(re.search(r"(?:fig|plate|pl|no|p|pp|nr)\.?\s*$", before, re.IGNORECASE) or re.search(r"[\d/]\s*$", before)
                or re.search(r"\b(?:of|de|d'|in|en|by|sur|than|que|x|×)\s*$", before, re.IGNORECASE)
                or _NOT_A_COUNT_BEFORE.search(before) or re.match(r"\s*/\s*\d", after)
                or _after_collector(before))


def _after_collector(before: str) -> bool:
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


def bounds(a: tuple[float, float]) -> dict[str, float]:
    """The min/max fields of a count trait."""
    return {"min": a[0], "max": a[1]}


def dimension(written: str) -> str:
    """'long', 'de large', 'in diam.' -> length, width, diameter ...; '' when nothing (or nothing known) is written."""
    for pattern, name in _DIMENSIONS:
        if written and pattern.match(written.lower()):
            return name
    return ""


def measured_characters(data: dict, organ: str) -> list[tuple[str, float, float]]:
    """(character, min_mm, max_mm) of a measurement of `organ`: 'a x b' is length by width (height by width for
    the plant), a single range its written dimension or else length (height for the plant)."""
    factor = UNIT_MM.get(data["unit"], 1.0)
    dim = dimension(data["dim"])
    along = "height" if organ == "plant" else "length"
    if data["b"] is not None:
        pairs = [(along, data["a"]), ((dim if dim and dim != "length" else "width"), data["b"])]
    else:
        pairs = [(dim or along, data["a"])]
    return [(character, round(low * factor, 4), round(high * factor, 4)) for character, (low, high) in pairs]
