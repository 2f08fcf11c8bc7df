"""Scientific-name normalisation: the key that joins flora descriptions to specimens.

Specimen labels and floras spell one taxon many ways ("Solanum abutiloides (Griseb.)
Bitter & Lillo", "SOLANUM ABUTILOIDES", "Acorus calamus L. var. angustifolius Schott").
Authorship, qualifiers and case are dropped; genus, epithet and infraspecific rank +
epithet are kept, so the same taxon gives the same string everywhere.
"""

from __future__ import annotations

import re
import unicodedata

_RANKS = {
    "subsp.": "subsp.", "subsp": "subsp.", "ssp.": "subsp.", "ssp": "subsp.", "subspecies": "subsp.",
    "var.": "var.", "var": "var.", "variety": "var.", "v.": "var.",
    "subvar.": "subvar.", "f.": "f.", "fo.": "f.", "forma": "f.", "form": "f.",
    "cv.": "cv.", "nothosubsp.": "nothosubsp.", "nothovar.": "nothovar.",
}
_QUALIFIERS = {"cf.", "cf", "aff.", "aff", "agg.", "s.l.", "s.str.", "s.s.", "sensu", "lato", "stricto", "?"}
_HYBRID = {"×", "x", "X"}
_EPITHET = re.compile(r"^[a-zà-ÿ][a-zà-ÿ\-]*[a-zà-ÿ]$|^[a-zà-ÿ]{2,}$")
_GENUS = re.compile(r"^[A-Z][a-zà-ÿ\-]+$")


def _tokens(name: str) -> list[str]:
    text = unicodedata.normalize("NFKC", name).replace("\u00a0", " ").strip().strip("\"'")
    text = re.sub(r"[\s_]+", " ", text)
    text = re.sub(r"(^|\s)×(?=\w)", r"\1× ", text)  # "×Agropogon" -> "× Agropogon"
    return text.split(" ") if text else []


def normalize_name(name: str) -> str:
    """'Genus epithet [rank infraepithet]' without authorship; '' when no genus is found.

    >>> normalize_name("Acorus calamus L. var. angustifolius Schott")
    'Acorus calamus var. angustifolius'
    """
    if not isinstance(name, str):
        return ""
    tokens = _tokens(name)
    if not tokens:
        return ""
    if all(not t.isalpha() or t.isupper() for t in tokens if any(c.isalpha() for c in t)):
        # an all-capitals label: no case left to tell authors from epithets, keep the first two words
        tokens = [tokens[0].capitalize()] + [t.lower() for t in tokens[1:2]]
    out: list[str] = []
    i = 0
    if tokens[0] in _HYBRID and len(tokens) > 1:
        out.append("×")
        i = 1
    genus = tokens[i].strip(",;")
    if genus.isupper() and len(genus) > 2 and genus.isalpha():
        genus = genus.capitalize()  # "CASSYTHA filiformis"
    if not _GENUS.match(genus):
        genus = genus.capitalize() if genus.isalpha() and genus.islower() else ""
    if not genus:
        return ""
    out.append(genus)
    i += 1
    # skip qualifiers and a subgenus in parentheses before the epithet
    while i < len(tokens) and (tokens[i].lower() in _QUALIFIERS or re.fullmatch(r"\([A-Z][a-z]+\)", tokens[i])):
        i += 1
    if i < len(tokens) and tokens[i] in _HYBRID:
        out.append("×")
        i += 1
    if i >= len(tokens) or not _EPITHET.match(tokens[i].strip(",;")):
        return " ".join(out)
    epithet = tokens[i].strip(",;")
    if epithet in {"sp", "spp", "indet"}:
        return " ".join(out)
    out.append(epithet)
    i += 1
    # authorship may sit between the epithet and the rank: scan for the first rank marker
    while i < len(tokens):
        if tokens[i] in _HYBRID and i + 1 < len(tokens):
            # a hybrid formula ("Quercus alba L. × Q. macrocarpa Michx."): both parents, never the first alone
            second = _hybrid_parent(tokens[i + 1:], genus)
            return " ".join(out) + (" × " + second if second else "")
        rank = _RANKS.get(tokens[i].lower())
        if rank and i + 1 < len(tokens) and _EPITHET.match(tokens[i + 1].strip(",;")):
            out += [rank, tokens[i + 1].strip(",;")]
            i += 2
            continue
        i += 1
    return " ".join(out)


def _hybrid_parent(tokens: list[str], genus: str) -> str:
    """The second parent of a hybrid formula, its genus spelled out ('Q. macrocarpa', 'macrocarpa')."""
    first = tokens[0]
    if re.fullmatch(r"[A-Z]\.", first) and genus.startswith(first[0]):
        tokens = [genus] + tokens[1:]
    elif _EPITHET.match(first.strip(",;")):
        tokens = [genus] + tokens
    return normalize_name(" ".join(tokens))


def species_of(name: str) -> str:
    """The species part of a normalised name ('Genus epithet'), or the name itself (a hybrid formula
    is its own taxon: neither parent's species)."""
    if " × " in name.strip("× ") and len(name.split(" × ")) == 2 and all(" " in p for p in name.split(" × ")):
        return name
    parts = name.split(" ")
    if parts and "×" in parts[:2]:  # "× Agropogon littoralis", "Mentha × piperita"
        return " ".join(parts[:3])
    return " ".join(parts[:2])
