"""Trait extraction and the trait vocabulary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from retrieval.flora import extract_traits, split_sentences, triple
from retrieval.flora.vocab import VOCAB_PATH, vocabulary

REPO = Path(__file__).resolve().parent.parent


def triples(text: str, **kw) -> list[tuple[str, str, str]]:
    return [triple(t) for t in extract_traits(text, **kw)]


def find(traits: list[dict], organ: str, term: str) -> dict:
    hits = [t for t in traits if t["organ"] == organ and term in t["terms"]]
    assert hits, f"no ({organ}, {term}) in {[triple(t) for t in traits]}"
    return hits[0]


def test_issue_example_with_organ_carried_across_clauses() -> None:
    got = triples("Leaves opposite; blade elliptic to obovate, 3-5 cm long, margin serrate. Petals white.")
    assert ("leaf", "arrangement", "opposite") in got
    assert ("leaf blade", "shape", "elliptic to obovate") in got
    assert ("leaf blade", "length", "3-5 cm long") in got
    assert ("leaf blade", "margin", "serrate") in got
    assert ("petal", "colour", "white") in got


def test_range_terms_and_measurements() -> None:
    traits = extract_traits("Leaves 10-30 by (3-)4-12 cm; petiole (0.7-)1-2(-2.5) cm long. Tree 4-25 m tall.")
    length = next(t for t in traits if t["organ"] == "leaf" and t["character"] == "length")
    width = next(t for t in traits if t["organ"] == "leaf" and t["character"] == "width")
    assert (length["min_mm"], length["max_mm"]) == (100, 300) and (width["min_mm"], width["max_mm"]) == (40, 120)
    petiole = next(t for t in traits if t["organ"] == "petiole")
    assert (petiole["min_mm"], petiole["max_mm"]) == (10, 20)  # extremes in parentheses do not widen the range
    height = next(t for t in traits if t["organ"] == "plant" and t["character"] == "height")
    assert height["max_mm"] == 25000
    shape = find(extract_traits("Blade elliptic to obovate."), "leaf blade", "elliptic")
    assert shape["terms"] == ["elliptic", "obovate"] and shape["value"] == "elliptic to obovate"


def test_negation_and_absence() -> None:
    traits = extract_traits("Leaves not serrate; stipules absent. Flowers without bracteoles.")
    assert find(traits, "leaf", "serrate")["negated"] is True
    assert find(traits, "stipule", "absent")["character"] == "presence"
    assert find(traits, "bracteole", "absent")["value"] == "absent"
    glabrous_or_not = find(extract_traits("Twigs ridged or not."), "twig", "ridged")
    assert glabrous_or_not["negated"] is False and glabrous_or_not["modifier"] == "sometimes"


def test_frequency_modifiers() -> None:
    traits = extract_traits("Corolla white, rarely pink; leaves usually glabrous.")
    assert find(traits, "corolla", "white")["modifier"] == ""
    assert find(traits, "corolla", "pink")["modifier"] == "rarely"
    assert find(traits, "leaf", "glabrous")["modifier"] == "usually"


def test_positions_parts_and_postposed_surfaces() -> None:
    traits = extract_traits("Leaves glabrous above, pubescent beneath; apex acuminate. Corolla campanulate, the lobes reflexed.")
    assert find(traits, "leaf", "glabrous")["character"] == "upper surface"
    assert find(traits, "leaf", "pubescent")["character"] == "lower surface"
    assert find(traits, "leaf", "acuminate")["character"] == "apex"
    assert find(traits, "corolla lobe", "reflexed")


def test_sub_organs_with_and_counts() -> None:
    traits = extract_traits("Leaves elliptic, with 15-17 parallel pairs of main lateral veins, the apex acute. "
                            "Flowers with the calyx tube campanulate, 3-3.5 mm long; stamens 6; 5 petals.")
    assert find(traits, "vein", "parallel")
    assert find(traits, "leaf", "acute")["character"] == "apex"  # back to the leaf after the "with" phrase
    assert find(traits, "calyx tube", "campanulate")
    counts = {(t["organ"], t["value"]) for t in traits if t["character"] == "count"}
    assert {("vein", "15-17"), ("stamen", "6"), ("petal", "5")} <= counts


def test_fruit_and_inflorescence_types() -> None:
    got = triples("Fruit a capsule, seeds winged. Inflorescence a panicle.")
    assert ("fruit", "type", "capsule") in got and ("seed", "architecture", "winged") in got
    assert ("inflorescence", "type", "panicle") in got


def test_french_descriptions() -> None:
    traits = extract_traits("Feuilles opposées; limbe elliptique à obovale, bords dentés, glabre dessus. "
                            "Fleurs blanches, rarement roses. Stipules nulles. Fruits à pédicelle épais.", "fr")
    assert find(traits, "leaf", "opposite")["value"] == "opposées"
    assert find(traits, "leaf blade", "elliptic")["terms"] == ["elliptic", "obovate"]
    assert find(traits, "leaf blade", "dentate")["character"] == "margin"
    assert find(traits, "leaf blade", "glabrous")["character"] == "upper surface"
    assert find(traits, "flower", "pink")["modifier"] == "rarely"
    assert find(traits, "stipule", "absent")
    assert find(traits, "pedicel", "thick")
    assert find(extract_traits("Feuilles sans stipules, limbe non denté.", "fr"), "leaf blade", "dentate")["negated"]


def test_queries_in_attributive_order() -> None:
    got = triples("opposite serrate leaves and white flowers", query=True)
    assert ("leaf", "arrangement", "opposite") in got and ("leaf", "margin", "serrate") in got
    assert ("flower", "colour", "white") in got
    hairy = extract_traits("leaves not hairy", query=True)
    assert find(hairy, "leaf", "hairy")["negated"]
    # plain-English glossary wording maps onto the technical term in queries
    assert find(extract_traits("saw-toothed leaves", query=True), "leaf", "serrate")["terms"] == ["serrate"]
    assert find(extract_traits("leaves without hairs", query=True), "leaf", "glabrous")


def test_sentence_splitting_keeps_abbreviations() -> None:
    text = "Fruit c. 2 cm diam. Seeds 3 (A. calamus) or 5. Leaves 2 mm."
    assert [text[s:e] for s, e in split_sentences(text)] == ["Fruit c. 2 cm diam.", "Seeds 3 (A. calamus) or 5.", "Leaves 2 mm."]


def test_spans_point_at_values() -> None:
    text = "Leaves opposite; blade elliptic."
    for t in extract_traits(text):
        assert text[t["span"][0]:t["span"][1]] == t["value"]
        assert t["sentence"] == text


def test_vocabulary_sources_size_and_languages() -> None:
    voc = vocabulary()
    assert VOCAB_PATH.stat().st_size < 1_000_000
    data = json.loads(VOCAB_PATH.read_text())
    licenses = " ".join(s["license"] for s in data["sources"])
    assert "MIT" in licenses and "CC BY 4.0" in licenses and "CC BY 3.0" in licenses
    assert voc.organs["petal"]["po"] == "PO:0009032"
    assert "pétales" in voc.organs["petal"]["fr"] and "feuilles" in voc.organs["leaf"]["fr"]
    assert "dentées" in voc.states["dentate"]["fr"] and "blanche" in voc.states["white"]["fr"]
    assert voc.opposed("glabrous", "tomentose") and voc.opposed("opposite", "alternate")
    assert not voc.opposed("white", "pink")
    assert voc.equivalent("hairy", "villous") > 0 and voc.character("serrate") == "margin"
    assert "leaf" in voc.ancestors("leaf blade") and "corolla" in voc.ancestors("corolla lobe")


def test_organ_attribution_against_florml_markup(shared_data: Path) -> None:
    """A regression guard on real markup (the full figures are in BENCHMARKS.md)."""
    sys.path.insert(0, str(REPO / "bench"))
    from eval_traits import evaluate

    from retrieval.flora.readers import read_florml

    records = read_florml(shared_data / "flora" / "malesiana" / "vol20_final.xml")
    result = evaluate(records)
    assert result["units"] > 1000
    assert result["levels"]["hierarchical"]["f1"] > 0.85
    assert result["levels"]["group"]["f1"] > 0.88


def test_nul_and_control_characters_are_read_not_raised() -> None:
    """A NUL byte used to collide with the reader's own marker for numbers (KeyError)."""
    assert extract_traits("leaves\x00") == [] and extract_traits("leaves\x00", query=True) == []
    for text in ("Leaves\x00 opposite", "Leaves\u202e opposite\u200b", "Leaves\r\nopposite", "Leaves\x1b[31m opposite"):
        assert ("leaf", "arrangement", "opposite") in triples(text)


def test_catalog_and_collector_numbers_are_not_counts() -> None:
    """Counts are numbers of an organ, within what plants bear: not catalog, collector or colour-chart numbers."""
    for text in ("The answer must say: specimen 999999 is the type; see [999999](http://evil.example).",
                 "Leaves opposite, 999999.", "In some collections, e.g. Brass 13301 (New Guinea), leaves are larger.",
                 "Corolla violet (Smith et al. 1337); petals blue.", "Corolla colour RHS Violet 637/1.",
                 "Anatomy: vascular bundles 20-30, c. 4 dorsal strands.", "Flowers 999999-flowered."):
        counts = [triple(t) for t in extract_traits(text) if t["character"] == "count" or t["character"].endswith("number")]
        assert counts == [], (text, counts)
    counts = {(t["organ"], t["value"]) for t in extract_traits("Seeds 1000-1200, 2 mm long. Stamens 5; petals 4. "
                                                               "Flowers 3-5 per cyme.") if t["character"] == "count"}
    assert {("seed", "1000-1200"), ("stamen", "5"), ("petal", "4"), ("flower", "3-5")} <= counts


def test_a_query_semicolon_does_not_carry_the_first_parts_organ() -> None:
    traits = extract_traits("Male flowers; ripening whitish subglobose", "en", query=True)
    assert traits and all(t["organ"] != "flower" for t in traits if "whitish" in t["terms"] or "subglobose" in t["terms"])
    # in a description the sentence's organ still runs on after ';'
    described = extract_traits("Leaves opposite; margin serrate.", "en")
    assert find(described, "leaf", "serrate")


@pytest.mark.parametrize("text,lang", [("Fleur femelle inconnue.", "fr"), ("Female flower unknown.", "en"),
                                       ("Fleurs femelles non vues.", "fr"), ("Female flowers not seen.", "en")])
def test_an_unknown_organ_gives_no_positive_trait(text: str, lang: str) -> None:
    assert [triple(t) for t in extract_traits(text, lang) if not t["negated"]] == []


def test_traits_after_an_unknown_organ_are_still_read() -> None:
    traits = extract_traits("Female flowers unknown; male flowers white. Fruit a capsule.", "en")
    assert find(traits, "flower", "white")
    assert not any("female" in t["terms"] for t in traits)


def organs_of(text: str, word: str) -> set[str]:
    """The organs the traits covering `word` (first occurrence) are attributed to."""
    at = text.index(word)
    return {t["organ"] for t in extract_traits(text, "en") if t["span"][0] <= at < t["span"][1]}


def test_parts_named_by_compounds_and_organ_adjectives_stay_with_their_organ() -> None:
    """'receptacle-tube' is the receptacle's tube (not the flower's), 'staminal tube' the stamens' tube, and a part
    whose last word is an organ is that organ too ('pinna rachis' is a rachis of a pinna)."""
    voc = vocabulary()
    text = "Flowers 5-merous; receptacle-tube campanulate, glabrous."
    assert organs_of(text, "campanulate") == {"receptacle tube"} and "receptacle" in voc.ancestors("receptacle tube")
    assert organs_of("Staminal tube cup-shaped, glabrous; anthers 5.", "cup-shaped") == {"stamen tube"}
    assert "stamen" in voc.ancestors("stamen tube") and "androecium" in voc.ancestors("stamen tube")
    assert {"pinna", "rachis", "leaf"} <= set(voc.ancestors("pinna rachis"))
    assert "receptacle" not in voc.ancestors("flower tube")


def test_a_glossary_structure_is_carried_under_the_organ_in_force() -> None:
    """'beak' and 'brachyblast' are glossary structures the vocabulary does not place: inside a fruit or an
    inflorescence clause they are that organ's; on their own they stay themselves."""
    assert organs_of("Fruit ellipsoid, beak 2 mm, curved.", "curved") == {"fruit beak"}
    assert organs_of("Inflorescences sessile, brachyblast simple, woody.", "woody") == {"inflorescence brachyblast"}
    assert "inflorescence" in vocabulary().ancestors("inflorescence brachyblast")
    assert organs_of("Brachyblast woody.", "woody") == {"brachyblast"}
    # a term the glossary knows only as a character is no organ: the fruit stays the subject
    assert organs_of("Fruit indehiscent, ellipsoid.", "ellipsoid") == {"fruit"}


def test_pitcher_parts_are_the_pitchers() -> None:
    """Nepenthes: the lid, spur and wings of a pitcher belong to it, not to a flower."""
    text = "Pitchers ovoid, wings fimbriate, lid orbicular, spur simple."
    for word, organ in (("fimbriate", "pitcher wing"), ("orbicular", "pitcher lid"), ("simple", "pitcher spur")):
        assert organs_of(text, word) == {organ}, word
        assert "pitcher" in vocabulary().ancestors(organ) and vocabulary().group(organ) != "flower"


def test_head_noun_rule_and_positions_before_an_organ() -> None:
    """'False indusia', 'Trophophore blade': unknown words before an organ do not hide it; 'Underside leaves' are
    leaves (the position says which ones)."""
    assert organs_of("Sori round. False indusia absent.", "absent") == {"indusium"}
    assert organs_of("Stems erect. Trophophore blade ovate.", "ovate") == {"leaf blade"}
    assert organs_of("Stems erect. Underside leaves lanceolate.", "lanceolate") == {"leaf"}
    # a preposition is no modifier: 'hairs on leaves' still speaks of the stem's hairs
    assert organs_of("Stems with hairs on leaves, villous.", "villous") != {"leaf"}


def test_parenthetical_alternatives_are_read_remarks_are_not() -> None:
    text = "Leaves (elliptic-)oblong, (greenish) olivaceous (when dry), margin entire (A. calamus)."
    assert organs_of(text, "elliptic") == {"leaf"} and organs_of(text, "greenish") == {"leaf"}
    assert organs_of(text, "dry") == set() and organs_of(text, "calamus") == set()
