"""What every chat turn reads, loaded once per process: the specimen table, the FAISS
index with its encoder, the collection's vocabulary, and (when built) its descriptions.

The specimen table is the collection's memory-mapped `SpecimenTable` (retrieval/collections/table.py), never a
pandas table: filters, taxa, identifiers and rows by id are answered from dictionary codes, a sorted id column
and vectorised comparisons, so a million-specimen collection opens in seconds and costs little RAM; what is
derived per distinct scientific name (normalised name, species, genus) is computed once per loaded state.

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
from retrieval.collections import SNAPSHOT, Collection, SpecimenTable, codes_mask
from retrieval.vectors import ImageInput
from retrieval.errors import BadInput
from retrieval.filters import allowed_contains, allowed_ids, parse_filters
from retrieval.vectors import SpecimenIndex, index_version
from retrieval.flora import normalize_name, species_of
from retrieval.search import open_index, rank_records, specimen_record

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


class _Names:
    """Normalised scientific names per row, through the table's dictionary: the per-name work (normalising,
    species, genus) runs once per distinct name, rows carry an integer code."""

    def __init__(self, table: SpecimenTable) -> None:
        codes, distinct = table.dictionary("scientificName")
        normalised = [normalize_name(v) for v in distinct]
        self.names, inverse = np.unique(np.asarray(normalised, dtype=object), return_inverse=True)  # sorted
        self.rows = inverse.astype(np.int32)[codes] if len(codes) else np.zeros(0, np.int32)  # name code per row
        self.species = np.asarray([species_of(n) for n in self.names], dtype=object)
        self.genera = np.asarray([n.split(" ")[0] for n in self.names], dtype=object)

    def mask(self, wanted: np.ndarray) -> np.ndarray:
        """Rows whose name code is flagged in `wanted` (one flag per distinct normalised name)."""
        return codes_mask(self.rows, wanted)


class _Loaded:
    """One consistent state of the collection; replaced whole, never changed (but for the lazy caches)."""

    def __init__(self, stamp: tuple[Any, ...], collection: Collection, table: SpecimenTable, index: SpecimenIndex,
                 encoder: Any, descriptions: Descriptions | None, captions: Any) -> None:
        self.stamp, self.table, self.index, self.encoder = stamp, table, index, encoder
        self.name = str(collection.info.get("name") or collection.path.name)
        self.descriptions = descriptions
        self.names = _Names(table)
        self.vocab = Vocabulary.from_table(_vocabulary_frame(table), described=descriptions.taxa() if descriptions else ())
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
        table = self.collection.table()
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
    def table(self) -> SpecimenTable:
        return self._state.table

    @property
    def index(self) -> SpecimenIndex:
        return self._state.index

    @property
    def encoder(self) -> Any:
        return self._state.encoder

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
            allowed = ids if allowed is None else ids[allowed_contains(allowed, ids)]
        extra = 1 if exclude is not None else 0
        hits = state.index.search(np.asarray(vector, dtype=np.float32), k=k + extra, allowed=allowed)[0]
        hits = [(sid, score) for sid, score in hits if sid != exclude][:k]
        floor = self.floors.get(kind or "", -np.inf)
        kept = [(sid, score) for sid, score in hits if score >= floor]
        return self._records(state, kept), len(hits) - len(kept)

    def records(self, hits: list[tuple[int, float]]) -> list[dict[str, Any]]:
        return self._records(self._state, hits)

    def _records(self, state: _Loaded, hits: list[tuple[int, float]]) -> list[dict[str, Any]]:
        return rank_records(self.collection, hits, state.table)

    def row(self, specimen_id: int) -> dict[str, Any]:
        """Every stored column of one specimen (BadInput for an id the collection does not hold)."""
        found = self.table.row(int(specimen_id))
        if found is None:
            raise BadInput(f"no specimen {specimen_id} in this collection")
        return found

    def record(self, specimen_id: int) -> dict[str, Any]:
        return specimen_record(self.collection, self.row(specimen_id))

    def find_specimens(self, identifier: str) -> list[int]:
        """Specimens a user's identifier names: an occurrenceID, a catalog number ('17348'), or one with its
        institution ('HUH 17348', 'HUH-17348', 'HUH:17348'); several when a bare number is held by several."""
        text = " ".join(identifier.split())
        table = self.table
        hit = table.equal("occurrenceID", text) | _catalog_mask(table, text)
        parts = re.match(r"^([A-Za-z][A-Za-z]*)[\s:-]+(.+)$", text)
        if not hit.any() and parts:
            inst, number = parts.group(1), parts.group(2)
            hit = _catalog_mask(table, number) & table.mask_in("institutionCode", [inst])
        return [int(i) for i in table.ids_where(hit)]

    def ids_where(self, *, collector: str | None = None, locality: str | None = None) -> list[int] | None:
        """Specimens whose collector (recordedBy) or locality contains the words given (case-insensitive);
        None when neither is asked. A collection without the field matches nothing."""
        if not collector and not locality:
            return None
        table = self.table
        mask = np.ones(len(table), dtype=bool)
        for column, wanted in (("recordedBy", collector), ("locality", locality)):
            if wanted:
                if column not in table:
                    mask[:] = False
                for word in re.findall(r"[^\W\d_][\w'-]+", wanted.casefold()):
                    mask &= table.contains(column, word)
        return [int(i) for i in table.ids_where(mask)]

    def has_field(self, column: str) -> bool:
        return self.table.has_text(column)

    def find_catalog(self, catalog: str) -> int | None:
        """The specimen with this catalog number ('102822' or 'HUH 102822'), if exactly one has it."""
        text = catalog.strip()
        table = self.table
        hit = table.equal("catalogNumber", text)
        if not hit.any() and " " in text:
            inst, _, number = text.partition(" ")
            hit = table.equal("catalogNumber", number) & table.equal("institutionCode", inst)
        ids = table.ids_where(hit)
        return int(ids[0]) if len(ids) == 1 else None

    # ------------------------------------------------------------------ taxa
    def taxon_ids(self, taxon: str, kind: str | None = None) -> list[int]:
        """Specimens of a species (any infraspecific form), a genus or a family."""
        state = self._state
        table = state.table
        if kind == "family" or taxon.endswith("aceae"):
            return [int(i) for i in table.ids_where(table.mask_in("family", [taxon]))]
        norm = normalize_name(taxon) or taxon
        names = state.names
        wanted = ((names.names == norm) | (names.species == norm)) if " " in norm else (names.genera == norm)
        return [int(i) for i in table.ids_where(names.mask(np.asarray(wanted, dtype=bool)))]

    def taxon_table(self, state: _Loaded | None = None) -> pd.DataFrame:
        """One row per named taxon in the collection (sorted by name): name, genus, family (the most common
        non-empty one, ties to the first in sort order), specimen ids."""
        state = state or self._state
        names, table = state.names, state.table
        named = np.flatnonzero(names.names[names.rows] != "") if len(names.rows) else np.zeros(0, np.int64)
        rows = names.rows[named]
        order = np.argsort(rows, kind="stable")
        present, starts = np.unique(rows[order], return_index=True)
        ids = table.ids[named][order]
        groups = np.split(ids, starts[1:]) if len(starts) else []
        fam_codes, fam_values = table.dictionary("family")
        values = np.asarray(fam_values, dtype=object)
        fam = fam_codes[named]
        keep = values[fam] != "" if len(fam) else np.zeros(0, bool)
        family = [""] * len(present)
        if keep.any():  # per name: the family most of its specimens give, ties to the first in sort order
            counts = pd.DataFrame({"name": rows[keep], "code": fam[keep]}).value_counts().rename("n").reset_index()
            counts["family"] = values[counts["code"].to_numpy()]
            best = counts.sort_values(["name", "n", "family"], ascending=[True, False, True]).drop_duplicates("name")
            at = dict(zip(best["name"].tolist(), best["family"].tolist()))
            family = [at.get(int(n), "") for n in present]
        return pd.DataFrame({"name": names.names[present].astype(object) if len(present) else [],
                             "genus": names.genera[present].astype(object) if len(present) else [],
                             "family": family, "specimen_ids": [g.tolist() for g in groups]})

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
            ids = hit["specimen_ids"]
            if allowed is not None:
                ids = sorted({sid for sid, passed in zip(ids, allowed_contains(allowed, ids)) if passed})
            if allowed is not None and not ids:
                continue  # a filtered question: taxa with no specimen passing the filters are off topic
            # Sheets linked to a described taxon by name: the description is the relevance, the image only orders
            # them, so no image-text floor drops them.
            best = self.search(self.text_vector(query), k=2, within=ids) if ids else []
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
        years = table.numbers("year")
        years = years[np.isfinite(years)]
        lo, hi = (int(years.min()), int(years.max())) if len(years) else (None, None)
        return {"families": table.distinct("family"), "countries": table.distinct("country"),
                "institutions": table.distinct("institutionCode"), "years": (lo, hi), "min_year": lo, "max_year": hi}


def _logit_scale(encoder: Any) -> float:
    scale = getattr(encoder.model, "logit_scale", None)
    value = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
    return min(value, 100.0)


def _catalog_mask(table: SpecimenTable, text: str) -> np.ndarray:
    """Rows whose catalog number is `text` ignoring case (and surrounding blanks, as stored values are stripped)."""
    return table.equal("catalogNumber", text.strip(), fold=True)


def _vocabulary_frame(table: SpecimenTable) -> pd.DataFrame:
    """What `Vocabulary.from_table` reads, from the table's dictionaries, in a few thousand rows instead of one
    per specimen: the distinct names, families, countries and institutions, and the genus -> family pairs
    in the order they first appear (rows with both set) followed by genera and families seen without a pair."""
    genus_codes, genera = table.dictionary("genus")
    family_codes, families = table.dictionary("family")
    pair_genera: list[str] = []
    pair_families: list[str] = []
    if len(genus_codes) and "genus" in table and "family" in table:
        has_genus = np.asarray([g != "" for g in genera], dtype=bool)[genus_codes]
        has_family = np.asarray([f != "" for f in families], dtype=bool)[family_codes]
        rows = np.flatnonzero(has_genus & has_family)
        _, first = np.unique(genus_codes[rows], return_index=True)
        first = rows[np.sort(first)]
        pair_genera = [genera[c] for c in genus_codes[first]]
        pair_families = [families[c] for c in family_codes[first]]
    all_genera = table.distinct("genus")
    columns: dict[str, list[str | None]] = {
        "genus": pair_genera + all_genera,
        "family": pair_families + [None] * len(all_genera) + table.distinct("family"),
        "scientificName": table.distinct("scientificName"), "country": table.distinct("country"),
        "institutionCode": table.distinct("institutionCode")}
    length = max(len(v) for v in columns.values())
    return pd.DataFrame({k: v + [None] * (length - len(v)) for k, v in columns.items() if k in table})
