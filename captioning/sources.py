"""Where captioners get the text and traits of a taxon: the collection's flora descriptions.

A captioner only ever states what a neighbour's taxon description supports, so this
module is the single door to those descriptions: from the collection (the
descriptions issue stores them under COLLECTION/descriptions/) or from a mapping a
caller passes in. Descriptions without organ markup are split into organ sections
by the trait extractor's organ of each sentence, so every description can be a
training target organ by organ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

from captioning.base import Neighbour
from captioning.grounded import GROUP_ORDER, organ_group
from captioning.prompts import WHOLE
from retrieval.flora import normalize_name


class TaxonTexts(Protocol):
    def get(self, name: str) -> dict[str, Any] | None:
        """{"name", "text", "sections": {organ group: text}, "traits": [...]} for a normalised name, or None."""
        ...

    def names(self) -> list[str]:
        ...


@lru_cache(maxsize=4096)
def _traits(text: str, lang: str | None) -> tuple[dict[str, Any], ...]:
    from retrieval.flora import extract_traits

    return tuple(extract_traits(text, lang))


def split_sections(text: str, traits: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Sentences grouped by the organ group their first trait is about ('leaf', 'flower', ...), in description order."""
    sentences: dict[tuple[int, int], str] = {}
    for t in traits:
        span = t.get("sentence_span")
        if span and tuple(span) not in sentences and t.get("organ"):
            sentences[tuple(span)] = organ_group(t["organ"])
    sections: dict[str, list[str]] = {}
    for (start, end), group in sorted(sentences.items()):
        sentence = text[start:end].strip()
        if sentence:
            sections.setdefault(group, []).append(sentence)
    if not sections:
        return {WHOLE: text.strip()} if text.strip() else {}
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    return {g: " ".join(sections[g]) for g in sorted(sections, key=lambda g: (order.get(g, len(order)), g))}


def normalise_sections(sections: Mapping[str, str]) -> dict[str, str]:
    """FlorML organ classes ('leaves', 'male flowers') onto the vocabulary's organ groups."""
    out: dict[str, list[str]] = {}
    try:
        from retrieval.flora import vocabulary

        voc = vocabulary()
    except (ImportError, OSError, ValueError):
        voc = None
    for organ, text in sections.items():
        resolved = voc.resolve_organ(organ) if voc is not None else None
        key = organ_group(resolved) if resolved else organ.strip().lower()
        if text and text.strip():
            out.setdefault(key, []).append(text.strip())
    return {k: " ".join(v) for k, v in out.items()}


def taxon_record(name: str, text: str, *, sections: Mapping[str, str] | None = None,
                 traits: Sequence[dict[str, Any]] | None = None, lang: str | None = None) -> dict[str, Any]:
    """A taxon's text, organ sections and traits (extracted when not given)."""
    traits = list(traits) if traits is not None else list(_traits(text, lang))
    secs = normalise_sections(sections) if sections else split_sections(text, traits)
    return {"name": name, "text": text, "sections": secs, "traits": traits}


class MappingTexts:
    """Descriptions given directly: {taxon name: text or {"text", "sections"?, "traits"?}}."""

    def __init__(self, descriptions: Mapping[str, Any]) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        for raw, value in descriptions.items():
            name = normalize_name(raw) or raw
            if isinstance(value, str):
                self._records[name] = taxon_record(name, value)
            else:
                self._records[name] = taxon_record(name, value.get("text", ""), sections=value.get("sections"),
                                                   traits=value.get("traits"), lang=value.get("language"))

    def get(self, name: str) -> dict[str, Any] | None:
        return self._records.get(normalize_name(name) or name)

    def names(self) -> list[str]:
        return sorted(self._records)


def collection_texts(collection: Any) -> TaxonTexts | None:
    """The collection's stored descriptions (`herbaria descriptions add`), or None when it has none."""
    from retrieval.flora import DescriptionIndex

    folder = collection.path / "descriptions"
    if not DescriptionIndex.exists(folder):
        return None
    return IndexTexts(DescriptionIndex.load(folder))


class IndexTexts:
    """Taxon texts over a loaded DescriptionIndex, using the traits it stored (nothing re-extracted).

    A taxon described by several floras gets the union of their traits; for each organ
    the first flora that describes it gives the section text.
    """

    def __init__(self, index: Any) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        for record, traits in zip(index.records, index.traits):
            name = record.name or normalize_name(record.taxon)
            if not name:
                continue
            rec = taxon_record(name, record.text, sections=record.sections or None, traits=traits, lang=record.language)
            if name not in self._records:
                self._records[name] = rec
                continue
            merged = self._records[name]
            merged["traits"] = merged["traits"] + rec["traits"]
            for organ, text in rec["sections"].items():
                merged["sections"].setdefault(organ, text)

    def get(self, name: str) -> dict[str, Any] | None:
        return self._records.get(normalize_name(name) or name)

    def names(self) -> list[str]:
        return sorted(self._records)


def neighbours_from_records(records: Sequence[dict[str, Any]], texts: TaxonTexts | None) -> list[Neighbour]:
    """Search results (rank_records dicts) as neighbours carrying their taxon's sections and traits."""
    out = []
    for rec in records:
        name = normalize_name(str(rec.get("scientificName") or ""))
        taxon = texts.get(name) if texts is not None and name else None
        out.append({"specimen_id": int(rec["specimen_id"]), "score": float(rec.get("score", 0.0)), "name": name,
                    "scientificName": rec.get("scientificName"), "family": rec.get("family") or "",
                    "catalogNumber": rec.get("catalogNumber"), "image": rec.get("image"),
                    "described": taxon is not None, "sections": taxon["sections"] if taxon else {},
                    "traits": taxon["traits"] if taxon else []})
    return out
