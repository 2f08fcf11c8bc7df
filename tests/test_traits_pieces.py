"""The trait reader's pieces, each on its own: tokens, numbers, clauses and heads, state runs.

tests/test_traits.py checks whole descriptions; these pin down the step that owns each rule, so a change
to one piece shows where it broke.
"""

from __future__ import annotations

from typing import Any

import pytest

from retrieval import flora
from retrieval.flora import traits
from retrieval.flora import tokenize, triple
from retrieval.flora.traits.clauses import (
    drop_parentheticals,
    head_index,
    pairs_of,
    read_head,
    split_clauses,
    split_segments,
)
from retrieval.flora.traits.measures import (
    dimension,
    identifies_rather_than_counts,
    measured_characters,
    parse_range,
    plausible_count,
)
from retrieval.flora.traits.reader import Reader
from retrieval.flora.traits.states import (
    StateReader,
    by_character,
    fits,
    joined,
    last_and_split,
)
from retrieval.flora.traits.tokens import (
    Token,
    compound_tokens,
    numeric_tokens,
    split_sentences,
)
from retrieval.flora.traits.words import articles, conjunctions, with_words
from retrieval.flora import vocabulary


def tokens(text: str, lang: str = "en") -> list[Token]:
    return tokenize(text, 0, len(text), lang, False, vocabulary())


def kinds(items: list[Token]) -> list[tuple[str, str]]:
    return [(t.kind, t.value) for t in items]


# ---------------------------------------------------------------------------- the package's public names


def test_package_exports_what_flora_exports() -> None:
    for name in ("extract_traits", "split_sentences", "triple", "plausible_count"):
        assert getattr(flora, name) is getattr(traits, name)
    for name in traits.__all__:
        assert getattr(traits, name) is not None


# ---------------------------------------------------------------------------- tokens


def test_sentences_do_not_end_at_abbreviations_or_initials() -> None:
    text = "Leaves c. 3 cm, diam. 2 mm (A. calamus). Flowers white."
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == ["Leaves c. 3 cm, diam. 2 mm (A. calamus).", "Flowers white."]


def test_tokens_point_back_at_their_text() -> None:
    text = "Leaves 3-5 cm long, margin serrate; petals white."
    items = tokens(text)
    assert kinds(items) == [("organ", "leaf"), ("measure", "3-5 cm long"), ("punct", ","), ("position", "margin"),
                            ("state", "serrate"), ("punct", ";"), ("organ", "petal"), ("state", "white"), ("punct", ".")]
    assert all(text[t.start:t.end] == t.text for t in items)
    measure = items[1]
    assert measure.data == {"a": (3.0, 5.0), "b": None, "unit": "cm", "dim": "long", "upto": False}


def test_numeric_tokens_tell_counts_from_identifiers() -> None:
    text = "Seeds 1000-1200; Brass 13301; fig. 3; 2n = 24; 3-5-flowered; ratio 1/2; up to 12 x 3 cm"
    found = {(t.kind, t.text) for t in numeric_tokens(text, 0, len(text))}
    assert found == {("count", "1000-1200"), ("chromosome", "2n = 24"), ("suffix", "3-5-flowered"),
                     ("measure", "up to 12 x 3 cm")}
    measure = next(t for t in numeric_tokens(text, 0, len(text)) if t.kind == "measure")
    assert measure.data["upto"] is True and measure.data["b"] == (3.0, 3.0)


def test_numeric_tokens_are_offsets_into_the_whole_text() -> None:
    text = "Flowers white. Petals 5."
    start = text.index("Petals")
    (count,) = numeric_tokens(text, start, len(text))
    assert (count.kind, text[count.start:count.end]) == ("count", "5")


def test_compounds_are_read_part_by_part() -> None:
    voc = vocabulary()
    (shape,) = compound_tokens((0, 14, "obovate-oblong"), "en", False, voc)
    assert (shape.kind, shape.character, shape.data["terms"]) == ("state", "shape", ["obovate", "oblong"])
    (colour,) = compound_tokens((0, 14, "brun-rougeâtre"), "fr", False, voc)
    assert (colour.character, colour.data["terms"]) == ("colour", ["brown", "reddish"])
    (word,) = compound_tokens((0, 9, "foo-bar"), "en", False, voc)
    assert (word.kind, word.value) == ("word", "foo-bar")


# ---------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("text", "expected"), [
    ("3-5", (3.0, 5.0)), ("(0.7-)1-2(-2.5)", (1.0, 2.0)), ("2,5", (2.5, 2.5)), ("(3-)", (3.0, 3.0)), ("", None), ("-", None),
])
def test_parse_range_keeps_extremes_in_parentheses_out(text: str, expected: tuple[float, float] | None) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize(("before", "after", "identifier"), [
    ("Brass ", "", True), ("fig. ", "", True), ("Holotype: ", "", True), ("ratio ", "/2", True), ("pairs of ", "", True),
    ("Leaves ", "", False), ("Petals ", "", False), ("stamens ", " ", False),
])
def test_numbers_that_identify_rather_than_count(before: str, after: str, identifier: bool) -> None:
    assert identifies_rather_than_counts(before, after) is identifier


def test_plausible_count_needs_an_organ_and_a_plant_sized_number() -> None:
    assert plausible_count("petal", 4, 5) and plausible_count("seed", 1000, 2000) and plausible_count("seed", None, 3)
    assert not plausible_count(None, 4, 5) and not plausible_count("plant", 4, 5)
    assert not plausible_count("seed", 1000, 2001) and not plausible_count("seed", -1, 3)


def test_measurements_become_characters_in_millimetres() -> None:
    assert dimension("de large") == "width" and dimension("in diam") == "diameter" and dimension("") == ""
    by = {"a": (10.0, 30.0), "b": (3.0, 12.0), "unit": "cm", "dim": ""}
    assert measured_characters(by, "leaf") == [("length", 100.0, 300.0), ("width", 30.0, 120.0)]
    assert measured_characters(by, "plant")[0] == ("height", 100.0, 300.0)
    tall = {"a": (4.0, 25.0), "b": None, "unit": "m", "dim": "tall"}
    assert measured_characters(tall, "plant") == [("height", 4000.0, 25000.0)]
    assert measured_characters({"a": (2.0, 2.0), "b": None, "unit": "µm", "dim": "long"}, "pollen") == [("length", 0.002, 0.002)]


# ---------------------------------------------------------------------------- clauses and heads


def test_clauses_and_segments_split_on_their_punctuation() -> None:
    items = drop_parentheticals(tokens("Calyx tube (when dry) 5 mm; lobes 5, ovate: apex acute c. 3"))
    assert ("degree", "when dry") not in kinds(items) and not any(t.value in "()" for t in items if t.kind == "punct")
    clauses = split_clauses(items)
    assert [[t.text for t in c] for c in clauses] == [["Calyx", "tube", "5 mm"], ["lobes", "5", ",", "ovate"],
                                                      ["apex", "acute", "c", "3"]]
    assert [[t.text for t in s] for s in split_segments(clauses[1])] == [["lobes", "5"], ["ovate"]]


def test_unbalanced_brackets_are_dropped_but_their_words_kept() -> None:
    items = drop_parentheticals(tokens("Leaves glabrous) ovate ( ciliate"))
    assert [t.text for t in items] == ["Leaves", "glabrous", "ovate", "ciliate"]


def test_head_skips_articles_and_qualifiers_but_not_qualifying_states() -> None:
    en = articles("en")
    assert head_index(tokens("the young leaves glabrous"), en) == 2
    assert head_index(tokens("terminal and lateral cymes"), en) == 3  # qualifiers of the cymes
    assert head_index(tokens("terminal and lateral"), en) == 0  # here they are its states
    assert head_index(tokens("several 5 petals"), en) == 1  # the count is read with its organ


def test_pairs_of_moves_the_organ_before_its_count() -> None:
    seg = tokens("with 15-17 parallel pairs of lateral veins")
    assert [t.text for t in pairs_of(seg)] == ["with", "lateral veins", "15-17", "parallel"]
    unchanged = tokens("with lateral veins")
    assert pairs_of(unchanged) == unchanged


@pytest.mark.parametrize(("text", "organs", "position", "next_text"), [
    ("Calyx tube 5 mm", ["calyx tube"], None, "5 mm"),
    ("Sepals and petals white", ["sepal", "petal"], None, "white"),
    ("apex of leaflets acute", ["leaflet"], "apex", "acute"),
    ("bark of older stems grey", ["bark"], None, "grey"),
])
def test_read_head_names_the_organs_and_position(text: str, organs: list[str], position: str | None, next_text: str) -> None:
    reader = Reader(text, "en", False)
    seg = tokens(text)
    ctx: dict[str, Any] = {"organ": None, "organ_span": None}
    i, organs_here, pos = read_head(reader, seg, 0, (0, len(text)), ctx)
    assert [o for o, _ in organs_here] == organs and pos == position and seg[i].text == next_text
    assert all(text[s:e].lower().startswith(o.split()[0][:4]) for o, (s, e) in organs_here)


# ---------------------------------------------------------------------------- states


def read_states(text: str, organ: str | None, start: int = 0) -> tuple[list[tuple[str, str, str]], dict, dict]:
    reader = Reader(text, "en", False)
    ctx: dict[str, Any] = {"organ": organ, "organ_span": None}
    sentence_state: dict[str, Any] = {"sentence_organ": None, "organ_span": None}
    StateReader(reader, tokens(text), [(organ, None)], None, (0, len(text)), ctx, sentence_state).read(start)
    return [triple(t) for t in reader.traits], ctx, sentence_state


def test_a_run_of_one_character_is_one_trait_and_modifiers_open_runs() -> None:
    got, _, _ = read_states("usually elliptic to obovate, coriaceous 3-5 cm long", "leaf")
    assert got == [("leaf", "shape", "usually elliptic to obovate"), ("leaf", "texture", "coriaceous"),
                   ("leaf", "length", "3-5 cm long")]


def test_attributive_states_belong_to_the_organ_after_them() -> None:
    got, ctx, _ = read_states("opposite serrate leaves", None)
    assert got == [("leaf", "arrangement", "opposite"), ("leaf", "margin", "serrate")] and ctx["organ"] == "leaf"
    got, _, _ = read_states("corolla pentagonal and ovoid fruits", "corolla", start=1)
    assert got == [("corolla", "shape", "pentagonal"), ("fruit", "shape", "ovoid")]


def test_introduced_organs_record_presence_and_keep_the_owner() -> None:
    got, ctx, _ = read_states("without stipules", "leaf")
    assert got == [("stipule", "presence", "absent")] and ctx["before_with"] == ("leaf", None)
    got, _, _ = read_states("glabrous or not", "twig")
    assert got == [("twig", "pubescence", "sometimes glabrous")]


def test_habit_words_describe_the_plant_and_suffixes_name_their_character() -> None:
    got, ctx, sentence_state = read_states("shrub or small tree", None)
    assert got == [("plant", "habit", "shrub or small tree")]
    assert ctx["organ"] == "plant" and sentence_state["sentence_organ"] == "plant"
    assert read_states("5-merous", "flower")[0] == [("flower", "merosity", "5-merous")]
    assert read_states("white but pink", "petal")[0] == [("petal", "colour", "white"), ("petal", "colour", "pink")]


def test_state_helpers() -> None:
    assert fits("margin", "margin") and not fits("margin", "length") and fits("beneath", "length") and not fits(None, "shape")
    seg = tokens("white or very pink")
    assert joined(seg, 3) and not joined(seg, 0)
    seg = tokens("pentagonal and ovoid")
    run = [t for t in seg if t.kind == "state"]
    assert last_and_split(seg, run) == 1 and last_and_split(seg, run[:1]) == 0
    groups = by_character(tokens("elliptic obovate coriaceous"))
    assert [[t.value for t in g] for g in groups] == [["elliptic", "obovate"], ["coriaceous"]]


def test_language_function_words() -> None:
    assert "a" in articles("en") and "a" not in articles("fr")
    assert "a" in conjunctions("fr") and "a" in with_words("fr") and "a" not in with_words("en")
