"""Flora: what floras say about taxa, read, understood and searched.

Owns the description readers (FlorML, Darwin Core description extension, CSV), scientific-name
normalisation, the trait vocabulary and trait extraction, the text encoders, the morphology
search (BM25 + dense + structured traits, fused) and the `descriptions add/search` stages that
link descriptions to a collection's specimens. Names are resolved lazily.
"""

from __future__ import annotations

from retrieval.lazy import lazy_exports

_API = {
    "TaxonDescription": "readers", "read_descriptions": "readers",
    "normalize_name": "names", "species_of": "names",
    "vocabulary": "vocab", "fold": "vocab",
    "extract_traits": "traits", "split_sentences": "traits", "triple": "traits", "plausible_count": "traits",
    "tokenize": "traits",
    "create_text_encoder": "text_encoders", "cached_text_encoder": "text_encoders",
    "DescriptionIndex": "morphology", "SIGNALS": "morphology", "DEFAULT_WEIGHTS": "morphology",
    "DEFAULT_RRF_K": "morphology", "chunk_text": "morphology", "chunks_of": "morphology",
    "add_descriptions": "descriptions", "describe_taxon": "descriptions", "search_descriptions": "descriptions",
    "descriptions_dir": "descriptions", "description_coverage": "descriptions", "coverage_of": "descriptions",
    "link_specimens": "taxonomy", "LINK_KINDS": "taxonomy", "read_fna": "fna", "read_mapped_table": "tables",
    "GbifSpecies": "gbif", "FOLDER": "descriptions", "open_descriptions": "descriptions", "traits_of": "descriptions",
}
__getattr__, __all__ = lazy_exports(__name__, _API)
