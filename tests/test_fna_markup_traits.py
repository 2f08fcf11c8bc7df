"""FNA's own structure markup as a second source of traits (issue 9): on a real treatment, a state the text reader
places on the wrong organ is also recorded on the organ the treatment's heading names, and the trait signal finds
the taxon by it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from retrieval.flora import extract_traits
from retrieval.flora.fna import read_fna
from retrieval.flora.morphology.trait_signal import TraitSignal, markup_traits, record_traits


def _treatment(shared_data: Path, name: str):
    for path in sorted((shared_data / "flora" / "fna-v2").glob("*.xml")):
        if name.split()[-1] in path.read_text(encoding="utf-8", errors="ignore"):
            records = read_fna(path)
            if records and records[0].name == name:
                return records[0]
    raise AssertionError(f"{name} not found in fna-v2")


def test_heading_markup_adds_the_organ_the_reader_missed(shared_data: Path) -> None:
    record = _treatment(shared_data, "Asplenium rhizophyllum")
    # "Blades  highly variable in size and shape, even on 1 plant, narrowly deltate ...": the reader takes "plant"
    # for the subject; the treatment's heading says these are the blade's
    rows = record_traits(record)
    from_text = [r for r in rows if r.get("source") != "markup"]
    from_markup = [r for r in rows if r.get("source") == "markup"]
    assert any(r["organ"] == "plant" and "deltate" in r["terms"] for r in from_text)
    blade = [r for r in from_markup if r["organ"] == "leaf blade" and "deltate" in r["terms"]]
    assert blade and record.text[blade[0]["span"][0]:blade[0]["span"][1]].lower().startswith("deltate")
    # nothing already said of the same organ is repeated
    said = {(r["organ"], tuple(r["terms"]), r["negated"]) for r in from_text}
    assert not any((r["organ"], tuple(r["terms"]), r["negated"]) in said for r in from_markup)

    query = extract_traits("blades deltate", "en", query=True)
    with_markup, evidence = TraitSignal([rows], ["species"]).scores(query)
    text_only, _ = TraitSignal([from_text], ["species"]).scores(query)
    assert with_markup[0] > text_only[0] > 0
    assert rows[evidence[0][0][0]].get("source") == "markup"


def test_charaparser_statements_become_rows_of_their_structure(shared_data: Path) -> None:
    """Where a treatment carries CharaParser's (structure, character, value) statements, each value's states are a
    row of that structure, pointed at the value in the text."""
    record = _treatment(shared_data, "Thelypteris reptans")
    assert record.characters == []  # the shipped files mark up headings and habitats only
    marked = dataclasses.replace(record, characters=[["sorus", "shape", "round"], ["indusium", "size", "minute"],
                                                     ["rhizome", "orientation", "creeping"], ["whatever", "shape", "round"]])
    rows = markup_traits(marked, [])
    assert {(r["organ"], tuple(r["terms"])) for r in rows} >= {("indusium", ("minute",)), ("rhizome", ("creeping",))}
    assert not any(r["organ"] == "whatever" for r in rows)
    indusium = next(r for r in rows if r["organ"] == "indusium")
    assert record.text[indusium["span"][0]:indusium["span"][1]] == "minute" and indusium["source"] == "markup"


def test_florml_volumes_are_not_given_their_markup(shared_data: Path) -> None:
    """Flora Malesiana's markup is the benchmark's gold (bench/eval_traits.py, eval_morphology.py): only sources
    listed as publishing their own markup feed it to the trait signal."""
    from retrieval.flora.readers import read_florml

    record = read_florml(shared_data / "flora" / "malesiana" / "vol20_final.xml")[0]
    assert record.markup and not any(r.get("source") == "markup" for r in record_traits(record))
