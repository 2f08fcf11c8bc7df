"""Morphology search over flora descriptions: lexical (BM25), dense (sentence embeddings)
and structured (traits), fused by reciprocal rank fusion.

Each signal fails differently: BM25 misses paraphrases ("saw-toothed" for serrate), dense
embeddings blur which organ a word belongs to and ignore negation, trait matching only
sees what the extractor understood. Fusing ranks keeps what each gets right. Negation is
handled where it can be: the query is rewritten for BM25 and the encoder ("not hairy"
becomes "glabrous"), and a taxon whose own traits contradict the query ("leaves not
hairy" against a tomentose leaf) is ranked after every taxon that does not.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from retrieval.errors import BadInput, IndexMismatch
from retrieval.flora import TaxonDescription
from retrieval.names import normalize_name, species_of
from retrieval.traits import extract_traits, split_sentences, trait_table
from retrieval.vocab import fold, vocabulary

SIGNALS = ("bm25", "dense", "traits")
RRF_K = 60
BM25_K1, BM25_B = 0.9, 0.4  # short passages: less length normalisation than for whole documents
# Weights and RRF constant used when the caller gives none: the values bench/eval_morphology.py picked on
# the dev halves of both benchmarks (Flora Malesiana, Solanaceae); test-half figures in BENCHMARKS.md.
DEFAULT_WEIGHTS: dict[str, float] = {"bm25": 2.0, "dense": 0.5, "traits": 3.0}
DEFAULT_RRF_K = 10
FORMAT_VERSION = 2
_STOP = {"the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "with", "by", "for", "from", "as", "is", "are", "be",
         "than", "that", "this", "its", "their", "when", "which", "into", "le", "la", "les", "l", "un", "une", "des", "du",
         "de", "d", "et", "ou", "a", "au", "aux", "en", "sur", "par", "dans", "est", "sont", "plus", "moins", "ne", "se",
         "ce", "ces", "qui", "que", "mm", "cm", "m", "c", "ca"}
_HIGHER_RANKS = {"family", "subfamily", "tribe", "subtribe", "genus", "subgenus", "section", "subsection", "series"}
_MODIFIER_WEIGHT = {"rarely": 0.3, "occasionally": 0.5, "sometimes": 0.6, "often": 0.9, "usually": 0.95}


# --------------------------------------------------------------------------- text normalisation


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word[-1] in "sx" and word[-2] != "s":
        word = word[:-1]
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def lexical_tokens(text: str, *, query: bool = False) -> list[str]:
    """Folded words, vocabulary terms replaced by their canonical English name (so 'feuilles',
    'leaves' and 'leaf' meet), others lightly stemmed; stopwords dropped."""
    voc = vocabulary()
    out: list[str] = []
    for word in re.findall(r"[^\W\d_]+(?:-[^\W\d_]+)*", fold(text)):
        if word in _STOP:
            continue
        n, term = voc.match([word], 0, "en", query=query)
        if term is None:
            n, term = voc.match([word], 0, "fr", query=query)
        if term is not None and term.kind in ("organ", "state", "part", "position", "type"):
            out.append(term.value.replace(" ", "_"))
        elif "-" in word:
            out.extend(_stem(w) for w in word.split("-") if w and w not in _STOP)
        else:
            out.append(_stem(word))
    return out


def rewrite_query(query: str, traits: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """Query text for BM25 and the encoder: a negated state is replaced by its opposite
    ('not hairy' -> 'glabrous') or dropped, and plain wording is followed by the flora's
    term ('saw-toothed' -> 'saw-toothed serrate'), in place, so each query part keeps its own."""
    voc = vocabulary()
    text = query
    extra: list[str] = []
    done: set[tuple[int, int]] = set()
    for trait in sorted(traits, key=lambda t: -t["span"][0]):
        s, e = trait["span"]
        if (s, e) in done or trait.get("implied"):
            continue
        done.add((s, e))
        if trait.get("negated"):
            opposites = [a for term in trait.get("terms", []) for a in voc.states.get(voc.concept(term), {}).get("ant", [])]
            replacement = opposites[0] if opposites else ""
            head = re.sub(r"(?:\b(?:not|non|never|pas|ne|sans|without)\s*)+$", "", text[:s], flags=re.I)
            text = head + replacement + text[e:]
        else:
            missing = [t for t in trait.get("terms", []) if fold(t) not in fold(text[s:e])]
            if missing:
                extra.extend(missing)
                text = text[:e] + " " + " ".join(missing) + text[e:]
    return " ".join(text.split()), extra


def query_parts(query: str) -> list[str]:
    """A morphology query's parts: 'opposite leaves, white flowers' asks two things."""
    parts = [p.strip() for p in re.split(r"[,;]|\band\b|\bet\b", query) if p.strip()]
    return parts or [query]


# --------------------------------------------------------------------------- chunks for the encoder


def chunks_of(record: TaxonDescription, max_chars: int = 400) -> list[tuple[int, int, int, int]]:
    """Clause chunks (start, end, head_start, head_end): each ';' clause of a sentence is one
    chunk, and the sentence's head (its first words up to a comma: "Leaves") is read by the
    encoder in front of the later clauses, so "apex acute" is still the leaf's apex."""
    text = record.text
    out: list[tuple[int, int, int, int]] = []
    for start, end in split_sentences(text):
        sentence = text[start:end]
        head_end = start + _head_length(sentence)
        cuts = [start]
        depth = 0
        for i, ch in enumerate(sentence):
            depth += (ch == "(") - (ch == ")")
            if ch == ";" and depth <= 0:
                cuts.append(start + i + 1)
        cuts.append(end)
        merged: list[tuple[int, int]] = []
        for a, b in zip(cuts, cuts[1:]):
            if not text[a:b].strip():
                continue
            if merged and (b - a < 25 or merged[-1][1] - merged[-1][0] < 25) and b - merged[-1][0] <= max_chars:
                merged[-1] = (merged[-1][0], b)  # very short clauses ride with their neighbour
            else:
                merged.append((a, b))
        for k, (a, b) in enumerate(merged):
            a += len(text[a:b]) - len(text[a:b].lstrip())
            out.append((a, b, start, head_end) if k else (a, b, start, start))
    return out


def _head_length(sentence: str) -> int:
    """Length of the sentence's leading organ phrase ('Male flowers', 'Leaves'), 0 if none."""
    voc = vocabulary()
    end = 0
    found = False
    first = re.split(r"[,;:(.]", sentence[:60], maxsplit=1)[0]
    for m in list(re.finditer(r"[^\W\d_]+(?:[-'][^\W\d_]+)*", first))[:4]:
        word = fold(m.group(0))
        _, term = voc.match([word], 0, "en")
        if term is None:
            _, term = voc.match([word], 0, "fr")
        if term is not None and term.kind in ("organ", "part", "type"):
            found, end = True, m.end()
        elif word in {"male", "female", "young", "upper", "lower", "mature", "fruiting", "flowering", "the", "les", "mâles",
                      "males", "femelles", "jeunes"}:
            end = m.end() if found else end
        else:
            break
    return end if found else 0


def chunk_text(text: str, row: Any) -> str:
    """What the encoder reads for a chunk row (…, start, end, head_start, head_end)."""
    start, end, head_start, head_end = (int(v) for v in row[-4:])
    if head_end <= head_start:
        return text[start:end]
    return f"{text[head_start:head_end].strip()}: {text[start:end]}"


# --------------------------------------------------------------------------- the index


class DescriptionIndex:
    """Descriptions of one collection with their traits, BM25 index and sentence embeddings."""

    def __init__(self, records: list[TaxonDescription], traits: list[list[dict[str, Any]]], chunks: np.ndarray,
                 embeddings: np.ndarray, text_model: dict[str, Any], folder: Path | None = None) -> None:
        self.records = records
        self.traits = traits
        self.chunks = chunks  # (n, 5) int: taxon index, start, end, head start, head end
        self.embeddings = embeddings
        self.text_model = text_model
        self.folder = folder
        self._encoder = None
        self._specimens: dict[str, list[int]] = {}
        self._build_lexical()
        self._build_trait_index()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, records: list[TaxonDescription], *, text_model: str = "minilm", device: str | None = None,
              progress: bool = True, batch_size: int = 64,
              known: dict[str, np.ndarray] | None = None) -> DescriptionIndex:
        """Extract traits, cut chunks and embed them; `known` maps chunk text to an embedding
        already computed with the same model (re-indexing skips those)."""
        from retrieval.textenc import cached_text_encoder

        if not records:
            raise BadInput("no descriptions to index")
        traits = [trait_table(extract_traits(r.text, r.language)) for r in tqdm(records, desc="traits", disable=not progress)]
        rows = [(i, *span) for i, r in enumerate(records) for span in chunks_of(r)]
        chunks = np.array(rows, dtype=np.int64).reshape(-1, 5)
        encoder = cached_text_encoder(text_model, device)
        texts = [chunk_text(records[row[0]].text, row) for row in rows]
        known = known or {}
        todo = sorted({t for t in texts if t not in known}, key=len)  # similar lengths batch faster
        vectors = encoder.encode(todo, batch_size=batch_size, progress=progress)
        lookup = {**known, **dict(zip(todo, vectors))}
        embeddings = np.stack([lookup[t] for t in texts]).astype(np.float32) if texts else \
            np.zeros((0, encoder.dim), dtype=np.float32)
        index = cls(records, traits, chunks, embeddings, encoder.info)
        index._encoder = encoder
        return index

    def _build_lexical(self) -> None:
        """BM25 over the same clause chunks the encoder reads (head organ included), so a
        query part ("serrate leaves") scores the clauses where its words occur together."""
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s forces DEBUG on its logger at import
        self._bm25 = bm25s.BM25(k1=BM25_K1, b=BM25_B)
        corpus = [lexical_tokens(chunk_text(self.records[int(row[0])].text, row)) or ["_empty_"] for row in self.chunks]
        if not corpus:
            corpus = [["_empty_"]]
        self._bm25.index(corpus, show_progress=False)
        self._bm25_vocab = set(self._bm25.vocab_dict)

    def _build_trait_index(self) -> None:
        voc = vocabulary()
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._measures: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for t, table in enumerate(self.traits):
            for j, trait in enumerate(table):
                for term in trait.get("terms", []):
                    concept = voc.concept(term)
                    self._postings[concept].append((t, j))
                    for broad in voc.broader(concept):
                        self._postings[broad].append((t, j))
                if "min_mm" in trait:
                    self._measures[trait["character"]].append((t, j))
        self._df = {c: len({t for t, _ in posts}) for c, posts in self._postings.items()}
        # descriptions of genera and families summarise their species ("leaves opposite or alternate"):
        # they match many queries weakly, so their trait scores count a little less than a species'
        self._rank_weight = np.array([0.8 if r.rank in _HIGHER_RANKS else 1.0 for r in self.records], dtype=np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".writing"
        tmp.mkdir(exist_ok=True)
        with (tmp / "descriptions.jsonl").open("w", encoding="utf-8") as fh:
            for record, table in zip(self.records, self.traits):
                fh.write(json.dumps({**record.to_dict(), "traits": table}, ensure_ascii=False) + "\n")
        np.save(tmp / "chunks.npy", self.chunks)
        np.save(tmp / "embeddings.npy", self.embeddings.astype(np.float32))
        manifest = {"format": FORMAT_VERSION, "taxa": len(self.records), "chunks": int(len(self.chunks)),
                    "text_model": self.text_model}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for item in tmp.iterdir():  # replace the old index only once the new one is complete
            item.replace(folder / item.name)
        tmp.rmdir()
        self.folder = folder
        return folder

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / "manifest.json").exists()

    @classmethod
    def load(cls, folder: str | Path, *, text_model: str | None = None) -> DescriptionIndex:
        folder = Path(folder)
        if not cls.exists(folder):
            raise BadInput(f"no description index in {folder}; run `herbaria descriptions add COLLECTION SOURCE...` first")
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexMismatch(f"description index format {manifest.get('format')} is not {FORMAT_VERSION}; rebuild it with "
                                "`herbaria descriptions add`")
        if text_model and text_model != manifest["text_model"]["name"]:
            raise IndexMismatch(f"descriptions were embedded with {manifest['text_model']['name']!r}, not {text_model!r}; "
                                f"search with --text-model {manifest['text_model']['name']} or rebuild")
        records: list[TaxonDescription] = []
        traits: list[list[dict[str, Any]]] = []
        with (folder / "descriptions.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                data = json.loads(line)
                traits.append(data.pop("traits", []))
                records.append(TaxonDescription.from_dict(data))
        chunks = np.load(folder / "chunks.npy")
        embeddings = np.load(folder / "embeddings.npy")
        return cls(records, traits, chunks, embeddings, manifest["text_model"], folder)

    # ------------------------------------------------------------------ specimens
    def link(self, specimens: pd.DataFrame) -> dict[str, list[int]]:
        """Normalised taxon name -> specimen ids; a species description also reaches the
        specimens of its subspecies and varieties when they have no description of their own."""
        names: dict[str, list[int]] = defaultdict(list)
        if specimens is not None and len(specimens) and "scientificName" in specimens:
            for sid, name in zip(specimens["specimen_id"], specimens["scientificName"]):
                key = normalize_name(str(name)) if isinstance(name, str) else ""
                if key:
                    names[key].append(int(sid))
        described = {r.name for r in self.records}
        linked: dict[str, list[int]] = defaultdict(list)
        for key, ids in names.items():
            if key in described:
                linked[key].extend(ids)
            elif species_of(key) in described:
                linked[species_of(key)].extend(ids)
        self._specimens = {k: sorted(set(v)) for k, v in linked.items()}
        return self._specimens

    # ------------------------------------------------------------------ signals
    def _bm25_scores(self, parts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per taxon: sum over query parts of its best clause's BM25 score; and the clause scores."""
        n = len(self.records)
        taxon = self.chunks[:, 0]
        total = np.zeros(n, dtype=np.float32)
        clause = np.zeros(len(self.chunks), dtype=np.float32)
        for part in parts:
            tokens = [t for t in lexical_tokens(part, query=True) if t in self._bm25_vocab]
            if not tokens or not len(self.chunks):
                continue
            scores = np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)
            best = np.zeros(n, dtype=np.float32)
            np.maximum.at(best, taxon, scores)
            total += best
            clause = np.maximum(clause, scores)
        return total, clause

    def _encoder_for_query(self):
        if self._encoder is None:
            from retrieval.textenc import cached_text_encoder

            self._encoder = cached_text_encoder(self.text_model["name"])
            if self._encoder.fingerprint != self.text_model.get("fingerprint"):
                raise IndexMismatch(f"text model {self.text_model['name']!r} differs from the one the descriptions were "
                                    "embedded with; rebuild with `herbaria descriptions add`")
        return self._encoder

    def _dense_scores(self, query: str, parts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per taxon: best chunk for the whole query plus best chunk for each query part;
        and the chunk similarities (for evidence)."""
        encoder = self._encoder_for_query()
        texts = [query] + [p for p in parts if p and p != query]
        q = encoder.encode(texts)
        sims = self.embeddings @ q.T  # (chunks, queries)
        taxon = self.chunks[:, 0]
        n = len(self.records)
        best = np.full((n, sims.shape[1]), -1.0, dtype=np.float32)
        np.maximum.at(best, taxon, sims)
        best[best < -0.5] = 0.0
        score = best[:, 0] + (best[:, 1:].sum(axis=1) if best.shape[1] > 1 else 0.0)
        return score, sims[:, 0] if len(parts) <= 1 else sims.max(axis=1)

    def _trait_scores(self, qtraits: list[dict[str, Any]]) -> tuple[np.ndarray, dict[int, list[tuple[int, float]]]]:
        """Sum over query traits of the best matching (or contradicting) taxon trait."""
        voc = vocabulary()
        n = len(self.records)
        total = np.zeros(n, dtype=np.float32)
        evidence: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for q in qtraits:
            qterms = [voc.concept(t) for t in q.get("terms", [])]
            per_taxon: dict[int, tuple[float, int]] = {}
            if qterms:
                candidates: set[tuple[int, int]] = set()
                for term in qterms:
                    candidates.update(self._postings.get(term, []))
                    for member in voc.members(term):
                        candidates.update(self._postings.get(member, []))
                    for ant in voc.states.get(term, {}).get("ant", []):
                        candidates.update(self._postings.get(voc.concept(ant), []))
                        for member in voc.members(voc.concept(ant)):
                            candidates.update(self._postings.get(member, []))
                df = max((self._df.get(t, 0) for t in qterms), default=0)
                weight = math.log((n + 1) / (df + 1)) + 1.0
                for t, j in candidates:
                    trait = self.traits[t][j]
                    s = _match(q, trait, qterms) * weight
                    if s > 0:
                        s *= float(self._rank_weight[t])
                    if s == 0:
                        continue
                    old = per_taxon.get(t)
                    if old is None or (s > 0 and (old[0] <= 0 or s > old[0])) or (s < 0 and old[0] < 0 and s < old[0]):
                        per_taxon[t] = (s, j)
            elif "min_mm" in q:
                for t, j in self._measures.get(q["character"], []):
                    s = _match_measure(q, self.traits[t][j])
                    if s > 0 and s > per_taxon.get(t, (0.0, 0))[0]:
                        per_taxon[t] = (s, j)
            for t, (s, j) in per_taxon.items():
                total[t] += s
                evidence[t].append((j, s))
        return total, evidence

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
            scores["bm25"], clause_bm25 = self._bm25_scores(parts)
        if "dense" in signals:
            scores["dense"], chunk_sims = self._dense_scores(rewritten, parts if len(parts) > 1 else [])
        trait_scores, trait_evidence = self._trait_scores(qtraits)
        if "traits" in signals:
            scores["traits"] = trait_scores
        return {"scores": scores, "contradicted": trait_scores < 0, "traits": qtraits, "trait_evidence": trait_evidence,
                "chunk_sims": chunk_sims, "clause_bm25": clause_bm25, "rewritten": rewritten}

    @staticmethod
    def fuse(scores: dict[str, np.ndarray], contradicted: np.ndarray, *, weights: dict[str, float] | None = None,
             pool: int = 100, rrf_k: int | None = None) -> tuple[np.ndarray, dict[str, dict[int, int]]]:
        """Weighted reciprocal rank fusion of each signal's top `pool`, contradicting taxa last.

        Ranks are competition ranks: taxa a signal scores equally share its rank (the trait
        signal ties often), so the other signals, not the order of the files, break the tie."""
        weights = weights or {}
        rrf_k = RRF_K if rrf_k is None else rrf_k
        n = len(contradicted)
        ranks: dict[str, dict[int, int]] = {}
        fused = np.zeros(n, dtype=np.float64)
        for name, score in scores.items():
            positive = np.flatnonzero(score > 0)
            order = positive[np.argsort(-score[positive], kind="stable")][:pool]
            values = score[order]
            change = np.r_[True, values[1:] != values[:-1]] if len(values) else np.zeros(0, dtype=bool)
            shared = np.maximum.accumulate(np.where(change, np.arange(1, len(order) + 1), 0))
            ranks[name] = {int(t): int(r) for t, r in zip(order, shared)}
            w = weights.get(name, 1.0)
            if w:
                fused[order] += w / (rrf_k + shared)
        if contradicted.any():  # negation-aware: a taxon whose traits contradict the query goes after all others
            fused[contradicted] *= 1e-3
        return fused, ranks

    def search(self, query: str, k: int = 10, signals: tuple[str, ...] = SIGNALS, *,
               weights: dict[str, float] | None = None, lang: str | None = None, pool: int = 100) -> list[dict[str, Any]]:
        """Taxa whose descriptions match a morphology query, best first.

        Each result: taxon, name, family, source, score (fused), ranks (per signal, None
        when the signal did not retrieve it), evidence (sentences with the matched terms in
        **bold**), contradicts_query, specimen_ids (the collection's specimens of the taxon).
        """
        out = self.signal_scores(query, signals, lang=lang)
        fused, ranks = self.fuse(out["scores"], out["contradicted"], weights=weights or DEFAULT_WEIGHTS, pool=pool,
                                 rrf_k=DEFAULT_RRF_K if weights is None else RRF_K)
        candidates = np.flatnonzero(fused > 0)
        order = candidates[np.argsort(-fused[candidates], kind="stable")][:k]
        if self.folder is not None and not self._specimens:
            self._load_links()
        clause = out["chunk_sims"] if out["chunk_sims"] is not None else out["clause_bm25"]
        return [self._result(int(t), float(fused[t]), ranks, out["trait_evidence"].get(int(t), []), query,
                             clause, bool(out["contradicted"][t])) for t in order]

    def _load_links(self) -> None:
        path = self.folder / "specimens.json" if self.folder else None
        if path and path.exists():
            self._specimens = json.loads(path.read_text())

    def _result(self, t: int, score: float, ranks: dict[str, dict[int, int]], evidence: list[tuple[int, float]],
                query: str, clause_scores: np.ndarray | None, contradicted: bool) -> dict[str, Any]:
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
                          "highlighted": _highlight(record.text, sent, [trait["span"]]),
                          "trait": [trait["organ"], trait["character"], ("not " if trait.get("negated") else "") + trait["value"]]})
        words = set(lexical_tokens(query, query=True))
        if clause_scores is not None:  # the clause the encoder (or BM25) liked best
            rows = np.flatnonzero(self.chunks[:, 0] == t)
            if len(rows) and float(clause_scores[rows].max()) > 0:
                best = rows[int(np.argmax(clause_scores[rows]))]
                span = (int(self.chunks[best, 1]), int(self.chunks[best, 2]))
                if not any(s[0] <= span[0] < s[1] or span[0] <= s[0] < span[1] for s in seen):
                    items.append({"signal": "dense" if "dense" in ranks else "bm25", "supports": True,
                                  "sentence": record.text[span[0]:span[1]].strip(),
                                  "highlighted": _highlight(record.text, span, _word_spans(record.text, span, words)),
                                  "score": round(float(clause_scores[best]), 4)})
        return {
            "taxon": record.taxon, "name": record.name, "family": record.family, "source": record.source,
            "language": record.language, "score": round(score, 6),
            "ranks": {name: ranks[name].get(t) for name in ranks},
            "contradicts_query": contradicted, "evidence": items[:4],
            "specimen_ids": self._specimens.get(record.name, []),
        }

    def describe(self, name: str) -> list[dict[str, Any]]:
        """Records (with traits) whose normalised name is `name`."""
        key = normalize_name(name) or name
        return [{**self.records[i].to_dict(), "traits": self.traits[i]} for i, r in enumerate(self.records)
                if r.name == key or r.taxon == name]


def _match(q: dict[str, Any], trait: dict[str, Any], qterms: list[str]) -> float:
    """+ when the taxon trait supports the query trait, - when it contradicts it, 0 otherwise."""
    voc = vocabulary()
    organ = _organ_fit(q.get("organ", "plant"), trait["organ"])
    if organ == 0:
        return 0.0
    best = 0.0
    for a in qterms:
        for b in trait.get("terms", []):
            same = voc.equivalent(a, b)
            if same:
                polarity = 1.0 if bool(q.get("negated")) == bool(trait.get("negated")) else -1.0
                value = same * polarity
            elif voc.opposed(a, b):
                value = 1.0 if bool(q.get("negated")) != bool(trait.get("negated")) else -1.0
                value *= 0.8
            else:
                continue
            if abs(value) > abs(best) or (abs(value) == abs(best) and value > best):
                best = value
    if best > 0:
        best *= _MODIFIER_WEIGHT.get(trait.get("modifier", ""), 1.0)
    elif best < 0 and trait.get("modifier") in ("rarely", "occasionally", "sometimes"):
        best *= 0.3  # "rarely pubescent" barely contradicts "not hairy"
    return best * organ


def _organ_fit(query_organ: str, organ: str) -> float:
    voc = vocabulary()
    if query_organ == organ:
        return 1.0
    if query_organ == "plant":
        return 0.6
    if query_organ in voc.relative_parts and organ.rsplit(" ", 1)[-1] == query_organ:
        return 0.8  # "stellate hairs" matches the hairs of any organ
    if query_organ in voc.ancestors(organ):  # "leaves" vs a leaf-blade trait
        return 0.9
    if organ in voc.ancestors(query_organ):  # "petals" vs a flower trait
        return 0.5
    if voc.group(query_organ) == voc.group(organ):
        return 0.4
    return 0.0


def _match_measure(q: dict[str, Any], trait: dict[str, Any]) -> float:
    if _organ_fit(q["organ"], trait["organ"]) == 0 or "min_mm" not in trait:
        return 0.0
    lo, hi = math.log(max(q["min_mm"], 1e-3)), math.log(max(q["max_mm"], 1e-3))
    tlo, thi = math.log(max(trait["min_mm"], 1e-3)), math.log(max(trait["max_mm"], 1e-3))
    overlap = min(hi, thi) - max(lo, tlo)
    span = max(hi, thi) - min(lo, tlo)
    if span <= 0:
        return 1.0
    return max(0.0, overlap / span) if overlap >= 0 else max(0.0, 1 + overlap / 0.7) * 0.3


def _word_spans(text: str, span: tuple[int, int], words: set[str]) -> list[list[int]]:
    out = []
    for m in re.finditer(r"[^\W\d_]+(?:-[^\W\d_]+)*", text[span[0]:span[1]]):
        tokens = lexical_tokens(m.group(0))
        if tokens and any(t in words for t in tokens):
            out.append([span[0] + m.start(), span[0] + m.end()])
    return out


def _highlight(text: str, span: tuple[int, int], marks: list[list[int]]) -> str:
    """The sentence with the matched words in **bold** (Markdown, as the chat shows it)."""
    s, e = span
    pieces: list[str] = []
    pos = s
    for a, b in sorted((max(a, s), min(b, e)) for a, b in marks if a < e and b > s):
        if a < pos:
            continue
        pieces += [text[pos:a], "**", text[a:b], "**"]
        pos = b
    pieces.append(text[pos:e])
    return "".join(pieces).strip()
