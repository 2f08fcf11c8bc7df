"""What every chat turn reads, loaded once per process: the specimen table, the FAISS
index with its encoder, the collection's vocabulary, and (when built) its descriptions.

`retrieval.search.search_specimens` reopens the index and the encoder on each call,
which is right for a one-shot CLI but not for a chat server answering many turns
at once; this object holds them and composes the same pieces (filters inside FAISS,
`specimen_record`). Apart from small lock-guarded caches it is read-only after
construction, so concurrent turns share it.

A server runs for weeks while curators ingest, index and add descriptions: at the start
of each turn `refresh()` compares a cheap stamp (the snapshot file, the index's `current`
version, the descriptions and trained-captioner manifests) with the loaded one and, when
it changed, loads the new state beside the old and swaps it in with one assignment; each
method call reads one state throughout. A load that fails (a half-written description
index, an index rebuilt with another encoder than `--model`) is logged and the old state
kept until the collection changes again.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from assistant.described import Descriptions
from assistant.identification import TaxonPrompts
from assistant.router import ORGANS
from assistant.vocab import Vocabulary
from captioning.base import Encoded, encode
from captioning.grounded import TraitCaptioner
from captioning.sources import neighbours_from_records
from retrieval.collections import SNAPSHOT, Collection
from retrieval.vectors import ImageInput
from retrieval.errors import BadInput
from retrieval.filters import allowed_ids, parse_filters
from retrieval.vectors import SpecimenIndex, index_version
from retrieval.flora import normalize_name, species_of
from retrieval.search import open_index, specimen_record

log = logging.getLogger(__name__)

MAX_K = 50
TEXT_CACHE = 256
# Cosine similarity below which a match is noise for a trained CLIP-family encoder, by what the query is: such
# hits are not shown ("nothing close enough"). A random-weights test encoder has no such scale: no floor, a notice.
FLOORS = {"text": 0.1, "image": 0.5}
TEST_ENCODER_NOTICE = ("test encoder {name} (random weights): similarities, identifications and trait descriptions "
                       "are not meaningful")


def is_test_encoder(name: str) -> bool:
    """True for a preset with random weights (a seed, no pretrained checkpoint), e.g. tiny-test."""
    from retrieval.registry import preset

    try:
        spec = preset("encoders", name)
    except Exception:  # noqa: BLE001 - an unknown name is a checkpoint reference, i.e. trained weights
        return False
    model = str(spec.get("model") or "")
    return "seed" in spec and not spec.get("pretrained") and not model.startswith(("hf-hub:", "local-dir:"))


def collection_stamp(folder: Path) -> tuple[Any, ...]:
    """Changes whenever a writer commits a new snapshot, index version, description index or trained
    captioner (a few stats)."""
    def stat(path: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    return (stat(folder / SNAPSHOT), index_version(folder / "index"), stat(folder / "descriptions" / "manifest.json"),
            stat(folder / "captioner" / "model" / "captioner.json"))


class _Loaded:
    """One consistent state of the collection; replaced whole, never changed (but for the taxa cache)."""

    def __init__(self, stamp: tuple[Any, ...], collection: Collection, table: pd.DataFrame, index: SpecimenIndex,
                 encoder: Any, descriptions: Descriptions | None, captions: Any) -> None:
        self.stamp, self.table, self.index, self.encoder = stamp, table, index, encoder
        self.by_id = table.set_index("specimen_id", drop=False)
        names = table["scientificName"].fillna("").astype(str).map(normalize_name)
        self.names = pd.Series(names.to_numpy(), index=table["specimen_id"].to_numpy())
        self.species = self.names.map(species_of)
        self.genera = self.names.str.split(" ").str[0]
        self.name = str(collection.info.get("name") or collection.path.name)
        self.descriptions = descriptions
        self.vocab = Vocabulary.from_table(table, described=descriptions.taxa() if descriptions else ())
        self.captions = captions
        self.make_captions: Any = None  # builds `captions` on first use when loaded lazily
        self.taxa: TaxonPrompts | None = None


class Resources:
    """The loaded collection; build once, share between turns and threads, `refresh()` at each turn."""

    def __init__(self, collection: str | Path | Collection, *, model: str | None = None, device: str | None = None,
                 captioner: str | None = "grounded", lazy: bool = False) -> None:
        self._lazy = lazy  # a one-shot command loads the captioner and warms descriptions only when a turn needs them
        self._captions_lock = threading.Lock()
        self.collection = collection if isinstance(collection, Collection) else Collection.open(collection)
        self._model, self._device = model, device
        self.captioner_name = None if not captioner or captioner.lower() == "none" else captioner
        self._lock = threading.Lock()
        self._image_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._texts: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._failed: tuple[Any, ...] | None = None
        self._state = self._load(collection_stamp(self.collection.path))
        self.test_encoder = is_test_encoder(self._state.encoder.name)
        self.floors: dict[str, float] = {} if self.test_encoder else dict(FLOORS)

    def notices(self) -> list[str]:
        """What a reader must know before trusting an answer (shown with every answer and on the page)."""
        return [TEST_ENCODER_NOTICE.format(name=self._state.encoder.name)] if self.test_encoder else []

    def _load(self, stamp: tuple[Any, ...]) -> _Loaded:
        """Everything a turn reads, from disk (encoders and neural captioners are cached per process)."""
        table = self.collection.specimens()
        index, encoder = open_index(self.collection, model=self._model, device=self._device)
        descriptions = Descriptions.open(self.collection, table)
        if descriptions is not None and not self._lazy:
            descriptions.warm()
        def make_captions() -> Any:
            from captioning.api import CaptionService

            texts = descriptions.texts() if descriptions is not None else None
            return CaptionService(self.collection, captioner=self.captioner_name, model=encoder.name,
                                  device=self._device, descriptions=texts)
        loaded = _Loaded(stamp, self.collection, table, index, encoder, descriptions, None)
        if self.captioner_name:
            loaded.make_captions = make_captions
            if not self._lazy:
                loaded.captions = make_captions()
        return loaded

    def refresh(self) -> bool:
        """Load the collection again when a writer has committed something new since; True when it did."""
        stamp = collection_stamp(self.collection.path)
        if stamp == self._state.stamp or stamp == self._failed:
            return False
        if not self._reload_lock.acquire(blocking=False):
            return False  # another turn is loading it; this one answers from the state it has
        try:
            if stamp == self._state.stamp:
                return False
            loaded = self._load(stamp)
        except Exception as err:  # noqa: BLE001 (whatever it is, the loaded state still serves)
            self._failed = stamp
            log.warning("%s changed on disk but could not be loaded again (%s); still serving the state loaded "
                        "before", self.collection.path.name, err)
            return False
        finally:
            self._reload_lock.release()
        self._state = loaded
        log.info("reloaded %s: %d specimens, %d indexed", self.collection.path.name, len(loaded.table),
                 len(loaded.index))
        return True

    # ------------------------------------------------------------------ the loaded state
    @property
    def table(self) -> pd.DataFrame:
        return self._state.table

    @property
    def index(self) -> SpecimenIndex:
        return self._state.index

    @property
    def encoder(self) -> Any:
        return self._state.encoder

    @property
    def by_id(self) -> pd.DataFrame:
        return self._state.by_id

    @property
    def names(self) -> pd.Series:
        return self._state.names

    @property
    def species(self) -> pd.Series:
        return self._state.species

    @property
    def genera(self) -> pd.Series:
        return self._state.genera

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def descriptions(self) -> Descriptions | None:
        return self._state.descriptions

    @property
    def vocab(self) -> Vocabulary:
        return self._state.vocab

    @property
    def captions(self) -> Any:
        """The caption service; with `lazy`, built at the first image (a text question never pays for it)."""
        state = self._state
        if state.captions is None and state.make_captions is not None:
            with self._captions_lock:
                if state.captions is None:
                    state.captions = state.make_captions()
        return state.captions

    # ------------------------------------------------------------------ vectors
    def encode_image(self, image: ImageInput) -> Encoded:
        """The one image pass of a turn: pooled vector for search and identification, tokens for captioning.

        Serialised: `ClipEncoder.image_features` flips a flag on the shared vision tower for the
        duration of the pass, so two concurrent passes could see each other's setting."""
        encoder = self.encoder
        with self._image_lock:
            return encode(encoder, [image])

    def text_vector(self, text: str) -> np.ndarray:
        """A query text's vector; recent ones are kept (a turn asks for the same text from several tools)."""
        encoder = self.encoder
        key = (encoder.fingerprint, text)  # a reload may bring another encoder
        with self._lock:
            if key in self._texts:
                self._texts.move_to_end(key)
                return self._texts[key]
        vector = encoder.encode_texts([text])[0]
        vector.setflags(write=False)
        with self._lock:
            self._texts[key] = vector
            while len(self._texts) > TEXT_CACHE:
                self._texts.popitem(last=False)
        return vector

    def specimen_vector(self, specimen_id: int) -> np.ndarray:
        return self.index.vector(int(specimen_id))

    # ------------------------------------------------------------------ search
    def search(self, vector: np.ndarray, *, k: int = 8, filters: Any = None, within: list[int] | None = None,
               exclude: int | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Top-k specimens for a query vector; filters and `within` (specimen ids) are applied inside FAISS.
        With `kind` ('text' or 'image' query), hits under that kind's relevance floor are dropped."""
        return self.search_floored(vector, k=k, filters=filters, within=within, exclude=exclude, kind=kind)[0]

    def search_floored(self, vector: np.ndarray, *, k: int = 8, filters: Any = None, within: list[int] | None = None,
                       exclude: int | None = None, kind: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """`search`, and how many of the top-k were dropped as below the relevance floor."""
        k = max(1, min(int(k), MAX_K))
        state = self._state  # one state for the whole call, even if a reload lands meanwhile
        allowed = allowed_ids(state.table, parse_filters(filters))
        if within is not None:
            ids = np.asarray(sorted(set(within)), dtype=np.int64)
            allowed = ids if allowed is None else np.intersect1d(allowed, ids)
        extra = 1 if exclude is not None else 0
        hits = state.index.search(np.asarray(vector, dtype=np.float32), k=k + extra, allowed=allowed)[0]
        hits = [(sid, score) for sid, score in hits if sid != exclude][:k]
        floor = self.floors.get(kind or "", -np.inf)
        kept = [(sid, score) for sid, score in hits if score >= floor]
        return self._records(state, kept), len(hits) - len(kept)

    def records(self, hits: list[tuple[int, float]]) -> list[dict[str, Any]]:
        return self._records(self._state, hits)

    def _records(self, state: _Loaded, hits: list[tuple[int, float]]) -> list[dict[str, Any]]:
        collection, by_id = self.collection, state.by_id
        return [{"rank": rank, "score": round(float(score), 4), **specimen_record(collection, by_id.loc[sid])}
                for rank, (sid, score) in enumerate(hits, start=1) if sid in by_id.index]

    def record(self, specimen_id: int) -> dict[str, Any]:
        by_id = self.by_id
        if int(specimen_id) not in by_id.index:
            raise BadInput(f"no specimen {specimen_id} in this collection")
        return specimen_record(self.collection, by_id.loc[int(specimen_id)])

    def find_specimens(self, identifier: str) -> list[int]:
        """Specimens a user's identifier names: an occurrenceID, a catalog number ('17348'), or one with its
        institution ('HUH 17348', 'HUH-17348', 'HUH:17348'); several when a bare number is held by several."""
        text = " ".join(identifier.split())
        table = self.table
        column = lambda name: table[name].fillna("").astype(str).str.strip() if name in table else pd.Series(  # noqa: E731
            "", index=table.index)
        numbers, institutions = column("catalogNumber").str.casefold(), column("institutionCode").str.casefold()
        hit = table[(column("occurrenceID") == text) | (numbers == text.casefold())]
        parts = re.match(r"^([A-Za-z][A-Za-z]*)[\s:-]+(.+)$", text)
        if hit.empty and parts:
            inst, number = parts.group(1).casefold(), parts.group(2).casefold()
            hit = table[(numbers == number) & (institutions == inst)]
        return sorted(int(i) for i in hit["specimen_id"])

    def ids_where(self, *, collector: str | None = None, locality: str | None = None) -> list[int] | None:
        """Specimens whose collector (recordedBy) or locality contains the words given (case-insensitive);
        None when neither is asked. A collection without the field matches nothing."""
        if not collector and not locality:
            return None
        table = self.table
        mask = np.ones(len(table), dtype=bool)
        for column, wanted in (("recordedBy", collector), ("locality", locality)):
            if wanted:
                values = table[column].fillna("").astype(str).str.casefold() if column in table else pd.Series(
                    "", index=table.index)
                for word in re.findall(r"[^\W\d_][\w'-]+", wanted.casefold()):
                    mask &= values.str.contains(word, regex=False).to_numpy()
        return table.loc[mask, "specimen_id"].astype(int).tolist()

    def has_field(self, column: str) -> bool:
        table = self.table
        return column in table and bool((table[column].fillna("").astype(str).str.strip() != "").any())

    def find_catalog(self, catalog: str) -> int | None:
        """The specimen with this catalog number ('102822' or 'HUH 102822'), if exactly one has it."""
        text = catalog.strip()
        table = self.table
        numbers = table["catalogNumber"].fillna("").astype(str)
        hit = table[numbers == text]
        if hit.empty and " " in text:
            inst, _, number = text.partition(" ")
            hit = table[(numbers == number) & (table["institutionCode"].fillna("").astype(str) == inst)]
        return int(hit["specimen_id"].iloc[0]) if len(hit) == 1 else None

    # ------------------------------------------------------------------ taxa
    def taxon_ids(self, taxon: str, kind: str | None = None) -> list[int]:
        """Specimens of a species (any infraspecific form), a genus or a family."""
        state = self._state
        if kind == "family" or taxon.endswith("aceae"):
            fam = state.table["family"].fillna("").astype(str).str.casefold() == taxon.casefold()
            return state.table.loc[fam, "specimen_id"].astype(int).tolist()
        norm = normalize_name(taxon) or taxon
        mask = ((state.names == norm) | (state.species == norm)) if " " in norm else (state.genera == norm)
        return [int(i) for i in state.names.index[mask.to_numpy()]]

    def taxon_table(self, state: _Loaded | None = None) -> pd.DataFrame:
        """One row per named taxon in the collection: name, genus, family, specimen ids."""
        state = state or self._state
        frame = pd.DataFrame({"specimen_id": state.table["specimen_id"].to_numpy(), "name": state.names.to_numpy(),
                              "family": state.table["family"].fillna("").astype(str).to_numpy()})
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
        state = self._state
        return self._taxon_prompts(state).identify(vector, _logit_scale(state.encoder), rank=rank, top=top)

    def _taxon_prompts(self, state: _Loaded) -> TaxonPrompts:
        """The taxa and their prompt vectors, built at the first identification (cached on disk per encoder)
        without holding the lock other turns need: two first identifications at once both build, one is kept."""
        if state.taxa is None:
            built = TaxonPrompts.build(self.taxon_table(state).set_index("name"), state.encoder)
            with self._lock:
                if state.taxa is None:
                    state.taxa = built
        return state.taxa

    # ------------------------------------------------------------------ descriptions and captions
    def descriptions_count(self) -> int:
        descriptions = self.descriptions
        return 0 if descriptions is None else len(descriptions)

    def describe(self, name: str, *, organ: str | None = None) -> dict[str, Any]:
        """The flora description of a taxon (sentences about `organ` only, when given)."""
        descriptions = self.descriptions
        if descriptions is None:
            return {"kind": "taxon", "taxon": name, "score": None, "evidence": [], "source": None}
        words = ORGANS.get(organ or "", (organ,) if organ else ())
        return descriptions.describe(name, organ_words=tuple(words))

    def search_descriptions(self, query: str, *, k: int = 5, filters: Any = None) -> list[dict[str, Any]]:
        """Taxa whose descriptions match `query`, each with its specimens that pass the filters,
        the best two (by image–text similarity to the query) attached as records."""
        state = self._state
        if state.descriptions is None:
            return []
        allowed = allowed_ids(state.table, parse_filters(filters))
        hits = state.descriptions.search(query, k=k * 4 if allowed is not None else k)
        out = []
        for hit in hits:
            ids = hit["specimen_ids"] if allowed is None else sorted(set(hit["specimen_ids"]) & set(allowed.tolist()))
            if allowed is not None and not ids:
                continue  # a filtered question: taxa with no specimen passing the filters are off topic
            best = self.search(self.text_vector(query), k=2, within=ids, kind="text") if ids else []
            out.append({**hit, "specimen_ids": ids, "specimens": best})
            if len(out) == k:
                break
        return out

    def caption(self, image: ImageInput, *, encoded: Encoded | None = None, k: int = 8,
                records: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """The captioner's trait description of an image, reusing the turn's encoder pass; None without a captioner.

        With `records` (the specimens the gallery shows), the grounded captioner reads exactly those as the
        neighbours, so the description and its 'n/8' speak of the sheets the user sees."""
        captions = self.captions
        if captions is None:
            return None
        if records is None or not isinstance(captions.captioner, TraitCaptioner):
            return captions.caption(image, encoded=encoded, k=k)
        neighbours = neighbours_from_records(records, captions.texts)
        out = captions.captioner.caption_one(neighbours)
        view = [{"rank": i + 1, **{key: nb.get(key) for key in ("specimen_id", "score", "scientificName", "name", "family",
                                                                 "catalogNumber", "image", "described")}}
                for i, nb in enumerate(neighbours)]
        return {"captioner": captions.name, "kind": "grounded", **out, "k": len(neighbours), "neighbours": view,
                "encoder": self._state.encoder.name}

    # ------------------------------------------------------------------ choices for the UI
    def filter_choices(self) -> dict[str, Any]:
        table = self.table

        def distinct(column: str) -> list[str]:
            values = table[column].dropna().astype(str).str.strip() if column in table else pd.Series([], dtype=str)
            return sorted(set(values[values != ""]))
        years = pd.to_numeric(table["year"], errors="coerce").dropna()
        lo, hi = (int(years.min()), int(years.max())) if len(years) else (None, None)
        return {"families": distinct("family"), "countries": distinct("country"), "institutions": distinct("institutionCode"),
                "years": (lo, hi), "min_year": lo, "max_year": hi}


def _logit_scale(encoder: Any) -> float:
    scale = getattr(encoder.model, "logit_scale", None)
    value = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
    return min(value, 100.0)


def _most_common(values: pd.Series) -> str:
    values = values[values != ""]
    return str(values.mode().iloc[0]) if len(values) else ""
