"""The demo's guards and pieces without a server: uploads, paths, markup, filters, examples, `herbaria demo`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from PIL import Image

from demo.app import build_examples, caption_markdown, filters_from, taxa_markdown
from demo.gallery import ImageStore, caption, field_rows, md_escape, md_link, public_record
from demo.sample import check_network, prepare_demo
from demo.uploads import UploadLimits, UploadRegistry, check_question, check_upload, public_message
from demo_support import TAXA, build_collection, corrupt_jpeg, decompression_bomb, draw_sheet
from retrieval.errors import BadInput, ImageError, NetworkUnavailable


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_collection(tmp_path_factory.mktemp("demo-app"), per_taxon=2)


@pytest.fixture()
def sheet(tmp_path: Path) -> Path:
    path = tmp_path / "sheet.jpg"
    draw_sheet(path, "ellipse", True, (30, 90, 45), seed=1)
    return path


@pytest.fixture()
def uploads(tmp_path: Path) -> UploadRegistry:
    """An upload folder (tmp_path) in which everything made there counts as visitor "v1"'s upload."""
    return UploadRegistry(tmp_path)


def own(uploads: UploadRegistry, path: Path, visitor: str = "v1") -> Path:
    uploads.record(visitor, [str(path)])
    return path


# ---------------------------------------------------------------------------- uploads


def test_a_good_upload_passes_as_its_path(sheet: Path, uploads: UploadRegistry) -> None:
    own(uploads, sheet)
    assert check_upload([str(sheet)], UploadLimits(), uploads, "v1") == sheet
    assert check_upload([{"path": str(sheet)}], UploadLimits(), uploads, "v1") == sheet
    assert check_upload([], UploadLimits(), uploads, "v1") is None
    assert check_upload(None, UploadLimits(), uploads, "v1") is None


@pytest.mark.parametrize("kind, expected", [
    ("corrupt", "corrupt or truncated"),
    ("text", "not an image"),
    ("bomb", "pixel limit"),
    ("empty", "empty"),
])
def test_bad_uploads_get_one_clear_line_without_paths(tmp_path: Path, sheet: Path, uploads: UploadRegistry, kind: str,
                                                      expected: str) -> None:
    path = {
        "corrupt": lambda: corrupt_jpeg(tmp_path / "broken.jpg", sheet),
        "text": lambda: (tmp_path / "notes.jpg").write_text("not a picture at all\n" * 20) and tmp_path / "notes.jpg",
        "bomb": lambda: decompression_bomb(tmp_path / "bomb.png"),
        "empty": lambda: (tmp_path / "empty.png").write_bytes(b"") or tmp_path / "empty.png",
    }[kind]()
    with pytest.raises(ImageError) as err:
        check_upload([str(own(uploads, path))], UploadLimits(), uploads, "v1")
    message = str(err.value)
    assert expected in message and message.startswith("I could not use that upload")
    assert str(tmp_path) not in message and "Traceback" not in message


def test_upload_size_limit_and_one_image_per_question(sheet: Path, uploads: UploadRegistry) -> None:
    own(uploads, sheet)
    with pytest.raises(ImageError, match="MB limit"):
        check_upload([str(sheet)], UploadLimits(max_bytes=1024), uploads, "v1")
    with pytest.raises(BadInput, match="one image per question"):
        check_upload([str(sheet), str(sheet)], UploadLimits(), uploads, "v1")
    with pytest.raises(BadInput, match="under 1,000"):
        check_question("leaf " * 300)
    assert check_question("  opposite leaves  ") == "opposite leaves"


def test_public_message_cuts_paths_but_keeps_urls() -> None:
    text = "x.jpg: cannot open /tmp/gradio/abc123/x.jpg; see https://www.gbif.org/occurrence/12 or /srv/data/y.png"
    shown = public_message(text)
    assert "/tmp/gradio" not in shown and "/srv/data" not in shown
    assert "x.jpg" in shown and "y.png" in shown and "https://www.gbif.org/occurrence/12" in shown


# ---------------------------------------------------------------------------- images, markup


def test_image_store_serves_only_the_collection_images(collection: Path, tmp_path: Path) -> None:
    store = ImageStore(collection, cache_dir=tmp_path / "cache")
    image = next((collection / "images").rglob("*.jpg"))
    assert store.local(image) == image.resolve()
    assert store.local(image.relative_to(collection)) == image.resolve()
    for outside in ("/etc/passwd", collection / "specimens.parquet", collection / "images" / ".." / "collection.json",
                    "images/../../etc/passwd"):
        assert store.local(outside) is None
    thumb = Path(store.thumbnail(image))
    assert thumb.is_relative_to(tmp_path / "cache")
    with Image.open(thumb) as im:
        assert max(im.size) <= 480
    assert store.thumbnail(image) == str(thumb)  # cached, not rewritten
    assert store.thumbnail("https://example.org/a.jpg") == "https://example.org/a.jpg"
    assert store.thumbnail("/etc/passwd") is None


def test_captions_markup_and_records_are_safe() -> None:
    spec = {"scientificName": "Coffea arabica", "catalogNumber": "P10100", "institutionCode": "P", "score": 0.8312}
    assert caption(spec) == "Coffea arabica — P P10100"  # the label answers cite
    assert caption({**spec, "score": -0.03, "relevance": "loosely similar"}) == "Coffea arabica — P P10100 — loosely similar"
    assert md_link("source", "javascript:alert(1)") == "javascript:alert(1)"
    assert md_escape("[x](javascript:alert(1))") == "\\[x\\](javascript:alert(1))"
    assert md_link("source", "https://example.org/s/1") == "[source](https://example.org/s/1)"
    assert "<script>" not in md_escape("<script>alert(1)</script>")
    rows = field_rows({"scientificName": "Coffea arabica", "country": "", "year": 1901, "specimen_id": 3})
    assert rows == [["scientificName", "Coffea arabica"], ["year", "1901"], ["specimen_id", "3"]]


def test_public_record_never_carries_a_server_path(collection: Path, tmp_path: Path) -> None:
    store = ImageStore(collection, cache_dir=tmp_path)
    image = next((collection / "images").rglob("*.jpg"))
    record = public_record({"specimen_id": 1, "image": str(image)}, store)
    assert record["image"] == str(image.relative_to(collection)) and not record["image"].startswith("/")
    assert public_record({"image": "/etc/passwd"}, store)["image"] is None


def test_panels_render_caption_and_taxa_as_text() -> None:
    caption = {"captioner": "grounded", "text": "Leaves: opposite (7 of 8 similar specimens).",
               "organs": [{"organ": "leaf", "group": "leaf", "label": "leaves",
                           "traits": [{"character": "arrangement", "value": "opposite", "negated": False,
                                       "count": 7, "of": 8, "support": 0.9},
                                      {"character": "margin", "value": "toothed", "negated": True, "count": 2, "of": 8,
                                       "support": 0.3}]}],
               "unsupported": [{"organ": "flower", "character": "colour", "value": "purple", "count": 0, "of": 8}]}
    md = caption_markdown(caption)
    assert "Leaves: opposite (7 of 8 similar specimens)." in md
    assert "**leaves**: arrangement opposite (7/8); margin not toothed (2/8)" in md
    assert "Not supported by any similar specimen: flower colour purple" in md and "grounded captioner" in md
    assert caption_markdown(None) == "" and taxa_markdown([]) == ""
    md = taxa_markdown([{"taxon": "Coffea arabica", "score": 0.7, "evidence": [{"text": "Leaves opposite."}]}])
    assert "*Coffea arabica* (0.70)" in md and "> Leaves opposite." in md


def test_filter_controls_become_the_assistant_filters() -> None:
    assert filters_from([], [], [], None, None) == {}
    assert filters_from(["Rubiaceae"], "Gabon", [], 1900, None) == {
        "family": ["Rubiaceae"], "country": ["Gabon"], "year": (1900, None)}
    with pytest.raises(BadInput, match="ends before it starts"):
        filters_from([], [], [], 1950, 1900)


def test_examples_come_from_the_collection(collection: Path, tmp_path: Path) -> None:
    store = ImageStore(collection, cache_dir=tmp_path)
    examples, labels = build_examples(collection, store)
    assert len(examples) == len(labels) == 4
    texts = [e[0]["text"] for e in examples]
    names = {t[0] for t in TAXA}
    assert any(name in text for text in texts for name in names)  # a taxon the collection holds
    image_examples = [e[0]["files"][0] for e in examples if e[0]["files"]]
    assert image_examples and all(Path(p).is_file() for p in image_examples)
    assert any(country in texts[-1] for country in {t[2] for t in TAXA})


# ---------------------------------------------------------------------------- herbaria demo


def test_demo_offline_stops_with_one_message_naming_the_options(tmp_path: Path) -> None:
    with pytest.raises(NetworkUnavailable) as err:
        prepare_demo(cache=tmp_path, network_check=lambda: "api.gbif.org: Name or service not known")
    message = str(err.value)
    assert "--collection" in message and "--model" in message and "Name or service not known" in message
    assert not any(tmp_path.iterdir())  # nothing half-fetched


def test_network_check_answers_quickly_for_a_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: the connection is refused
        reason = check_network((("127.0.0.1", port),), timeout=2)
    assert reason is not None and reason.startswith("127.0.0.1")


def test_demo_with_a_collection_builds_its_index(tmp_path: Path) -> None:
    from demo_support import make_sheets
    from retrieval.collections import ingest

    ingest(make_sheets(tmp_path / "sheets", per_taxon=1), tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "index").exists()
    folder = prepare_demo(tmp_path / "c", model="tiny-test", progress=False)
    assert (folder / "index" / "manifest.json").is_file()
    with pytest.raises(BadInput, match="not a Herbaria collection"):
        prepare_demo(tmp_path / "sheets", model="tiny-test", progress=False)


def test_cli_serve_and_demo_refuse_a_folder_that_is_not_a_collection(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from herbaria.cli import main

    assert main(["serve", str(tmp_path)]) == 2
    assert main(["demo", "--collection", str(tmp_path), "--model", "tiny-test"]) == 2
    err = capsys.readouterr().err
    assert err.count("is not a Herbaria collection") == 2 and "Traceback" not in err


def test_a_bug_is_logged_with_its_trace_and_shown_as_one_generic_line(collection: Path, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    from assistant.agent import HerbariaAssistant
    from demo.app import GENERIC_ERROR, DemoHandlers

    assistant = HerbariaAssistant(collection, model="tiny-test")
    handlers = DemoHandlers(assistant, ImageStore(collection, cache_dir=tmp_path), UploadLimits())
    good = list(handlers.respond({"text": "lobed leaves", "files": []}, [], [], [], [], None, None, None))
    assert good[-1][-1]["error"] is None and good[-1][1]  # a gallery

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError(f"{collection}/index/secret-internal-detail")

    assistant.stream = broken  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="herbaria.demo"):
        out = list(handlers.respond({"text": "lobed leaves", "files": []}, [], [], [], [], None, None, None))
    assert out[-1][0] == f"⚠️ {GENERIC_ERROR}" and out[-1][-1]["error"] == GENERIC_ERROR
    assert "secret-internal-detail" not in repr(out)
    assert any(r.exc_info and "secret-internal-detail" in str(r.exc_info[1]) for r in caplog.records)
