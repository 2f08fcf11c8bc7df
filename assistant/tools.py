"""LangChain tools over the loaded collection, as content-and-artifact pairs.

The content is short text (citations, names, quoted sentences) for a language model;
the artifact carries what the UI needs (specimen dicts with image paths, caption
dicts) and never reaches the model. Per-turn inputs that must not come from a model
(the uploaded image and its one encoder pass, a stored query vector) travel in the
run config (`config["configurable"]["turn"]`), so no tool ever takes a file path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool

from assistant.composer import citation
from assistant.resources import Resources
from assistant.retrievers import DescriptionRetriever
from captioning.base import Encoded
from retrieval.vectors import ImageInput
from retrieval.errors import BadInput

GENERIC_QUERY = "a herbarium specimen"


@dataclass
class Turn:
    """Per-turn inputs the tools may use but a model may not choose."""

    image: ImageInput | None = None      # the uploaded image (decoded PIL image)
    encoded: Encoded | None = None       # its one encoder pass
    vector: np.ndarray | None = None     # a query vector carried over from an earlier turn
    gallery: list[dict[str, Any]] | None = None  # the specimens this turn shows: what the caption is grounded on

    def image_vector(self) -> np.ndarray | None:
        if self.encoded is not None:
            return self.encoded.pooled[0].float().cpu().numpy()
        return self.vector


def _turn(config: RunnableConfig | None) -> Turn:
    return ((config or {}).get("configurable") or {}).get("turn") or Turn()


def filters_from(family: list[str] | None = None, country: list[str] | None = None, institution: list[str] | None = None,
                 genus: list[str] | None = None, species: list[str] | None = None, year_from: int | None = None,
                 year_to: int | None = None, radius: list[float] | None = None,
                 bbox: list[float] | None = None) -> dict[str, Any]:
    """Tool arguments to the filter dict `retrieval.filters.parse_filters` reads (radius: lat, lon, km;
    bbox: west, south, east, north)."""
    out: dict[str, Any] = {}
    for key, value in (("family", family), ("country", country), ("institution", institution), ("genus", genus),
                       ("scientificName", species)):
        if value:
            out[key] = [value] if isinstance(value, str) else list(value)
    if year_from is not None or year_to is not None:
        out["year"] = (year_from, year_to)
    for key, value in (("radius", radius), ("bbox", bbox)):
        if value:
            out[key] = list(value)
    return out


def specimens_text(specimens: list[dict[str, Any]], header: str) -> str:
    """Specimens as lines a model can read and cite; no paths or URLs."""
    if not specimens:
        return f"{header}: none found."
    lines = [f"{header}:"]
    for rec in specimens:
        fields = [rec.get("scientificName") or "unnamed", rec.get("family"), rec.get("country"), rec.get("locality"),
                  str(rec["year"]) if rec.get("year") else None, f"similarity {rec['score']:.2f}" if "score" in rec else None]
        lines.append(f"{rec.get('rank', '-')}. {citation(rec)} " + "; ".join(str(f) for f in fields if f))
    return "\n".join(lines)


def _within(*id_lists: list[int] | None) -> list[int] | None:
    """The specimens every given list allows (None: no restriction)."""
    lists = [set(ids) for ids in id_lists if ids is not None]
    return sorted(set.intersection(*lists)) if lists else None


def make_tools(res: Resources) -> dict[str, BaseTool]:
    """The tools bound to one loaded collection, by name."""

    @tool(response_format="content_and_artifact")
    def search_specimens(query: str = "", family: list[str] | None = None, country: list[str] | None = None,
                         institution: list[str] | None = None, genus: list[str] | None = None,
                         species: list[str] | None = None, year_from: int | None = None, year_to: int | None = None,
                         taxon: str | None = None, collector: str | None = None, locality: str | None = None,
                         k: int = 8, radius: list[float] | None = None,
                         bbox: list[float] | None = None) -> tuple[str, dict[str, Any]]:
        """Find herbarium specimens whose images best match a text (features or a taxon name), optionally
        restricted by family, country, institution, genus, species (scientific names), collecting years, the
        collector's name, words of the locality, a radius [lat, lon, km] or box [west, south, east, north] around
        where they were collected, or to the specimens of one taxon."""
        filters = filters_from(family, country, institution, genus, species, year_from, year_to, radius, bbox)
        within = _within(res.taxon_ids(taxon) if taxon else None, res.ids_where(collector=collector, locality=locality))
        text = query.strip() or (f"a herbarium specimen of {taxon}" if taxon else GENERIC_QUERY)
        # Within one taxon's sheets (linked by name) the image only orders them: no relevance floor drops them.
        kind = None if taxon else "text"
        specimens, dropped = res.search_floored(res.text_vector(text), k=k, filters=filters, within=within, kind=kind)
        artifact = {"specimens": specimens, "query": query, "filters": filters, "taxon": taxon, "below_floor": dropped}
        return specimens_text(specimens, f"Specimens matching {text!r}"), artifact

    @tool(response_format="content_and_artifact")
    def find_similar(specimen_id: int | None = None, text: str = "", family: list[str] | None = None,
                     country: list[str] | None = None, institution: list[str] | None = None,
                     genus: list[str] | None = None, species: list[str] | None = None, year_from: int | None = None,
                     year_to: int | None = None, k: int = 8, radius: list[float] | None = None,
                     bbox: list[float] | None = None, *, config: RunnableConfig) -> tuple[str, dict[str, Any]]:
        """Find specimens that look like a given specimen (by specimen_id) or like the image the user uploaded,
        optionally nudged by a text and restricted by the same filters as search_specimens."""
        turn = _turn(config)
        if specimen_id is not None:
            vector, exclude, what = res.specimen_vector(specimen_id), int(specimen_id), citation(res.record(specimen_id))
        else:
            vector, exclude, what = turn.image_vector(), None, "the uploaded image"
            if vector is None:
                raise BadInput("there is no image to compare with: upload a specimen photo or name a specimen")
        if text.strip():
            vector = vector + res.text_vector(text)
            vector = vector / np.linalg.norm(vector)
        filters = filters_from(family, country, institution, genus, species, year_from, year_to, radius, bbox)
        specimens, dropped = res.search_floored(vector, k=k, filters=filters, exclude=exclude, kind="image")
        artifact = {"specimens": specimens, "like": specimen_id, "filters": filters, "below_floor": dropped}
        return specimens_text(specimens, f"Specimens most similar to {what}"), artifact

    @tool(response_format="content_and_artifact")
    def identify(rank: str = "species", specimen_id: int | None = None, top: int = 5, *,
                 config: RunnableConfig) -> tuple[str, list[dict[str, Any]]]:
        """Rank the taxa held in the collection (at species, genus or family rank) by how well the uploaded image,
        or a specimen's image, matches 'a herbarium specimen of <taxon>' (zero-shot, no training)."""
        vector = res.specimen_vector(specimen_id) if specimen_id is not None else _turn(config).image_vector()
        if vector is None:
            raise BadInput("there is no image to identify: upload a specimen photo")
        hits = res.identify(vector, rank=rank, top=max(1, min(top, 20)))
        lines = [f"{h['taxon']}: {100 * h['score']:.0f}%" for h in hits]
        return f"Zero-shot {rank} ranking (image-text similarity): " + ("; ".join(lines) or "no named taxa"), hits

    @tool(response_format="content_and_artifact")
    def caption_image(specimen_id: int | None = None, *, config: RunnableConfig) -> tuple[str, dict[str, Any] | None]:
        """Describe the traits visible on the uploaded image (or a specimen's image), in flora style, grounded on
        the descriptions of its nearest specimens."""
        turn = _turn(config)
        if specimen_id is not None:
            res.record(specimen_id)  # BadInput for an id the collection does not hold
            path = res.collection.image_path(int(specimen_id))
            if path is None:
                raise BadInput(f"specimen {specimen_id} has no image")
            caption = res.caption(path)
        elif turn.image is not None:
            caption = res.caption(turn.image, encoded=turn.encoded, records=turn.gallery)
        else:
            raise BadInput("there is no image to describe: upload a specimen photo")
        if caption is None:
            return "No captioner is available for this collection.", None
        return f"Caption of the image: {caption.get('text', '')}", caption

    @tool(response_format="content_and_artifact")
    def describe_taxon(name: str, organ: str | None = None) -> tuple[str, dict[str, Any]]:
        """The flora description of a taxon (species, genus or family), optionally only the sentences about one
        organ (leaves, flowers, fruits ...), with the collection's specimens of that taxon."""
        hit = res.describe(name, organ=organ)
        ids = res.taxon_ids(hit.get("taxon") or name)
        hit = {**hit, "specimen_ids": ids}
        if not hit.get("evidence"):
            return f"No flora description of {name} is available.", hit
        quotes = " ".join(f'"{s}"' for s in hit["evidence"])
        return f"Description of {hit['taxon']}{f' ({organ})' if organ else ''}: {quotes}", hit

    @tool(response_format="content_and_artifact")
    def search_descriptions(query: str, k: int = 5, family: list[str] | None = None, country: list[str] | None = None,
                            institution: list[str] | None = None, year_from: int | None = None,
                            year_to: int | None = None, radius: list[float] | None = None,
                            bbox: list[float] | None = None) -> tuple[str, list[dict[str, Any]]]:
        """Find the taxa whose flora descriptions best match a morphological description, with the matching
        sentences and the collection's specimens of each taxon (those passing the filters)."""
        filters = filters_from(family, country, institution, None, None, year_from, year_to, radius, bbox)
        retriever = DescriptionRetriever(resources=res, k=max(1, min(k, 20)), filters=filters)
        hits = [d.metadata for d in retriever.invoke(query)]
        if not hits:
            return f"No flora description matches {query!r}.", []
        lines = [f"{h['taxon']} (score {h['score']:.2f}): " + " ".join(f'"{s}"' for s in h.get("evidence", [])[:2])
                 + (" Specimens: " + ", ".join(citation(r) for r in h["specimens"]) if h.get("specimens") else "")
                 for h in hits]
        return "Descriptions matching the query:\n" + "\n".join(lines), hits

    tools = [search_specimens, find_similar, identify, caption_image, describe_taxon, search_descriptions]
    return {t.name: t for t in tools}
