"""The per-turn router: each kind of question goes to the right route with the right filters."""

from __future__ import annotations

import pandas as pd
import pytest

from assistant.router import clean_query, extract_filters, language, route_turn
from assistant.vocab import Vocabulary
from retrieval.errors import BadInput

TABLE = pd.DataFrame({
    "scientificName": ["Geranium maculatum L.", "Anemone canadensis L.", "Coffea arabica L.", "Iris pseudacorus L.",
                       "Psychotria ankasensis J.B.Hall", "Acorus calamus L. var. angustifolius Schott"],
    "genus": ["Geranium", "Anemone", "Coffea", "Iris", "Psychotria", "Acorus"],
    "family": ["Geraniaceae", "Ranunculaceae", "Rubiaceae", "Iridaceae", "Rubiaceae", "Acoraceae"],
    "country": ["United States", "United States", "Gabon", "France", "Gabon", "France"],
    "institutionCode": ["HUH", "HUH", "P", "P", "MPU", "P"],
})
VOCAB = Vocabulary.from_table(TABLE, described=["Solanum nigrum L.", "Geranium maculatum"])
STATE = {"last": {"tool": "search_specimens", "args": {"query": "x"}, "said": {}, "k": 8}, "specimens": [3, 1, 2]}


def plan(text: str, *, image: bool = False, state: dict | None = None):
    return route_turn(text, has_image=image, state=state, vocab=VOCAB)


@pytest.mark.parametrize("text, taxon, kind, organ", [
    ("How do the leaves of Geranium maculatum look?", "Geranium maculatum", "species", "leaves"),
    ("how do the leaves of *geranium maculatum* look", "Geranium maculatum", "species", "leaves"),
    ("What do the flowers of _Anemone canadensis_ look like?", "Anemone canadensis", "species", "flowers"),
    ("Tell me about **Coffea arabica**", "Coffea arabica", "species", None),
    ("Describe Solanum nigrum", "Solanum nigrum", "described", None),
    ("Comment sont les feuilles de Coffea arabica ?", "Coffea arabica", "species", "leaves"),
    ("how does Quercus robur look?", "Quercus robur", "unknown", None),
    ("*Quercus robur* fruits", "Quercus robur", "unknown", "fruits"),
    ("Acorus calamus var. angustifolius", "Acorus calamus var. angustifolius", "species", None),
    ("Iris with yellow flowers", "Iris", "genus", "flowers"),
])
def test_taxon_questions(text: str, taxon: str, kind: str, organ: str | None) -> None:
    p = plan(text)
    assert (p.route, p.taxon, p.taxon_kind, p.organ) == ("taxon", taxon, kind, organ)


def test_lowercase_genus_in_prose_is_not_a_taxon() -> None:
    # "iris" lowercase in a morphology question stays a description search
    p = plan("flowers with a blue iris-like pattern")
    assert p.route == "morphology" and p.taxon is None


@pytest.mark.parametrize("text, query, filters", [
    ("opposite serrate leaves with white flowers", "opposite serrate leaves with white flowers", {}),
    ("Rubiaceae with opposite leaves from Gabon before 1950", "opposite leaves",
     {"family": ["Rubiaceae"], "country": ["Gabon"], "year": (None, 1949)}),
    ("Show me specimens with hairy stems collected between 1900 and 1950", "hairy stems", {"year": (1900, 1950)}),
    ("feuilles opposées du Gabon", "feuilles opposées", {"country": ["Gabon"]}),
    ("palmate leaves held at MPU", "palmate leaves", {"institutionCode": ["MPU"]}),
])
def test_morphology_questions_and_their_filters(text: str, query: str, filters: dict) -> None:
    p = plan(text)
    assert (p.route, p.query, p.filters) == ("morphology", query, filters)


def test_filter_only_question_browses() -> None:
    p = plan("specimens from France after 1900")
    assert p.route == "search" and p.query == "" and p.filters == {"country": ["France"], "year": (1901, None)}
    p = plan("sheets at P from the 1920s")
    assert p.filters == {"institutionCode": ["P"], "year": (1920, 1929)}


def test_short_institution_codes_need_a_cue() -> None:
    assert "institutionCode" not in plan("P is for petals: round petals").filters
    assert plan("round petals at P").filters == {"institutionCode": ["P"]}


def test_countries_only_when_the_collection_has_them() -> None:
    assert plan("opposite leaves from Gabon").filters == {"country": ["Gabon"]}
    p = plan("opposite leaves from Peru")
    assert p.filters == {} and "Peru" in p.query


@pytest.mark.parametrize("text, rank", [("", "species"), ("what is this?", "species"), ("what family is this?", "family"),
                                        ("which genus?", "genus"), ("quelle famille ?", "family"), ("identify", "species")])
def test_image_alone(text: str, rank: str) -> None:
    p = plan(text, image=True)
    assert (p.route, p.identify, p.filters) == ("image", rank, {})


def test_image_with_a_question() -> None:
    p = plan("similar ones from Gabon?", image=True)
    assert (p.route, p.filters, p.query, p.identify) == ("image_question", {"country": ["Gabon"]}, "", None)
    p = plan("which species is this, among Rubiaceae?", image=True)
    assert p.route == "image_question" and p.filters == {"family": ["Rubiaceae"]} and p.identify == "species"
    p = plan("ones with hairy stems in France", image=True)
    assert p.route == "image_question" and p.query == "hairy stems" and p.filters == {"country": ["France"]}


@pytest.mark.parametrize("text, action, extra", [
    ("only Rubiaceae", "refine", {"filters": {"family": ["Rubiaceae"]}}),
    ("just the ones from Gabon", "refine", {"filters": {"country": ["Gabon"]}}),
    ("what about France?", "refine", {"filters": {"country": ["France"]}}),
    ("seulement les Rubiaceae", "refine", {"filters": {"family": ["Rubiaceae"]}}),
    ("only Geranium", "refine", {"filters": {"genus": ["Geranium"]}}),
    ("only Coffea arabica", "refine", {"filters": {"scientificName": ["Coffea arabica L."]}}),
    ("before 1900", "refine", {"filters": {"year": (None, 1899)}}),
    ("more like the second one", "like", {"like_rank": 2}),
    ("show me more like the 3rd", "like", {"like_rank": 3}),
    ("similar to number 4", "like", {"like_rank": 4}),
    ("more like the last one", "like", {"like_rank": -1}),
    ("plus comme le deuxième", "like", {"like_rank": 2}),
    ("more like this one", "like", {"like_rank": 1}),
    ("more like HUH 102822", "like", {"like_catalog": "HUH 102822"}),
    ("show more", "more", {}),
    ("remove the filters", "clear", {}),
    ("all countries", "clear", {}),
])
def test_followups(text: str, action: str, extra: dict) -> None:
    p = plan(text, state=STATE)
    assert p.route == "followup" and p.action == action
    for key, value in extra.items():
        assert getattr(p, key) == value


def test_followup_words_without_earlier_results_start_a_new_search() -> None:
    p = plan("only Rubiaceae")
    assert p.route == "search" and p.filters == {"family": ["Rubiaceae"]}
    # a fresh question after results is not mistaken for a follow-up
    assert plan("How do the leaves of Geranium maculatum look?", state=STATE).route == "taxon"
    assert plan("opposite serrate leaves", state=STATE).route == "morphology"
    # ... but one that can only point back stays a follow-up, for the agent to say there is nothing to point at
    assert (plan("more like the second one").route, plan("show more").action) == ("followup", "more")


def test_help_and_bad_input() -> None:
    assert plan("hello").route == "help"
    assert plan("Bonjour !").route == "help"
    with pytest.raises(BadInput, match="empty question"):
        plan("   ")
    with pytest.raises(BadInput, match="under 2000"):
        plan("leaves " * 400)
    with pytest.raises(BadInput, match="anything to search"):
        plan("show me some specimens please")


def test_language_and_helpers() -> None:
    assert language("Comment sont les feuilles de Coffea ?") == "fr"
    assert language("How do the leaves of Coffea look?") == "en"
    assert clean_query("Show me specimens with opposite leaves?") == "opposite leaves"
    filters, spans = extract_filters("collected in 1923 in Gabon", VOCAB)
    assert filters == {"country": ["Gabon"], "year": (1923, 1923)} and len(spans) == 2
    assert extract_filters("between 1950 and 1900", VOCAB)[0] == {}  # a backwards range is not a filter


def test_router_is_deterministic() -> None:
    texts = ["only Rubiaceae", "opposite leaves from Gabon", "How do the leaves of Geranium maculatum look?"]
    assert [plan(t, state=STATE) for t in texts] == [plan(t, state=STATE) for t in texts]


def test_control_and_invisible_characters_are_removed_before_routing() -> None:
    """NUL, bidi overrides, zero-width and decomposed accents: the router reads the text they hide."""
    p = plan("opposite\x00 serrate\u202e leaves\u200b from France")
    assert (p.route, p.query, p.filters) == ("morphology", "opposite serrate leaves", {"country": ["France"]})
    assert plan("Comment sont les feuilles de Coffea arabica\u200f ?").taxon == "Coffea arabica"
    assert plan("feuilles oppose\u0301es").query == "feuilles opposées"  # NFC: one token, as typed precomposed
    with pytest.raises(BadInput, match="empty question"):
        plan("\x00\u202e\ufeff\x1b")
    with pytest.raises(BadInput, match="under 2000"):
        plan("\ud800 leaves " * 15_000)


@pytest.mark.parametrize("text, ident", [
    ("Show me HUH 17348", "HUH 17348"), ("HUH 17348", "HUH 17348"), ("specimen 17348", "17348"),
    ("open catalog number 102822", "102822"), ("MNHN-P-P00712", "MNHN-P-P00712"),
    ("urn:catalog:HUH:A:17348", "urn:catalog:HUH:A:17348"),
])
def test_a_catalog_number_or_occurrence_id_is_a_lookup(text: str, ident: str) -> None:
    p = plan(text)
    assert p.route == "specimen" and p.catalog == ident


@pytest.mark.parametrize("text", ["before 1900", "show me 1923", "opposite leaves", "more like 102822"])
def test_years_features_and_similarity_are_not_lookups(text: str) -> None:
    assert plan(text, state=STATE).route != "specimen"


def test_collector_year_and_locality() -> None:
    p = plan("specimens collected by Fernald before 1950")
    assert (p.route, p.collector, p.filters) == ("search", "Fernald", {"year": (None, 1949)})
    p = plan("collected by M. L. Fernald in the 1930s")
    assert p.collector == "M. L. Fernald" and p.filters == {"year": (1930, 1939)}
    p = plan("Geranium collected at Mount Desert Island")
    assert p.locality == "Mount Desert Island" and p.filters == {"genus": ["Geranium"]} and p.query == ""
    p = plan("hairy leaves from France collected by Jordan")
    assert (p.route, p.query, p.collector, p.filters) == ("morphology", "hairy leaves", "Jordan", {"country": ["France"]})


def test_did_you_mean_for_misspelt_taxa_and_filter_values() -> None:
    with pytest.raises(BadInput, match="did you mean Geraniaceae"):
        plan("only Geraniacae", state=STATE)
    p = plan("describe Geranium maculatun")
    assert p.route == "taxon" and p.taxon == "Geranium maculatun" and p.suggestion == "Geranium maculatum"
    assert plan("describe Geranium maculatum").suggestion is None
    p = plan("hairy leaves from Frnace")
    assert p.route == "morphology" and p.suggestion == "France"
    assert plan("hairy leaves from France").suggestion is None


def test_a_follow_up_on_a_field_the_collection_lacks_says_so() -> None:
    bare = Vocabulary.from_table(TABLE.drop(columns=["family"]))
    with pytest.raises(BadInput, match="records no family"):
        route_turn("only Geraniaceae", state=STATE, vocab=bare)
