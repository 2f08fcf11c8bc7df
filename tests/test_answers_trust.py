"""Answers a botanist can trust: lookups by catalog number, collectors, a relevance floor, words instead of raw
similarities, one trait description, the test-encoder notice, and where each quote comes from."""

from __future__ import annotations


import pytest

from assistant.agent import HerbariaAssistant
from assistant.composer import Evidence, compose, likely_taxa, relevance
from retrieval.collections import SpecimenTable
from retrieval.errors import BadInput
from test_agent import _run, make_collection


@pytest.fixture(scope="module")
def assistant(tmp_path_factory: pytest.TempPathFactory) -> HerbariaAssistant:
    return HerbariaAssistant(make_collection(tmp_path_factory.mktemp("trust")))


def test_a_catalog_number_opens_that_specimen(assistant: HerbariaAssistant) -> None:
    sid = assistant.res.find_catalog("1021")
    record = assistant.res.record(sid)
    for text in (f"Show me {record['institutionCode']} 1021", "specimen 1021", f"{record['institutionCode']}-1021"):
        _, r = _run(assistant, text)
        assert r.route == "specimen" and [s["specimen_id"] for s in r.specimens] == [sid], text
        assert r.text.startswith(f"[{record['institutionCode']} 1021] *Geranium maculatum") and "Country:" in r.text
    with pytest.raises(BadInput, match="no specimen with catalog number"):
        assistant.ask("Show me HUH 999999")
    _, like = _run(assistant, "more like this one", state=r.state)  # the looked-up sheet seeds a follow-up
    assert like.route == "followup" and sid not in [s["specimen_id"] for s in like.specimens]


def test_a_collector_the_collection_does_not_record_is_said(assistant: HerbariaAssistant) -> None:
    _, r = _run(assistant, "specimens collected by Fernald before 1950")
    assert r.route == "search" and r.specimens == []
    assert "records no collector (recordedBy), so 'Fernald' cannot be matched" in r.text


def test_collector_filter_matches_part_of_recorded_by(assistant: HerbariaAssistant, monkeypatch: pytest.MonkeyPatch) -> None:
    table = assistant.res.table.to_pandas()
    table["recordedBy"] = ["M. L. Fernald" if i % 3 == 0 else "A. Gray" for i in range(len(table))]
    served = SpecimenTable.from_pandas(table)
    monkeypatch.setattr(type(assistant.res), "table", property(lambda self: served))
    _, r = _run(assistant, "specimens collected by Fernald")
    fernald = set(table.loc[table["recordedBy"] == "M. L. Fernald", "specimen_id"])
    assert r.specimens and {s["specimen_id"] for s in r.specimens} <= fernald


def test_nothing_below_the_floor_is_shown(assistant: HerbariaAssistant, monkeypatch: pytest.MonkeyPatch) -> None:
    # Image-text similarity is the only relevance here (no flora description links a sheet to the query).
    monkeypatch.setattr(assistant.res, "floors", {"text": 1.5, "image": 1.5})
    monkeypatch.setattr(assistant.res, "search_descriptions", lambda *a, **k: [])
    _, r = _run(assistant, "opposite serrate leaves")
    assert r.specimens == [] and "Nothing in the collection is close enough to show" in r.text


def test_scores_read_as_words_in_one_order(assistant: HerbariaAssistant) -> None:
    _, r = _run(assistant, "opposite leaves")
    scores = [s["score"] for s in r.specimens]
    assert scores == sorted(scores, reverse=True)
    assert "similarity" not in r.text and all(s["relevance"] in ("very close", "close", "loosely similar")
                                              for s in r.specimens)
    words = [relevance(x / 100, "text") for x in range(-20, 60)]
    order = ["loosely similar", "close", "very close"]
    assert [order.index(w) for w in words] == sorted(order.index(w) for w in words)  # monotonic
    assert relevance(0.95, "image") == "very close" and relevance(0.3, "image") == "loosely similar"


def test_a_test_encoder_is_announced(assistant: HerbariaAssistant) -> None:
    _, r = _run(assistant, "opposite leaves")
    assert r.notices and "tiny-test" in r.notices[0] and "random weights" in r.notices[0]
    assert assistant.info()["notices"] == r.notices and r.to_dict()["notices"] == r.notices


def test_one_likely_taxa_list_combines_votes_and_zero_shot() -> None:
    voted = [{"name": "Viola alba", "count": 6, "of": 8}, {"name": "Viola hirta", "count": 2, "of": 8}]
    zero_shot = [{"kind": "identification", "taxon": "Viola hirta", "score": 0.7, "rank": "species"},
                 {"kind": "identification", "taxon": "Viola alba", "score": 0.2, "rank": "species"}]
    likely = likely_taxa(voted, zero_shot)
    assert [t["taxon"] for t in likely] == ["Viola alba", "Viola hirta"]
    assert likely[0]["score"] == pytest.approx((0.75 + 0.2) / 2)
    text = compose(Evidence(route="image", basis="image", taxa=zero_shot,
                            caption={"text": "Leaves opposite (6/8).\nCandidate taxa: Viola alba (6/8).",
                                     "lines": ["Leaves opposite (6/8)."], "taxa": voted, "k": 8}))
    assert text.count("Likely") == 1 and "Candidate taxa" not in text and "zero-shot" in text
    assert "mean of the share of similar specimens and the zero-shot" in text


def test_long_text_is_never_cut_mid_word() -> None:
    from assistant.composer import _safe

    cut = _safe("Hemerocallis fulva " * 40, 100)
    assert cut.endswith("…") and cut[:-1].split()[-1] in ("Hemerocallis", "fulva")


def test_quotes_say_where_they_come_from(assistant: HerbariaAssistant) -> None:
    _, r = _run(assistant, "opposite leaves")
    described = [t for t in r.taxa if t["kind"] == "description"]
    assert described and all(t["provenance"]["source"] == "Test flora" for t in described)
    assert "” — Test flora" in r.text or "— Test flora" in r.text
    hit = {"kind": "taxon", "taxon": "Psychotria ankasensis", "evidence": ["Leaves opposite."], "specimen_ids": [],
           "provenance": {"source": "Flora Malesiana", "dataset": "Series I, Volume 16", "page": "123",
                          "licence": "CC BY 4.0", "url": "https://example.org/fm/16#123"}}
    text = compose(Evidence(route="taxon", taxon="Psychotria ankasensis", basis="taxon", taxa=[hit]))
    assert "— Flora Malesiana, Series I, Volume 16, p. 123; licence CC BY 4.0; source link in the taxa panel:" in text
    assert "example.org" not in text  # answers carry no links: the page shows the hit's own


def test_did_you_mean_in_the_chat(assistant: HerbariaAssistant) -> None:
    _, r = _run(assistant, "hairy leaves from Frnace")
    assert "did you mean France?" in r.text
    with pytest.raises(BadInput, match="did you mean Geraniaceae"):
        assistant.ask("only Geraniacae", state=r.state)
    _, taxon = _run(assistant, "describe Geranium maculatun")
    assert "did you mean Geranium maculatum?" in taxon.text


def test_an_occurrence_id_and_an_ambiguous_number(assistant: HerbariaAssistant, monkeypatch: pytest.MonkeyPatch) -> None:
    table = assistant.res.table.to_pandas()
    sid = int(table["specimen_id"].iloc[0])
    table["occurrenceID"] = ""
    table.loc[table["specimen_id"] == sid, "occurrenceID"] = "urn:catalog:HUH:A:777"
    other = int(table["specimen_id"].iloc[1])
    table.loc[table["specimen_id"] == other, "catalogNumber"] = str(table["catalogNumber"].iloc[2])
    table.loc[table["specimen_id"] == other, "institutionCode"] = "ZZ"
    served = SpecimenTable.from_pandas(table)
    monkeypatch.setattr(type(assistant.res), "table", property(lambda self: served))
    assert assistant.res.find_specimens("urn:catalog:HUH:A:777") == [sid]
    with pytest.raises(BadInput, match="say which"):
        assistant.ask(f"specimen {table['catalogNumber'].iloc[2]}")
    assert assistant.res.find_specimens(f"ZZ {table['catalogNumber'].iloc[2]}") == [other]


def test_sheets_linked_by_name_are_not_dropped_by_the_image_floor(assistant: HerbariaAssistant,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The floor judges image-text similarity; a taxon's own sheets (or those a description is linked to by name)
    # are relevant by their name, so an untrained-looking similarity must not hide them.
    monkeypatch.setattr(assistant.res, "floors", {"text": 1.5, "image": 1.5})
    taxon_ids = set(assistant.res.taxon_ids("Geranium maculatum"))
    assert taxon_ids
    _, r = _run(assistant, "how do the leaves of Geranium maculatum look?")
    assert r.specimens and {s["specimen_id"] for s in r.specimens} <= taxon_ids
    hits = assistant.res.search_descriptions("leaves palmately lobed", k=5)
    linked = [h for h in hits if h.get("specimen_ids")]
    assert linked and all(h["specimens"] for h in linked)


def test_the_about_panel_counts_what_the_assistant_loaded(assistant: HerbariaAssistant) -> None:
    # The app reuses the assistant's linked description index; its coverage is the one read from disk.
    from demo.app import description_summary

    folder = assistant.res.collection.path
    from_disk, reused = description_summary(folder), description_summary(folder, assistant.res.descriptions)
    assert from_disk is not None and from_disk["linked_specimens"] > 0 and from_disk["sources"]
    assert reused == from_disk
