"""LangChain retrievers over a loaded collection, for use in any LangChain chain.

Each returns `Document`s whose text is what a model should read (citation, name,
place, date, or the matching description sentences) and whose metadata is the full
record the UI needs (image path, Darwin Core fields, similarity).
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from assistant.composer import citation
from assistant.resources import Resources


def specimen_document(record: dict[str, Any]) -> Document:
    fields = [record.get("family"), record.get("country"), record.get("locality"), record.get("year")]
    text = f"{citation(record)} {record.get('scientificName') or 'unnamed specimen'}"
    rest = "; ".join(str(f) for f in fields if f)
    return Document(page_content=f"{text} — {rest}" if rest else text, metadata=dict(record))


class SpecimenTextRetriever(BaseRetriever):
    """Specimens whose images best match a text query (CLIP text-to-image), filters applied inside FAISS."""

    resources: Resources
    k: int = 8
    filters: dict[str, Any] = {}
    within: list[int] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        vector = self.resources.text_vector(query)
        return [specimen_document(r) for r in self.resources.search(vector, k=self.k, filters=self.filters, within=self.within,
                                                                       kind="text")]


class SpecimenImageRetriever(BaseRetriever):
    """Specimens that look like an image; the query is the image's path (decoded with the safe loader)."""

    resources: Resources
    k: int = 8
    filters: dict[str, Any] = {}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        encoded = self.resources.encode_image(query)
        vector = encoded.pooled[0].float().cpu().numpy()
        return [specimen_document(r) for r in self.resources.search(vector, k=self.k, filters=self.filters, kind="image")]


class DescriptionRetriever(BaseRetriever):
    """Taxa whose flora descriptions match a morphological query; the text is the matching sentences."""

    resources: Resources
    k: int = 5
    filters: dict[str, Any] = {}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.resources.search_descriptions(query, k=self.k, filters=self.filters)
        return [Document(page_content=" ".join(h.get("evidence") or []) or h["taxon"], metadata=dict(h)) for h in hits]
