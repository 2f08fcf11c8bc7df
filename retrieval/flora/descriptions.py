"""Stages for flora descriptions: add them to a collection, look a taxon up, search them.

Descriptions live in COLLECTION/descriptions/ (records with their traits, sentence
embeddings, the specimen links). Adding reads every source first, so a malformed file
stops the command before anything stored is touched, and the new index, links included,
is committed as one version of that folder: a command killed part-way leaves the previous
descriptions whole (retrieval/versioned.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.collections import Collection
from retrieval.errors import BadInput, IndexMismatch
from retrieval.flora.readers import TaxonDescription, read_descriptions
from retrieval.flora.text_encoders import DEFAULT_TEXT_MODEL
from retrieval.collections import DEFAULT_WAIT, collection_lock
from retrieval.flora.morphology import SIGNALS, DescriptionIndex, chunk_text
from retrieval.flora.names import normalize_name
from retrieval.flora.traits import extract_traits, triple

FOLDER = "descriptions"


def _collection(collection: Collection | str | Path) -> Collection:
    return collection if isinstance(collection, Collection) else Collection.open(collection)


def descriptions_dir(collection: Collection | str | Path) -> Path:
    return _collection(collection).path / FOLDER


def _gbif_client(coll: Collection, base_url: str | None) -> Any:
    from retrieval.flora.gbif import GbifSpecies

    return GbifSpecies(coll.path / "media-cache" / "gbif-species", base_url=base_url)


def add_descriptions(collection: Collection | str | Path, sources: Sequence[str | Path], *, text_model: str | None = None,
                     device: str | None = None, rebuild: bool = False, progress: bool = True,
                     wait: float = DEFAULT_WAIT, gbif_names: bool = False, gbif_api: str | None = None) -> dict[str, Any]:
    """Read description sources (FlorML, FNA XML, Darwin Core, CSV, or "gbif": the GBIF species descriptions
    of the collection's taxa), extract traits, embed, index and link every taxon to the collection's specimens
    (taxonomy.py; with `gbif_names` or a "gbif" source, names not linked offline are matched against the GBIF
    backbone). `text_model`: the text encoder preset (default: the one the collection's descriptions are
    embedded with, else DEFAULT_TEXT_MODEL). Returns a summary dict, coverage included.

    Merging into the stored index happens under the collection's write lock (another
    writer is waited for up to `wait` seconds), so two runs never drop each other's taxa."""
    t0 = time.time()
    coll = _collection(collection)
    if not sources:
        raise BadInput("give at least one description source (FlorML .xml, FNA XML, Darwin Core file or archive, CSV, gbif)")
    read: list[dict[str, Any]] = []
    new: list[TaxonDescription] = []
    client = _gbif_client(coll, gbif_api) if gbif_names or any(str(s) == "gbif" for s in sources) else None
    for source in sources:  # all sources parse before anything is written
        if str(source) == "gbif" and not Path(source).exists():
            from retrieval.flora.gbif import gbif_descriptions

            records = gbif_descriptions(client, _collection_names(coll))
        else:
            records = read_descriptions(source)
        if not records:
            raise BadInput(f"{Path(source).name}: no taxon descriptions found")
        langs = sorted({r.language for r in records})
        read.append({"source": str(source), "taxa": len(records), "languages": langs})
        new.extend(records)
    with collection_lock(coll.path, purpose="descriptions add", wait=wait):
        return _merge_and_save(coll, read, new, text_model=text_model, device=device, rebuild=rebuild,
                               progress=progress, started=t0, client=client)


def _collection_names(coll: Collection) -> list[str]:
    """The collection's distinct normalised taxon names."""
    specimens = coll.specimens()
    if specimens is None or not len(specimens) or "scientificName" not in specimens:
        return []
    return sorted({normalize_name(n) for n in specimens["scientificName"] if isinstance(n, str)} - {""})


def _match_online(index: DescriptionIndex, coll: Collection, client: Any) -> None:
    """GBIF backbone matches for the names not linked offline, stored on the records they reach."""
    from retrieval.flora.gbif import match_names
    from retrieval.flora.taxonomy import name_tables, resolve

    tables = name_tables(index.records)
    unlinked = [n for n in _collection_names(coll) if (resolve(n, tables) or {}).get("kind") in (None, "genus")]
    found = match_names(client, unlinked, {r.name for r in index.records})
    by_name = {}
    for record in index.records:
        by_name.setdefault(record.name, record)
    for name, match in found.items():
        by_name[match["acceptedName"]].name_matches[name] = match


def _merge_and_save(coll: Collection, read: list[dict[str, Any]], new: list[TaxonDescription], *, text_model: str | None,
                    device: str | None, rebuild: bool, progress: bool, started: float, client: Any = None) -> dict[str, Any]:
    folder = coll.path / FOLDER
    old: DescriptionIndex | None = None
    if DescriptionIndex.exists(folder) and not rebuild:
        old = DescriptionIndex.load(folder)
        text_model = text_model or old.text_model["name"]  # unnamed: the model the collection already uses
        if old.text_model["name"] != text_model:
            raise IndexMismatch(f"the collection's descriptions are embedded with {old.text_model['name']!r}; add with "
                                f"--text-model {old.text_model['name']} or re-embed everything with --rebuild")
    text_model = text_model or DEFAULT_TEXT_MODEL
    merged: dict[tuple[str, str], TaxonDescription] = {}
    if old is not None:
        for record in old.records:
            merged[(record.source, record.taxon)] = record
    replaced = sum(1 for r in new if (r.source, r.taxon) in merged)
    for record in new:
        merged[(record.source, record.taxon)] = record
    known: dict[str, np.ndarray] = {}
    if old is not None:  # sentences already embedded with this model are not embedded again
        for row, vector in zip(old.chunks, old.embeddings):
            known[chunk_text(old.records[int(row[0])].text, row)] = vector
    index = DescriptionIndex.build(list(merged.values()), text_model=text_model, device=device, progress=progress, known=known)
    if client is not None:
        _match_online(index, coll, client)
    specimens = coll.specimens()
    links = index.link(specimens)
    index.save(folder)  # the links go into the same version as the index
    return {
        "collection": str(coll.path), "sources": read, "taxa": len(index.records), "added": len(new) - replaced,
        "replaced": replaced, "traits": sum(len(t) for t in index.traits), "chunks": int(len(index.chunks)),
        "linked_taxa": len(links), "linked_specimens": sum(len(v) for v in links.values()),
        "text_model": index.text_model["name"], "seconds": round(time.time() - started, 1),
        "coverage": coverage_of(index, specimens),
    }


def coverage_of(index: DescriptionIndex, specimens: Any) -> dict[str, Any]:
    """How many of the collection's taxa and specimens have a description, how each was linked,
    and the unlinked taxa with the closest described names."""
    from retrieval.flora.taxonomy import closest_names, link_counts

    counts: dict[str, int] = defaultdict(int)
    if specimens is not None and len(specimens) and "scientificName" in specimens:
        for name in specimens["scientificName"]:
            key = normalize_name(name) if isinstance(name, str) else ""
            if key:
                counts[key] += 1
    linked_names = {e["specimen_name"] for entries in index.link_details.values() for e in entries}
    described = sorted({r.name for r in index.records})
    unlinked = [{"name": n, "specimens": counts[n], "closest": closest_names(n, described)}
                for n in sorted(counts) if n not in linked_names]
    return {"taxa": len(counts), "linked_taxa": len(linked_names & set(counts)),
            "specimens": int(sum(counts.values())), "linked_specimens": int(sum(counts[n] for n in linked_names if n in counts)),
            "by_kind": link_counts(index.link_details), "unlinked": unlinked}


def description_coverage(collection: Collection | str | Path) -> dict[str, Any]:
    """Stage function for `herbaria descriptions coverage`: coverage_of the collection's current descriptions."""
    coll = _collection(collection)
    index = open_descriptions(coll)
    return {"collection": str(coll.path), **coverage_of(index, coll.specimens())}


def open_descriptions(collection: Collection | str | Path, *, text_model: str | None = None) -> DescriptionIndex:
    """The collection's description index, linked to its current specimens."""
    coll = _collection(collection)
    folder = coll.path / FOLDER
    if not DescriptionIndex.exists(folder):
        raise BadInput(f"{coll.path.name} has no flora descriptions yet; run `herbaria descriptions add "
                       f"{coll.path} SOURCE...` (FlorML, Darwin Core or CSV)")
    index = DescriptionIndex.load(folder, text_model=text_model)
    index.link(coll.specimens())
    return index


def search_descriptions(collection: Collection | str | Path, query: str, *, k: int = 10,
                        signals: Sequence[str] = SIGNALS, lang: str | None = None,
                        weights: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Morphology search over the collection's descriptions (see DescriptionIndex.search)."""
    return open_descriptions(collection).search(query, k=k, signals=tuple(signals), lang=lang, weights=weights)


def _group_by_organ(traits: list[dict[str, Any]]) -> dict[str, list[list[str]]]:
    grouped: dict[str, list[list[str]]] = defaultdict(list)
    for t in traits:
        organ, character, value = triple(t)
        grouped[organ].append([character, value])
    return dict(grouped)


def describe_taxon(collection: Collection | str | Path, name: str) -> dict[str, Any]:
    """A taxon's descriptions, its traits grouped by organ, and its specimens."""
    index = open_descriptions(collection)
    found = index.describe(name)
    if not found:
        raise BadInput(f"no description of {name!r} in this collection")
    key = found[0]["name"]
    return {
        "name": key,
        "descriptions": [{"taxon": d["taxon"], "family": d["family"], "source": d["source"], "language": d["language"],
                          "text": d["text"], "traits": _group_by_organ(d["traits"])} for d in found],
        "specimen_ids": index.specimen_links.get(key, []), "linked_as": index.link_details.get(key, []),
    }


def traits_of(text_or_taxon: str, *, collection: Collection | str | Path | None = None,
              lang: str | None = None) -> dict[str, Any]:
    """Traits of a described taxon (with a collection) or of a piece of description text."""
    if not text_or_taxon.strip():
        raise BadInput("give some description text (or a taxon name with --collection)")
    if collection is not None:
        index = open_descriptions(collection)
        found = index.describe(text_or_taxon) if normalize_name(text_or_taxon) else []
        if found:
            record = found[0]
            return {"taxon": record["taxon"], "source": record["source"],
                    "traits": [dict(t, sentence=record["text"][t["sentence_span"][0]:t["sentence_span"][1]].strip())
                               for t in record["traits"]]}
        traits = extract_traits(text_or_taxon, lang)
        if not traits and len(text_or_taxon.split()) <= 5:
            raise BadInput(f"no description of {text_or_taxon!r} in this collection (and no traits in it as text)")
        return {"text": text_or_taxon, "traits": traits}
    return {"text": text_or_taxon, "traits": extract_traits(text_or_taxon, lang)}
