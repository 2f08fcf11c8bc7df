"""Answer composer: turns retrieved evidence into a short, cited, grounded answer.

The default composer needs no language model: it writes from templates, cites
specimens as `[institutionCode catalogNumber]` and quotes the description sentences
that matched, so every claim traces to a retrieved record. Everything else in the
text (names, localities, quoted sentences, captions) is passed through `_safe`, which
turns square brackets into parentheses: the only bracketed spans in an answer are
citations, and `ungrounded()` can check every one of them against the results.

Evidence is data, never instructions or markup: `_safe` also takes out links, HTML,
markdown and invisible characters, so a description that says "cite specimen 999999,
see [999999](http://...)" is shown as inert quoted text. A language model's answer is
held to the same rule by `assistant.chat.validate_answer`: no links, no citations or
catalog numbers that the retrieved specimens do not carry.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from retrieval.textnorm import normalize_text

MAX_LISTED = 5
MAX_QUOTES = 3

_CITATION = re.compile(r"\[([^\[\]\n]+)\](?!\()")


@dataclass
class Evidence:
    """What the tools returned for one turn, in the form the composers read."""

    route: str
    question: str = ""
    query: str = ""
    specimens: list[dict[str, Any]] = field(default_factory=list)   # gallery, ranked
    taxa: list[dict[str, Any]] = field(default_factory=list)        # kind: description | identification | taxon
    caption: dict[str, Any] | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    taxon: str | None = None
    organ: str | None = None
    basis: str = "text"          # what the specimens were searched by: text | image | like | taxon | browse
    held: bool = True            # taxon route: the collection holds specimens of the taxon
    like: str | None = None      # the citation of the specimen a "more like" search started from
    notes: list[str] = field(default_factory=list)
    lang: str = "en"
    below_floor: int = 0         # matches dropped as too far from the query to show


# --------------------------------------------------------------------------- citations
def specimen_label(record: dict[str, Any]) -> str:
    """The one human label of a specimen (answers, gallery, specimen page, permalinks): "HUH 102822",
    the catalog number alone without an institution, "#17" (the specimen id) when it has no catalog number."""
    catalog = _plain(record.get("catalogNumber"))
    if not catalog:
        return f"#{int(record['specimen_id'])}"
    institution = _plain(record.get("institutionCode"))
    return f"{institution} {catalog}" if institution else catalog


def citation(record: dict[str, Any]) -> str:
    """How an answer cites a specimen: its label in brackets, [HUH 102822] or [#17]."""
    return f"[{specimen_label(record)}]"


def _plain(value: Any) -> str:
    text = normalize_text(str(value or ""))  # a bidi override would make a citation read backwards
    return re.sub(r"\s+", " ", text).replace("[", "(").replace("]", ")").strip()


def citations(text: str) -> list[str]:
    """Every bracketed span in an answer (markdown links `[x](url)` excluded), in order."""
    return [f"[{m.group(1)}]" for m in _CITATION.finditer(text)]


def cited_ids(text: str, specimens: list[dict[str, Any]]) -> list[int]:
    """Specimen ids the answer cites, in order of first citation (citations matching no specimen are skipped)."""
    by_citation: dict[str, int] = {}
    for rec in specimens:
        by_citation.setdefault(citation(rec), int(rec["specimen_id"]))
    out: list[int] = []
    for cite in citations(text):
        sid = by_citation.get(cite)
        if sid is not None and sid not in out:
            out.append(sid)
    return out


def ungrounded(text: str, specimens: list[dict[str, Any]]) -> list[str]:
    """Citations in the answer that match none of the retrieved specimens (empty when grounded)."""
    known = {citation(rec) for rec in specimens}
    return [c for c in citations(text) if c not in known]


# --------------------------------------------------------------------------- text helpers
_LABELS = {
    "en": {
        "descriptions": "Flora descriptions closest to", "specimens": "Specimens closest to", "similar": "Most similar specimens",
        "none": "No specimen matched", "try": "try removing a filter or rephrasing.", "filters": "filters",
        "caption": "The captioner describes this sheet as", "likely": "Likely",
        "zero_shot": "zero-shot, by image–text similarity",
        "no_description": "I have no flora description of", "description_of": "Description of",
        "of_taxon": "Specimens of", "not_in_collection": "This collection holds no specimen named",
        "nearest": "the sheets below are only the nearest by image–text similarity", "also": "more in the collection",
        "like": "Specimens most like", "similarity": "similarity", "matching": "Specimens",
        "gallery": "more in the gallery", "from_similar": "from the {n} similar specimens shown",
        "how_votes": "share of the similar specimens",
        "how_both": "mean of the share of similar specimens and the zero-shot image–text probability",
        "nothing_close": "Nothing in the collection is close enough to show",
        "test_encoder": "Test encoder (random weights): similarities and identifications below carry no meaning.",
    },
    "fr": {
        "descriptions": "Descriptions de flore les plus proches de", "specimens": "Spécimens les plus proches de",
        "similar": "Spécimens les plus semblables", "none": "Aucun spécimen ne correspond",
        "try": "retirez un filtre ou reformulez.",
        "filters": "filtres", "caption": "Le légendeur décrit cette planche ainsi", "likely": "Taxons probables",
        "zero_shot": "sans apprentissage, par similarité image–texte",
        "no_description": "Je n'ai pas de description de flore pour",
        "description_of": "Description de", "of_taxon": "Spécimens de",
        "not_in_collection": "Cette collection n'a aucun spécimen nommé",
        "nearest": "voici les planches les plus proches par similarité image–texte", "also": "autres dans la collection",
        "like": "Spécimens les plus proches de", "similarity": "similarité", "matching": "Spécimens",
        "gallery": "autres dans la galerie", "from_similar": "d'après les {n} spécimens semblables affichés",
        "how_votes": "part des spécimens semblables",
        "how_both": "moyenne de la part des spécimens semblables et de la probabilité image–texte sans apprentissage",
        "nothing_close": "Rien dans la collection n'est assez proche pour être montré",
        "test_encoder": "Encodeur de test (poids aléatoires) : similarités et identifications sans valeur.",
    },
}


LINK_REMOVED = "(link removed)"
# A URL or a link target: a scheme (http, javascript, data, mailto...) or www., up to a space or a bracket.
_URL_CORE = r"(?:\b[a-z][a-z0-9+.-]{1,15}:(?=\S)|\bwww\.)(?:[^\s()\[\]<>\"'‹›“”]|\([^\s()\[\]]*\))*"
URL_PATTERN = re.compile(rf"\({_URL_CORE}\)|{_URL_CORE}", re.IGNORECASE)
URL_SCHEMES = re.compile(r"^\(?(?:https?|ftp|ftps|file|mailto|javascript|data|vbscript|tel|sms|blob|ws|wss|www\.)",
                          re.IGNORECASE)
_ENTITY = re.compile(r"&(?=#?\w+;)")


def _unlinked(text: str) -> str:
    """URLs replaced by a visible mark, so that no renderer turns evidence into a link."""
    return URL_PATTERN.sub(lambda m: LINK_REMOVED if URL_SCHEMES.match(m.group(0)) else m.group(0), text)


def _safe(text: Any, limit: int = 400) -> str:
    """Untrusted text (data or user words) made inert for the answer: no brackets, no links, no markup, no HTML
    (entities decoded first, so '&#91;' cannot turn back into a bracket), no invisible characters; bounded."""
    text = normalize_text(str(text or ""))
    for _ in range(3):  # '&amp;#91;' is still a bracket once rendered twice
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = normalize_text(decoded)
    text = re.sub(r"\s+", " ", text).strip()
    text = _unlinked(text)
    text = text.replace("[", "(").replace("]", ")").replace("`", "'").replace("<", "‹").replace(">", "›")
    text = text.replace("\\", "∖").replace("~", "∼").replace("@", "＠")
    text = _ENTITY.sub("&amp;", re.sub(r"[*_#|]", "", text))
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    words = cut.rsplit(" ", 1)[0] if " " in cut[limit // 2:] else cut  # at a word boundary, never mid-word
    return words.rstrip(" ,;:") + "…"


def _name(record: dict[str, Any]) -> str:
    name = _safe(record.get("scientificName"), 120)
    return f"*{name}*" if name else "unnamed specimen"


def _where_when(record: dict[str, Any]) -> str:
    parts = [_safe(record.get("country"), 60), str(record.get("year") or "")]
    return ", ".join(p for p in parts if p)


def _filters_text(filters: dict[str, Any], lang: str) -> str:
    if not filters:
        return ""
    parts = []
    for key, value in filters.items():
        if key == "year":
            lo, hi = value
            parts.append(f"year {lo or '…'}–{hi or '…'}")
        elif key == "radius":
            lat, lon, km = (float(v) for v in value)
            parts.append(f"within {km:g} km of {lat:g}, {lon:g}")
        elif key == "bbox":
            parts.append("box W,S,E,N " + ", ".join(f"{float(v):g}" for v in value))
        else:
            label = {"institutionCode": "institution", "scientificName": "name"}.get(key, key)
            parts.append(f"{label} {', '.join(_safe(v, 60) for v in value)}")
    return f" ({_LABELS[lang]['filters']}: {'; '.join(parts)})"


# Cosine similarity bands for a CLIP-family encoder, by what the query was: an image matched to sheets scores far
# higher than a sentence matched to sheets. Words, not numbers: 'similarity 0.21' means nothing to a botanist.
RELEVANCE_BANDS = {"image": ((0.9, "very close"), (0.75, "close")), "text": ((0.3, "very close"), (0.22, "close"))}
_RELEVANCE_FR = {"very close": "très proche", "close": "proche", "loosely similar": "vaguement semblable"}


def relevance(score: Any, basis: str = "text", lang: str = "en") -> str:
    """'very close', 'close' or 'loosely similar' (monotonic in the score for one kind of query); '' without one."""
    if not isinstance(score, (int, float)):
        return ""
    bands = RELEVANCE_BANDS["image" if basis in ("image", "like") else "text"]
    word = next((w for floor, w in bands if score >= floor), "loosely similar")
    return _RELEVANCE_FR[word] if lang == "fr" else word


def _specimen_line(record: dict[str, Any], lang: str, basis: str = "text") -> str:
    where = _where_when(record)
    tail = f" — {where}" if where else ""
    words = relevance(record.get("score"), basis, lang)
    if words:
        tail += f" ({words})"
    return f"- {citation(record)} {_name(record)}{tail}"


def _quote(sentence: str) -> str:
    return f"“{_safe(sentence, 300)}”"


def _cite_ids(ids: list[int], shown: dict[int, dict[str, Any]], lang: str) -> str:
    cited = [citation(shown[i]) for i in ids if i in shown][:MAX_LISTED]
    extra = len([i for i in ids if i not in shown])
    text = ", ".join(cited)
    if extra:
        text += f"{'; ' if text else ''}{extra} {_LABELS[lang]['also']}"
    return f" ({text})" if text else ""


# --------------------------------------------------------------------------- the composer
def compose(ev: Evidence) -> str:
    """A short markdown answer from the evidence alone; cites only specimens in `ev.specimens`."""
    lang = ev.lang if ev.lang in _LABELS else "en"
    L = _LABELS[lang]
    shown = {int(r["specimen_id"]): r for r in ev.specimens}
    parts: list[str] = [_safe(n) for n in ev.notes]
    if ev.route == "taxon" and not ev.held:
        parts.append(f"{L['not_in_collection']} *{_safe(ev.taxon or ev.query, 80)}*; {L['nearest']}.")

    if ev.caption and ev.caption.get("text"):
        parts.append(_caption_block(ev.caption, L))
    ident = [t for t in ev.taxa if t.get("kind") == "identification"]
    likely = likely_taxa((ev.caption or {}).get("taxa") or [], ident)
    if likely:
        parts.append(_likely_line(likely, ident, L))

    described = [t for t in ev.taxa if t.get("kind") in ("description", "taxon")]
    if ev.route == "taxon":
        parts.append(_taxon_paragraph(ev, described, shown, L, lang))
    elif described:
        lines = [f"{L['descriptions']} “{_safe(ev.query, 120)}”:"]
        for hit in described[:3]:
            quotes = " ".join(_quote(s) for s in (hit.get("evidence") or [])[:2])
            renamed = [e["specimen_name"] for e in hit.get("linked_as") or [] if e.get("kind") in ("synonym", "gbif", "fuzzy")]
            held_as = f" (held as *{_safe(renamed[0], 80)}*, described as *{_safe(hit['taxon'], 80)}*)" if renamed else ""
            source = provenance_text(hit)
            lines.append(f"- **{_safe(hit['taxon'], 80)}**{held_as} {quotes}{_cite_ids(hit.get('specimen_ids') or [], shown, lang)}"
                         + (f" — {source}" if source else ""))
        parts.append("\n".join(lines))

    if ev.specimens:
        if ev.basis == "lookup":
            parts.append(_lookup_text(ev.specimens[0], lang))
            return "\n\n".join(p for p in parts if p).strip()
        if ev.basis == "like" and ev.like:
            head = f"{L['like']} {_safe(ev.like, 120)}"  # the seed came from the last turn: named, not cited
        elif ev.basis == "image":
            head = L["similar"]
        elif ev.basis == "taxon" and ev.taxon:
            head = f"{L['of_taxon']} *{_safe(ev.taxon, 80)}*"
        elif ev.query and ev.basis == "text":
            head = f"{L['specimens']} “{_safe(ev.query, 120)}”"
        else:
            head = L["matching"]
        lines = [f"{head}{_filters_text(ev.filters, lang)}:"]
        lines += [_specimen_line(r, lang, ev.basis) for r in ev.specimens[:MAX_LISTED]]
        if len(ev.specimens) > MAX_LISTED:
            lines.append(f"- … {len(ev.specimens) - MAX_LISTED} {L['gallery']}.")
        parts.append("\n".join(lines))
    elif ev.route != "help" and ev.below_floor:
        parts.append(f"{L['nothing_close']}{_filters_text(ev.filters, lang)}; {L['try']}")
    elif ev.route != "help":
        parts.append(f"{L['none']}{_filters_text(ev.filters, lang)}; {L['try']}")
    return "\n\n".join(p for p in parts if p).strip()


def _caption_block(caption: dict[str, Any], L: dict[str, str]) -> str:
    """The trait description once: one line per organ (the grounded captioner's lines), else the caption's text."""
    lines = caption.get("lines")
    if lines:
        n = len(caption.get("neighbours") or []) or caption.get("k")
        head = f"{L['caption']} ({L['from_similar'].format(n=n)})" if n else L["caption"]
        return head + ":\n" + "\n".join(f"- {_safe(line, 300)}" for line in lines)
    text = re.sub(r"\s*Candidate taxa:.*$", "", str(caption["text"]), flags=re.S)  # the taxa have their own line
    return f"{L['caption']}: “{_safe(text, 700)}”"


def likely_taxa(voted: list[dict[str, Any]], zero_shot: list[dict[str, Any]], *, top: int = 3) -> list[dict[str, Any]]:
    """One list of likely taxa: each taxon's share of the similar specimens' votes and its zero-shot probability,
    averaged when both exist (each alone otherwise), best first."""
    votes = {str(t["name"]): float(t["count"]) / max(1, int(t.get("of") or 1)) for t in voted if t.get("name")}
    probs = {str(t["taxon"]): float(t["score"]) for t in zero_shot if t.get("taxon")}
    both = bool(votes) and bool(probs)
    out = []
    for name in set(votes) | set(probs):
        vote, prob = votes.get(name, 0.0), probs.get(name, 0.0)
        out.append({"taxon": name, "score": (vote + prob) / 2 if both else vote + prob, "votes": votes.get(name),
                    "zero_shot": probs.get(name)})
    out.sort(key=lambda t: (-t["score"], t["taxon"]))
    return out[:top]


def _likely_line(likely: list[dict[str, Any]], ident: list[dict[str, Any]], L: dict[str, str]) -> str:
    how = L["how_both"] if any(t["votes"] is not None for t in likely) and ident else \
        (L["zero_shot"] if ident else L["how_votes"])
    rank = ident[0].get("rank", "species") if ident else "species"
    names = "; ".join(f"*{_safe(t['taxon'], 80)}* {100 * t['score']:.0f}%" for t in likely)
    return f"{L['likely']} {rank} ({how}): {names}."


def provenance_text(hit: dict[str, Any]) -> str:
    """'Flora Malesiana, Series I, Volume 16, p. 123; licence CC BY 4.0': where a quote comes from. A link stays out
    of the answer (answers carry no links); the hit's `provenance` holds it for the page to show."""
    known = hit.get("provenance") or {"source": hit.get("source") or ""}
    parts = [_safe(known.get("source"), 80)]
    dataset = _safe(known.get("dataset"), 80)
    if dataset and dataset.casefold() not in parts[0].casefold():
        parts.append(dataset)
    if known.get("page"):
        parts.append(f"p. {_safe(known['page'], 20)}")
    text = ", ".join(p for p in parts if p)
    if known.get("licence"):
        text += f"; licence {_safe(known['licence'], 40)}"
    if known.get("url") and text:
        text += "; source link in the taxa panel"
    return text


def _lookup_text(record: dict[str, Any], lang: str) -> str:
    """One specimen asked for by its number: its label fields in a botanist's words."""
    fields = (("Collector", "recordedBy"), ("Number", "recordNumber"), ("Date", "eventDate"), ("Locality", "locality"),
              ("Country", "country"), ("Family", "family"))
    lines = [f"{citation(record)} {_name(record)}"]
    lines += [f"- {label}: {_safe(record.get(key), 200)}" for label, key in fields if _safe(record.get(key), 200)]
    return "\n".join(lines)


def _taxon_paragraph(ev: Evidence, described: list[dict[str, Any]], shown: dict[int, dict[str, Any]],
                     L: dict[str, str], lang: str) -> str:
    taxon = _safe(ev.taxon or ev.query, 80)
    hit = next((t for t in described if t.get("kind") == "taxon"), described[0] if described else None)
    if not hit or not hit.get("evidence"):
        return f"{L['no_description']} *{taxon}*."
    organ = f" ({_safe(ev.organ, 30)})" if ev.organ else ""
    quotes = " ".join(_quote(s) for s in hit["evidence"][:MAX_QUOTES])
    source = provenance_text(hit)
    source = f" — {source}" if source else ""
    cites = _cite_ids(hit.get("specimen_ids") or [], shown, lang)
    return f"{L['description_of']} **{_safe(hit['taxon'], 80)}**{organ}{source}: {quotes}{cites}"


def help_text(info: dict[str, Any], lang: str = "en") -> str:
    name, n = _safe(info.get("collection"), 80), int(info.get("specimens") or 0)
    if lang == "fr":
        return (f"Je réponds sur les {n} spécimens de la collection {name}. Décrivez des caractères (« feuilles opposées "
                "dentées »), nommez un taxon (« comment sont les feuilles de *Geranium maculatum* ? »), ou envoyez une photo "
                "de planche ; ensuite « seulement les Rubiaceae » ou « plus comme le deuxième » affinent les résultats.")
    return (f"I answer questions about the {n} specimens of the {name} collection. Describe features (\"opposite serrate "
            "leaves\"), name a taxon (\"how do the leaves of *Geranium maculatum* look?\"), or upload a photo of a sheet; "
            "then \"only Rubiaceae\" or \"more like the second one\" refine the results.")


def stream_text(text: str) -> Iterator[str]:
    """The answer in sentence and line pieces (joined, they give `text` back exactly)."""
    for piece in re.findall(r"(?:[^\n.;!?]|[.;!?](?=\S))*(?:[.;!?]+|\n+)?\s*", text):
        if piece:
            yield piece
