"""Readers for the descriptions floras publish: FlorML XML, Darwin Core description
extensions (tab-separated or a DwC-A) and a plain (taxon, text) CSV.

All readers return the same plain record, so extraction and search never care where a
description came from. FlorML splits descriptions by organ (<char class="leaves">,
<subChar class="margins">); that markup is kept as character offsets into the text
because it is the only gold standard for organ attribution we have.
"""

from __future__ import annotations

import csv
import html
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrieval.errors import BadInput
from retrieval.flora.names import normalize_name
from retrieval.textnorm import normalize_text

# Darwin Core description types that hold morphology (the others are distribution, uses...).
MORPHOLOGY_TYPES = frozenset({"general", "description", "morphology", "diagnostic", "diagnosis",
                              "physical description", "morphological description"})
_LANGS = {"en": "en", "eng": "en", "english": "en", "fr": "fr", "fre": "fr", "fra": "fr", "french": "fr",
          "es": "es", "spa": "es", "de": "de", "ger": "de", "deu": "de", "pt": "pt", "por": "pt"}
_NAME_PARTS = ("genus", "species", "infrank", "subspecies", "variety", "form")
_INFRA_RANKS = {"subspecies": "subsp.", "variety": "var.", "form": "f."}
_SKIP_TAGS = {"figureRef", "footnoteRef", "figure", "num", "references", "heading", "subHeading"}


@dataclass
class TaxonDescription:
    """One taxon's description: text, organ sections and (FlorML only) organ markup spans."""

    taxon: str  # the name as the source prints it, authorship included when given
    name: str  # normalised: genus epithet [rank infraepithet]
    text: str
    family: str = ""
    rank: str = ""
    source: str = ""
    language: str = "en"
    sections: dict[str, str] = field(default_factory=dict)  # organ class -> text
    markup: list[tuple[int, int, str, str]] = field(default_factory=list)  # start, end, class, parent class
    kind: str = "description"  # or "notes": short remarks and lookalike tips, not a full description
    dataset: str = ""  # volume or dataset within the source
    licence: str = ""
    url: str = ""
    synonyms: list[str] = field(default_factory=list)  # other names the source gives this taxon (taxonomy.py)
    name_matches: dict[str, dict[str, Any]] = field(default_factory=dict)  # specimen name -> GBIF match linking it
    characters: list[list[str]] = field(default_factory=list)  # source markup: [structure, character, value]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["markup"] = [list(span) for span in self.markup]
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TaxonDescription:
        data = dict(record)
        data["markup"] = [tuple(span) for span in data.get("markup", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def guess_language(text: str) -> str:
    """'fr' or 'en' from function words; floras rarely mix the two in one description."""
    words = re.findall(r"[a-zà-ÿ']+", text.lower()[:4000])
    fr = sum(w in {"les", "des", "et", "à", "sur", "feuilles", "fleurs", "une", "du", "au", "aux", "dessous", "limbe"} for w in words)
    en = sum(w in {"the", "and", "with", "leaves", "flowers", "of", "to", "above", "below", "blade"} for w in words)
    return "fr" if fr > en else "en"


def clean_text(text: str) -> str:
    """Whitespace collapsed, tags removed and glued sentences ('greyish.Sympodial') split; in normal form
    (no control or invisible characters, NFC), also for what an HTML entity such as '&#0;' decodes to."""
    text = normalize_text(html.unescape(re.sub(r"<[^>]+>", " ", normalize_text(text)))).strip()
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('""', '"')
    text = re.sub(r"(?<=[a-z\)]{2})\.(?=[A-Z][a-z])", ". ", text)
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------- FlorML


class _TextBuilder:
    """Concatenates element text with collapsed whitespace while recording offsets."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0

    def add(self, text: str | None) -> None:
        if not text:
            return
        piece = re.sub(r"\s+", " ", normalize_text(text))  # normalised piece by piece, so offsets stay exact
        if self.length == 0 or (self.parts and self.parts[-1].endswith(" ")):
            piece = piece.lstrip()
        if piece:
            self.parts.append(piece)
            self.length += len(piece)

    def space(self) -> None:
        if self.parts and not self.parts[-1].endswith(" "):
            self.parts.append(" ")
            self.length += 1

    def text(self) -> str:
        return "".join(self.parts)


def _walk(elem: ET.Element, out: _TextBuilder, spans: list[tuple[int, int, str, str]], parent: str) -> None:
    out.add(elem.text)
    for child in elem:
        if child.tag in _SKIP_TAGS:
            pass
        elif child.tag == "br":
            out.space()
        elif child.tag in ("char", "subChar"):
            start = out.length
            cls = (child.get("class") or "").strip()
            _walk(child, out, spans, cls)
            spans.append((start, out.length, cls, parent))
        else:
            _walk(child, out, spans, parent)
        out.add(child.tail)


def _florml_description(taxon: ET.Element) -> tuple[str, dict[str, str], list[tuple[int, int, str, str]]]:
    out = _TextBuilder()
    spans: list[tuple[int, int, str, str]] = []
    for feature in taxon.findall("feature[@class='description']"):
        for child in feature:
            if child.tag == "char":
                out.space()
                start = out.length
                cls = (child.get("class") or "").strip()
                _walk(child, out, spans, cls)
                spans.append((start, out.length, cls, ""))
    text = out.text()
    # trailing spaces are trimmed; clamp the spans to the text
    stripped = text.rstrip()
    spans = [(s, min(e, len(stripped)), c, p) for s, e, c, p in spans if s < len(stripped)]
    spans.sort(key=lambda span: (span[0], -span[1]))
    sections: dict[str, str] = {}
    for start, end, cls, parent in spans:
        if not parent:
            chunk = stripped[start:end].strip()
            sections[cls] = f"{sections[cls]} {chunk}" if cls in sections else chunk
    return stripped, sections, spans


def _accepted_name(taxon: ET.Element) -> tuple[dict[str, str], str]:
    nom = taxon.find("nomenclature/homotypes/nom[@class='accepted']")
    if nom is None:
        nom = taxon.find(".//nom")
    parts: dict[str, str] = {}
    if nom is not None:
        for name in nom.findall("name"):
            cls = name.get("class") or ""
            value = " ".join(normalize_text(name.text or "").split())
            if value and cls not in parts:
                parts[cls] = value
    title = " ".join(normalize_text(taxon.findtext("taxontitle") or "").split())
    return parts, title


def _florml_synonyms(taxon: ET.Element) -> list[str]:
    """Species and infraspecific names FlorML lists as synonyms of the taxon (nomenclature/.../nom class=synonym)."""
    out: list[str] = []
    for nom in taxon.findall("nomenclature//nom[@class='synonym']"):
        parts: dict[str, str] = {}
        for name in nom.findall("name"):
            value = " ".join(normalize_text(name.text or "").split())
            if value and (name.get("class") or "") not in parts:
                parts[name.get("class") or ""] = value
        if "genus" in parts and "species" in parts:
            bare = _bare_name(parts, "species")
            if bare and bare not in out:
                out.append(bare)
    return out


def _compose(parts: dict[str, str]) -> tuple[str, str]:
    """(name with authorship, rank) from FlorML name parts."""
    words: list[str] = []
    rank = ""
    if "genus" in parts:
        words.append(parts["genus"])
        rank = "genus"
        if "species" in parts:
            words.append(parts["species"])
            rank = "species"
            for infra, marker in _INFRA_RANKS.items():
                if infra in parts:
                    words += [parts.get("infrank") or marker, parts[infra]]
                    rank = infra
                    break
        paraut = parts.get("paraut", "")
        paraut = f"({paraut})" if paraut and not paraut.startswith("(") else paraut
        author = " ".join(p for p in (paraut, parts.get("author", "")) if p)
        if author:
            words.append(author)
    elif "family" in parts:
        words.append(_title_case(parts["family"]))
        rank = "family"
    return " ".join(words), rank


def _title_case(word: str) -> str:
    return word.capitalize() if word.isupper() else word


def _bare_name(parts: dict[str, str], rank: str) -> str:
    """The normalised name straight from FlorML name parts (old floras capitalise epithets)."""
    if rank == "family":
        return _title_case(parts["family"])
    if "genus" not in parts:
        return ""
    words = [parts["genus"].capitalize()]
    if "species" in parts:
        words.append(parts["species"].lower())
        for infra, marker in _INFRA_RANKS.items():
            if infra in parts:
                words += [marker, parts[infra].lower()]
                break
    return normalize_name(" ".join(words))


def _mods_title(path: Path) -> str:
    """'Flora Malesiana, Series I, Volume 20' from the volume's MODS header, '' if none."""
    mods = "{http://www.loc.gov/mods/v3}"
    try:
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag == f"{mods}titleInfo":
                parts = (elem.findtext(f"{mods}title"), elem.findtext(f"{mods}partNumber"))
                return ", ".join(p.strip() for p in parts if p and p.strip())
            if elem.tag in ("treatment", "taxon"):
                break
    except ET.ParseError:
        pass
    return ""


# FlorML volumes whose MODS title is in capitals, or missing, still read as a botanist cites them.
_FLORA_TITLES = {"flore du gabon": "Flore du Gabon", "flora malesiana": "Flora Malesiana"}
_FILE_VOLUMES = ((re.compile(r"^fdgvol(\d+)", re.IGNORECASE), "Flore du Gabon"),)


def volume_title(mods_title: str, file_stem: str) -> str:
    """'Flore du Gabon, Volume 4' from a MODS title ('FLORE DU GABON, 4') or, without one, the FLOPO file name
    ('fdgvol4_final'); other titles as written, other files by their name."""
    title = re.sub(r"\.,", ",", normalize_text(mods_title).strip())
    if title:
        name, _, rest = title.partition(",")
        known = _FLORA_TITLES.get(name.strip().casefold())
        if known and name.strip().isupper():
            rest = rest.strip()
            return f"{known}, Volume {rest}" if rest and rest[0].isdigit() else ", ".join(p for p in (known, rest) if p)
        return title
    for pattern, flora in _FILE_VOLUMES:
        m = pattern.match(file_stem)
        if m:
            return f"{flora}, Volume {m.group(1)}"
    return normalize_text(file_stem).strip()


def read_florml(path: str | Path) -> list[TaxonDescription]:
    """Taxon descriptions of one FlorML volume, with their organ markup."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such FlorML file")
    records: list[TaxonDescription] = []
    family = genus = ""
    language = ""
    source = volume_title(_mods_title(path), path.stem)
    seen_taxon = False
    try:
        for event, elem in ET.iterparse(path, events=("start", "end")):
            if event == "start":
                if elem.tag == "publication" and not language:
                    language = (elem.get("lang") or "").lower()
                continue
            if elem.tag != "taxon":
                continue
            seen_taxon = True
            parts, title = _accepted_name(elem)
            composed, rank = _compose(parts)
            if rank == "family":
                family = _title_case(parts["family"])
            elif rank == "genus":
                genus = parts["genus"]
            if not composed and title:
                composed = title if not title.startswith(("var.", "subsp.", "f.")) else f"{genus} {title}"
            text, sections, spans = _florml_description(elem)
            if text and composed:
                if not family and title.isupper() and title.endswith("ACEAE"):
                    family = title.capitalize()
                records.append(TaxonDescription(
                    taxon=composed, name=_bare_name(parts, rank) or normalize_name(composed) or composed,
                    text=text, family=family,
                    rank=rank, source=source, language=_LANGS.get(language, "") or guess_language(text),
                    sections=sections, markup=spans, dataset=path.stem, synonyms=_florml_synonyms(elem)))
            elem.clear()
    except ET.ParseError as err:
        line, column = getattr(err, "position", (0, 0))
        raise BadInput(f"{path.name}: malformed XML at line {line}, column {column}; fix the file or leave it out") from None
    if not seen_taxon:
        raise BadInput(f"{path.name}: not FlorML (no <taxon> element); expected a FlorML volume")
    return records


# --------------------------------------------------------------------------- Darwin Core


def _read_table(path: Path, delimiter: str | None = None) -> tuple[list[str], list[dict[str, str]]]:
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):  # Windows-1252 before Latin-1: its quotes are not controls
        try:
            raw = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    raw = normalize_text(raw)  # NUL bytes, controls and bidi marks never reach a cell
    if not raw.strip():
        raise BadInput(f"{path.name}: empty file")
    if delimiter is None:
        first = raw.splitlines()[0]
        delimiter = "\t" if first.count("\t") >= max(1, first.count(",")) else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(raw.splitlines(), delimiter=delimiter, quoting=quoting)
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    return header, [row for row in reader]


def _column(header: list[str], *names: str) -> str | None:
    lowered = {h.lower(): h for h in header}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    # namespaced terms: http://rs.tdwg.org/dwc/terms/scientificName
    for h in header:
        if h.rsplit("/", 1)[-1].lower() in {n.lower() for n in names}:
            return h
    return None


def _taxon_table(folder: Path, exclude: Path) -> dict[str, dict[str, str]]:
    for candidate in sorted(folder.iterdir()):
        if candidate == exclude or candidate.suffix.lower() not in {".txt", ".tsv", ".csv"}:
            continue
        try:
            header, rows = _read_table(candidate)
        except BadInput:
            continue
        name_col = _column(header, "scientificName")
        id_col = _column(header, "taxonID", "coreid", "id")
        if name_col and id_col:
            return {row[id_col]: row for row in rows if row.get(id_col)}
    return {}


def _description_records(rows: Iterable[dict[str, str]], header: list[str], taxa: dict[str, dict[str, str]],
                         source: str, label: str) -> list[TaxonDescription]:
    text_col = _column(header, "description")
    id_col = _column(header, "coreid", "taxonID", "id")
    type_col = _column(header, "type")
    lang_col = _column(header, "language")
    name_col = _column(header, "scientificName")
    missing = [name for name, col in (("description", text_col), ("coreid", id_col or name_col)) if col is None]
    if missing:
        raise BadInput(f"{label}: missing column(s) {', '.join(missing)}; a Darwin Core description extension "
                       f"needs coreid, type and description (found: {', '.join(header) or 'none'})")
    by_taxon: dict[str, list[tuple[str, str]]] = {}
    meta: dict[str, dict[str, str]] = {}
    for row in rows:
        kind = (row.get(type_col) or "general").strip().lower() if type_col else "general"
        text = clean_text(row.get(text_col) or "")
        if kind not in MORPHOLOGY_TYPES or not text:
            continue
        key = (row.get(id_col) or "") if id_col else (row.get(name_col) or "")
        taxon = taxa.get(key, {})
        name = (taxon.get(_column(list(taxon), "scientificName") or "", "") if taxon else "") or (row.get(name_col) or "" if name_col else "")
        if not name:
            continue
        author = taxon.get(_column(list(taxon), "scientificNameAuthorship") or "", "") if taxon else ""
        full = f"{name.strip()} {author.strip()}".strip() if author and author.strip() not in name else name.strip()
        by_taxon.setdefault(full, []).append((text, (row.get(lang_col) or "") if lang_col else ""))
        meta[full] = {"family": (taxon.get(_column(list(taxon), "family") or "", "") if taxon else "").strip(),
                      "rank": (taxon.get(_column(list(taxon), "taxonRank") or "", "") if taxon else "").strip().lower(),
                      "licence": _cell(row, header, "license", "rights"), "url": _cell(row, header, "references", "source"),
                      "key": key}
    other_names = _core_synonyms(taxa)
    records = []
    for full, texts in by_taxon.items():
        text = " ".join(t for t, _ in texts)
        lang = next((_LANGS.get(lang.strip().lower(), "") for _, lang in texts if lang.strip()), "") or guess_language(text)
        records.append(TaxonDescription(taxon=full, name=normalize_name(full) or full, text=text,
                                        family=meta[full]["family"], rank=meta[full]["rank"], source=source, language=lang,
                                        licence=meta[full]["licence"], url=meta[full]["url"],
                                        synonyms=other_names.get(meta[full]["key"], [])))
    return records


def _cell(row: dict[str, str], header: list[str], *names: str) -> str:
    col = _column(header, *names)
    return (row.get(col) or "").strip() if col else ""


def _core_synonyms(taxa: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Taxon id -> the other names a DwC taxon core gives it: for a synonym its accepted name
    (acceptedNameUsage or acceptedNameUsageID), for an accepted taxon the synonyms pointing at it."""
    out: dict[str, list[str]] = {}
    for key, row in taxa.items():
        get = {k.rsplit("/", 1)[-1].lower(): (v or "").strip() for k, v in row.items()}
        status = get.get("taxonomicstatus", "").lower()
        accepted_id = get.get("acceptednameusageid", "")
        accepted = get.get("acceptednameusage", "") or (
            taxa.get(accepted_id, {}).get("scientificName", "") if accepted_id and accepted_id != key else "")
        name = get.get("scientificname", "")
        if not accepted or not name or status in {"accepted", "valid"}:
            continue
        accepted_key = normalize_name(accepted)
        if accepted_key and accepted_key != normalize_name(name):
            out.setdefault(key, []).append(accepted_key)
            if accepted_id in taxa:
                out.setdefault(accepted_id, []).append(normalize_name(name) or name)
    return out


def _read_dwca(path: Path) -> list[TaxonDescription]:
    from dwca.read import DwCAReader  # python-dwca-reader

    description_type = "http://rs.gbif.org/terms/1.0/Description"
    try:
        reader_cm = DwCAReader(str(path))
    except Exception as err:  # the library raises many types for broken archives
        raise BadInput(f"{path.name}: not a readable Darwin Core Archive ({type(err).__name__}: {err})") from None
    with reader_cm as reader:
        ext = [e for e in reader.descriptor.extensions if e.type == description_type] if reader.descriptor else []
        if not ext:
            raise BadInput(f"{path.name}: the archive has no description extension ({description_type})")
        taxa: dict[str, dict[str, str]] = {}
        rows: list[dict[str, str]] = []
        for core in reader:
            data = {k.rsplit("/", 1)[-1]: normalize_text(v) for k, v in core.data.items()}
            taxa[core.id] = data
            for extension in core.extensions:
                if extension.rowtype == description_type:
                    row = {k.rsplit("/", 1)[-1]: normalize_text(v) for k, v in extension.data.items()}
                    row["coreid"] = core.id
                    rows.append(row)
        header = sorted({k for row in rows for k in row}) or ["coreid"]
        return _description_records(rows, header, taxa, source=path.stem, label=path.name)


def read_dwc_descriptions(path: str | Path) -> list[TaxonDescription]:
    """A Darwin Core description extension: a tab-separated file (with its taxon core
    beside it), a folder holding both, or a Darwin Core Archive (zip or folder with meta.xml)."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file or folder")
    if (path.is_file() and zipfile.is_zipfile(path)) or (path.is_dir() and (path / "meta.xml").exists()):
        return _read_dwca(path)
    if path.is_dir():
        for candidate in sorted(path.iterdir()):
            if candidate.suffix.lower() in {".txt", ".tsv", ".csv"}:
                header, _ = _read_table(candidate)
                if _column(header, "description") and _column(header, "type"):
                    return read_dwc_descriptions(candidate)
        raise BadInput(f"{path}: no description extension file (a table with coreid, type, description) in this folder")
    header, rows = _read_table(path)
    missing = [name for name in ("description",) if _column(header, name) is None]
    if not (_column(header, "coreid", "taxonID", "id") or _column(header, "scientificName")):
        missing.append("coreid")
    if missing:
        raise BadInput(f"{path.name}: missing column(s) {', '.join(missing)}; a Darwin Core description extension "
                       f"needs coreid, type and description (found: {', '.join(header) or 'none'})")
    taxa = _taxon_table(path.parent, exclude=path)
    if not taxa and not _column(header, "scientificName"):
        raise BadInput(f"{path.name}: no taxon core (a table with taxonID and scientificName) beside it; "
                       "give the folder holding both files, or a Darwin Core Archive")
    return _description_records(rows, header, taxa, source=path.parent.name or path.stem, label=path.name)


# --------------------------------------------------------------------------- CSV


def read_csv_descriptions(path: str | Path) -> list[TaxonDescription]:
    """A plain table with one description per row: taxon (or scientificName) and text (or description)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such CSV file")
    header, rows = _read_table(path, "\t" if path.suffix.lower() == ".tsv" else None)
    name_col = _column(header, "taxon", "scientificName", "name")
    text_col = _column(header, "text", "description")
    missing = [n for n, c in (("taxon", name_col), ("text", text_col)) if c is None]
    if missing:
        raise BadInput(f"{path.name}: missing column(s) {', '.join(missing)}; a description CSV needs "
                       f"taxon and text (found: {', '.join(header) or 'none'})")
    family_col, lang_col, source_col = _column(header, "family"), _column(header, "language", "lang"), _column(header, "source")
    merged: dict[str, TaxonDescription] = {}
    for row in rows:
        taxon = " ".join((row.get(name_col) or "").split())
        text = clean_text(row.get(text_col) or "")
        if not taxon or not text:
            continue
        if taxon in merged:
            merged[taxon].text += " " + text
            continue
        lang = _LANGS.get((row.get(lang_col) or "").strip().lower(), "") if lang_col else ""
        merged[taxon] = TaxonDescription(
            taxon=taxon, name=normalize_name(taxon) or taxon, text=text,
            family=(row.get(family_col) or "").strip() if family_col else "",
            source=(row.get(source_col) or "").strip() if source_col else path.stem,
            language=lang or guess_language(text))
    return list(merged.values())


# --------------------------------------------------------------------------- dispatch


def _looks_like_florml(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4096).decode("utf-8", "ignore")
    return "<publication" in head or "<treatment" in head or "FMmark" in head


def read_descriptions(source: str | Path) -> list[TaxonDescription]:
    """Any supported source: FlorML .xml (or a folder of them), DwC description extension, DwC-A, CSV."""
    path = Path(source)
    if not path.exists():
        raise BadInput(f"{path}: no such file or folder")
    from retrieval.flora import fna, tables  # they build on this module's records

    if path.is_dir():
        xml_files = sorted(path.glob("*.xml"))
        if xml_files and not (path / "meta.xml").exists():
            if fna.is_fna(xml_files[0]):
                return fna.read_fna_folder(path)
            return [record for f in xml_files for record in read_florml(f)]
        return read_dwc_descriptions(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return fna.read_fna(path) if fna.is_fna(path) else read_florml(path)
    if suffix == ".zip":
        return read_dwc_descriptions(path)
    if suffix in {".txt", ".tsv", ".csv"}:
        header, _ = _read_table(path, "\t" if suffix == ".tsv" else None)
        mapping = tables.preset_for(header)
        if mapping is not None:
            return tables.read_mapped_table(path, mapping)
        if _column(header, "coreid") or (_column(header, "type") and _column(header, "description")):
            return read_dwc_descriptions(path)
        return read_csv_descriptions(path)
    if _looks_like_florml(path):
        return read_florml(path)
    raise BadInput(f"{path.name}: unknown description format; give FlorML .xml, a Darwin Core description file or archive, or a CSV with taxon,text")


def iter_sources(sources: Iterable[str | Path]) -> Iterator[TaxonDescription]:
    for source in sources:
        yield from read_descriptions(source)
