"""Description readers (FlorML, Darwin Core, CSV) and scientific-name normalisation."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from retrieval.errors import BadInput
from retrieval.flora.readers import read_csv_descriptions, read_descriptions, read_dwc_descriptions, read_florml
from retrieval.flora import normalize_name, species_of


@pytest.mark.parametrize("raw, expected", [
    ("Acorus calamus L. var. angustifolius Schott", "Acorus calamus var. angustifolius"),
    ("Solanum abutiloides (Griseb.) Bitter & Lillo", "Solanum abutiloides"),
    ("SOLANUM NIGRUM L.", "Solanum nigrum"),
    ("Solanum cf. nigrum", "Solanum nigrum"),
    ("Eucalyptus globulus ssp globulus", "Eucalyptus globulus subsp. globulus"),
    ("Horsfieldia laevigata (Blume) Warb. var. bialata (Warb.) W.J.de Wilde", "Horsfieldia laevigata var. bialata"),
    ("Symphyotrichum novae-angliae (L.) G.L.Nesom", "Symphyotrichum novae-angliae"),
    ("Quercus sp.", "Quercus"),
    ("Carex (Vignea) canescens L.", "Carex canescens"),
    ("", ""),
    ("12345", ""),
])
def test_normalize_name(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


def test_species_of() -> None:
    assert species_of("Solanum nigrum subsp. schultesii") == "Solanum nigrum"


def test_florml_reader_keeps_names_families_and_organ_markup(shared_data: Path) -> None:
    records = read_florml(shared_data / "flora" / "malesiana" / "vol20_final.xml")
    by_name = {r.name: r for r in records}
    calamus = by_name["Acorus calamus"]
    assert calamus.family == "Acoraceae" and calamus.rank == "species" and calamus.language == "en"
    assert calamus.taxon.startswith("Acorus calamus") and "Flora Malesiana" in calamus.source
    assert "leaves" in calamus.sections and calamus.sections["leaves"].startswith("Leaves")
    # every markup span points at the text of its element
    leaves = [(s, e) for s, e, c, p in calamus.markup if c == "leaves" and not p]
    assert leaves and calamus.text[leaves[0][0]:leaves[0][1]].startswith("Leaves")
    # a subChar lies inside a char of its parent class, in every record
    nested = 0
    for record in records:
        chars = [(s, e, c) for s, e, c, p in record.markup if not p]
        for s, e, c, p in record.markup:
            if p:
                nested += 1
                assert any(cs <= s < e <= ce and cc == p for cs, ce, cc in chars), (record.taxon, c, p)
    assert nested > 100
    assert "<" not in calamus.text and "  " not in calamus.text
    # genus and family treatments are read too, with their rank
    assert {"family", "genus", "species"} <= {r.rank for r in records}


def test_florml_french_volume(shared_data: Path) -> None:
    records = read_florml(shared_data / "flora" / "gabon" / "fdgvol11_final.xml")
    assert records and all(r.language == "fr" for r in records)
    guava = next(r for r in records if r.name == "Psidium guajava")
    assert guava.family == "Myrtaceae" and "Feuilles" in guava.text or "feuilles" in guava.text
    # old floras capitalise epithets ("Syzygium Staudtii"); the normalised name does not
    assert any(r.name == "Syzygium staudtii" for r in records)


def test_florml_malformed_xml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.xml"
    bad.write_text('<publication lang="en"><treatment><taxon><taxontitle>X</taxontitle>\n<feature class="description">'
                   '<char class="leaves">Leaves opposite</feature></taxon></treatment></publication>')
    with pytest.raises(BadInput, match=r"broken.xml: malformed XML at line 2"):
        read_florml(bad)


def test_florml_other_xml_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.xml"
    other.write_text("<root><item>1</item></root>")
    with pytest.raises(BadInput, match="not FlorML"):
        read_florml(other)


def test_dwc_description_extension_with_taxon_core(shared_data: Path) -> None:
    records = read_dwc_descriptions(shared_data / "flora" / "solanaceae")
    assert len(records) > 500
    first = next(r for r in records if r.name == "Solanum abitaguense")
    assert first.family == "Solanaceae" and first.language == "en"
    assert first.text.startswith("Shrub or small tree")
    assert "greyish. Sympodial" in first.text  # glued sentences are split
    # only morphological descriptions: distribution and uses stay out
    assert "cloud forests" not in first.text


def test_dwc_missing_columns_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "desc.txt").write_text("coreid\ttype\ttext\nwfo-1\tgeneral\tLeaves opposite.\n")
    with pytest.raises(BadInput, match=r"missing column\(s\) description"):
        read_dwc_descriptions(tmp_path / "desc.txt")


def test_dwc_without_taxon_core_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "desc.txt").write_text("coreid\ttype\tdescription\nwfo-1\tgeneral\tLeaves opposite.\n")
    with pytest.raises(BadInput, match="no taxon core"):
        read_dwc_descriptions(tmp_path / "desc.txt")


def test_dwca_archive_with_description_extension(tmp_path: Path) -> None:
    meta = """<archive xmlns="http://rs.tdwg.org/dwc/text/">
 <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Taxon">
  <files><location>taxa.txt</location></files><id index="0"/>
  <field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
  <field index="2" term="http://rs.tdwg.org/dwc/terms/family"/>
 </core>
 <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" ignoreHeaderLines="1" rowType="http://rs.gbif.org/terms/1.0/Description">
  <files><location>description.txt</location></files><coreid index="0"/>
  <field index="1" term="http://purl.org/dc/terms/type"/>
  <field index="2" term="http://purl.org/dc/terms/description"/>
  <field index="3" term="http://purl.org/dc/terms/language"/>
 </extension>
</archive>"""
    archive = tmp_path / "flora.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("meta.xml", meta)
        zf.writestr("taxa.txt", "id\tscientificName\tfamily\nt1\tViola odorata L.\tViolaceae\nt2\tViola alba Besser\tViolaceae\n")
        zf.writestr("description.txt", "coreid\ttype\tdescription\tlanguage\n"
                    "t1\tgeneral\tLeaves cordate, crenate. Flowers violet, fragrant.\ten\n"
                    "t1\tdistribution\tEurope.\ten\n"
                    "t2\tmorphology\tFeuilles cordées; fleurs blanches.\tfr\n")
    records = {r.name: r for r in read_descriptions(archive)}
    assert set(records) == {"Viola odorata", "Viola alba"}
    assert records["Viola odorata"].text == "Leaves cordate, crenate. Flowers violet, fragrant."
    assert records["Viola alba"].language == "fr" and records["Viola odorata"].family == "Violaceae"


def test_csv_reader_and_missing_column(tmp_path: Path) -> None:
    good = tmp_path / "desc.csv"
    good.write_text('taxon,text,family\n"Geranium maculatum L.","Leaves palmately lobed, hairy. Petals pink.",Geraniaceae\n'
                    '"Iris pseudacorus L.","Feuilles ensiformes; fleurs jaunes.",Iridaceae\n')
    records = {r.name: r for r in read_csv_descriptions(good)}
    assert records["Geranium maculatum"].family == "Geraniaceae" and records["Geranium maculatum"].language == "en"
    assert records["Iris pseudacorus"].language == "fr"
    bad = tmp_path / "bad.csv"
    bad.write_text("species,description\nIris pseudacorus,Leaves ensiform\n")
    with pytest.raises(BadInput, match=r"missing column\(s\) taxon"):
        read_csv_descriptions(bad)


def test_read_descriptions_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such"):
        read_descriptions(tmp_path / "nothing.xml")
    odd = tmp_path / "notes.pdf"
    odd.write_bytes(b"%PDF-1.4")
    with pytest.raises(BadInput, match="unknown description format"):
        read_descriptions(odd)


def test_control_characters_in_description_files_never_reach_the_text(tmp_path: Path) -> None:
    """A NUL byte in a description CSV used to reach trait extraction (KeyError); now every reader gives normal text."""
    from retrieval.flora import extract_traits

    csv_file = tmp_path / "desc.csv"
    csv_file.write_bytes('taxon,text\n"Geranium\x00 maculatum L.","Leaves\x00 opposite,\x1b[31m serrate;\u202e petals '
                         'pink\u200b. Fruit oppose\u0301e."\n'.encode())
    tsv_file = tmp_path / "desc.txt"
    tsv_file.write_bytes("coreid\ttype\tdescription\tscientificName\nx\tgeneral\tLeaves\x00 alternate\u00ad.\tIris\x07 "
                         "pseudacorus L.\n".encode())
    cp1252 = tmp_path / "windows.csv"
    cp1252.write_bytes(b'taxon,text\nIris pseudacorus,"Leaves\x00 ensiform \x96 sword\x92s edge."\n')
    records = [r for f in (csv_file, tsv_file, cp1252) for r in read_descriptions(f)]
    assert [(r.name, r.text) for r in records] == [
        ("Geranium maculatum", "Leaves opposite, serrate; petals pink. Fruit opposée."),
        ("Iris pseudacorus", "Leaves alternate."), ("Iris pseudacorus", "Leaves ensiform – sword’s edge.")]
    for record in records:
        traits = extract_traits(record.text, record.language)
        assert traits and all(record.text[t["span"][0]:t["span"][1]] for t in traits)


def test_invisible_characters_in_florml_keep_the_markup_offsets(tmp_path: Path) -> None:
    volume = tmp_path / "vol.xml"
    volume.write_text('<publication lang="en"><treatment><taxon><nomenclature><homotypes><nom class="accepted">'
                      '<name class="genus">Viola</name><name class="species">al\u200bba</name></nom></homotypes>'
                      '</nomenclature><feature class="description"><char class="leaves">Leaves\u202e opposite, '
                      'ser\u00adrate.</char><char class="flowers">Flowers\u200e white.</char></feature></taxon>'
                      '</treatment></publication>', encoding="utf-8")
    (record,) = read_florml(volume)
    assert record.name == "Viola alba" and record.text == "Leaves opposite, serrate. Flowers white."
    assert record.sections == {"leaves": "Leaves opposite, serrate.", "flowers": "Flowers white."}
    for start, end, cls, _ in record.markup:
        assert record.text[start:end].strip() == record.sections[cls]
    control = tmp_path / "control.xml"
    control.write_text(volume.read_text().replace("white", "wh&#1;ite"))
    with pytest.raises(BadInput, match="malformed XML"):
        read_florml(control)


def test_florml_volumes_are_cited_as_botanists_cite_them() -> None:
    from retrieval.flora.readers import volume_title

    assert volume_title("\ufeffFLORE DU GABON, 10", "fdgvol10_final") == "Flore du Gabon, Volume 10"
    assert volume_title("FLORE DU GABON, 12 et 17", "fdgvol12and17_final") == "Flore du Gabon, Volume 12 et 17"
    assert volume_title("", "fdgvol4_final") == "Flore du Gabon, Volume 4"
    assert volume_title("Flora Malesiana., Series I, Volume 17 / Part 1", "x") == "Flora Malesiana, Series I, Volume 17 / Part 1"
    assert volume_title("Flora Malesiana, Series I, Volume 20", "vol20_final") == "Flora Malesiana, Series I, Volume 20"
    assert volume_title("", "my_flora") == "my_flora"
