"""The assistant end to end on a small generated collection (real ingest, real index, tiny-test encoder)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from PIL import Image, ImageDraw

from assistant.agent import HerbariaAssistant, TurnResult
from herbaria.cli import main
from assistant.composer import cited_ids, ungrounded
from assistant.retrievers import SpecimenImageRetriever, SpecimenTextRetriever
from retrieval.errors import BadInput, ImageError
from retrieval.vectors import build_index
from retrieval.collections import ingest

TAXA = [("Coffea arabica L.", "Rubiaceae", "Gabon", "P"),
        ("Psychotria ankasensis J.B.Hall", "Rubiaceae", "Gabon", "P"),
        ("Geranium maculatum L.", "Geraniaceae", "United States", "HUH"),
        ("Geranium robertianum L.", "Geraniaceae", "France", "P"),
        ("Anemone canadensis L.", "Ranunculaceae", "United States", "HUH"),
        ("Anemone nemorosa L.", "Ranunculaceae", "France", "HUH")]


DESCRIPTIONS = {
    "Coffea arabica L.": "Shrub or small tree. Leaves opposite, elliptic, glabrous, margin entire; stipules interpetiolar. "
                         "Flowers white, fragrant, in axillary clusters. Fruit a red drupe.",
    "Psychotria ankasensis J.B.Hall": "Shrub. Leaves opposite, lanceolate, margin entire. Inflorescence terminal. "
                                      "Fruit a drupe.",
    "Geranium maculatum L.": "Perennial herb. Leaves palmately 5-7-lobed, margin serrate, hairy. Flowers pink-purple, "
                             "petals 5. Fruit a beaked capsule.",
    "Geranium robertianum L.": "Annual herb with a strong smell. Leaves pinnately divided, hairy. Flowers pink, small.",
    "Anemone canadensis L.": "Perennial herb. Leaves palmately divided, lobes toothed. Flowers white, petals absent.",
    "Anemone nemorosa L.": "Perennial herb with a creeping rhizome. Leaves three-parted, margin serrate. Flowers solitary.",
    "Quercus robur L.": "Tree. Leaves alternate, lobed, glabrous. Fruit an acorn.",  # described, but no specimen
}


def add_descriptions(collection: Path) -> None:
    """A small flora (one description per taxon) indexed with the tiny-test text encoder."""
    from retrieval.flora.readers import read_csv_descriptions
    from retrieval.flora import DescriptionIndex

    table = collection.parent / "flora.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["taxon", "text", "source"])
        writer.writerows([(name, text, "Test flora") for name, text in DESCRIPTIONS.items()])
    index = DescriptionIndex.build(read_csv_descriptions(table), text_model="tiny-test", progress=False)
    index.save(collection / "descriptions")


def make_collection(root: Path) -> Path:
    """24 drawn sheets (4 per taxon), ingested and indexed with the tiny-test encoder."""
    src = root / "src"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for t, (name, family, country, institution) in enumerate(TAXA):
        for j in range(4):
            image = Image.new("RGB", (96, 128), tuple(int(c) for c in rng.integers(150, 255, 3)))
            draw = ImageDraw.Draw(image)
            for _ in range(6):
                x, y = rng.integers(0, 90, 2)
                draw.ellipse([x, y, x + 10 + 5 * t, y + 8 + 3 * j], fill=tuple(int(c) for c in rng.integers(0, 120, 3)))
            image.save(src / f"s{t}_{j}.png")
            rows.append({"file": f"s{t}_{j}.png", "scientificName": name, "family": family, "country": country,
                         "institutionCode": institution, "catalogNumber": str(1000 + 10 * t + j),
                         "eventDate": f"{1900 + 20 * j + t}-05-01", "references": f"https://example.org/{1000 + 10 * t + j}"})
    with open(src / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = root / "collection"
    ingest(src, out, progress=False)
    build_index(out, model="tiny-test", progress=False)
    add_descriptions(out)
    return out


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_collection(tmp_path_factory.mktemp("agent"))


@pytest.fixture(scope="module")
def assistant(collection: Path) -> HerbariaAssistant:
    return HerbariaAssistant(collection)  # the default grounded captioner


def _run(assistant: HerbariaAssistant, text: str, image: Any = None, **kw: Any) -> tuple[list[str], TurnResult]:
    items = list(assistant.stream(text, image, **kw))
    *deltas, result = items
    assert isinstance(result, TurnResult) and all(isinstance(d, str) for d in deltas)
    assert "".join(deltas) == result.text
    assert ungrounded(result.text, result.specimens) == []
    json.dumps(result.to_dict())
    return deltas, result


def _specimen_of(assistant: HerbariaAssistant, catalog: str) -> tuple[int, Path]:
    sid = assistant.res.find_catalog(catalog)
    assert sid is not None
    return sid, assistant.res.collection.image_path(sid)


def test_text_turn_with_a_filter_in_the_question(assistant: HerbariaAssistant) -> None:
    deltas, r = _run(assistant, "opposite serrate leaves from Gabon")
    assert r.route == "morphology" and len(deltas) > 1
    assert len(r.specimens) == 8 and {s["country"] for s in r.specimens} == {"Gabon"}
    assert [s["rank"] for s in r.specimens] == list(range(1, 9))
    cited = cited_ids(r.text, r.specimens)
    assert set(cited) >= {s["specimen_id"] for s in r.specimens[:5]} and set(cited) <= set(r.state["specimens"])
    assert r.state["filters"] == {"country": ["Gabon"]} and r.state["specimens"] == [s["specimen_id"] for s in r.specimens]
    assert all(Path(s["image"]).is_file() for s in r.specimens)


def test_morphology_turn_quotes_the_matching_descriptions(assistant: HerbariaAssistant) -> None:
    _, r = _run(assistant, "opposite leaves")
    described = [t for t in r.taxa if t["kind"] == "description"]
    # both descriptions say "Leaves opposite": they tie, so only the set of the first two is asserted
    assert {t["taxon"] for t in described[:2]} == {"Coffea arabica", "Psychotria ankasensis"}
    assert "“Leaves opposite, elliptic, glabrous, margin entire; stipules interpetiolar.”" in r.text
    # the gallery holds specimens of the described taxa, in one order of closeness, and the answer cites them
    linked = [s for s in r.specimens if s["via"] == "description"]
    assert len(linked) >= 4 and "Rubiaceae" in {s["family"] for s in linked}
    scores = [s["score"] for s in r.specimens]
    assert scores == sorted(scores, reverse=True) and [s["rank"] for s in r.specimens] == list(range(1, 9))
    assert set(cited_ids(r.text, r.specimens)) >= {s["specimen_id"] for s in linked if s["rank"] <= 5}
    _, france = _run(assistant, "hairy leaves from France")
    assert {s["country"] for s in france.specimens} == {"France"}
    assert all(assistant.res.record(i)["country"] == "France" for t in france.taxa for i in t["specimen_ids"])


def test_taxon_turn_shows_only_that_taxon(assistant: HerbariaAssistant) -> None:
    _, r = _run(assistant, "How do the leaves of *Geranium maculatum* look?")
    assert r.route == "taxon" and len(r.specimens) == 4
    assert {s["scientificName"] for s in r.specimens} == {"Geranium maculatum L."}
    assert r.taxa[0]["kind"] == "taxon" and r.taxa[0]["taxon"] == "Geranium maculatum"
    # only the sentence about leaves is quoted, from the taxon's description
    assert r.taxa[0]["evidence"] == ["Leaves palmately 5-7-lobed, margin serrate, hairy."]
    assert r.text.startswith("Description of **Geranium maculatum** (leaves) — Test flora: "
                             "“Leaves palmately 5-7-lobed, margin serrate, hairy.”")
    _, flowers = _run(assistant, "Comment sont les fleurs de Anemone canadensis ?")
    assert flowers.taxa[0]["evidence"] == ["Flowers white, petals absent."] and flowers.text.startswith("Description de")
    _, genus = _run(assistant, "Describe Anemone")
    assert {s["scientificName"] for s in genus.specimens} == {"Anemone canadensis L.", "Anemone nemorosa L."}
    _, absent = _run(assistant, "how does Quercus robur look?")
    assert "holds no specimen named *Quercus robur*; the sheets below are only the nearest" in absent.text
    assert "“Leaves alternate, lobed, glabrous.”" in absent.text and absent.specimens


def test_image_turn_then_follow_ups(assistant: HerbariaAssistant, monkeypatch: pytest.MonkeyPatch) -> None:
    sid, path = _specimen_of(assistant, "1021")  # a Geranium maculatum sheet, uploaded as a photo
    encoder, passes = assistant.res.encoder, []
    original = encoder.image_features
    monkeypatch.setattr(encoder, "image_features", lambda pixels: passes.append(len(pixels)) or original(pixels))
    _, image = _run(assistant, "", str(path))
    assert passes == [1]  # one image pass, shared by search, identification and the captioner
    monkeypatch.undo()
    assert image.route == "image"
    assert image.specimens[0]["specimen_id"] == sid and image.specimens[0]["score"] > 0.999
    # the captioner saw the same neighbours, and read their taxa's descriptions
    assert image.caption and image.caption["captioner"] == "grounded" and image.caption["text"]
    assert image.caption["described_neighbours"] == 8 and image.caption["organs"]
    assert image.caption["neighbours"][0]["specimen_id"] == sid
    assert image.text.startswith("The captioner describes this sheet as (from the 8 similar specimens shown):\n- ")
    assert image.text.count("Leaves") <= 1 and "Candidate taxa" not in image.text  # described once, one taxa list
    assert [n["specimen_id"] for n in image.caption["neighbours"]] == [s["specimen_id"] for s in image.specimens]
    ident = [t for t in image.taxa if t["kind"] == "identification"]
    assert ident and ident[0]["rank"] == "species" and 0 < sum(t["score"] for t in ident) <= 1.0001
    assert len(image.state["last"]["vector"]) == assistant.res.encoder.dim

    _, hello = _run(assistant, "hello", state=image.state)  # a turn without a search keeps the conversation
    assert hello.state == json.loads(json.dumps(image.state))
    _, only = _run(assistant, "only Rubiaceae", state=hello.state)
    assert only.route == "followup" and len(only.specimens) == 8
    assert {s["family"] for s in only.specimens} == {"Rubiaceae"}
    # the refined search is the same image query, filtered inside the index
    expected = assistant.res.search(np.asarray(image.state["last"]["vector"]), k=8, filters={"family": "Rubiaceae"})
    assert [s["specimen_id"] for s in only.specimens] == [s["specimen_id"] for s in expected]

    second = only.specimens[1]["specimen_id"]
    _, like = _run(assistant, "more like the second one", state=only.state)
    assert like.route == "followup" and second not in [s["specimen_id"] for s in like.specimens]
    expected = assistant.res.search(assistant.res.specimen_vector(second), k=8, filters={"family": "Rubiaceae"}, exclude=second)
    assert [s["specimen_id"] for s in like.specimens] == [s["specimen_id"] for s in expected]
    assert "Specimens most like (P " in like.text

    _, cleared = _run(assistant, "remove the filters", state=like.state)
    assert {s["family"] for s in cleared.specimens} != {"Rubiaceae"}
    _, more = _run(assistant, "show more", state=cleared.state)
    assert len(more.specimens) == 16


def test_image_with_a_question_filters_by_country(assistant: HerbariaAssistant) -> None:
    _, path = _specimen_of(assistant, "1041")
    _, r = _run(assistant, "similar ones from France?", Image.open(path))
    assert r.route == "image_question" and r.specimens and {s["country"] for s in r.specimens} == {"France"}
    # the trait description is grounded on exactly the sheets the gallery shows (filtered), not on other neighbours
    assert [n["specimen_id"] for n in r.caption["neighbours"]] == [s["specimen_id"] for s in r.specimens]
    _, ui = _run(assistant, "", str(path), filters={"institution": "HUH", "year": (1900, 1930)})
    # image + words: the query is the image nudged by the text, and a follow-up re-runs exactly that
    _, nudged = _run(assistant, "ones with hairy leaves", str(path))
    _, refined = _run(assistant, "only Geraniaceae", state=nudged.state)
    image_vector = np.asarray(nudged.state["last"]["vector"], dtype=np.float32)
    query = image_vector + assistant.res.text_vector("hairy leaves")
    expected = assistant.res.search(query / np.linalg.norm(query), k=8, filters={"family": "Geraniaceae"})
    assert [s["specimen_id"] for s in refined.specimens] == [s["specimen_id"] for s in expected]
    assert all(s["institutionCode"] == "HUH" and 1900 <= s["year"] <= 1930 for s in ui.specimens)


def test_state_from_a_client_is_checked(assistant: HerbariaAssistant) -> None:
    _, first = _run(assistant, "opposite leaves")
    forged = json.loads(json.dumps(first.state))
    forged["last"]["tool"] = "caption_image"
    with pytest.raises(BadInput, match="no earlier results"):
        assistant.ask("more like the second one", state=forged)
    forged = json.loads(json.dumps(first.state))
    forged["last"]["args"]["image"] = "/etc/passwd"
    with pytest.raises(BadInput, match="no earlier results"):
        assistant.ask("show more", state=forged)
    with pytest.raises(BadInput, match="no result number 12"):
        assistant.ask("more like the 12th one", state=first.state)


def test_bad_inputs_are_clear(assistant: HerbariaAssistant, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        assistant.ask("", str(broken))
    with pytest.raises(BadInput, match="empty question"):
        assistant.ask("  ")
    with pytest.raises(BadInput, match="cannot filter on"):
        assistant.ask("leaves", filters={"colour": "red"})


def test_contract_helpers(assistant: HerbariaAssistant) -> None:
    info = assistant.info()
    assert info["collection"] == "collection" and info["specimens"] == 24 and info["encoder"] == "tiny-test"
    assert info["taxa_described"] == 7 and info["captioner"] == "grounded" and info["chat_model"] is None
    choices = assistant.filter_choices()
    assert choices["families"] == ["Geraniaceae", "Ranunculaceae", "Rubiaceae"] and choices["years"] == (1900, 1965)
    sid, path = _specimen_of(assistant, "1000")
    record = assistant.specimen(sid)
    assert record["citation"] == "[P 1000]" and record["image"] == str(path)
    assert record["references"] == "https://example.org/1000"
    assert record["family"] == "Rubiaceae" and record["year"] == 1900
    with pytest.raises(BadInput):
        assistant.specimen(9999)
    _, hello = _run(assistant, "hello")
    assert hello.route == "help" and "24 specimens" in hello.text and hello.specimens == []


def test_tools_give_text_to_models_and_images_to_the_ui(assistant: HerbariaAssistant, collection: Path) -> None:
    args = {"query": "lobed leaves", "family": ["Rubiaceae"], "k": 3}
    call = {"type": "tool_call", "id": "1", "name": "search_specimens", "args": args}
    message = assistant.tools["search_specimens"].invoke(call)
    assert str(collection) not in message.content and "[P 10" in message.content
    assert len(message.artifact["specimens"]) == 3 and all(Path(s["image"]).is_file() for s in message.artifact["specimens"])
    # nothing a model can fill in names a file, a vector or the run config
    for tool in assistant.tools.values():
        assert not {"image", "path", "vector", "config"} & set(tool.tool_call_schema.model_json_schema()["properties"])
    sid, _ = _specimen_of(assistant, "1040")
    caption = assistant.tools["caption_image"].invoke({**call, "name": "caption_image", "args": {"specimen_id": sid}})
    assert caption.artifact["neighbours"][0]["specimen_id"] == sid and caption.content.startswith("Caption of the image: ")
    with pytest.raises(BadInput, match="no image to describe"):
        assistant.tools["caption_image"].invoke({**call, "name": "caption_image", "args": {}})
    with pytest.raises(BadInput, match="specimen 9999 is not in the index"):
        assistant.tools["find_similar"].invoke({**call, "name": "find_similar", "args": {"specimen_id": 9999}})
    ranked = assistant.tools["identify"].invoke({**call, "name": "identify", "args": {"specimen_id": sid, "rank": "family"}})
    assert {h["taxon"] for h in ranked.artifact} <= {"Rubiaceae", "Geraniaceae", "Ranunculaceae"}
    described = assistant.tools["describe_taxon"].invoke({**call, "name": "describe_taxon",
                                                          "args": {"name": "Coffea arabica", "organ": "fruits"}})
    assert described.content == 'Description of Coffea arabica (fruits): "Fruit a red drupe."'
    assert len(described.artifact["specimen_ids"]) == 4
    docs = SpecimenTextRetriever(resources=assistant.res, k=2, filters={"country": "France"}).invoke("hairy stems")
    assert len(docs) == 2 and all(d.metadata["country"] == "France" for d in docs) and docs[0].page_content.startswith("[")
    _, path = _specimen_of(assistant, "1052")
    docs = SpecimenImageRetriever(resources=assistant.res, k=1).invoke(str(path))
    assert docs[0].metadata["catalogNumber"] == "1052"


class RecordingChatModel(GenericFakeChatModel):
    seen: list[list[BaseMessage]] = []

    def _stream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any):  # type: ignore[override]
        self.seen.append(list(messages))
        yield from super()._stream(messages, *args, **kwargs)


def test_chat_model_composes_from_the_tools_text(collection: Path, assistant: HerbariaAssistant) -> None:
    sid, _ = _specimen_of(assistant, "1001")
    model = RecordingChatModel(messages=iter([AIMessage(content="Coffee sheets such as [P 1001] and [ZZ 9] match.")]))
    chat = HerbariaAssistant(collection, captioner="none", chat_model=model)
    items = list(chat.stream("only Coffea arabica", filters={"family": "Rubiaceae"}))
    *deltas, result = items
    assert len(deltas) > 3 and result.route == "taxon" and len(result.specimens) == 4
    human = model.seen[0][1].content
    assert "<evidence>" in human and "[P 1001]" in human and str(collection) not in human
    assert "ZZ 9 is not among the retrieved specimens" in "".join(deltas)
    assert ungrounded(result.text, result.specimens) == [] and sid in cited_ids(result.text, result.specimens)


def test_ask_command(collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "chat.json"
    command = ["ask", str(collection), "opposite leaves from France", "--json", "--captioner", "none", "--state", str(state)]
    assert main(command) == 0
    turn = json.loads(capsys.readouterr().out)
    assert turn["route"] == "morphology" and {s["country"] for s in turn["specimens"]} == {"France"}
    assert main(["ask", str(collection), "only Ranunculaceae", "--captioner", "none", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert "family Ranunculaceae" in out and "Anemone nemorosa" in out
    assert json.loads(state.read_text())["filters"] == {"country": ["France"], "family": ["Ranunculaceae"]}
    assert main(["ask", str(collection), "", "--captioner", "none"]) == 2
    assert "empty question" in capsys.readouterr().err


def test_search_command_shows_labels_and_suggests_filter_values(collection: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(collection), "opposite leaves", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "label" in out and "taxon" in out and re.search(r"\b(?:HUH|P|MPU|K) 10\d\d\b", out) and ".png" not in out
    assert main(["search", str(collection), "leaves", "--filter", "family=Geraniacae"]) == 0
    assert "no matching specimens; did you mean family=Geraniaceae?" in capsys.readouterr().out


def test_ask_prints_the_answer_once(collection: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", str(collection), "opposite leaves", "--captioner", "none"]) == 0
    captured = capsys.readouterr()
    first = captured.out.strip().splitlines()[0]
    assert captured.out.count(first) == 1 and "┃" not in captured.out  # no table repeating the answer
    assert "note: test encoder tiny-test" in captured.err


@pytest.mark.shared
def test_real_harvard_sheets(shared_data: Path, tmp_path: Path) -> None:
    """45 real sheets (9 species x 5): a taxon question shows that species' sheets; an uploaded sheet finds itself."""
    sheets = shared_data / "specimens" / "harvard"
    ingest(sheets, tmp_path / "harvard", progress=False)
    build_index(tmp_path / "harvard", model="tiny-test", progress=False)
    real = HerbariaAssistant(tmp_path / "harvard")
    _, taxon = _run(real, "How do the leaves of Geranium maculatum look?")
    assert taxon.route == "taxon" and len(taxon.specimens) == 5
    assert {s["scientificName"] for s in taxon.specimens} == {"Geranium maculatum"}
    assert len(cited_ids(taxon.text, taxon.specimens)) == 5
    upload = sorted(sheets.glob("Iris_pseudacorus.*.jpg"))[0]
    _, image = _run(real, "", upload)
    assert image.specimens[0]["catalogNumber"] == upload.name.split(".")[1] and image.caption is not None
    _, only = _run(real, "only Anemone canadensis", state=image.state)
    assert {s["scientificName"] for s in only.specimens} == {"Anemone canadensis"}
