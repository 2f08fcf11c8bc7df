"""Collections: what a herbarium holds, on disk, and how specimens get in.

Owns the collection folder (transactional SQLite store + Parquet snapshot and its memory-mapped Arrow copy
for serving, `SpecimenTable`; its lock), the readers
of every source (image folders + CSV, Darwin Core Archives, GBIF JSON, IIIF), the one rule for which
media a source may name, media downloads, safe image decoding, and the ingest stage.
Names are resolved lazily so that `from retrieval.collections import Collection` does not
import what a command does not need.
"""

from __future__ import annotations

from retrieval.lazy import lazy_exports

_API = {
    "Collection": "collection", "COLUMNS": "collection", "SNAPSHOT": "collection",
    "SpecimenTable": "table", "RowIds": "row_ids", "ARROW": "table", "codes_mask": "table", "MISSING_NUMBER": "table",
    "DWC_TERMS": "schema", "FILTER_FIELDS": "schema",
    "load_image": "images", "verify_image": "images", "image_format": "images", "MAX_BYTES": "images", "MAX_PIXELS": "images",
    "ingest": "ingesting", "NothingIngested": "ingesting",
    "collection_lock": "locking", "CollectionBusy": "locking", "DEFAULT_WAIT": "locking",
    "MediaFetcher": "media", "USER_AGENT": "media", "HostRateLimiter": "media",
    "detect_source": "readers", "read_image_folder": "readers", "read_dwca": "readers", "read_gbif_json": "readers",
    "read_iiif": "iiif",
    "SourceFolder": "source_media", "MediaRefused": "source_media",
    "coordinate_flags": "coordinates", "coordinate_summary": "coordinates", "country_shapes": "coordinates",
    "find_country": "coordinates", "flag_records": "coordinates", "haversine_km": "coordinates",
    "usable_coordinates": "coordinates", "EARTH_RADIUS_KM": "coordinates",
}
__getattr__, __all__ = lazy_exports(__name__, _API)
