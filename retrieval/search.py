"""Stage: image-index search by text, by image, or both, with metadata filters.

Returns plain dicts (rank, score and the specimen's Darwin Core fields) so the
CLI, the chat tools and the web demo can all use them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrieval.collections import Collection, SpecimenTable
from retrieval.vectors import ClipEncoder, ImageInput, create_encoder
from retrieval.errors import BadInput
from retrieval.filters import allowed_contains, allowed_ids, parse_filters
from retrieval.vectors import SpecimenIndex, open_shared
from retrieval.vectors import index_dir

RESULT_FIELDS = ("occurrenceID", "catalogNumber", "institutionCode", "collectionCode", "scientificName", "family",
                 "genus", "recordedBy", "eventDate", "year", "country", "locality", "decimalLatitude",
                 "decimalLongitude", "license", "rightsHolder", "references")


def open_index(collection: Collection, *, model: str | None = None, device: str | None = None) -> tuple[SpecimenIndex, ClipEncoder]:
    """The collection's index and the encoder it was built with (or `model`, checked against it).
    The index is opened once per process and shared (the chat and its caption service search one copy)."""
    folder = index_dir(collection)
    manifest = SpecimenIndex.read_manifest(folder)
    encoder = create_encoder(model or manifest["encoder"], device=device)
    return open_shared(folder, encoder=encoder.info), encoder


def query_vector(encoder: ClipEncoder, *, text: str | None = None, image: ImageInput | None = None) -> np.ndarray:
    """One normalised query vector; text and image together are averaged in the shared space."""
    parts = []
    if text is not None and text.strip():
        parts.append(encoder.encode_texts([text])[0])
    if image is not None:
        parts.append(encoder.encode_images([image])[0])
    if not parts:
        raise BadInput("empty query: give some text or an image (--image PATH)")
    vec = np.sum(parts, axis=0)
    return (vec / np.linalg.norm(vec)).astype(np.float32)


def specimen_record(collection: Collection, row: pd.Series | Mapping[str, Any]) -> dict[str, Any]:
    """A specimen as a plain dict with its image resolved to a path (or its URL)."""
    record: dict[str, Any] = {"specimen_id": int(row["specimen_id"])}
    for field in RESULT_FIELDS:
        value = row.get(field)
        record[field] = None if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA else value
    if record.get("year") is not None:
        record["year"] = int(record["year"])
    image = str(row.get("image") or "")
    record["image"] = str(collection.path / image) if image else (row.get("imageUrl") or None)
    return record


def rank_records(collection: Collection, hits: list[tuple[int, float]],
                 table: pd.DataFrame | SpecimenTable | None = None) -> list[dict[str, Any]]:
    """Hits (specimen id, score) as ranked records; ids the table does not hold are left out."""
    table = collection.table() if table is None else table
    if isinstance(table, SpecimenTable):
        rows = {int(row["specimen_id"]): row for row in table.rows([int(sid) for sid, _ in hits])}
        return [{"rank": rank, "score": round(float(score), 4), **specimen_record(collection, rows[int(sid)])}
                for rank, (sid, score) in enumerate(hits, start=1) if int(sid) in rows]
    by_id = table.set_index("specimen_id", drop=False)
    results = []
    for rank, (sid, score) in enumerate(hits, start=1):
        if sid in by_id.index:
            results.append({"rank": rank, "score": round(score, 4), **specimen_record(collection, by_id.loc[sid])})
    return results


def search_specimens(collection: str | Path | Collection, *, text: str | None = None, image: ImageInput | None = None,
                     like: int | None = None, k: int = 10, filters: Any = None, model: str | None = None,
                     device: str | None = None) -> list[dict[str, Any]]:
    """Top-k specimens for a text, an image, or `like` (a specimen id: more like that one)."""
    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    index, encoder = open_index(col, model=model, device=device)
    vec = index.vector(like) if like is not None else query_vector(encoder, text=text, image=image)
    table = col.table()
    hits = index.search(vec, k=k, allowed=allowed_ids(table, parse_filters(filters)))[0]
    return rank_records(col, hits, table)


RRF_K = 60  # the usual reciprocal-rank-fusion constant


def search_collection(collection: str | Path | Collection, *, text: str | None = None, image: ImageInput | None = None,
                      k: int = 10, filters: Any = None, model: str | None = None, pool: int = 50,
                      device: str | None = None) -> list[dict[str, Any]]:
    """Specimens for a query, fusing the image index with the flora descriptions (RRF).

    A text query reaches specimens two ways: CLIP text-to-image similarity, and the
    descriptions of their taxa (BM25 + dense + traits). Each hit keeps the ranks it got
    and, when a description matched, the sentences that explain why."""
    from retrieval.flora import FOLDER as DESCRIPTIONS, DescriptionIndex, open_descriptions

    col = collection if isinstance(collection, Collection) else Collection.open(collection)
    has_images = (index_dir(col) / "manifest.json").exists()
    use_text = bool(text and text.strip()) and DescriptionIndex.exists(col.path / DESCRIPTIONS)
    if not (text and text.strip()) and image is None:
        raise BadInput("empty query: give some text or an image (--image PATH)")
    if not has_images and not use_text:
        raise BadInput(f"{col.path.name} has nothing to search yet: run `herbaria index {col.path}` "
                       f"and/or `herbaria descriptions add {col.path} SOURCE...`")
    table = col.table()
    allowed = allowed_ids(table, parse_filters(filters))
    ranks: dict[int, dict[str, int]] = {}
    scores: dict[int, dict[str, float]] = {}
    evidence: dict[int, dict[str, Any]] = {}
    if has_images:
        index, encoder = open_index(col, model=model, device=device)
        for rank, (sid, score) in enumerate(index.search(query_vector(encoder, text=text, image=image), k=pool,
                                                         allowed=allowed)[0], start=1):
            ranks.setdefault(sid, {})["image"] = rank
            scores.setdefault(sid, {})["image"] = round(score, 4)
    if use_text:
        for rank, taxon in enumerate(open_descriptions(col).search(text, k=pool), start=1):
            sids = taxon["specimen_ids"]
            if allowed is not None:
                sids = [sid for sid, passed in zip(sids, allowed_contains(allowed, sids)) if passed]
            for sid in sids:
                ranks.setdefault(sid, {}).setdefault("descriptions", rank)
                evidence.setdefault(sid, {key: taxon[key] for key in ("taxon", "name", "family", "source", "evidence")})
    fused = {sid: sum(1.0 / (RRF_K + r) for r in by.values()) for sid, by in ranks.items()}
    order = sorted(fused, key=lambda sid: (-fused[sid], sid))[:k]
    results = rank_records(col, [(sid, fused[sid]) for sid in order], table)
    for hit in results:
        sid = hit["specimen_id"]
        hit.update(score=round(fused[sid], 6), signals=ranks[sid], similarity=scores.get(sid, {}).get("image"),
                   description=evidence.get(sid))
    return results
