"""The demo served on 127.0.0.1 and driven through gradio_client, as an API user or a stranger would."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo_support import build_collection, corrupt_jpeg, decompression_bomb

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from demo.server import create_server, start_server

    work = tmp_path_factory.mktemp("demo-e2e")
    collection = build_collection(work)
    server = start_server(create_server(collection, model="tiny-test"))
    try:
        yield {"url": server.url, "collection": collection, "sheets": work / "sheets", "work": work}
    finally:
        server.close()


@pytest.fixture(scope="module")
def client(served: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from gradio_client import Client

    c = Client(served["url"], verbose=False, analytics_enabled=False,
               download_files=str(tmp_path_factory.mktemp("downloads")))
    yield c
    c.close()


def ask(client: Any, text: str, files: list[Any] | None = None, **filters: Any) -> dict[str, Any]:
    answer, gallery, traits, taxa, turn = client.predict({"text": text, "files": files or []}, api_name="/chat",
                                                         **filters)
    return {"answer": answer, "gallery": gallery, "traits": traits, "taxa": taxa, "turn": turn}


def assert_no_server_paths(value: Any, *roots: Path) -> None:
    text = repr(value)
    for root in roots:
        assert str(root) not in text
    assert "/tmp/gradio" not in text and "Traceback" not in text


def test_health_check(served: dict[str, Any]) -> None:
    body = httpx.get(served["url"] + "healthz", timeout=10).json()
    assert body["ok"] is True and body["specimens"] == 24 and body["encoder"] == "tiny-test"


def test_api_documents_named_endpoints(client: Any) -> None:
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) == {"/chat", "/specimen"}
    assert [p["parameter_name"] for p in api["/chat"]["parameters"]] == [
        "message", "family", "country", "institution", "year_from", "year_to"]


def test_text_turn_streams_and_cites_only_gallery_specimens(client: Any, served: dict[str, Any]) -> None:
    job = client.submit({"text": "How do the leaves of Coffea arabica look?", "files": []}, api_name="/chat")
    partials = [out[0] for out in job]
    answer, gallery, _, taxa, turn = job.result()
    assert len(partials) > 2 and all(answer.startswith(p) or p == answer for p in partials[:-1])  # text streamed
    assert turn["error"] is None and turn["route"] == "taxon"
    assert gallery and all(Path(item["image"]).is_file() for item in gallery)  # thumbnails were served
    assert all(item["caption"].startswith("Coffea arabica") for item in gallery)
    shown = {s["catalogNumber"] for s in turn["specimens"]}
    cited = set(re.findall(r"\[(?:\w+ )?([A-Z]+\d+)\]", answer))
    assert cited and cited <= shown
    assert all(c in item["caption"] for c, item in zip([s["catalogNumber"] for s in turn["specimens"]], gallery))
    assert "Coffea arabica" in taxa
    assert_no_server_paths(turn, served["collection"])


def test_image_turn_finds_the_same_sheet(client: Any, served: dict[str, Any]) -> None:
    from gradio_client import handle_file

    sheet = served["sheets"] / "Iris_pseudacorus_2.jpg"
    result = ask(client, "", [handle_file(str(sheet))])
    turn = result["turn"]
    assert turn["error"] is None and turn["route"] == "image"
    assert result["gallery"] and turn["specimens"][0]["score"] > 0.999
    top = [s for s in turn["specimens"] if s["score"] > 0.999]
    assert any(s["catalogNumber"] == "HUH10502" for s in top)  # the uploaded sheet itself is among the best
    assert result["taxa"].startswith("#### Taxa")  # likely taxa, zero-shot
    assert_no_server_paths(turn, served["collection"], sheet.parent)


def test_followup_with_a_filter(client: Any) -> None:
    first = ask(client, "Which specimens have opposite, toothed leaves?")
    assert first["turn"]["error"] is None and len({s["family"] for s in first["turn"]["specimens"]}) > 1
    follow = ask(client, "only the ones from Gabon", family=["Rubiaceae"])
    turn = follow["turn"]
    assert turn["error"] is None and turn["route"] == "followup"
    assert turn["specimens"] and {s["family"] for s in turn["specimens"]} == {"Rubiaceae"}
    assert {s["country"] for s in turn["specimens"]} == {"Gabon"}
    years = ask(client, "Which specimens have opposite, toothed leaves?", year_from=1960, year_to=1990)["turn"]
    assert years["specimens"] and all(s["year"] >= 1960 for s in years["specimens"])


@pytest.mark.parametrize("kind, expected", [
    ("corrupt", "corrupt or truncated"),
    ("renamed", "not an image"),
    ("bomb", "pixel limit"),
])
def test_bad_uploads_get_a_clear_message(client: Any, served: dict[str, Any], kind: str, expected: str) -> None:
    from gradio_client import handle_file

    work: Path = served["work"]
    path = {
        "corrupt": lambda: corrupt_jpeg(work / "broken.jpg", served["sheets"] / "Rosa_canina_0.jpg"),
        "renamed": lambda: (work / "notes.jpg").write_text("field notes, not a photo\n" * 10) and work / "notes.jpg",
        "bomb": lambda: decompression_bomb(work / "bomb.png"),
    }[kind]()
    result = ask(client, "what is this?", [handle_file(str(path))])
    assert result["answer"].startswith("⚠️ I could not use that upload") and expected in result["answer"]
    assert result["turn"]["error"] and not result["turn"]["specimens"]
    assert_no_server_paths(result, served["collection"], work)
    assert ask(client, "lobed leaves")["turn"]["error"] is None  # the session goes on


def test_a_non_image_file_is_refused_before_the_assistant(client: Any, served: dict[str, Any]) -> None:
    from gradio_client import handle_file

    notes = served["work"] / "notes.txt"
    notes.write_text("not an image\n")
    with pytest.raises(Exception, match="image") as err:
        ask(client, "what is this?", [handle_file(str(notes))])
    assert_no_server_paths(str(err.value), served["collection"], served["work"])


def test_specimen_endpoint_gives_fields_image_and_source_link(client: Any, served: dict[str, Any]) -> None:
    turn = ask(client, "lobed leaves")["turn"]
    sid = turn["specimens"][0]["specimen_id"]
    header, image, table, record = client.predict(sid, api_name="/specimen")
    assert f"Source record: [{record['references']}]({record['references']})" in header
    assert Path(image).is_file()
    fields = dict(table["data"])
    assert fields["scientificName"] == turn["specimens"][0]["scientificName"] and fields["specimen_id"] == str(sid)
    assert record["image"].startswith("images/")
    header, image, _, record = client.predict(99999, api_name="/specimen")
    assert "no specimen 99999" in header and image is None and record["error"]


def test_only_collection_images_and_gradio_cache_are_served(served: dict[str, Any]) -> None:
    base, collection = served["url"] + "gradio_api/file=", served["collection"]
    image = next((collection / "images").rglob("*.jpg"))
    assert httpx.get(base + str(image), timeout=10).status_code == 200
    for path in (collection / "specimens.parquet", collection / "collection.sqlite", Path("/etc/passwd"),
                 served["sheets"] / "labels.csv", Path(__file__)):
        assert httpx.get(base + str(path), timeout=10).status_code in (403, 404), path


def test_oversized_upload_is_refused_by_the_server(served: dict[str, Any]) -> None:
    big = served["work"] / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\0" * (21 * 1024 * 1024))
    with big.open("rb") as fh:
        response = httpx.post(served["url"] + "gradio_api/upload", files={"files": ("big.jpg", fh, "image/jpeg")},
                              timeout=60)
    assert response.status_code == 413
