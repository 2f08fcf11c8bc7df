"""The specimen table's columns: Darwin Core terms plus what Herbaria adds.

Every reader maps its source onto these names so that the index, filters,
captioner and chat can rely on one vocabulary.
"""

DWC_TERMS: tuple[str, ...] = (
    "occurrenceID",
    "catalogNumber",
    "institutionCode",
    "collectionCode",
    "scientificName",
    "family",
    "genus",
    "specificEpithet",
    "recordedBy",
    "eventDate",
    "country",
    "locality",
    "decimalLatitude",
    "decimalLongitude",
    "license",
    "rightsHolder",
    "references",
)

# Columns Herbaria adds: a stable integer id (also the FAISS id), the image path
# relative to the collection folder ("" when the specimen has none), the media
# URL it came from, and the collecting year parsed from eventDate.
EXTRA_COLUMNS: tuple[str, ...] = ("specimen_id", "image", "imageUrl", "year")

FLOAT_TERMS: frozenset[str] = frozenset({"decimalLatitude", "decimalLongitude"})

# Fields users can filter on, mapped to the column they read.
FILTER_FIELDS: dict[str, str] = {
    "family": "family",
    "genus": "genus",
    "scientificName": "scientificName",
    "species": "scientificName",
    "country": "country",
    "institution": "institutionCode",
    "institutionCode": "institutionCode",
    "year": "year",
}
