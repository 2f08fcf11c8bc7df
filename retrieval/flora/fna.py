"""Flora of North America treatments in the biosemantics (ETC / CharaParser) XML.

One file per taxon (`<bio:treatment>`): the accepted name and its synonyms and basionym
(`<taxon_identification status=...>`), a morphology description whose organs open each
clause ("Stems  creeping...  Leaves  dimorphic..."), and, where CharaParser marked it up,
`<statement>`s of `<biological_entity>` structures with `<character name= value=>`. The
organ headings become section spans (the same gold FlorML markup gives) and the marked-up
characters a second source of traits beside the text.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from retrieval.errors import BadInput
from retrieval.flora.names import normalize_name
from retrieval.flora.readers import TaxonDescription
from retrieval.textnorm import normalize_text

SOURCE = "Flora of North America"
_INFRA = {"subspecies": "subsp.", "variety": "var.", "forma": "f."}
# "Stems  creeping" / ".  Leaves  somewhat": an organ heading is followed by two spaces in these files
_HEADING = re.compile(r"(?:^|(?<=[.;]\s))\s*([A-Z][a-z]+(?: [a-z]+){0,2}|2 n)\s{2,}")


def is_fna(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(2048).decode("utf-8", "ignore")
    return "<bio:treatment" in head or "github.com/biosemantics" in head


def _name(ident: ET.Element) -> tuple[str, str, str, str]:
    """(name with authorship, normalised name, rank, family) of one taxon_identification."""
    ranks = {(n.get("rank") or "").lower(): (" ".join((n.text or "").split()), n.get("authority") or "")
             for n in ident.findall("taxon_name")}
    family = ranks.get("family", ("", ""))[0].capitalize()
    if "genus" not in ranks:
        return family, family, "family" if family else "", family
    words = [ranks["genus"][0].capitalize()]
    rank, author = "genus", ranks["genus"][1]
    if "species" in ranks:
        words.append(ranks["species"][0].lower())
        rank, author = "species", ranks["species"][1]
        for infra, marker in _INFRA.items():
            if infra in ranks:
                words += [marker, ranks[infra][0].lower()]
                rank, author = infra, ranks[infra][1]
                break
    bare = " ".join(words)
    shown = f"{bare} {author}" if author and author != "unknown" else bare
    return shown, normalize_name(bare) or bare, rank, family


def _sections(text: str) -> tuple[dict[str, str], list[tuple[int, int, str, str]]]:
    """Organ sections from the clause headings: ('Leaves', 'somewhat dimorphic, ...')."""
    heads = [(m.start(1), m.end(), m.group(1).lower()) for m in _HEADING.finditer(text)]
    sections: dict[str, str] = {}
    spans: list[tuple[int, int, str, str]] = []
    for i, (start, body, organ) in enumerate(heads):
        end = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        chunk = text[start:end].rstrip()
        if organ == "2 n":
            continue
        spans.append((start, start + len(chunk), organ, ""))
        sections[organ] = f"{sections[organ]} {text[body:end].strip()}" if organ in sections else text[body:end].strip()
    return sections, spans


def _characters(description: ET.Element) -> list[list[str]]:
    """[structure, character, value] from CharaParser's statements (empty when the text is not marked up)."""
    out: list[list[str]] = []
    for entity in description.iter("biological_entity"):
        structure = entity.get("name") or ""
        if (entity.get("type") or "structure") != "structure" or structure == "whole_organism":
            continue
        for char in entity.findall("character"):
            value = " ".join(p for p in (char.get("modifier"), char.get("value")) if p)
            if char.get("name") and char.get("value"):
                out.append([structure, char.get("name") or "", value])
    return out


def read_fna(path: str | Path) -> list[TaxonDescription]:
    """One FNA treatment file (or nothing when it has no morphology description)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        line, column = getattr(err, "position", (0, 0))
        raise BadInput(f"{path.name}: malformed XML at line {line}, column {column}; fix the file or leave it out") from None
    accepted = next((i for i in root.findall("taxon_identification") if i.get("status") == "ACCEPTED"), None)
    if accepted is None:
        raise BadInput(f"{path.name}: an FNA treatment without an ACCEPTED taxon_identification")
    shown, name, rank, family = _name(accepted)
    morphology = [d for d in root.findall("description") if d.get("type") == "morphology"]
    # the double spaces after an organ heading are kept (offsets stay exact); longer runs and newlines shrink to them
    raw = " ".join(normalize_text("".join(d.itertext())) for d in morphology)
    text = re.sub(r"[ \t\r\n]{2,}", "  ", re.sub(r"[\t\r\n]", " ", raw)).strip()
    if not text or not name:
        return []
    sections, spans = _sections(text)
    synonyms = []
    for ident in root.findall("taxon_identification"):
        if ident.get("status") in {"SYNONYM", "BASIONYM"}:
            other = _name(ident)[1]
            if other and other != name and other not in synonyms:
                synonyms.append(other)
    volume = (root.findtext("meta/other_info_on_meta[@type='volume']") or "").strip()
    return [TaxonDescription(taxon=shown, name=name, text=text, family=family, rank=rank, source=SOURCE,
                             language="en", sections=sections, markup=spans,
                             dataset=f"vol. {volume}" if volume else path.stem, synonyms=synonyms,
                             characters=[c for d in morphology for c in _characters(d)])]


def read_fna_folder(folder: Path) -> list[TaxonDescription]:
    files = sorted(p for p in folder.glob("*.xml") if is_fna(p))
    return [record for f in files for record in read_fna(f)]
