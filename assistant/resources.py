"""What every chat turn reads, loaded once per process: the specimen table, the FAISS
index with its encoder, the collection's vocabulary, and (when built) its descriptions.

`retrieval.search.search_specimens` reopens the index and the encoder on each call,
which is right for a one-shot CLI but not for a chat server answering many turns
at once; this object holds them and composes the same pieces (filters inside FAISS,
`specimen_record`). Apart from small lock-guarded caches it is read-only after
construction, so concurrent turns share it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from assistant.described import Descriptions
from assistant.router import ORGANS
from assistant.vocab import Vocabulary
from captioning.base import Encoded, encode
from retrieval.collection import Collection
from retrieval.encoder import ImageInput
from retrieval.errors import BadInput
from retrieval.filters import allowed_ids, parse_filters
from retrieval.names import normalize_name, species_of
from retrieval.search import open_index, specimen_record

PROMPT = "a herbarium specimen of {name}"
MAX_K = 50
TEXT_CACHE = 256


class Resources:
    """The loaded collection; build once, share between turns and threads."""

    def __init__(self, collection: str | Path | Collection, *, model: str | None = None, device: str | None = None,
                 captioner: str | None = "grounded") -> None:
        self.collection = collection if isinstance(collection, Collection) else Collection.open(collection)
        self.table = self.collection.specimens()
        self.index, self.encoder = open_index(self.collection, model=model, device=device)
        self.by_id = self.table.set_index("specimen_id", drop=False)
        names = self.table["scientificName"].fillna("").astype(str).map(normalize_name)
        self.names = pd.Series(names.to_numpy(), index=self.table["specimen_id"].to_numpy())
        self.species = self.names.map(species_of)
        self.genera = self.names.str.split(" ").str[0]
        self.name = str(self.collection.info.get("name") or self.collection.path.name)
        self.descriptions = Descriptions.open(self.collection, self.table)
        if self.descriptions is not None:
            self.descriptions.warm()
        self.vocab = Vocabulary.from_table(self.table, described=self.descriptions.taxa() if self.descriptions else ())
        self._lock = threading.Lock()
        self._image_lock = threading.Lock()
        self._taxa: tuple[pd.DataFrame, np.ndarray] | None = None
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()
        self.captioner_name = None if not captioner or captioner.lower() == "none" else captioner
        self.captions = None
        if self.captioner_name:
            from captioning.api import CaptionService

            texts = self.descriptions.texts() if self.descriptions is not None else None
            self.captions = CaptionService(self.collection, captioner=self.captioner_name, model=self.encoder.name,
                                           device=device, descriptions=texts)

    # ------------------------------------------------------------------ vectors
    def encode_image(self, image: ImageInput) -> Encoded:
        """The one image pass of a turn: pooled vector for search and identification, tokens for captioning.

        Serialised: `ClipEncoder.image_features` flips a flag on the shared vision tower for the
        duration of the pass, so two concurrent passes could see each other's setting."""
        with self._image_lock:
            return encode(self.encoder, [image])

    def text_vector(self, text: str) -> np.ndarray:
        """A query text's vector; recent ones are kept (a turn asks for the same text from several tools)."""
        with self._lock:
            if text in self._texts:
                self._texts.move_to_end(text)
                return self._texts[text]
        vector = self.encoder.encode_texts([text])[0]
        vector.setflags(write=False)
        with self._lock:
            self._texts[text] = vector
            while len(self._texts) > TEXT_CACHE:
                self._texts.popitem(last=False)
        return vector

    def specimen_vector(self, specimen_id: int) -> np.ndarray:
        return self.index.vector(int(specimen_id))

    # ------------------------------------------------------------------ search
    def search(self, vector: np.ndarray, *, k: int = 8, filters: Any = None, within: list[int] | None = None,
               exclude: int | None = None) -> list[dict[str, Any]]:
        """Top-k specimens for a query vector; filters and `within` (specimen ids) are applied inside FAISS."""
        k = max(1, min(int(k), MAX_K))
        allowed = allowed_ids(self.table, parse_filters(filters))
        if within is not None:
            ids = np.asarray(sorted(set(within)), dtype=np.int64)
            allowed = ids if allowed is None else np.intersect1d(allowed, ids)
        extra = 1 if exclude is not None else 0
        hits = self.index.search(np.asarray(vector, dtype=np.float32), k=k + extra, allowed=allowed)[0]
        hits = [(sid, score) for sid, score in hits if sid != exclude][:k]
        return self.records(hits)

    def records(self, hits: list[tuple[int, float]]) -> list[dict[str, Any]]:
        out = []
        for rank, (sid, score) in enumerate(hits, start=1):
            if sid in self.by_id.index:
                out.append({"rank": rank, "score": round(float(score), 4), **self.record(sid)})
        return out

    def record(self, specimen_id: int) -> dict[str, Any]:
        if int(specimen_id) not in self.by_id.index:
            raise BadInput(f"no specimen {specimen_id} in this collection")
        return specimen_record(self.collection, self.by_id.loc[int(specimen_id)])

    def find_catalog(self, catalog: str) -> int | None:
        """The specimen with this catalog number ('102822' or 'HUH 102822'), if exactly one has it."""
        text = catalog.strip()
        numbers = self.table["catalogNumber"].fillna("").astype(str)
        hit = self.table[numbers == text]
        if hit.empty and " " in text:
            inst, _, number = text.partition(" ")
            hit = self.table[(numbers == number) & (self.table["institutionCode"].fillna("").astype(str) == inst)]
        return int(hit["specimen_id"].iloc[0]) if len(hit) == 1 else None

    # ------------------------------------------------------------------ taxa
    def taxon_ids(self, taxon: str, kind: str | None = None) -> list[int]:
        """Specimens of a species (any infraspecific form), a genus or a family."""
        if kind == "family" or taxon.endswith("aceae"):
            fam = self.table["family"].fillna("").astype(str).str.casefold() == taxon.casefold()
            return self.table.loc[fam, "specimen_id"].astype(int).tolist()
        norm = normalize_name(taxon) or taxon
        mask = ((self.names == norm) | (self.species == norm)) if " " in norm else (self.genera == norm)
        return [int(i) for i in self.names.index[mask.to_numpy()]]

    def taxon_table(self) -> pd.DataFrame:
        """One row per named taxon in the collection: name, genus, family, specimen ids."""
        frame = pd.DataFrame({"specimen_id": self.table["specimen_id"].to_numpy(), "name": self.names.to_numpy(),
                              "family": self.table["family"].fillna("").astype(str).to_numpy()})
        frame = frame[frame["name"] != ""]
        frame["genus"] = frame["name"].str.split(" ").str[0]
        grouped = frame.groupby("name", sort=True).agg(genus=("genus", "first"), family=("family", _most_common),
                                                        specimen_ids=("specimen_id", list))
        return grouped.reset_index()

    def identify(self, vector: np.ndarray, *, rank: str = "species", top: int = 5) -> list[dict[str, Any]]:
        """Zero-shot taxon ranking: the image against 'a herbarium specimen of {name}' for every taxon held,
        softmax at CLIP's temperature, probabilities summed up to the asked rank."""
        if rank not in ("species", "genus", "family"):
            raise BadInput(f"rank must be species, genus or family, not {rank!r}")
        table, text_vectors = self._taxon_vectors()
        taxa = table.index.tolist()
        if not len(taxa):
            return []
        logits = self._logit_scale() * (text_vectors @ np.asarray(vector, dtype=np.float32))
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        scores: dict[str, float] = {}
        members: dict[str, list[int]] = {}
        for name, p in zip(taxa, probs):
            row = table.loc[name]
            label = {"species": name, "genus": row["genus"], "family": row["family"]}[rank]
            if not label:
                continue
            scores[label] = scores.get(label, 0.0) + float(p)
            members.setdefault(label, []).extend(row["specimen_ids"])
        best = sorted(scores.items(), key=lambda item: -item[1])[:top]
        return [{"kind": "identification", "rank": rank, "taxon": label, "score": round(score, 4),
                 "specimen_ids": members[label][:20], "evidence": []} for label, score in best]

    def _taxon_vectors(self) -> tuple[pd.DataFrame, np.ndarray]:
        """The taxon table (by name) and its prompts' text vectors, computed at the first identification."""
        with self._lock:
            if self._taxa is None:
                table = self.taxon_table().set_index("name")
                prompts = [PROMPT.format(name=n) for n in table.index]
                vectors = self.encoder.encode_texts(prompts) if prompts else np.zeros((0, self.encoder.dim), np.float32)
                self._taxa = (table, vectors)
            return self._taxa

    def _logit_scale(self) -> float:
        scale = getattr(self.encoder.model, "logit_scale", None)
        value = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
        return min(value, 100.0)

    # ------------------------------------------------------------------ descriptions and captions
    def descriptions_count(self) -> int:
        return 0 if self.descriptions is None else len(self.descriptions)

    def describe(self, name: str, *, organ: str | None = None) -> dict[str, Any]:
        """The flora description of a taxon (sentences about `organ` only, when given)."""
        if self.descriptions is None:
            return {"kind": "taxon", "taxon": name, "score": None, "evidence": [], "source": None}
        words = ORGANS.get(organ or "", (organ,) if organ else ())
        return self.descriptions.describe(name, organ_words=tuple(words))

    def search_descriptions(self, query: str, *, k: int = 5, filters: Any = None) -> list[dict[str, Any]]:
        """Taxa whose descriptions match `query`, each with its specimens that pass the filters,
        the best two (by image–text similarity to the query) attached as records."""
        if self.descriptions is None:
            return []
        allowed = allowed_ids(self.table, parse_filters(filters))
        hits = self.descriptions.search(query, k=k * 4 if allowed is not None else k)
        out = []
        for hit in hits:
            ids = hit["specimen_ids"] if allowed is None else sorted(set(hit["specimen_ids"]) & set(allowed.tolist()))
            if allowed is not None and not ids:
                continue  # a filtered question: taxa with no specimen passing the filters are off topic
            best = self.search(self.text_vector(query), k=2, within=ids) if ids else []
            out.append({**hit, "specimen_ids": ids, "specimens": best})
            if len(out) == k:
                break
        return out

    def caption(self, image: ImageInput, *, encoded: Encoded | None = None, k: int = 8) -> dict[str, Any] | None:
        """The captioner's trait description of an image, reusing the turn's encoder pass; None without a captioner."""
        if self.captions is None:
            return None
        return self.captions.caption(image, encoded=encoded, k=k)

    # ------------------------------------------------------------------ choices for the UI
    def filter_choices(self) -> dict[str, Any]:
        def distinct(column: str) -> list[str]:
            values = self.table[column].dropna().astype(str).str.strip() if column in self.table else pd.Series([], dtype=str)
            return sorted(set(values[values != ""]))
        years = pd.to_numeric(self.table["year"], errors="coerce").dropna()
        lo, hi = (int(years.min()), int(years.max())) if len(years) else (None, None)
        return {"families": distinct("family"), "countries": distinct("country"), "institutions": distinct("institutionCode"),
                "years": (lo, hi), "min_year": lo, "max_year": hi}


def _most_common(values: pd.Series) -> str:
    values = values[values != ""]
    return str(values.mode().iloc[0]) if len(values) else ""
