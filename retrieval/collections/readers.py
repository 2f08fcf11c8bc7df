"""Readers turn each kind of source into plain dict records in one vocabulary.

A record holds Darwin Core terms (`retrieval.collections.schema.DWC_TERMS`), `media` (a local
path or an http(s) URL of the specimen's image, or "" when none), `locator` (where
the record sits in its source: a file name or row id, used for dedupe when the
record has no occurrenceID nor institutionCode+catalogNumber) and `verbatim` (the
source's columns that have no Darwin Core home, kept rather than guessed at).

Readers never fetch or decode images; ingest does, so that a bad image costs one
record, not the whole source. Every parse failure becomes one `BadInput` line.
Every media reference goes through `retrieval.collections.source_media` (inside the source
folder, or http(s)); a refused one leaves the record without media and with a
`problem` (a `MediaRefused`) that ingest counts. Archives are extracted by
`retrieval.collections.archives` (no member may escape or link), and the files an archive's
descriptor names must lie inside it: no source reads or writes outside itself.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

from retrieval.collections.archives import extract_archive
from retrieval.errors import BadInput
from retrieval.collections.schema import DWC_TERMS
from retrieval.collections.source_media import OUTSIDE, MediaRefused, SourceFolder, is_http_url, url_scheme

log = logging.getLogger(__name__)

Record = dict[str, Any]
Reader = Callable[..., Iterator[Record]]

MEDIA = "media"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif"})

GBIF_MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"
AC_MULTIMEDIA = "http://rs.tdwg.org/ac/terms/Multimedia"
OCCURRENCE = "http://rs.tdwg.org/dwc/terms/Occurrence"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# Column names seen in the wild (normalised: lowercase, no punctuation) -> term.
_SYNONYMS: dict[str, str] = {
    **{_norm(term): term for term in DWC_TERMS},
    **dict.fromkeys(
        ["file", "filename", "image", "imagefile", "imagename", "imagepath", "path", "media",
         "accessuri", "associatedmedia", "imageurl", "url", "img"],
        MEDIA,
    ),
    **dict.fromkeys(["species", "speciesname", "scientific", "taxon", "taxonname", "binomial"], "scientificName"),
    **dict.fromkeys(["catalog", "catalogno", "catalognum", "catalogue", "cataloguenumber", "barcode", "accession"],
                    "catalogNumber"),
    **dict.fromkeys(["institution", "herbarium"], "institutionCode"),
    **dict.fromkeys(["collection"], "collectionCode"),
    **dict.fromkeys(["collector", "collectors", "recordedby"], "recordedBy"),
    **dict.fromkeys(["date", "collectiondate", "eventdate", "collected"], "eventDate"),
    **dict.fromkeys(["latitude", "lat"], "decimalLatitude"),
    **dict.fromkeys(["longitude", "lon", "lng", "long"], "decimalLongitude"),
    **dict.fromkeys(["epithet", "specificepithet"], "specificEpithet"),
    **dict.fromkeys(["rightsholder", "owner"], "rightsHolder"),
    **dict.fromkeys(["link", "reference", "references"], "references"),
}

_TARGETS = frozenset(DWC_TERMS) | {MEDIA}


def check_mapping(mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Validate user mappings up front: a typo in a term must not silently drop a column."""
    checked: dict[str, str] = {}
    lower = {t.lower(): t for t in _TARGETS}
    for column, term in (mapping or {}).items():
        target = lower.get(str(term).strip().lower())
        if target is None:
            raise BadInput(
                f"cannot map column '{column}' to '{term}': not a Darwin Core term Herbaria stores "
                f"(use one of: {', '.join(sorted(_TARGETS))})"
            )
        checked[str(column).strip()] = target
    return checked


def _columns_to_terms(columns: list[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """Column -> term; explicit mappings win, then exact DwC names, then synonyms; one column per term."""
    result: dict[str, str] = {}
    taken: set[str] = set()
    explicit = {_norm(k): v for k, v in mapping.items()}
    for column in columns:
        if _norm(column) in explicit:
            result[column] = explicit[_norm(column)]
            taken.add(result[column])
    for exact_pass in (True, False):
        for column in columns:
            if column in result:
                continue
            key = _norm(column)
            term = _SYNONYMS.get(key)
            if term is None or term in taken:
                continue
            if exact_pass and key != _norm(term):
                continue
            result[column] = term
            taken.add(term)
    return result


_BINOMIAL = re.compile(r"^\s*([A-Z][a-z-]+)(?:\s+(?:[x\u00d7]\s+)?([a-z][a-z-]+))?")


def complete_names(record: Record) -> Record:
    """Fill genus and specificEpithet from scientificName when the source left them out."""
    name = str(record.get("scientificName") or "")
    match = _BINOMIAL.match(name)
    if match:
        if not record.get("genus"):
            record["genus"] = match.group(1)
        epithet = match.group(2)
        if epithet and not record.get("specificEpithet") and epithet not in {"sp", "spp", "var", "subsp"}:
            record["specificEpithet"] = epithet
    return record


def new_record(locator: str) -> Record:
    return {MEDIA: "", "locator": locator, "verbatim": {}}


def _use_media(record: Record, folder: SourceFolder, value: str, where: str) -> None:
    """Set the record's media from `value` under the source rule, or record why it was refused."""
    try:
        record[MEDIA] = folder.media(value, where)
    except MediaRefused as refusal:
        record[MEDIA] = ""
        record["problem"] = refusal


# --------------------------------------------------------------------------- image folders


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; reading it as Windows-1252", path.name)
        text = raw.decode("cp1252", errors="replace")
    sample = text[:8192]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        reader = csv.DictReader(io.StringIO(text), dialect=dialect)
        columns = [c.strip() for c in (reader.fieldnames or []) if c is not None]
        rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
                for row in reader]
    except csv.Error as err:
        raise BadInput(f"{path.name}: malformed CSV ({err})") from None
    if not columns:
        raise BadInput(f"{path.name}: the CSV file is empty (no header row)")
    return columns, rows


def read_image_folder(
    folder: str | Path,
    *,
    labels: str = "labels.csv",
    mapping: Mapping[str, str] | None = None,
) -> Iterator[Record]:
    """Records from a folder of images described by a CSV (or from the images alone when it has no CSV).

    `folder` may also be the CSV file itself (its folder holds the images). Columns
    with a Darwin Core meaning are mapped automatically (case and punctuation
    ignored: file/filename/image -> media, species/scientific_name -> scientificName,
    catalog_number -> catalogNumber ...); `mapping` {column: term} overrides that.
    Other columns (e.g. violaceae's `speciesCode`) are kept verbatim and NOT taken
    as a scientific name: a code like "V01" is not a name, and filters and captions
    must not treat it as one. Map it explicitly (speciesCode=scientificName) if wanted.
    """
    path = Path(folder)
    if path.is_file():
        csv_path, root = path, path.parent
    else:
        if not path.is_dir():
            raise BadInput(f"image folder not found: {path}")
        csv_path, root = path / labels, path
    checked = check_mapping(mapping)
    if not csv_path.is_file():
        yield from _bare_images(root, labels)
        return
    columns, rows = _read_csv_rows(csv_path)
    missing = [column for column in checked if _norm(column) not in {_norm(c) for c in columns}]
    if missing:
        raise BadInput(
            f"{csv_path.name}: no column '{missing[0]}' to map (columns found: {', '.join(columns)})"
        )
    terms = _columns_to_terms(columns, checked)
    media_column = next((c for c, t in terms.items() if t == MEDIA), None)
    if media_column is None:
        raise BadInput(
            f"{csv_path.name}: no image file column (expected one of: file, filename, image, path; "
            f"columns found: {', '.join(columns)}); name it with --map COLUMN=media"
        )
    folder = SourceFolder(root)
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        media = row.get(media_column, "")
        record = new_record(media or f"{csv_path.name}:{number}")
        for column, value in row.items():
            if not value or not column:
                continue
            term = terms.get(column)
            if term is None:
                record["verbatim"][column] = value
            elif term == MEDIA:
                _use_media(record, folder, value, f"{csv_path.name} line {number}")
            else:
                record[term] = value
        yield complete_names(record)


def _bare_images(root: Path, labels: str) -> Iterator[Record]:
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise BadInput(f"{root.name}: no {labels} and no image files found in this folder")
    log.warning("%s has no %s: ingesting %d images without labels", root.name, labels, len(images))
    folder = SourceFolder(root)
    for image in images:
        relative = image.relative_to(root).as_posix()
        record = new_record(relative)
        if folder.contains(relative):
            record[MEDIA] = str(image)
        else:  # a symlink to elsewhere on this machine
            record["problem"] = MediaRefused(OUTSIDE, f"{relative}: a link that resolves outside the source "
                                                      "folder; refused")
        yield record


# --------------------------------------------------------------------------- Darwin Core Archives


def _local(term: str) -> str:
    return re.split(r"[/#]", term)[-1]


def _row_to_record(data: Mapping[str, str], locator: str, mapping: Mapping[str, str], folder: SourceFolder,
                   where: str) -> Record:
    record = new_record(locator)
    columns = list(data)
    terms = _columns_to_terms([_local(c) for c in columns], mapping)
    for column in columns:
        value = (data[column] or "").strip()
        if not value:
            continue
        term = terms.get(_local(column))
        if term is None:
            record["verbatim"][_local(column)] = value
        elif term == MEDIA:
            urls = [u for u in re.split(r"[|;,\s]+", value) if is_http_url(u)]
            if urls and not record[MEDIA]:
                record[MEDIA] = urls[0]
            else:
                record["verbatim"][_local(column)] = value
                if not record[MEDIA] and "problem" not in record:
                    _use_media(record, folder, value, where)  # a local file of the archive, or refused
        elif not record.get(term):
            record[term] = value
    gbif_id = record["verbatim"].get("gbifID") or record["verbatim"].get("gbifid")
    if gbif_id and not record.get("references"):
        record["references"] = f"https://www.gbif.org/occurrence/{gbif_id}"
    return record


def _media_from_extensions(
    row: Any, folder: SourceFolder, where: str
) -> tuple[str, dict[str, str], MediaRefused | None]:
    """First usable still image of the row's Simple Multimedia or Audubon Core extension rows.

    Returns (media, that extension row's values, None), or ("", {}, the first refusal when
    every still image named was refused, else None).
    """
    refused: MediaRefused | None = None
    for ext in row.extensions:
        if ext.rowtype not in (GBIF_MULTIMEDIA, AC_MULTIMEDIA):
            continue
        values = {_local(k): (v or "").strip() for k, v in ext.data.items()}
        kind = (values.get("type") or "").lower()
        fmt = (values.get("format") or "").lower()
        if kind and not any(word in kind for word in ("stillimage", "image")):
            continue
        if fmt and not fmt.startswith("image/") and fmt not in {"jpeg", "jpg", "png", "tiff"}:
            continue
        location = values.get("accessURI") or values.get("identifier") or ""
        if location:
            try:
                return folder.media(location, where), values, None
            except MediaRefused as refusal:
                refused = refused or refusal
    return "", {}, refused


def read_dwca(path: str | Path, *, mapping: Mapping[str, str] | None = None) -> Iterator[Record]:
    """Occurrence records from a Darwin Core Archive (zip, tgz or unpacked folder, or a simple CSV archive).

    Images come from the GBIF Simple Multimedia or Audubon Core extension (or
    `associatedMedia`); specimens without one are still records (media "").
    Checklist archives (Taxon core) are refused: they describe taxa, not specimens.
    """
    from dwca.exceptions import InvalidArchive  # noqa: PLC0415 (keeps `herbaria --help` light)
    from dwca.read import DwCAReader  # noqa: PLC0415

    archive = Path(path)
    if not archive.exists():
        raise BadInput(f"archive not found: {archive}")
    checked = check_mapping(mapping)
    tmp = None if archive.is_dir() else Path(tempfile.mkdtemp(prefix="herbaria-dwca-"))
    try:
        root = archive if tmp is None else extract_archive(archive, tmp)
        folder = SourceFolder(root)
        try:
            _check_archive_files(root, folder, archive.name)
            reader = DwCAReader(str(root))
        except BadInput:
            raise
        except (InvalidArchive, ParseError, UnicodeDecodeError, ValueError, KeyError, IndexError, OSError,
                AttributeError, TypeError) as err:  # the last two: a meta.xml section without <files>
            raise BadInput(f"{archive.name}: invalid Darwin Core Archive ({_explain(err)})") from None
        with reader:
            core = reader.descriptor.core.type if reader.descriptor else OCCURRENCE
            if core != OCCURRENCE:
                raise BadInput(
                    f"{archive.name}: its core is {_local(core)}, not Occurrence: a checklist describes taxa, "
                    "not specimens (ingest an occurrence archive)"
                )

            rows = iter(reader)
            position = 0
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    break
                except (InvalidArchive, ParseError, UnicodeDecodeError, ValueError, KeyError, IndexError,
                        csv.Error) as err:
                    raise BadInput(
                        f"{archive.name}: invalid Darwin Core Archive at core row {position + 1} ({_explain(err)})"
                    ) from None
                locator = str(row.id) if row.id not in (None, "") else f"row {position + 1}"
                where = f"{archive.name} core row {position + 1}"
                record = _row_to_record(row.data, locator, checked, folder, where)
                media, values, refused = _media_from_extensions(row, folder, where)
                if media:
                    record[MEDIA] = media
                    record.pop("problem", None)
                    for term in ("license", "rightsHolder"):
                        if values.get(term) and not record.get(term):
                            record[term] = values[term]
                elif refused is not None and not record[MEDIA]:
                    record.setdefault("problem", refused)
                position += 1
                yield complete_names(record)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_archive_files(root: Path, folder: SourceFolder, name: str) -> None:
    """Refuse an archive whose data or metadata files lie outside it (an absolute or ../ location, a link).

    python-dwca-reader opens what meta.xml names with os.path.join, so "/etc/passwd" as
    the core file would be read as specimens; it also reads any top-level file (a
    simple archive) and every file under dataset/. All of them are checked first.
    Other folders (images/) are left to the per-row media rule.
    """
    from dwca.descriptors import ArchiveDescriptor  # noqa: PLC0415
    from dwca.read import DwCAReader  # noqa: PLC0415

    named: list[str] = [entry.name for entry in root.iterdir() if not entry.is_dir()]
    dataset = root / DwCAReader.source_metadata_directory
    if dataset.is_dir():
        named.append(dataset.name)
        if folder.contains(dataset.name):
            named += [f"{dataset.name}/{entry.name}" for entry in dataset.iterdir()]
    meta = root / DwCAReader.default_metafile_name
    if meta.is_file() and folder.contains(meta.name):
        descriptor = ArchiveDescriptor(meta.read_text(encoding="utf-8"))
        named += [d.file_location for d in [descriptor.core, *descriptor.extensions] if d.file_location]
        if descriptor.metadata_filename:
            named.append(descriptor.metadata_filename)
    for location in named:
        if not folder.contains(location):
            shown = location if len(location) <= 80 else location[:77] + "..."
            raise BadInput(f"{name}: {shown!r} lies outside the archive (an absolute or '..' path, or a link); "
                           "refusing the archive")


def _explain(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]


# --------------------------------------------------------------------------- GBIF API JSON

_GBIF_FIELDS = (
    "occurrenceID", "catalogNumber", "institutionCode", "collectionCode", "scientificName", "family", "genus",
    "specificEpithet", "recordedBy", "eventDate", "country", "locality", "decimalLatitude", "decimalLongitude",
    "license", "rightsHolder", "references",
)
_GBIF_KEEP = ("gbifID", "datasetKey", "basisOfRecord", "countryCode", "stateProvince", "species", "acceptedScientificName",
              "taxonRank", "kingdom", "order", "identifiedBy", "recordNumber", "elevation", "habitat")


def read_gbif_json(path: str | Path, *, mapping: Mapping[str, str] | None = None) -> Iterator[Record]:
    """Records from a GBIF occurrence API response: a search page ({"results": [...]}), a list, or one occurrence."""
    source = Path(path)
    if not source.is_file():
        raise BadInput(f"GBIF JSON file not found: {source}")
    checked = check_mapping(mapping)
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInput(f"{source.name}: not valid JSON ({_explain(err)})") from None
    if isinstance(payload, dict) and isinstance(payload.get("results"), list):
        results = payload["results"]
    elif isinstance(payload, list):
        results = payload
    elif isinstance(payload, dict) and ("key" in payload or "gbifID" in payload):
        results = [payload]
    else:
        raise BadInput(f"{source.name}: not a GBIF occurrence response (expected {{\"results\": [...]}})")
    folder = SourceFolder(source.parent)  # the API gives URLs; a local file must sit beside the JSON
    for number, occurrence in enumerate(results, start=1):
        if not isinstance(occurrence, dict):
            raise BadInput(f"{source.name}: result {number} is not an occurrence object")
        where = f"{source.name} result {number}"
        yield complete_names(_gbif_record(occurrence, number, checked, folder, where))


def _gbif_record(occ: Mapping[str, Any], number: int, mapping: Mapping[str, str], folder: SourceFolder,
                 where: str) -> Record:
    key = occ.get("key") or occ.get("gbifID")
    record = new_record(str(key) if key is not None else f"result {number}")
    for field in _GBIF_FIELDS:
        value = occ.get(field)
        if value not in (None, ""):
            record[field] = value if isinstance(value, (int, float)) and field.startswith("decimal") else str(value)
    for field, term in mapping.items():
        if occ.get(field) not in (None, ""):
            record[term] = str(occ[field])
    if not record.get("occurrenceID") and key is not None:
        record["occurrenceID"] = str(key)
    if not record.get("references") and key is not None:
        record["references"] = f"https://www.gbif.org/occurrence/{key}"
    for field in _GBIF_KEEP:
        if occ.get(field) not in (None, ""):
            record["verbatim"][field] = str(occ[field])
    for media in occ.get("media") or []:
        if isinstance(media, dict) and media.get("type") == "StillImage" and media.get("identifier"):
            try:
                record[MEDIA] = folder.media(str(media["identifier"]), where)
            except MediaRefused as refusal:
                record.setdefault("problem", refusal)
                continue  # another still image of the occurrence may be usable
            record.pop("problem", None)
            if not record.get("license") and media.get("license"):
                record["license"] = str(media["license"])
            if not record.get("rightsHolder") and media.get("rightsHolder"):
                record["rightsHolder"] = str(media["rightsHolder"])
            break
    return record


# --------------------------------------------------------------------------- dispatch


def detect_source(path: str | Path) -> Reader:
    """The reader for `path`: a DwC-A (zip/tgz or folder with meta.xml), GBIF JSON, an image folder/CSV, or
    IIIF (an http(s) manifest or collection URL, such a .json file, or a .txt list of manifest URLs)."""
    from retrieval.collections.iiif import looks_like_iiif, read_iiif  # noqa: PLC0415 (iiif imports this module)

    if isinstance(path, str) and url_scheme(path):
        if is_http_url(path):
            return read_iiif
        raise BadInput(f"{path[:80]!r}: only http(s) URLs (IIIF manifests or collections) can be ingested")
    source = Path(path)
    if not source.exists():
        raise BadInput(f"source not found: {source}")
    if source.is_dir():
        if (source / "meta.xml").is_file():
            return read_dwca
        if (source / "labels.csv").is_file() or any(
            p.suffix.lower() in IMAGE_SUFFIXES for p in source.rglob("*") if p.is_file()
        ):
            return read_image_folder
        raise BadInput(f"{source.name}: folder has no meta.xml, labels.csv or images; nothing to ingest")
    name = source.name.lower()
    if name.endswith((".zip", ".tgz", ".tar.gz", ".tar")):
        return read_dwca
    if name.endswith(".json"):
        return read_iiif if looks_like_iiif(source) else read_gbif_json
    if name.endswith(".txt"):
        return read_iiif
    if name.endswith((".csv", ".tsv")):
        return read_image_folder
    raise BadInput(
        f"{source.name}: unknown source type (ingest a folder of images with labels.csv, a Darwin Core "
        "Archive .zip/.tgz, a GBIF occurrence .json, or a IIIF manifest or collection: URL, .json or .txt list)"
    )
