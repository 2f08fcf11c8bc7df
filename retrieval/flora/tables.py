"""Taxon tables whose columns are mapped onto a description: Go Botany's and the like.

Such tables are not floras: they hold short remarks ("factoids"), lookalike tips and
synonymy columns. Their text is kept, marked kind="notes" so answers never present it as a
full description, and their synonyms feed name reconciliation (taxonomy.py).
A mapping names the columns: taxon, authority, family, text (several, joined with their
labels), synonyms (several; cells may list names separated by ';'), plus the source's
name, licence and a link template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.errors import BadInput
from retrieval.flora.names import normalize_name
from retrieval.flora.readers import TaxonDescription, _read_table, clean_text, guess_language

GOBOTANY: dict[str, Any] = {
    "source": "Go Botany (Native Plant Trust)", "kind": "notes", "licence": "",
    "taxon": "Scientific__Name", "authority": "Taxonomic_Authority", "family": "Family",
    "text": {"factoid": "", "Lookalike_tips": "Lookalikes: ", "variety_notes": ""},
    "synonyms": ["synonymy_1", "synonymy_2", "synonymy_3", "Comment"],
    "url": "https://gobotany.nativeplanttrust.org/species/{genus}/{epithet}/",
}
PRESETS = {"gobotany": GOBOTANY}


def preset_for(header: list[str]) -> dict[str, Any] | None:
    """The preset whose columns the table has (None for an unmapped table)."""
    for mapping in PRESETS.values():
        wanted = [mapping["taxon"], *mapping["text"]]
        if all(col in header for col in wanted):
            return mapping
    return None


def _synonyms(row: dict[str, str], columns: list[str], accepted: str) -> list[str]:
    out: list[str] = []
    for col in columns:
        for piece in (row.get(col) or "").replace("\n", " ").split(";"):
            key = normalize_name(" ".join(piece.split()))
            if key and key != accepted and " " in key and key not in out:
                out.append(key)
    return out


def read_mapped_table(path: str | Path, mapping: dict[str, Any]) -> list[TaxonDescription]:
    """One record per row with a taxon and some text, its columns read through `mapping`."""
    path = Path(path)
    header, rows = _read_table(path)
    missing = [c for c in (mapping["taxon"], *mapping["text"]) if c not in header]
    if missing:
        raise BadInput(f"{path.name}: missing mapped column(s) {', '.join(missing)}")
    records: list[TaxonDescription] = []
    for row in rows:
        bare = " ".join((row.get(mapping["taxon"]) or "").split())
        name = normalize_name(bare)
        pieces = [label + clean_text(row.get(col) or "") for col, label in mapping["text"].items() if (row.get(col) or "").strip()]
        if not name or not pieces:
            continue
        author = (row.get(mapping.get("authority", "")) or "").strip()
        parts = name.split(" ")
        url = mapping.get("url", "").format(genus=parts[0].lower(), epithet=parts[1] if len(parts) > 1 else "")
        text = " ".join(p if p.endswith((".", "!", "?", ")")) else p + "." for p in pieces)
        records.append(TaxonDescription(
            taxon=f"{bare} {author}".strip(), name=name, text=text, family=(row.get(mapping.get("family", "")) or "").strip(),
            rank={1: "genus", 2: "species"}.get(len(parts), {"var.": "variety", "subsp.": "subspecies"}.get(parts[-2], "")),
            source=mapping["source"], language=guess_language(text), kind=mapping.get("kind", "description"),
            dataset=path.name, licence=mapping.get("licence", ""), url=url if len(parts) > 1 else "",
            synonyms=_synonyms(row, mapping.get("synonyms", []), name)))
    return records
