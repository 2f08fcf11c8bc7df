"""The botanical trait vocabulary: organs, their parts, descriptive states, synonyms,
opposites and French equivalents, shared by trait extraction, morphology search and
captioning so that all three speak the same terms.

It is a small JSON file shipped in the package (retrieval/vocab_data/vocab.json), built
by bench/build_vocab.py from the FNA glossary, FloraTraiter, the Plant Ontology and PATO
plus hand-written tables; users never need the source vocabularies.
"""

from __future__ import annotations

import json
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

VOCAB_PATH = Path(__file__).resolve().parent / "vocab_data" / "vocab.json"
LANGS = ("en", "fr")


def fold(text: str) -> str:
    """Lowercase without accents: the key every lookup uses ('Opposées' -> 'opposees')."""
    text = unicodedata.normalize("NFD", text.lower().replace("œ", "oe").replace("’", "'"))
    return "".join(c for c in text if unicodedata.category(c) != "Mn")


@dataclass(frozen=True)
class Term:
    """What a word or phrase means: kind is organ, part (relative part), position, type,
    state, modifier, degree or negation; value is the canonical English name."""

    kind: str
    value: str
    character: str = ""  # states: what they describe; types: the organ they type (fruit, inflorescence)


BROADER_MATCH = 0.8


class Vocabulary:
    """Lookups over the shipped vocabulary; build once with `vocabulary()`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.organs: dict[str, dict[str, Any]] = data["organs"]
        self.states: dict[str, dict[str, Any]] = data["states"]
        self.relative_parts: dict[str, dict[str, list[str]]] = data["relative_parts"]
        self.positions: dict[str, dict[str, list[str]]] = data["positions"]
        self.sources: list[dict[str, Any]] = data["sources"]
        self._phrases: dict[str, dict[tuple[str, ...], Term]] = {}
        self._query_phrases: dict[str, dict[tuple[str, ...], Term]] = {}
        self.max_words = 1
        for lang in LANGS:
            self._phrases[lang] = self._build(lang, query=False)
            self._query_phrases[lang] = self._build(lang, query=True)
        self._concept = self._concepts()
        self._members: dict[str, set[str]] = defaultdict(set)
        for broad, members in data.get("broader", {}).items():
            for m in members:
                self._members[broad].add(self.concept(m))
        self._broader_of: dict[str, set[str]] = defaultdict(set)
        for broad, members in self._members.items():
            for m in members:
                self._broader_of[m].add(self.concept(broad))

    # ------------------------------------------------------------------ building
    def _build(self, lang: str, query: bool) -> dict[tuple[str, ...], Term]:
        table: dict[tuple[str, ...], Term] = {}

        def put(phrase: str, term: Term, override: bool = False) -> None:
            key = tuple(fold(phrase).split())
            if not key:
                return
            if override or key not in table:
                table[key] = term
                self.max_words = max(self.max_words, len(key))

        d = self.data
        for word in d["negations"][lang]:
            put(word, Term("negation", "not"))
        for word, value in d["modifiers"][lang].items():
            put(word, Term("modifier", value))
        for word in d["degree"][lang]:
            put(word, Term("degree", word))
        for canon, info in self.states.items():
            forms = info.get("fr", []) if lang == "fr" else [canon] + info.get("forms", [])
            for form in forms:
                put(form, Term("state", canon, info["character"]))
        if query and lang == "en":  # plain-English equivalents: for queries, never for flora text
            for canon, info in self.states.items():
                for syn in info.get("syn", []) + info.get("gloss", []):
                    put(syn, Term("state", canon, info["character"]))
        if lang == "fr":  # French text borrows Latin-English technical terms; let them through
            for canon, info in self.states.items():
                if len(canon) > 6 and canon.endswith(("ate", "ous", "ose", "oid", "form")):
                    put(canon, Term("state", canon, info["character"]))
        for canon, info in self.organs.items():
            for form in info.get(lang, []):
                put(form, Term("organ", canon), override=True)
        for part, forms in self.relative_parts.items():
            for form in forms[lang]:
                put(form, Term("part", part), override=True)
        if lang == "en":  # "staminal tube", "calycine lobes": an organ's adjective with a relative part names that part
            for adjective, organ in d.get("organ_adjectives", {}).items():
                for part, forms in self.relative_parts.items():
                    for form in forms["en"]:
                        put(f"{adjective} {form}", Term("organ", f"{organ} {part}"))
        for pos, forms in self.positions.items():
            for form in forms[lang]:
                put(form, Term("position", pos), override=True)
        for organ, table_types in d["types"].items():
            for type_name, forms in table_types.items():
                for form in forms:  # the lists mix both languages; the words do not collide
                    put(form, Term("type", type_name, organ), override=True)
        return table

    def _concepts(self) -> dict[str, str]:
        """Exact-synonym classes among states (elliptic ~ elliptical, villous ~ villose)."""
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            while parent.get(x, x) != x:
                x = parent[x]
            return x

        broad = set(self.data.get("broader", {}))
        for canon, info in self.states.items():
            # glossary wording that is itself a term ("blunt" for obtuse, "succulent" for fleshy) is the same
            # concept, unless it names a broader class ("hairy" is not a synonym of pubescent)
            for syn in info.get("syn", []) + info.get("gloss", []):
                if syn in self.states and syn not in broad and canon not in broad:
                    a, b = find(canon), find(syn)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
        return {term: find(term) for term in self.states}

    # ------------------------------------------------------------------ lookups
    def match(self, words: list[str], start: int, lang: str = "en", *, query: bool = False) -> tuple[int, Term | None]:
        """Longest phrase starting at words[start] (folded words): (number of words, term)."""
        tables = [(self._query_phrases if query else self._phrases)[lang]]
        if lang != "en":
            tables.append((self._query_phrases if query else self._phrases)["en"])
        for n in range(min(self.max_words, len(words) - start), 0, -1):
            key = tuple(words[start:start + n])
            for table in tables:
                term = table.get(key)
                if term is not None:
                    return n, term
        return 0, None

    def concept(self, value: str) -> str:
        return self._concept.get(value, value)

    def character(self, value: str) -> str:
        info = self.states.get(value)
        return info["character"] if info else ""

    def broader(self, value: str) -> set[str]:
        """Broad classes a state belongs to (tomentose -> {hairy})."""
        return self._broader_of.get(self.concept(value), set())

    def members(self, value: str) -> set[str]:
        """States a broad class covers (hairy -> {pubescent, tomentose, ...})."""
        return self._members.get(self.concept(value), set())

    def equivalent(self, a: str, b: str) -> float:
        """1 for the same concept, BROADER_MATCH when one is the broad class of the other ("puberulent" asked,
        "hairy" written, or the reverse: true of the taxon but said less precisely), else 0."""
        ca, cb = self.concept(a), self.concept(b)
        if ca == cb:
            return 1.0
        if cb in self.members(ca) or ca in self.members(cb) or self.broader(ca) & {cb} or self.broader(cb) & {ca}:
            return BROADER_MATCH
        return 0.0

    def opposed(self, a: str, b: str) -> bool:
        """True when a and b cannot both hold (glabrous vs pubescent, opposite vs alternate)."""
        ca, cb = self.concept(a), self.concept(b)
        side_a = {ca} | self.broader(ca)
        side_b = {cb} | self.broader(cb)
        for x in side_a:
            ants = {self.concept(t) for t in self.states.get(x, {}).get("ant", [])}
            if ants & side_b:
                return True
            for ant in list(ants):
                if self.members(ant) & side_b:
                    return True
        return False

    def synonyms(self, value: str) -> list[str]:
        """Technical synonyms (PATO exact, spelling variants): 'serrated' for serrate."""
        return list(self.states.get(value, {}).get("syn", []))

    def glosses(self, value: str) -> list[str]:
        """Plain-English glossary wording: 'saw-toothed' for serrate, 'leathery' for coriaceous."""
        return list(self.states.get(value, {}).get("gloss", []))

    def french(self, value: str) -> str:
        forms = self.states.get(value, {}).get("fr", [])
        return forms[0] if forms else value

    def organ_info(self, organ: str) -> dict[str, Any]:
        base = organ.split(" ")[-1] if organ not in self.organs else organ
        return self.organs.get(organ) or self.organs.get(base) or {}

    def parents(self, organ: str) -> list[str]:
        """Organs this one is part of; a composite 'corolla lobe' is part of 'corolla', and one whose last word is
        an organ is also that organ ('ovary stipe' is a stipe, 'pinna rachis' a rachis)."""
        if organ in self.organs:
            return list(self.organs[organ].get("parents", []))
        head, _, last = organ.rpartition(" ")
        if head and (last in self.relative_parts or head in self.organs or head.split(" ")[0] in self.organs):
            return [head] + ([last] if last in self.organs and last != head else [])
        return []

    def carried(self, organ: str) -> bool:
        """True for a glossary structure the vocabulary does not place ('beak', 'keel'): read as a part of the
        organ in force ('fruit beak') when there is one."""
        return bool(self.organs.get(organ, {}).get("carried"))

    def ancestors(self, organ: str) -> list[str]:
        out: list[str] = []
        queue = self.parents(organ)
        while queue:
            current = queue.pop(0)
            if current not in out and current != organ:
                out.append(current)
                queue.extend(self.parents(current))
        return out

    def group(self, organ: str) -> str:
        """Coarse organ group (leaf, flower, fruit, stem...) for tolerant matching."""
        if organ in self.organs:
            return self.organs[organ]["group"]
        for ancestor in self.ancestors(organ):
            if ancestor in self.organs:
                return self.organs[ancestor]["group"]
        head = organ.split(" ")[0]
        return self.organs.get(head, {}).get("group", organ)

    def organ_label(self, organ: str, lang: str = "en", plural: bool = False) -> str:
        info = self.organs.get(organ)
        if not info:
            return organ
        forms = info.get(lang) or info.get("en") or [organ]
        if plural and len(forms) > 1:
            return forms[1]
        return forms[0]

    def resolve_organ(self, phrase: str, lang: str = "en") -> str | None:
        """Canonical organ for a phrase such as a FlorML class ('male flowers' -> 'flower')."""
        words = fold(phrase).replace("-", " ").split()
        organ: str | None = None
        i = 0
        while i < len(words):
            n, term = self.match(words, i, lang)
            if term is not None and term.kind in ("organ", "type"):
                organ = term.value if term.kind == "organ" else term.character
            elif term is not None and term.kind == "part":
                organ = f"{organ} {term.value}" if organ else term.value
            i += max(n, 1)
        return organ


@cache
def vocabulary() -> Vocabulary:
    """The shipped vocabulary (loaded once per process)."""
    return Vocabulary(json.loads(VOCAB_PATH.read_text(encoding="utf-8")))
