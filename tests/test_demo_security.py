"""The public demo as a hostile visitor sees it: raw HTTP against a server on 127.0.0.1.

What must hold: a message can only name files its own visitor uploaded (no server
path, URL or other visitor's upload, and the refusal says nothing about the file);
no absolute server path leaves in any answer; only the documented endpoints
(`/chat`, `/specimen`) are callable by an API client; the page keeps working.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from demo.gate import COOKIE, VISITOR_HEADER, PathMask, Visitors
from demo.uploads import FOREIGN_FILE, UploadLimits, UploadRegistry, check_upload
from demo_support import build_collection, draw_sheet
from retrieval.errors import BadInput, ImageError

SERVER_DIRS = re.compile(r"(?<![\w.])/(?:tmp|home|work|var|root|srv|opt|usr|mnt|etc)/")


# ---------------------------------------------------------------------------- without a server


@pytest.fixture()
def sheet(tmp_path: Path) -> Path:
    path = tmp_path / "uploads" / "abc" / "sheet.jpg"
    path.parent.mkdir(parents=True)
    draw_sheet(path, "ellipse", True, (30, 90, 45), seed=1)
    return path


def test_an_upload_belongs_to_the_visitor_it_was_returned_to(tmp_path: Path, sheet: Path) -> None:
    uploads = UploadRegistry(tmp_path / "uploads")
    uploads.record("v1", [str(sheet)])
    assert uploads.owned("v1", str(sheet)) == sheet
    assert uploads.owned("v2", str(sheet)) is None and uploads.owned(None, str(sheet)) is None
    outside = tmp_path / "secret.jpg"
    draw_sheet(outside, "ellipse", True, (30, 90, 45), seed=2)
    uploads.record("v1", [str(outside)])  # even if it were recorded: not in the upload folder
    assert uploads.owned("v1", str(outside)) is None
    link = sheet.parent / "link.jpg"
    link.symlink_to(outside)
    uploads.record("v1", [str(link)])
    assert uploads.owned("v1", str(link)) is None
    assert uploads.owned("v1", str(sheet.parent / ".." / ".." / "secret.jpg")) is None
    assert uploads.owned("v1", "https://example.org/a.jpg") is None and uploads.owned("v1", {"path": 1}) is None
    example = sheet.parent / "example.jpg"
    example.write_bytes(sheet.read_bytes())
    uploads.offer(example)
    assert uploads.owned("anyone", str(example)) == example and uploads.owned(None, str(example)) == example


def test_uploads_expire_and_the_registry_stays_bounded(tmp_path: Path, sheet: Path) -> None:
    expired = UploadRegistry(tmp_path / "uploads", ttl_s=-1.0)
    expired.record("v1", [str(sheet)])
    assert expired.owned("v1", str(sheet)) is None
    small = UploadRegistry(tmp_path / "uploads", max_entries=2)
    small.record("v1", [str(sheet), str(sheet.parent / "b.jpg"), str(sheet.parent / "c.jpg")])
    assert small.owned("v1", str(sheet)) is None  # the oldest entry went first


@pytest.mark.parametrize("kind", ["missing", "text", "image outside", "other visitor", "url", "traversal", "dict"])
def test_every_foreign_file_gets_the_same_line(tmp_path: Path, sheet: Path, kind: str) -> None:
    uploads = UploadRegistry(tmp_path / "uploads")
    uploads.record("v2", [str(sheet)])
    (tmp_path / "notes.png").write_text("not an image")
    outside = tmp_path / "photo.jpg"
    outside.write_bytes(sheet.read_bytes())
    item = {"missing": "/nonexistent/x.png", "text": str(tmp_path / "notes.png"), "image outside": str(outside),
            "other visitor": str(sheet), "url": "http://127.0.0.1:9/a.jpg",
            "traversal": str(sheet.parent / ".." / ".." / "photo.jpg"),
            "dict": {"url": "http://127.0.0.1:9/a.jpg"}}[kind]
    with pytest.raises(BadInput) as err:
        check_upload([item], UploadLimits(), uploads, "v1")
    assert str(err.value) == FOREIGN_FILE  # the same words whether it exists, is an image, or not


def test_the_chat_handler_checks_whose_file_it_is_itself(tmp_path: Path, sheet: Path) -> None:
    """Behind the gate too: the handler takes the visitor from the gate's header (a request) or Gradio's context."""
    from types import SimpleNamespace

    from demo.app import DemoHandlers
    from demo.gallery import ImageStore

    seen: list[Any] = []

    class Assistant:
        def stream(self, text: str, image: Any, **kwargs: Any) -> Iterator[Any]:
            seen.append(image)
            yield from ()

    uploads = UploadRegistry(tmp_path / "uploads")
    uploads.record("v1", [str(sheet)])
    handlers = DemoHandlers(Assistant(), ImageStore(tmp_path, cache_dir=tmp_path / "cache"), UploadLimits(),
                            uploads=uploads)
    turn = {"text": "", "files": [str(sheet)]}
    for request in (None, SimpleNamespace(headers={VISITOR_HEADER: "v2"})):
        out = list(handlers.respond(turn, [], [], [], [], None, None, None, request))
        assert out[-1][-1]["error"] == FOREIGN_FILE and seen == []
    list(handlers.respond(turn, [], [], [], [], None, None, None, SimpleNamespace(headers={VISITOR_HEADER: "v1"})))
    assert seen == [str(sheet)]


def test_uploads_decode_only_the_allowed_formats_within_the_budget(tmp_path: Path) -> None:
    uploads = UploadRegistry(tmp_path)
    eps = tmp_path / "sheet.png"
    Image.new("RGB", (64, 64), (30, 140, 60)).save(eps, "EPS")
    bomb = tmp_path / "flat.webp"
    Image.new("RGB", (16383, 3600), (255, 255, 255)).save(bomb, "WEBP", lossless=True)
    uploads.record("v1", [str(eps), str(bomb)])
    with pytest.raises(ImageError, match=r"^I could not use that upload: sheet.png: not an image"):
        check_upload([str(eps)], UploadLimits(), uploads, "v1")
    with pytest.raises(ImageError, match="flat.webp: a WEBP image of 16383x3600 pixels is too slow to decode"):
        check_upload([str(bomb)], UploadLimits(), uploads, "v1")


def test_path_mask_hides_server_folders_and_maps_served_files_back(tmp_path: Path) -> None:
    served, collection = tmp_path / "gradio", tmp_path / "coll"
    mask = PathMask(served, [(collection, "coll"), (Path("/tmp"), "?")])
    text = json.dumps({"path": f"{served}/ab/x.jpg", "url": f"/gradio_api/file={served}/ab/x.jpg",
                       "note": f"in {collection}/images/y.jpg", "other": "/tmp/elsewhere, /tmp"}).encode()
    shown = mask.outgoing(text).decode()
    assert str(tmp_path) not in shown and "gradio-files/ab/x.jpg" in shown and "coll/images/y.jpg" in shown
    assert "/tmp/elsewhere, /tmp" in shown  # a one-component folder is never cut: it would cut every path
    assert mask.incoming("gradio-files/ab/x.jpg") == f"{served}/ab/x.jpg"
    assert mask.incoming("/etc/passwd") == "/etc/passwd"
    assert mask.outgoing(f"{served}-other/x".encode()) == f"{served}-other/x".encode()


def test_visitor_tokens_cannot_be_forged() -> None:
    visitors = Visitors(secret=b"k" * 32)
    token = visitors.issue("a")
    ident = token.split(".")[0]
    assert visitors.read(token) == (ident, "a")
    assert visitors.read(f"{ident}.p.{token.split('.')[2]}") is None  # promoted to "page" by hand
    assert visitors.read("x.p.y") is None and visitors.read(None) is None
    assert Visitors(secret=b"j" * 32).read(token) is None


# ---------------------------------------------------------------------------- against a server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from demo.server import create_server, start_server

    work = tmp_path_factory.mktemp("demo-security")
    collection = build_collection(work, per_taxon=2)
    secret = work / f"secret-{uuid.uuid4().hex}.png"
    draw_sheet(secret, "lobed", True, (54, 110, 40), seed=7)
    server = start_server(create_server(collection, model="tiny-test"))
    try:
        yield {"url": server.url, "collection": collection, "work": work, "secret": secret,
               "sheet": work / "sheets" / "Iris_pseudacorus_1.jpg"}
    finally:
        server.close()


def _client(served: dict[str, Any], page: bool = False) -> httpx.Client:
    client = httpx.Client(base_url=served["url"], timeout=60)
    client.get("/" if page else "config")
    return client


def _events(client: httpx.Client, url: str, until: str) -> str:
    """The event stream up to the data line of the first event that contains `until`."""
    text, seen = "", False
    with client.stream("GET", url) as stream:
        for line in stream.iter_lines():
            text += line + "\n"
            seen = seen or until in line
            if seen and line.startswith("data:"):
                break
    return text


def call(client: httpx.Client, api: str, data: list[Any]) -> tuple[int, str]:
    """POST /gradio_api/call/{api}, then its event stream; (status of the POST, its body or the stream)."""
    response = client.post(f"gradio_api/call/{api}", json={"data": data})
    if response.status_code != 200:
        return response.status_code, response.text
    return 200, _events(client, f"gradio_api/call/{api}/{response.json()['event_id']}", "event: complete")


def join(client: httpx.Client, fn_index: int, data: list[Any], event_data: Any = None) -> tuple[int, str]:
    """POST /gradio_api/queue/join like the page, then the session's stream until the event completes."""
    session = uuid.uuid4().hex
    response = client.post("gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                          "trigger_id": 1, "event_data": event_data})
    if response.status_code != 200:
        return response.status_code, response.text
    return 200, _events(client, f"gradio_api/queue/data?session_hash={session}", "process_completed")


def upload(client: httpx.Client, path: Path) -> str:
    response = client.post("gradio_api/upload", files={"files": (path.name, path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200
    return response.json()[0]


def file_data(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def message(path: str, text: str = "what is this?") -> dict[str, Any]:
    return {"text": text, "files": [file_data(path)]}


def dependencies(client: httpx.Client) -> list[dict[str, Any]]:
    return client.get("config").json()["dependencies"]


def upload_dir() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


@pytest.mark.slow
def test_a_message_naming_a_server_file_is_refused_and_nothing_is_copied(served: dict[str, Any]) -> None:
    client = _client(served)
    chat_fn = next(d["id"] for d in dependencies(client) if d["api_name"] == "chat")
    image = next((served["collection"] / "images").rglob("*.jpg"))
    targets = [str(served["secret"]), "/etc/passwd", str(image), "http://127.0.0.1:9/sheet.png",
               f"gradio-files/../../..{served['secret']}", f"gradio-files/x/{served['secret'].name}"]
    answers = set()
    for target in targets:
        for status, body in (call(client, "chat", [message(target), [], [], [], 0, 0]),
                             join(client, chat_fn, [message(target), [], [], [], 0, 0, None]),
                             (lambda r: (r.status_code, r.text))(client.post(
                                 "gradio_api/call/v2/chat", json={"message": message(target)}))):
            assert status == 400, (target, body)
            answers.add(json.loads(body)["detail"])
    assert answers == {FOREIGN_FILE}  # one line, the same for every path: nothing about the file is revealed
    assert not list(upload_dir().rglob(served["secret"].name))  # never copied into the served cache


@pytest.mark.slow
def test_only_the_visitor_who_uploaded_a_file_can_attach_it(served: dict[str, Any]) -> None:
    owner, stranger = _client(served), _client(served)
    path = upload(owner, served["sheet"])
    assert not path.startswith("/")  # the upload route's answer names no server folder either
    status, body = call(stranger, "chat", [message(path), [], [], [], 0, 0])
    assert status == 400 and json.loads(body)["detail"] == FOREIGN_FILE
    forged = httpx.Client(base_url=served["url"], timeout=60, headers={VISITOR_HEADER: owner.cookies[COOKIE]})
    forged.cookies.set(COOKIE, "forged.a.token")
    assert call(forged, "chat", [message(path), [], [], [], 0, 0])[0] == 400
    status, body = call(owner, "chat", [message(path, ""), [], [], [], 0, 0])
    assert status == 200 and '"route": "image"' in body and '"error": null' in body


@pytest.mark.slow
def test_gradios_own_upload_check_holds_behind_the_gate(served: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the gate to let a server path through, Gradio itself refuses it now (`has_launched` is set)."""
    monkeypatch.setattr(UploadRegistry, "owned", lambda self, visitor, path: Path(str(path)))
    status, body = call(_client(served), "chat", [message(str(served["secret"])), [], [], [], 0, 0])
    assert status == 200 and "event: error" in body and '"route"' not in body
    assert not list(upload_dir().rglob(served["secret"].name))


@pytest.mark.slow
def test_no_absolute_server_path_in_any_public_output(served: dict[str, Any]) -> None:
    client = _client(served, page=True)
    outputs = {name: client.get(route).text for name, route in
               (("page", "/"), ("config", "config"), ("info", "gradio_api/info"), ("health", "healthz"))}
    outputs["text turn"] = call(client, "chat", [{"text": "opposite toothed leaves", "files": []}, [], [], [], 0, 0])[1]
    outputs["image turn"] = call(client, "chat", [message(upload(client, served["sheet"]), ""), [], [], [], 0, 0])[1]
    broken = served["work"] / "broken.jpg"
    broken.write_bytes(served["sheet"].read_bytes()[:2000])
    outputs["bad upload"] = call(client, "chat", [message(upload(client, broken)), [], [], [], 0, 0])[1]
    outputs["specimen"] = call(client, "specimen", [1])[1]
    outputs["no specimen"] = call(client, "specimen", [99999])[1]
    assert "could not use that upload: broken.jpg" in outputs["bad upload"]
    folders = {str(served["collection"]), str(served["collection"].resolve()), str(served["work"]),
               str(upload_dir()), str(upload_dir().resolve()), os.getcwd()}
    for name, text in outputs.items():
        assert not [f for f in folders if f in text], name
        assert not SERVER_DIRS.search(text), (name, SERVER_DIRS.search(text))
    served_files = re.findall(r'"url": "([^"]*gradio_api/file=gradio-files/[^"]+)"', outputs["specimen"])
    assert served_files and all(client.get(url).status_code == 200 for url in served_files)  # and still served


@pytest.mark.slow
def test_only_the_documented_endpoints_are_callable(served: dict[str, Any]) -> None:
    client = _client(served)
    info = client.get("gradio_api/info").json()
    assert set(info["named_endpoints"]) == {"/chat", "/specimen"} and not info["unnamed_endpoints"]
    deps = dependencies(client)
    hidden = [d for d in deps if d["api_visibility"] != "public"]
    assert {"chat_ui", "select"} <= {d["api_name"] for d in hidden}
    for dep in hidden:
        assert client.post(f"gradio_api/call/{dep['api_name']}", json={"data": []}).status_code == 404, dep
        status, body = join(client, dep["id"], [])
        assert status == 403 and "belongs to the demo's page" in body, dep
    assert client.get("gradio_api/call/chat_ui/0123").status_code == 404
    forged = httpx.Client(base_url=served["url"], timeout=60, cookies={COOKIE: "someone.p.forged"})
    chat_ui = next(d["id"] for d in deps if d["api_name"] == "chat_ui")
    assert join(forged, chat_ui, [])[0] == 403
    chat = next(d["id"] for d in deps if d["api_name"] == "chat")
    for route in ("gradio_api/run/chat", "gradio_api/run/predict", "gradio_api/api/chat"):  # outside the queue
        assert client.post(route, json={"data": [{"text": "leaves", "files": []}], "fn_index": chat}).status_code == 404
    for method, route in (("POST", "gradio_api/run/chat"), ("POST", "gradio_api/api/chat"),
                          ("POST", "gradio_api/component_server"), ("POST", "gradio_api/process_recording"),
                          ("GET", "monitoring"), ("GET", "gradio_api/vibe-code"), ("GET", "gradio_api/runs"),
                          ("GET", "gradio_api/proxy=http://127.0.0.1:9/"), ("GET", "gradio_api/user"),
                          ("POST", "gradio_api/stream/0123")):
        assert client.request(method, route).status_code == 404, route
    assert call(client, "specimen", [1])[0] == 200


@pytest.mark.slow
def test_the_page_still_runs_its_own_events(served: dict[str, Any]) -> None:
    page = _client(served, page=True)
    deps = dependencies(page)
    chat_ui = next(d["id"] for d in deps if d["api_name"] == "chat_ui")
    status, body = join(page, chat_ui, [message(upload(page, served["sheet"]), ""), None, [], [], [], 0, 0, None])
    assert status == 200 and '"success":true' in body and "gradio-files/" in body
    chatbot = next(c for c in page.get("config").json()["components"] if c.get("props", {}).get("examples"))
    example = next(e for e in chatbot["props"]["examples"] if e["files"])  # an example's image is anyone's
    chosen = {"text": example["text"], "files": example["files"]}
    status, body = join(page, chat_ui, [chosen, None, [], [], [], 0, 0, None])
    assert status == 200 and '"success":true' in body
    thumb = re.search(r'gradio-files/herbaria-thumbs/[^"]+', body).group(0)  # a gallery item
    select = next(d["id"] for d in deps if d["api_name"] == "select")
    status, body = join(page, select, [None], {"index": 0, "value": {"image": file_data(thumb), "caption": "x"}})
    assert status == 200 and '"success":true' in body  # a click on the gallery sends its item back
    for fn in (chat_ui, select):  # a turn never runs outside the queue, even for the page
        assert page.post("gradio_api/run/predict", json={"data": [], "fn_index": fn}).status_code == 404


@pytest.mark.slow
def test_event_data_cannot_name_server_files_either(served: dict[str, Any]) -> None:
    """Even the page's own events: a clicked example or gallery item naming a server file is refused."""
    page = _client(served, page=True)
    deps = dependencies(page)
    for api_name, event_data in (
            ("example_clicked", {"index": 0, "value": {"text": "", "files": [file_data(str(served["secret"]))]}}),
            ("select", {"index": 0, "value": {"image": file_data(str(served["secret"])), "caption": ""}})):
        status, body = join(page, next(d["id"] for d in deps if d["api_name"] == api_name), [None], event_data)
        assert status == 400 and json.loads(body)["detail"] == FOREIGN_FILE, api_name
    assert not list(upload_dir().rglob(served["secret"].name))
