"""The collection's own words (taxa, families, countries, institutions) for reading a chat turn.

The router extracts filters and taxon names by looking text up against what the
collection actually holds, never against a fixed list: "from Gabon" becomes a
country filter only in a collection that has Gabonese specimens, and a name is a
taxon when a specimen or a flora description carries it.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from retrieval.flora import normalize_name, species_of

MAX_NGRAM = 5
_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*|×", re.UNICODE)


def words(text: str) -> list[tuple[str, int, int]]:
    """(casefolded word, start, end) for each word; punctuation, markdown and periods drop out."""
    return [(m.group(0).casefold(), m.start(), m.end()) for m in _WORD.finditer(text)]


def key(text: str) -> str:
    return " ".join(w for w, _, _ in words(text))


@dataclass(frozen=True)
class Match:
    kind: str      # species | genus | family | country | institution | described
    value: str     # the collection's spelling (a species is its normalised name)
    start: int     # character span in the text
    end: int


@dataclass
class Vocabulary:
    """Lookup tables keyed by casefolded words; build once per collection with `from_table`."""

    terms: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    species_values: dict[str, list[str]] = field(default_factory=dict)   # normalised name -> scientificName values
    genus_family: dict[str, str] = field(default_factory=dict)
    countries: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    institutions: list[str] = field(default_factory=list)

    @classmethod
    def from_table(cls, table: pd.DataFrame, *, described: Iterable[str] = ()) -> Vocabulary:
        vocab = cls()
        values: dict[str, set[str]] = defaultdict(set)
        for raw in _distinct(table, "scientificName"):
            name = normalize_name(raw)
            for form in {name, species_of(name)} - {""}:
                if " " in form:
                    values[form].add(raw)
        vocab.species_values = {name: sorted(v) for name, v in values.items()}
        for name in vocab.species_values:
            vocab._add(name, "species", name)
        genera = set(_distinct(table, "genus")) | {n.split(" ")[0] for n in vocab.species_values}
        for genus in genera:
            vocab._add(genus, "genus", genus)
        if {"genus", "family"} <= set(table.columns):
            pairs = table.loc[(table["genus"].fillna("") != "") & (table["family"].fillna("") != ""), ["genus", "family"]]
            vocab.genus_family = dict(pairs.drop_duplicates("genus").itertuples(index=False, name=None))
        vocab.families = sorted(_distinct(table, "family"))
        vocab.countries = sorted(_distinct(table, "country"))
        vocab.institutions = sorted(_distinct(table, "institutionCode"))
        for kind, items in (("family", vocab.families), ("country", vocab.countries), ("institution", vocab.institutions)):
            for item in items:
                vocab._add(item, kind, item)
        for name in described:
            norm = normalize_name(name) or name.strip()
            if norm and not any(k in ("species", "genus", "family") for k, _ in vocab.terms.get(key(norm), [])):
                vocab._add(norm, "described", norm)
        return vocab

    def _add(self, text: str, kind: str, value: str) -> None:
        k = key(text)
        if k and (kind, value) not in self.terms[k]:
            self.terms[k].append((kind, value))

    def find(self, text: str, kinds: Iterable[str] | None = None) -> list[Match]:
        """Longest non-overlapping matches, left to right.

        A one-word genus counts only when written with a capital (or in italics):
        many genera are also English words ("Iris", "Aster", "Viola" are fine, but "Arum" in
        "arum-like" or lowercase "rosa" in prose should not turn a question into a taxon lookup).
        """
        wanted = set(kinds) if kinds else None
        toks = words(text)
        out: list[Match] = []
        i = 0
        while i < len(toks):
            for n in range(min(MAX_NGRAM, len(toks) - i), 0, -1):
                span = toks[i:i + n]
                hits = self.terms.get(" ".join(w for w, _, _ in span), [])
                start, end = span[0][1], span[-1][2]
                hits = [(k, v) for k, v in hits if (wanted is None or k in wanted)
                        and not (k == "genus" and n == 1 and not _capitalised(text, start, end))
                        and not (k == "institution" and not _institution_ok(text, start, end, v))]
                if hits:
                    kind, value = min(hits, key=lambda h: _PRIORITY.index(h[0]))
                    out.append(Match(kind, value, start, end))
                    i += n
                    break
            else:
                i += 1
        return out

    def family_of(self, genus: str) -> str | None:
        return self.genus_family.get(genus)

    def values(self, kind: str) -> list[str]:
        """Every value of one kind the collection holds (species are normalised names)."""
        return sorted({v for hits in self.terms.values() for k, v in hits if k == kind})

    def suggest(self, text: str, kinds: Iterable[str] = ("species", "genus", "family", "country", "institution"),
                cutoff: float = 0.8) -> Match | None:
        """The collection's closest spelling of a misspelt name ('Geraniacae' -> Geraniaceae), or None."""
        wanted = key(text)
        best: tuple[float, str, str] | None = None
        for kind in kinds:
            for value in self.values(kind):
                ratio = difflib.SequenceMatcher(None, wanted, key(value)).ratio()
                if ratio >= cutoff and (best is None or ratio > best[0]):
                    best = (ratio, kind, value)
        return Match(best[1], best[2], 0, len(text)) if best else None


_PRIORITY = ("species", "described", "genus", "family", "country", "institution")


def _capitalised(text: str, start: int, end: int) -> bool:
    return text[start].isupper() or (start > 0 and text[start - 1] in "*_" and end < len(text) and text[end] in "*_")


_CUE = re.compile(r"(?:herbarium|herbier|institution|at|from|in|by|held at|du|de l')\s+(?:the\s+)?$", re.IGNORECASE)


def _institution_ok(text: str, start: int, end: int, code: str) -> bool:
    """Codes are short and collide with words ("A", "US", "P"): exact case, and a cue unless 3+ letters."""
    return text[start:end] == code and (len(code) >= 3 or bool(_CUE.search(text[max(0, start - 20):start])))


def _distinct(table: pd.DataFrame, column: str) -> list[str]:
    if column not in table.columns:
        return []
    values = table[column].dropna().astype(str).str.strip()
    return sorted(set(values[values != ""]))
