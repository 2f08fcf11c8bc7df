"""Deterministic per-turn router: what kind of question is this, and what does it ask for?

A rule-based router (not a language model) so the same question always runs the
same tools, the demo works with no model server, and the tests can pin every case.
It reads English and, where cheap, French; names, families, countries and
institutions are recognised only when the collection holds them (see `vocab`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from assistant.vocab import Vocabulary
from retrieval.errors import BadInput
from retrieval.filters import Filters, parse_filters
from retrieval.textnorm import normalize_text

MAX_TEXT = 2000
DEFAULT_K = 8
RANKS = ("species", "genus", "family")


@dataclass
class Plan:
    """What one turn asks for; the agent turns it into tool calls."""

    route: str                          # help | search | morphology | taxon | image | image_question | followup
    query: str = ""                     # text for the specimen / description search
    filters: Filters = field(default_factory=dict)   # filters said in this turn (parse_filters form)
    taxon: str | None = None            # the taxon asked about
    taxon_kind: str | None = None       # species | genus | family | described | unknown
    organ: str | None = None            # leaves, flowers, ... when the question names one
    action: str = "new"                 # followup: refine | like | more | clear
    like_rank: int | None = None        # "the second one" -> 2 ("the last one" -> -1)
    like_catalog: str | None = None     # "more like 102822"
    identify: str | None = None         # rank to identify the uploaded image at
    lang: str = "en"
    k: int = DEFAULT_K
    catalog: str | None = None          # specimen lookup: a catalog number ('HUH 17348') or an occurrenceID
    collector: str | None = None        # "collected by Fernald": part of recordedBy
    locality: str | None = None         # "at Mount Desert": part of locality
    suggestion: str | None = None       # the collection's spelling of a misspelt taxon ("did you mean")


# --------------------------------------------------------------------------- vocabularies of the rules
ORGANS: dict[str, tuple[str, ...]] = {
    "leaves": ("leaf", "leaves", "leaflet", "leaflets", "lamina", "blade", "blades", "feuille", "feuilles", "foliole",
               "folioles", "limbe"),
    "flowers": ("flower", "flowers", "bloom", "blooms", "fleur", "fleurs"),
    "petals": ("petal", "petals", "corolla", "pétale", "pétales", "corolle"),
    "sepals": ("sepal", "sepals", "calyx", "sépale", "sépales", "calice"),
    "inflorescence": ("inflorescence", "inflorescences", "raceme", "panicle", "cyme", "umbel", "grappe"),
    "fruits": ("fruit", "fruits", "berry", "berries", "capsule", "capsules", "drupe", "pod", "pods", "baie", "baies", "gousse"),
    "seeds": ("seed", "seeds", "graine", "graines"),
    "stems": ("stem", "stems", "branch", "branches", "twig", "twigs", "tige", "tiges", "rameau", "rameaux"),
    "bark": ("bark", "écorce"),
    "roots": ("root", "roots", "rhizome", "rhizomes", "tuber", "bulb", "racine", "racines"),
    "stipules": ("stipule", "stipules"),
    "indumentum": ("hair", "hairs", "hairy", "indumentum", "pubescence", "pubescent", "poils", "poilu"),
}
_ORGAN_OF = {w: organ for organ, forms in ORGANS.items() for w in forms}

_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "last": -1, "premier": 1, "première": 1, "deuxième": 2, "seconde": 2, "second": 2,
    "troisième": 3, "quatrième": 4, "cinquième": 5, "sixième": 6, "septième": 7, "huitième": 8, "dernier": -1,
    "dernière": -1,
}
_ORDINAL = re.compile(
    r"\b(?:(?P<word>" + "|".join(sorted(_ORDINALS, key=len, reverse=True)) + r")|(?P<num>\d{1,2})(?:st|nd|rd|th|e|ème|er|ère)"
    r"|(?:number|no\.?|n°|numéro|#)\s*(?P<n>\d{1,2}))(?!\w)", re.IGNORECASE)
_LIKE = re.compile(r"\b(?:more like|similar to|like (?:the|that|this|it|number|no\b|#)|ones like|same as|resembl\w*|"
                   r"plus comme|comme (?:le|la|l'|celui|celle|ça)|semblables?|similaires?|ressemblant)", re.IGNORECASE)
_THIS_ONE = re.compile(r"\b(?:this one|that one|like this|like that|like it|celui-ci|celle-ci|comme ça)\b", re.IGNORECASE)
_MORE = re.compile(r"^\W*(?:show\s+)?(?:me\s+)?more(?:\s+(?:results|specimens|sheets|please))*\W*$"
                   r"|^\W*(?:encore|plus de résultats|d'autres)\W*$", re.IGNORECASE)
_CLEAR = re.compile(r"\b(?:remove|clear|drop|reset|without|no more)\s+(?:the\s+|all\s+)?filters?\b"
                    r"|\ball (?:countries|families|years|institutions)\b"
                    r"|\bsans (?:les )?filtres?\b|\b(?:enlève|supprime)\w* (?:les )?filtres?\b", re.IGNORECASE)
_REFINE = re.compile(r"^\W*(?:only|just|restrict|limit|filter|now|and|but|what about|how about|same|keep|exclusively|"
                     r"seulement|uniquement|juste|et|mais|que|pareil|maintenant|et pour)\b", re.IGNORECASE)
_HELP = re.compile(r"^\W*(?:hi|hello|hey|help|bonjour|salut|aide|what can you do|que sais-tu faire|how does this work|"
                   r"comment ça marche)\W*$", re.IGNORECASE)
_IDENTIFY = re.compile(r"\b(?:(?:what|which) (?:species|genus|family|plant|taxon)(?: is (?:this|it))?"
                       r"|what(?:'s| is)(?: this| it)?|is (?:this|it)\b|identify|identification|name of"
                       r"|qu'est-ce|quelle (?:espèce|famille|plante)|quel (?:genre|taxon)|identifie\w*|c'est quoi)\b",
                       re.IGNORECASE)
_RANK_WORDS = {"family": "family", "famille": "family", "genus": "genus", "genera": "genus", "genre": "genus",
               "species": "species", "espèce": "species"}
_TAXON_CUES = (
    re.compile(r"how (?:do|does|did)\s+(?:the\s+)?(?:(?P<organ>[\w-]+)\s+of\s+)?(?P<name>.+?)\s+look\b", re.IGNORECASE),
    re.compile(r"what (?:do|does)\s+(?:the\s+)?(?:(?P<organ>[\w-]+)\s+of\s+)?(?P<name>.+?)\s+look like", re.IGNORECASE),
    re.compile(r"\b(?:describe|description of|tell me about|characteristics of|features of|traits of|morphology of|"
               r"what are the (?P<organ2>[\w-]+) of)\s+(?:the\s+)?(?:(?P<organ>[\w-]+)\s+of\s+)?(?P<name>.+)", re.IGNORECASE),
    re.compile(r"(?:comment sont|à quoi ressembl\w+|a quoi ressembl\w+|décri\w*|description d[eu']?)\s*(?:les\s+|la\s+|le\s+)?"
               r"(?:(?P<organ>[\w-]+)\s+(?:de|du|d')\s*)?(?P<name>.+)", re.IGNORECASE),
)
_LATIN = re.compile(r"^(?:[A-Z][a-zà-ÿ-]+)(?:\s+(?:×\s*)?[a-zà-ÿ-]{2,})?(?:\s+(?:var\.|subsp\.|f\.)\s+[a-zà-ÿ-]+)?$")
_BOILERPLATE = re.compile(
    r"^\W*(?:please\s+)?(?:(?:can|could) you\s+)?"
    r"(?:show(?: me)?|find(?: me)?|search(?: for)?|look(?:ing)? for|list|give me|get me|"
    r"are there(?: any)?|do you have|i want|i need|which|what|any|montre(?:-moi|z-moi)?|trouve(?:-moi)?|cherche|quels?|quelles?|"
    r"y a-t-il|avez-vous)\b\s*", re.IGNORECASE)
_FILLER = re.compile(r"\b(?:collected|gathered|récoltés?|specimens?|sheets?|samples?|plants?|ones?|results?|images?|pictures?|photos?|"
                     r"some|any|the|with|of|from|in|"
                     r"similar|like|this|that|these|those|please|me|show|more|only|just|have|has|are|is|spécimens?|planches?|"
                     r"plantes?|des|les|du|de|la|le|avec|ceux|celles|similaires|semblables|qui|ont|seulement|uniquement|et|en|"
                     r"au|aux|pour|to|at|and|a|an|it|species|genus|family|espèce|genre|famille|c'est)\b", re.IGNORECASE)
_FRENCH = frozenset("les des feuilles fleurs comment quelles quels avec spécimens montre seulement uniquement du une est sont "
                    "ressemblent plus comme deuxième troisième qui ont fruits tige écorce espèce famille genre "
                    "trouve cherche semblables similaires celui celle dernier".split())

_PREP = r"(?:(?:collected|found|gathered|récoltés?)\s+)?(?:from|in|of|at|du|de|des|d'|en|au|aux)?\s*(?:the\s+)?"
_YEAR_RULES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"\b(?:between|from|entre|de)\s+(\d{4})\s+(?:and|to|et|à)\s+(\d{4})\b", re.I), lambda a, b: (int(a), int(b))),
    (re.compile(r"\b(\d{4})\s*(?:-|–|\.\.|to)\s*(\d{4})\b", re.I), lambda a, b: (int(a), int(b))),
    (re.compile(r"\b(?:before|prior to|earlier than|older than|avant)\s+(\d{4})\b", re.I), lambda a: (None, int(a) - 1)),
    (re.compile(r"\b(?:until|up to|jusqu'en|jusqu'à)\s+(\d{4})\b", re.I), lambda a: (None, int(a))),
    (re.compile(r"\b(?:after|later than|newer than|après)\s+(\d{4})\b", re.I), lambda a: (int(a) + 1, None)),
    (re.compile(r"\b(?:since|depuis)\s+(\d{4})\b", re.I), lambda a: (int(a), None)),
    (re.compile(r"\b(?:in|from|of|the|des)?\s*(?:the\s+)?(?:années\s+)?(\d{3})0(?:s|'s)\b", re.I),
     lambda a: (int(a) * 10, int(a) * 10 + 9)),
    (re.compile(r"\b(?:in|en|from|of|collected in|récoltés? en)\s+(\d{4})\b", re.I), lambda a: (int(a), int(a))),
)


# A specimen asked for by its identifier: "Show me HUH 17348", "specimen 17348", "urn:catalog:HUH:A:17348".
_OCCURRENCE_ID = r"(?:urn:[\w.:-]+|https?://\S+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
_LOOKUP = re.compile(
    r"^\W*(?:(?:please\s+)?(?:show(?:\s+me)?|open|find|get|display|look\s*up|montre(?:-moi)?|affiche|ouvre)\s+)?"
    r"(?:the\s+|le\s+)?(?:specimens?|sheet|spécimen|planche|record)?\s*(?:with\s+)?"
    r"(?:catalog(?:ue)?\s+(?:number|no\.?)|occurrence\s*id|no\.|number|numéro|#)?\s*"
    rf"(?P<id>{_OCCURRENCE_ID}|(?-i:[A-Z]+(?:[-:][A-Z0-9]+)*[-:][A-Z]*\d+)|(?-i:[A-Z]{{1,8}}[\s:-]?)?\d[\w.-]*\d|\d{{3,}})\W*$", re.IGNORECASE)
_COLLECTOR = re.compile(r"\b(?:collected|gathered|made|récoltés?|collectés?)?\s*(?:by|par)\s+"
                        r"(?P<name>(?:[A-Z][\w.'-]*\.?\s*)+?)(?=\s*(?:$|[,;?!]|\b(?:in|from|at|before|after|between|"
                        r"since|until|during|with|and|en|avant|après|depuis)\b))")
_LOCALITY = re.compile(r"\b(?:at|near|around|locality|près de|à)\s+(?P<place>(?:[A-Z][\w'-]*\s*)+)")
_FAMILY_WORD = re.compile(r"\b[A-Z][a-z]+ace(?:ae|a|e)\b")


def lookup_id(text: str) -> str | None:
    """The identifier when the whole question asks for one specimen, else None (a bare year is not one)."""
    hit = _LOOKUP.match(text)
    if not hit:
        return None
    ident = hit.group("id").strip()
    return None if re.fullmatch(r"1[5-9]\d\d|20\d\d", ident) else ident


def extract_people_places(text: str) -> tuple[str | None, str | None, list[tuple[int, int]]]:
    """(collector, locality, spans): 'collected by Fernald', 'at Mount Desert' (capitalised names only)."""
    spans = []
    collector = locality = None
    hit = _COLLECTOR.search(text)
    if hit:
        collector = hit.group("name").strip(" .")
        spans.append(hit.span())
    place = _LOCALITY.search(text)
    if place:
        locality = place.group("place").strip()
        spans.append(place.span())
    return collector or None, locality or None, spans


# --------------------------------------------------------------------------- extraction
def language(text: str) -> str:
    toks = re.findall(r"[\wà-ÿ'-]+", text.casefold())
    starts_french = bool(toks) and toks[0] in {"montre", "montre-moi", "trouve", "comment", "quelles", "quels"}
    return "fr" if sum(t in _FRENCH for t in toks) >= 2 or starts_french else "en"


def organ_of(text: str) -> str | None:
    for word in re.findall(r"[\wà-ÿ-]+", text.casefold()):
        if word in _ORGAN_OF:
            return _ORGAN_OF[word]
    return None


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + " " + text[end:]
    return re.sub(r"\s+", " ", text).strip()


def extract_filters(text: str, vocab: Vocabulary) -> tuple[Filters, list[tuple[int, int]]]:
    """Family, country, institution and year filters said in the text, with the spans they occupy."""
    raw: dict[str, Any] = {}
    spans: list[tuple[int, int]] = []
    for m in vocab.find(text, kinds=("family", "country", "institution")):
        raw.setdefault({"family": "family", "country": "country", "institution": "institution"}[m.kind], []).append(m.value)
        spans.append((_preposition_start(text, m.start), m.end))
    for pattern, make in _YEAR_RULES:
        hit = pattern.search(text)
        if hit:
            lo, hi = make(*hit.groups())
            if all(y is None or 1500 <= y <= 2100 for y in (lo, hi)) and (lo is None or hi is None or lo <= hi):
                raw["year"] = (lo, hi)
                spans.append(hit.span())
            break
    return parse_filters(raw), spans


def _preposition_start(text: str, start: int) -> int:
    hit = re.search(_PREP + r"$", text[:start], re.IGNORECASE)
    return hit.start() if hit and hit.group(0).strip() else start


def clean_query(text: str) -> str:
    """The descriptive part of a question: boilerplate and dangling little words removed."""
    text = re.sub(r"[*_`#>\[\]]", " ", text)
    text = _BOILERPLATE.sub("", text).strip(" ?!.,;:")
    text = re.sub(r"^(?:(?:the\s+)?(?:ones|specimens?|sheets?|plants?|spécimens?|plantes?|ceux|celles)\s+)?"
                  r"(?:with|having|that have|which have|avec|qui ont)\s+", "", text, flags=re.I)
    text = re.sub(r"(?:\s+(?:from|in|of|at|with|and|collected|gathered|found|held|du|de|des|en|avec|et|récolté\w*))+$", "",
                  text, flags=re.I)
    return re.sub(r"\s+", " ", text).strip(" ?!.,;:")


def _is_filler(text: str) -> bool:
    return not _FILLER.sub(" ", re.sub(r"[^\w\s'-]", " ", text)).strip()


def _ordinal(text: str) -> int | None:
    hit = _ORDINAL.search(text)
    if not hit:
        return None
    if hit.group("word"):
        return _ORDINALS[hit.group("word").casefold()]
    return int(hit.group("num") or hit.group("n"))


def _identify_rank(text: str) -> str:
    for word in re.findall(r"[\wè]+", text.casefold()):
        if word in _RANK_WORDS:
            return _RANK_WORDS[word]
    return "species"


def _taxon_in(text: str, vocab: Vocabulary, italics: list[str]) -> tuple[str | None, str | None, str | None]:
    """(taxon, kind, organ) when the text asks about a named taxon."""
    for cue in _TAXON_CUES:
        hit = cue.search(text)
        if not hit:
            continue
        name = re.sub(r"^(?:the|les?|la|l')\s+", "", hit.group("name").strip(" ?!.,;:*_\"'"), flags=re.I).strip(" *_")
        organ = organ_of(hit.groupdict().get("organ") or hit.groupdict().get("organ2") or "")
        found = [m for m in vocab.find(name) if m.kind in ("species", "described", "genus", "family")]
        if found:
            return found[0].value, found[0].kind, organ or organ_of(text)
        name = re.split(r"\s+(?:look|leaves|flowers|in|from|with|et|avec)\b", name)[0].strip(" *_")
        if _LATIN.match(name):
            return name, "unknown", organ or organ_of(text)
    for span in italics:
        found = [m for m in vocab.find(span) if m.kind in ("species", "described", "genus", "family")]
        if found:
            return found[0].value, found[0].kind, organ_of(text)
        if _LATIN.match(span.strip()):
            return span.strip(), "unknown", organ_of(text)
    found = [m for m in vocab.find(text) if m.kind in ("species", "described", "genus")]
    if found:
        return found[0].value, found[0].kind, organ_of(text)
    return None, None, None


# --------------------------------------------------------------------------- the router
def route_turn(text: str | None, *, has_image: bool = False, state: dict[str, Any] | None = None,
               vocab: Vocabulary | None = None, k: int = DEFAULT_K) -> Plan:
    """Decide what one chat turn asks for. Pure: no model, no I/O. Any string gets a plan or a one-line BadInput."""
    text = normalize_text(text or "").strip()  # no NUL, control or bidi characters past this point
    if len(text) > MAX_TEXT:
        raise BadInput(f"the question is {len(text)} characters long; keep it under {MAX_TEXT}")
    if not text and not has_image:
        raise BadInput("empty question: type a question or upload a specimen photo")
    vocab = vocab or Vocabulary()
    italics = [m.group(2) for m in re.finditer(r"(\*{1,2}|_)([^*_\n]+?)\1", text)]
    plain = re.sub(r"[*_`]", "", text)
    lang = language(plain)
    filters, spans = extract_filters(plain, vocab)
    rest = _cut(plain, spans)
    has_last = bool((state or {}).get("last"))

    if has_image:
        asks = bool(_IDENTIFY.search(plain))
        if not plain or _is_filler(rest) and not filters or (asks and not filters and _is_filler(_IDENTIFY.sub(" ", rest))):
            return Plan("image", identify=_identify_rank(plain), lang=lang, k=k)
        query = "" if _is_filler(rest) else clean_query(_IDENTIFY.sub(" ", rest))
        return Plan("image_question", query=query if not _is_filler(query) else "", filters=filters,
                    identify=_identify_rank(plain) if asks else None, organ=organ_of(plain), lang=lang, k=k)

    if _HELP.match(plain):
        return Plan("help", lang=lang, k=k)
    ident = lookup_id(plain)
    if ident and not _LIKE.search(plain):
        return Plan("specimen", query=ident, catalog=ident, lang=lang, k=k)
    collector, locality, where = extract_people_places(rest)
    if collector or locality:
        rest = _cut(rest, where)
        for m in vocab.find(rest, kinds=("species", "genus")):  # "Geranium collected by Fernald"
            filters = {**filters, **({"genus": [m.value]} if m.kind == "genus" else
                                     {"scientificName": vocab.species_values.get(m.value, [m.value])})}
            rest = _cut(rest, [(m.start, m.end)])
        query = clean_query(rest)
        return Plan("search" if _is_filler(query) else "morphology", query="" if _is_filler(query) else query,
                    filters=filters, collector=collector, locality=locality, organ=organ_of(plain), lang=lang, k=k)

    followup = _followup(plain, rest, filters, vocab, lang, k)
    if followup is not None and (has_last or followup.action != "refine"):
        return followup  # without earlier results, "more like the second one" gets a clear error from the agent

    taxon, kind, organ = _taxon_in(text, vocab, italics)
    if taxon:
        near = vocab.suggest(taxon, ("species", "genus", "family", "described")) if kind == "unknown" else None
        typed = re.search(rf"\b{re.escape(taxon)}\s+([a-z][a-z-]{{2,}})\b", plain) if kind == "genus" else None
        if typed and typed.group(1) not in _ORGAN_OF:  # "Geranium maculatun": a species the collection lacks
            near = vocab.suggest(typed.group(0), ("species", "described"))
            if near is not None:
                taxon, kind = typed.group(0), "unknown"
        return Plan("taxon", query=taxon, filters=filters, taxon=taxon, taxon_kind=kind, organ=organ, lang=lang, k=k,
                    suggestion=near.value if near else None)

    query = clean_query(rest)
    if _is_filler(query):
        if not filters:
            raise BadInput("I could not find anything to search for in that question; describe a feature "
                           "(e.g. 'opposite serrate leaves') or name a taxon")
        return Plan("search", query="", filters=filters, lang=lang, k=k)
    return Plan("morphology", query=query, filters=filters, organ=organ_of(plain), lang=lang, k=k,
                suggestion=_near_value(query, vocab))


def _near_value(query: str, vocab: Vocabulary) -> str | None:
    """'from Frnace': a capitalised word the collection nearly holds as a name, family or country ('France')."""
    for word in re.findall(r"\b[A-Z][\w-]{3,}\b", query):
        near = vocab.suggest(word, ("genus", "family", "country"))
        if near is not None and near.value != word:
            return near.value
    return None


def _followup(plain: str, rest: str, filters: Filters, vocab: Vocabulary, lang: str, k: int) -> Plan | None:
    if _MORE.match(plain):
        return Plan("followup", action="more", lang=lang, k=k)
    if _CLEAR.search(plain):
        return Plan("followup", action="clear", filters=filters, lang=lang, k=k)
    rank = _ordinal(plain)
    catalog = re.search(r"\b(?:[A-Z]{1,6}[\s-]?)?\d{4,}\b", plain) if not filters.get("year") else None
    if _LIKE.search(plain) or (rank is not None and re.search(r"\b(?:one|specimen|sheet|result|image|un|une)\b", plain, re.I)):
        if rank is not None:
            return Plan("followup", action="like", like_rank=rank, filters=filters, lang=lang, k=k)
        if catalog:
            return Plan("followup", action="like", like_catalog=catalog.group(0), filters=filters, lang=lang, k=k)
        if _THIS_ONE.search(plain):
            return Plan("followup", action="like", like_rank=1, filters=filters, lang=lang, k=k)
    if _REFINE.match(plain):  # "only Geranium", "just Geranium maculatum": a taxon narrows the last results
        found = vocab.find(rest, kinds=("species", "genus"))
        for m in found:
            if m.kind == "genus":
                filters = {**filters, "genus": [m.value]}
            else:
                filters = {**filters, "scientificName": vocab.species_values.get(m.value, [m.value])}
        rest = _cut(rest, [(m.start, m.end) for m in found])
        if not found and not filters:
            _unknown_value(rest, vocab)  # "only Geraniacae": say why it cannot narrow the results
    if filters and (_REFINE.match(plain) or _is_filler(rest)):
        return Plan("followup", action="refine", filters=filters, lang=lang, k=k)
    return None


def _unknown_value(rest: str, vocab: Vocabulary) -> None:
    """A follow-up naming a value the collection does not hold: a one-line BadInput that says why (the collection
    records no family at all) or what it holds instead (did you mean)."""
    family = _FAMILY_WORD.search(rest)
    if family and not vocab.families:
        raise BadInput(f"this collection records no family for its specimens, so {family.group(0)!r} cannot narrow "
                       "the results; name a genus or species instead")
    for word in re.findall(r"\b[A-Z][\w-]{3,}(?:\s+[a-z][\w-]{3,})?", rest):
        near = vocab.suggest(word)
        if near is not None:
            raise BadInput(f"{word!r} is not in this collection; did you mean {near.value} ({near.kind})?")
