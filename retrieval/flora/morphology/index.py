"""DescriptionIndex: one collection's descriptions with their traits and the three signals over them.

It builds (traits, chunks, embeddings), saves and loads (one committed version of the
folder: retrieval/versioned.py, so a writer killed part-way leaves the previous index
whole), links taxa to specimens, and searches: each signal scores every taxon, fusion
ranks them, the evidence says why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from retrieval.errors import BadInput, IndexMismatch
from retrieval.flora.morphology.chunks import chunk_text, chunks_of
from retrieval.flora.morphology.dense import DenseSignal, EmbeddingCache, embed_chunks
from retrieval.flora.morphology.evidence import highlight, word_spans
from retrieval.flora.morphology.fusion import SIGNALS, fuse
from retrieval.flora.morphology.lexical import LexicalSignal, lexical_tokens
from retrieval.flora.morphology.query import query_parts, rewrite_query
from retrieval.flora.morphology.trait_signal import TraitSignal, record_traits
from retrieval.flora.names import normalize_name
from retrieval.flora.readers import TaxonDescription
from retrieval.flora.text_encoders import DEFAULT_TEXT_MODEL
from retrieval.flora.traits import extract_traits
from retrieval.versioned import commit_version, committed, read_committed

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
FILES = (MANIFEST, "descriptions.jsonl", "chunks.npy", "embeddings.npy", "specimens.json")
_UNVERSIONED_LEFTOVER = ".writing"  # what a save before versioned folders left when it was killed


class DescriptionIndex:
    """Descriptions of one collection with their traits, BM25 index and sentence embeddings."""

    def __init__(self, records: list[TaxonDescription], traits: list[list[dict[str, Any]]], chunks: np.ndarray,
                 embeddings: np.ndarray, text_model: dict[str, Any], folder: Path | None = None, *,
                 encoder: Any = None) -> None:
        self.records = records
        self.traits = traits
        self.chunks = chunks  # (n, 5) int: taxon index, start, end, head start, head end
        self.embeddings = embeddings
        self.text_model = text_model
        self.folder = folder
        self._specimens: dict[str, list[int]] = {}
        self.link_details: dict[str, list[dict[str, Any]]] = {}  # name -> how its specimens were linked (taxonomy.py)
        taxon = chunks[:, 0]
        texts = [chunk_text(records[int(row[0])].text, row) for row in chunks]
        self.lexical = LexicalSignal(texts, taxon, len(records))
        self.dense = DenseSignal(embeddings, taxon, len(records), text_model, encoder)
        self.trait_signal = TraitSignal(traits, [r.rank for r in records])
        # each taxon's chunk rows (ascending), for the evidence of a result without a scan of every chunk
        self._chunk_order = np.argsort(taxon, kind="stable")
        self._chunk_start = np.searchsorted(taxon[self._chunk_order], np.arange(len(records) + 1))

    @classmethod
    def build(cls, records: list[TaxonDescription], *, text_model: str = DEFAULT_TEXT_MODEL, device: str | None = None,
              progress: bool = True, batch_size: int | None = None,
              known: dict[str, np.ndarray] | None = None, disk_cache: bool = True) -> DescriptionIndex:
        """Extract traits, cut chunks and embed them; `known` maps chunk text to an embedding
        already computed with the same model, and the on-disk embedding cache (`disk_cache`)
        holds every chunk this model embedded before: re-indexing skips both."""
        from retrieval.flora.text_encoders import cached_text_encoder

        if not records:
            raise BadInput("no descriptions to index")
        traits = [record_traits(r) for r in tqdm(records, desc="traits", disable=not progress)]
        rows = [(i, *span) for i, r in enumerate(records) for span in chunks_of(r)]
        chunks = np.array(rows, dtype=np.int64).reshape(-1, 5)
        encoder = cached_text_encoder(text_model, device)
        texts = [chunk_text(records[row[0]].text, row) for row in rows]
        embeddings = embed_chunks(texts, encoder, known=known, batch_size=batch_size, progress=progress,
                                  chunk_taxon=chunks[:, 0], cache=EmbeddingCache.for_encoder(encoder) if disk_cache else None)
        return cls(records, traits, chunks, embeddings, encoder.info, encoder=encoder)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Commit every file, specimen links included, as one new version of `folder`."""
        folder = Path(folder)

        def write(version: Path, number: int) -> None:
            with (version / "descriptions.jsonl").open("w", encoding="utf-8") as fh:
                for record, table in zip(self.records, self.traits):
                    fh.write(json.dumps({**record.to_dict(), "traits": table}, ensure_ascii=False) + "\n")
            np.save(version / "chunks.npy", self.chunks)
            np.save(version / "embeddings.npy", self.embeddings.astype(np.float32))
            (version / "specimens.json").write_text(json.dumps(self._specimens))
            manifest = {"format": FORMAT_VERSION, "taxa": len(self.records), "chunks": int(len(self.chunks)),
                        "text_model": self.text_model, "version": number}
            (version / MANIFEST).write_text(json.dumps(manifest, indent=2))

        commit_version(folder, FILES, write)
        if (folder / _UNVERSIONED_LEFTOVER).is_dir():
            shutil.rmtree(folder / _UNVERSIONED_LEFTOVER, ignore_errors=True)
        self.folder = folder
        return folder

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (committed(folder) / MANIFEST).is_file()

    @classmethod
    def load(cls, folder: str | Path, *, text_model: str | None = None) -> DescriptionIndex:
        folder = Path(folder)
        if not cls.exists(folder):
            raise BadInput(f"no description index in {folder}; run `herbaria descriptions add COLLECTION SOURCE...` first")
        return read_committed(folder, lambda where: cls._load_version(folder, where, text_model),
                              what="the description index")

    @classmethod
    def _load_version(cls, folder: Path, where: Path, text_model: str | None) -> DescriptionIndex:
        manifest = json.loads((where / MANIFEST).read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexMismatch(f"description index format {manifest.get('format')} is not {FORMAT_VERSION}; rebuild it with "
                                "`herbaria descriptions add`")
        if text_model and text_model != manifest["text_model"]["name"]:
            raise IndexMismatch(f"descriptions were embedded with {manifest['text_model']['name']!r}, not {text_model!r}; "
                                f"search with --text-model {manifest['text_model']['name']} or rebuild")
        records: list[TaxonDescription] = []
        traits: list[list[dict[str, Any]]] = []
        with (where / "descriptions.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                data = json.loads(line)
                traits.append(data.pop("traits", []))
                records.append(TaxonDescription.from_dict(data))
        chunks = np.load(where / "chunks.npy")
        embeddings = np.load(where / "embeddings.npy")
        links = where / "specimens.json"  # absent from indexes saved before links were part of the index
        index = cls(records, traits, chunks, embeddings, manifest["text_model"], folder)
        index._specimens = json.loads(links.read_text()) if links.exists() else {}
        return index

    # ------------------------------------------------------------------ specimens
    @property
    def specimen_links(self) -> dict[str, list[int]]:
        """Normalised taxon name -> specimen ids, as last linked (or as saved with the index)."""
        return self._specimens

    def link(self, specimens: pd.DataFrame) -> dict[str, list[int]]:
        """Normalised taxon name -> specimen ids, through names, synonyms, GBIF matches, fuzzy epithets
        and genus fallbacks (retrieval/flora/taxonomy.py); `link_details` says how each was made."""
        from retrieval.flora.taxonomy import link_specimens

        pairs = zip(specimens["specimen_id"], specimens["scientificName"]) if (
            specimens is not None and len(specimens) and "scientificName" in specimens) else ()
        self._specimens, self.link_details = link_specimens(self.records, pairs)
        return self._specimens

    # ------------------------------------------------------------------ search
    def signal_scores(self, query: str, signals: tuple[str, ...] = SIGNALS, *, lang: str | None = None) -> dict[str, Any]:
        """Raw per-taxon scores of each signal (0 = not retrieved), the query's traits and
        which taxa contradict them; `search` fuses these, benchmarks reuse them."""
        if not query or not query.strip():
            raise BadInput("empty morphology query")
        unknown = [s for s in signals if s not in SIGNALS]
        if unknown or not signals:
            raise BadInput(f"unknown signal(s) {', '.join(unknown) or 'none'}; choose from {', '.join(SIGNALS)}")
        qtraits = extract_traits(query, lang, query=True)
        rewritten, _ = rewrite_query(query, qtraits)
        scores: dict[str, np.ndarray] = {}
        chunk_sims = clause_bm25 = None
        parts = query_parts(rewritten)
        if "bm25" in signals:
            scores["bm25"], clause_bm25 = self.lexical.scores(parts)
        if "dense" in signals:
            scores["dense"], chunk_sims = self.dense.scores(rewritten, parts if len(parts) > 1 else [])
        trait_scores, trait_evidence = self.trait_signal.scores(qtraits)  # always: it says which taxa contradict
        if "traits" in signals:
            scores["traits"] = trait_scores
        return {"scores": scores, "contradicted": trait_scores < 0, "traits": qtraits, "trait_evidence": trait_evidence,
                "chunk_sims": chunk_sims, "clause_bm25": clause_bm25, "rewritten": rewritten}

    fuse = staticmethod(fuse)

    def search(self, query: str, k: int = 10, signals: tuple[str, ...] = SIGNALS, *,
               weights: dict[str, float] | None = None, lang: str | None = None, pool: int = 100) -> list[dict[str, Any]]:
        """Taxa whose descriptions match a morphology query, best first.

        Each result: taxon, name, family, source, score (fused), ranks (per signal, None
        when the signal did not retrieve it), evidence (sentences with the matched terms in
        **bold**), contradicts_query, specimen_ids (the collection's specimens of the taxon).
        """
        out = self.signal_scores(query, signals, lang=lang)
        fused, ranks = fuse(out["scores"], out["contradicted"], weights=weights, pool=pool)
        candidates = np.flatnonzero(fused > 0)
        order = candidates[np.argsort(-fused[candidates], kind="stable")][:k]
        clause = out["chunk_sims"] if out["chunk_sims"] is not None else out["clause_bm25"]
        words = set(lexical_tokens(query, query=True))
        return [self._result(int(t), float(fused[t]), ranks, out["trait_evidence"].get(int(t), []), words,
                             clause, bool(out["contradicted"][t])) for t in order]

    def _result(self, t: int, score: float, ranks: dict[str, dict[int, int]], evidence: list[tuple[int, float]],
                words: set[str], clause_scores: np.ndarray | None, contradicted: bool) -> dict[str, Any]:
        record = self.records[t]
        items: list[dict[str, Any]] = []
        seen: set[tuple[int, int]] = set()
        for j, s in sorted(evidence, key=lambda e: -e[1]):
            trait = self.traits[t][j]
            sent = tuple(trait.get("sentence_span", trait["span"]))
            if sent in seen:
                continue
            seen.add(sent)
            items.append({"signal": "traits", "supports": s > 0, "sentence": record.text[sent[0]:sent[1]].strip(),
                          "highlighted": highlight(record.text, sent, [trait["span"]]),
                          "trait": [trait["organ"], trait["character"], ("not " if trait.get("negated") else "") + trait["value"]]})
        if clause_scores is not None:  # the clause the encoder (or BM25) liked best
            rows = self._chunk_order[self._chunk_start[t]:self._chunk_start[t + 1]]
            if len(rows) and float(clause_scores[rows].max()) > 0:
                best = rows[int(np.argmax(clause_scores[rows]))]
                span = (int(self.chunks[best, 1]), int(self.chunks[best, 2]))
                if not any(s[0] <= span[0] < s[1] or span[0] <= s[0] < span[1] for s in seen):
                    items.append({"signal": "dense" if "dense" in ranks else "bm25", "supports": True,
                                  "sentence": record.text[span[0]:span[1]].strip(),
                                  "highlighted": highlight(record.text, span, word_spans(record.text, span, words)),
                                  "score": round(float(clause_scores[best]), 4)})
        return {
            "taxon": record.taxon, "name": record.name, "family": record.family, "source": record.source,
            "language": record.language, "score": round(score, 6),
            "ranks": {name: ranks[name].get(t) for name in ranks},
            "contradicts_query": contradicted, "evidence": items[:4],
            "specimen_ids": self._specimens.get(record.name, []), "linked_as": self.link_details.get(record.name, []),
        }

    def describe(self, name: str) -> list[dict[str, Any]]:
        """Records (with traits) whose normalised name is `name`."""
        key = normalize_name(name) or name
        return [{**self.records[i].to_dict(), "traits": self.traits[i]} for i, r in enumerate(self.records)
                if r.name == key or r.taxon == name]
