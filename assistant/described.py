"""The collection's flora descriptions as the chat needs them: search hits and taxon
descriptions reduced to plain sentences, linked to the collection's specimens.

The description index (retrieval.flora.morphology.DescriptionIndex) returns rich hits
(signal ranks, highlighted markup, trait triples); the answer quotes sentences
verbatim, so this module keeps the sentence text and drops the rest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from retrieval.collections import Collection
from retrieval.flora import normalize_name

MAX_SENTENCES = 3


def index_folder(collection: Collection) -> Path | None:
    """Where `herbaria descriptions add` keeps the description index, if it has built one."""
    from retrieval.flora import descriptions_dir
    from retrieval.flora import DescriptionIndex

    folder = descriptions_dir(collection)
    return folder if DescriptionIndex.exists(folder) else None


class Descriptions:
    """The loaded description index, linked to the current specimen table."""

    def __init__(self, index: Any, table: pd.DataFrame) -> None:
        self.index = index
        self.links: dict[str, list[int]] = index.link(table)
        self.provenance = {r.taxon: provenance(r.to_dict()) for r in index.records}

    def warm(self) -> None:
        """Load the query text encoder now rather than in the first user's turn."""
        self.index.search("leaves", k=1)

    @classmethod
    def open(cls, collection: Collection, table: pd.DataFrame) -> Descriptions | None:
        folder = index_folder(collection)
        if folder is None:
            return None
        from retrieval.flora import DescriptionIndex

        return cls(DescriptionIndex.load(folder), table)

    def texts(self) -> dict[str, dict[str, Any]]:
        """Every description with its sections and traits, as the captioner reads them (no second load)."""
        return {r.taxon: {"text": r.text, "sections": r.sections or None, "traits": traits, "language": r.language}
                for r, traits in zip(self.index.records, self.index.traits)}

    def taxa(self) -> list[str]:
        return sorted({r.name for r in self.index.records if r.name})

    def __len__(self) -> int:
        return len(self.taxa())

    def search(self, query: str, *, k: int = 5) -> list[dict[str, Any]]:
        """Taxa whose descriptions match, with the sentences that matched (those supporting the query)."""
        hits = []
        for hit in self.index.search(query, k=k):
            found = [e for e in hit.get("evidence", []) if e.get("supports", True) and e.get("sentence")]
            exact = [e for e in found if e.get("signal") != "dense"]  # matched terms beat a paraphrase guess
            sentences = [e["sentence"] for e in (exact or found)]
            hits.append({"kind": "description", "taxon": hit.get("name") or hit["taxon"], "display": hit["taxon"],
                         "family": hit.get("family") or "", "source": hit.get("source") or "", "score": hit["score"],
                         "contradicts_query": bool(hit.get("contradicts_query")), "evidence": _unique(sentences),
                         "specimen_ids": list(self.links.get(hit.get("name") or "", hit.get("specimen_ids") or [])),
                         "linked_as": hit.get("linked_as") or [],  # how labels reached this name (taxonomy.py)
                         "provenance": self.provenance.get(hit["taxon"]) or provenance(hit)})
        return hits

    def describe(self, name: str, *, organ_words: tuple[str, ...] = ()) -> dict[str, Any]:
        """A taxon's description as sentences, only those about an organ when `organ_words` are given."""
        key = normalize_name(name) or name.strip()
        records = self.index.describe(key) or [r.to_dict() for r in self.index.records
                                              if r.taxon.casefold() == name.strip().casefold()]
        if not records:
            return {"kind": "taxon", "taxon": key, "evidence": [], "source": None, "score": None}
        record = records[0]
        sentences = _sentences(record, organ_words)
        return {"kind": "taxon", "taxon": record.get("name") or key, "display": record.get("taxon"),
                "family": record.get("family") or "", "source": record.get("source") or "",
                "language": record.get("language"), "score": None, "evidence": sentences[:MAX_SENTENCES],
                "provenance": provenance(record),
                "organ_found": bool(organ_words) and bool(sentences)}


def provenance(record: dict[str, Any]) -> dict[str, str]:
    """Where a quoted description comes from: flora (source), volume or dataset, page, licence and link, as the
    reader stored them (empty strings where the source does not say)."""
    return {key: str(record.get(key) or "").strip() for key in ("source", "dataset", "page", "licence", "url")}


def _sentences(record: dict[str, Any], organ_words: tuple[str, ...]) -> list[str]:
    from retrieval.flora import split_sentences

    sections: dict[str, str] = record.get("sections") or {}
    if organ_words and sections:  # FlorML marks organs up: trust its sections first
        chosen = [text for organ, text in sections.items() if _mentions(organ, organ_words)]
        if chosen:
            return _unique(s for text in chosen for s in _split(text, split_sentences))
    text = record.get("text") or ""
    sentences = _split(text, split_sentences)
    if organ_words:
        return _unique(s for s in sentences if _mentions(s, organ_words))
    return _unique(sentences)


def _split(text: str, splitter: Any) -> list[str]:
    return [text[a:b].strip() for a, b in splitter(text) if text[a:b].strip()]


def _mentions(text: str, words: tuple[str, ...]) -> bool:
    tokens = set(re.findall(r"[\wà-ÿ-]+", text.casefold()))
    return any(w in tokens for w in words)


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))
