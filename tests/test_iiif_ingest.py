"""IIIF sources against a stand-in herbarium on 127.0.0.1: v3 and v2 manifests, a Collection, an image service.

The manifests are shaped like real herbaria's (Kew/Naturalis v3, JACQ/MNHN v2: label/value metadata,
rights or licence, provider, seeAlso to a Darwin Core record); the image service answers real JPEG bytes
of the size asked. Everything goes through the CLI, as a curator would run it.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from PIL import Image

from conftest import closed_port

from herbaria.cli import main
from retrieval.collections import Collection, detect_source, read_gbif_json, read_iiif
from retrieval.collections.iiif import MAX_SIDE, image_request, plain_text

SHEET = (2400, 3200)  # the full image every service holds (width, height): over MAX_SIDE, as real scans are
_SIZE = re.compile(r"^/(iiif|iiif2)/([^/]+)/full/([^/]+)/0/default\.jpg$")


def _jpeg(size: tuple[int, int], seed: str) -> bytes:
    shade = sum(seed.encode()) % 200
    buf = io.BytesIO()
    Image.new("RGB", size, (shade, 120, 255 - shade)).save(buf, "JPEG")
    return buf.getvalue()


def _scaled(spec: str) -> tuple[int, int] | None:
    """The size an image service answers for a IIIF size parameter (no upscaling)."""
    width, height = SHEET
    if spec in ("max", "full"):
        return SHEET
    if spec.startswith("!"):
        box_w, box_h = (int(n) for n in spec[1:].split(","))
        scale = min(1.0, box_w / width, box_h / height)
        return round(width * scale), round(height * scale)
    w, _, h = spec.partition(",")
    if w and h:
        return int(w), int(h)
    if w:
        return int(w), round(height * int(w) / width)
    return None


class Herbarium:
    """Serves `docs` {path: JSON-able or bytes} and an image service under /iiif/ID/ (v3) and /iiif2/ID/ (v2)."""

    def __init__(self) -> None:
        self.docs: dict[str, Any] = {}
        self.redirects: dict[str, str] = {}  # path -> Location
        self.hits: Counter[str] = Counter()
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # MediaFetcher's reachability probe
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:
                path = unquote(self.path)
                with lock:
                    owner.hits[path] += 1
                match = _SIZE.match(path)
                if path in owner.redirects:
                    self.send_response(302)
                    self.send_header("Location", owner.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path.startswith("/flaky/") and owner.hits[path] == 1:
                    self.send_error(503)
                elif match:
                    size = _scaled(match.group(3))
                    if size is None:
                        self.send_error(400)
                        return
                    self._send(_jpeg(size, match.group(2)), "image/jpeg")
                elif path.removeprefix("/flaky") in owner.docs:
                    doc = owner.docs[path.removeprefix("/flaky")]
                    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                    self._send(body, "application/ld+json")
                else:
                    self.send_error(404)

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def serve(self, path: str, doc: Any) -> str:
        self.docs[path] = doc
        return self.url + path


@pytest.fixture
def herbarium() -> Iterator[Herbarium]:
    server = Herbarium()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def _v3(base: str, barcode: str, metadata: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A Presentation 3 manifest like Kew's or Naturalis': one canvas, its image through an ImageService3."""
    canvas = f"{base}/canvas/{barcode}"
    body = extra.pop("body", {
        "id": f"{base}/iiif/{barcode}/full/max/0/default.jpg", "type": "Image", "format": "image/jpeg",
        "service": [{"id": f"{base}/iiif/{barcode}", "type": "ImageService3", "profile": "level1"}],
    })
    return {
        "@context": "http://iiif.io/api/presentation/3/context.json",
        "id": f"{base}/manifests/{barcode}.json", "type": "Manifest",
        "label": {"en": [f"Herbarium sheet {barcode}"]},
        "metadata": [{"label": {"en": [label]}, "value": value if isinstance(value, dict) else {"none": [value]}}
                     for label, value in metadata],
        "items": [{"id": canvas, "type": "Canvas", "width": SHEET[0], "height": SHEET[1], "items": [
            {"id": f"{canvas}/page", "type": "AnnotationPage", "items": [
                {"id": f"{canvas}/image", "type": "Annotation", "motivation": "painting", "target": canvas,
                 "body": body}]}]}],
        **extra,
    }


def _kew(base: str) -> dict[str, Any]:
    return _v3(base, "K000697001", [
        ("Catalog Number", "K000697001"), ("Scientific Name", "<i>Quercus robur</i> L."), ("Family", "Fagaceae"),
        ("Collector", "J. D. Hooker"), ("Date", "1851-06-14"), ("Locality", {"en": ["Kew, Surrey"]}),
        ("Country", {"fr": ["Royaume-Uni"], "en": ["United Kingdom"]}), ("Institution", "K"),
        ("Habitat", {"en": ["Open woodland"]}),
    ], rights="http://creativecommons.org/licenses/by/4.0/",
        requiredStatement={"label": {"en": ["Attribution"]}, "value": {"en": ["Royal Botanic Gardens, Kew"]}},
        provider=[{"id": "https://www.kew.org", "type": "Agent", "label": {"en": ["Royal Botanic Gardens, Kew"]}}],
        homepage=[{"id": f"{base}/specimens/K000697001", "type": "Text", "format": "text/html"}],
        seeAlso=[{"id": f"{base}/dwc/K000697001.json", "type": "Dataset", "format": "application/json",
                  "profile": "http://rs.tdwg.org/dwc/terms/"}])


def _jacq(base: str) -> dict[str, Any]:
    """A Presentation 2.1 manifest like JACQ's (BGBM Berlin): sc:Manifest, sequences, a level-2 image service."""
    canvas = f"{base}/canvas/B100241390"
    return {
        "@context": "http://iiif.io/api/presentation/2/context.json",
        "@id": f"{base}/manifests/B100241390.json", "@type": "sc:Manifest", "label": "B 10 0241390",
        "metadata": [
            {"label": "Stable identifier", "value": "https://herbarium.bgbm.org/object/B100241390"},
            {"label": [{"@value": "Numéro de catalogue", "@language": "fr"},
                       {"@value": "Catalog number", "@language": "en"}], "value": "B 10 0241390"},
            {"label": "dwc:scientificName", "value": "Abies alba Mill."},
            {"label": "Collector(s)", "value": '<a href="https://www.jacq.org/p/1">Hohenacker, R.F.</a>'},
            {"label": "Collection Date", "value": "1838-07"},
            {"label": "Country", "value": [{"@value": "Deutschland", "@language": "de"},
                                           {"@value": "Germany", "@language": "en"}]},
            {"label": "Locality", "value": "Schwarzwald, <br/>Feldberg"},
            {"label": "Institution", "value": "B"},
        ],
        "license": "https://creativecommons.org/licenses/by-sa/4.0/",
        "attribution": "Botanic Garden and Botanical Museum Berlin",
        "related": "https://herbarium.bgbm.org/object/B100241390",
        "sequences": [{"@type": "sc:Sequence", "canvases": [{
            "@id": canvas, "@type": "sc:Canvas", "width": SHEET[0], "height": SHEET[1],
            "images": [{"@type": "oa:Annotation", "motivation": "sc:painting", "on": canvas, "resource": {
                "@id": f"{base}/iiif2/B100241390/full/full/0/default.jpg", "@type": "dctypes:Image",
                "format": "image/jpeg",
                "service": {"@context": "http://iiif.io/api/image/2/context.json",
                            "@id": f"{base}/iiif2/B100241390", "profile": "http://iiif.io/api/image/2/level2.json"},
            }}],
        }]}],
    }


def _collection(base: str, path: str, refs: list[tuple[str, str]]) -> dict[str, Any]:
    return {"@context": "http://iiif.io/api/presentation/3/context.json", "id": f"{base}{path}",
            "type": "Collection", "label": {"en": ["Herbarium sheets"]},
            "items": [{"id": ref, "type": kind, "label": {"en": ["sheet"]}} for ref, kind in refs]}


def _ingest(source: str | Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert main(["ingest", str(source), "--out", str(out), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    frame = Collection.open(out).specimens()
    rows = {}
    for row in frame.to_dict("records"):
        row["verbatim"] = json.loads(row["verbatim"])
        rows[row["catalogNumber"]] = row
    return rows


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("herbaria: error: ") and "\n" not in err, err
    return err


def test_v3_manifest_url_gives_darwin_core_licence_and_image(herbarium, tmp_path, capsys):
    url = herbarium.serve("/manifests/K000697001.json", _kew(herbarium.url))
    herbarium.serve("/dwc/K000697001.json", {  # the seeAlso Darwin Core record: adds what the metadata lacks
        "dwc:catalogNumber": "K-other", "dwc:decimalLatitude": 51.4787, "http://rs.tdwg.org/dwc/terms/decimalLongitude":
        "-0.2956", "dwc:country": "England", "dwc:recordNumber": "H-12"})
    out = tmp_path / "col"
    summary = _ingest(url, out, capsys)
    assert (summary["added"], summary["with_image"], summary["downloaded"]) == (1, 1, 1)
    row = _rows(out)["K000697001"]
    assert (row["scientificName"], row["genus"], row["specificEpithet"]) == ("Quercus robur L.", "Quercus", "robur")
    assert (row["family"], row["recordedBy"], row["eventDate"], row["year"]) == ("Fagaceae", "J. D. Hooker",
                                                                                  "1851-06-14", 1851)
    assert (row["locality"], row["country"], row["institutionCode"]) == ("Kew, Surrey", "United Kingdom", "K")
    assert (row["decimalLatitude"], row["decimalLongitude"]) == (51.4787, -0.2956)
    assert row["license"] == "http://creativecommons.org/licenses/by/4.0/"
    assert row["rightsHolder"] == "Royal Botanic Gardens, Kew"
    assert row["references"] == f"{herbarium.url}/specimens/K000697001"
    assert row["occurrenceID"] == url  # the manifest id: no stable identifier in its metadata
    assert row["verbatim"]["iiifManifest"] == url and row["verbatim"]["Habitat"] == "Open woodland"
    assert row["verbatim"]["provider"] == "Royal Botanic Gardens, Kew"
    assert row["verbatim"]["seeAlso"] == f"{herbarium.url}/dwc/K000697001.json"
    bounded = f"/iiif/K000697001/full/!{MAX_SIDE},{MAX_SIDE}/0/default.jpg"
    assert row["imageUrl"] == herbarium.url + bounded and herbarium.hits[bounded] == 1
    with Image.open(out / row["image"]) as image:
        assert image.format == "JPEG" and image.size == (1536, 2048)  # bounded, not the 2400 x 3200 scan


def test_v2_manifest_file_language_lists_and_service(herbarium, tmp_path, capsys):
    source = tmp_path / "src" / "B100241390.json"
    source.parent.mkdir()
    source.write_text(json.dumps(_jacq(herbarium.url)), encoding="utf-8")
    assert detect_source(source) is read_iiif
    out = tmp_path / "col"
    assert _ingest(source, out, capsys)["with_image"] == 1
    row = _rows(out)["B 10 0241390"]
    assert row["occurrenceID"] == "https://herbarium.bgbm.org/object/B100241390"  # the CETAF stable identifier
    assert (row["scientificName"], row["recordedBy"], row["eventDate"]) == ("Abies alba Mill.", "Hohenacker, R.F.",
                                                                            "1838-07")
    assert (row["country"], row["locality"], row["institutionCode"]) == ("Germany", "Schwarzwald, Feldberg", "B")
    assert row["license"] == "https://creativecommons.org/licenses/by-sa/4.0/"
    assert row["rightsHolder"] == "Botanic Garden and Botanical Museum Berlin"
    assert row["references"] == "https://herbarium.bgbm.org/object/B100241390"
    assert herbarium.hits[f"/iiif2/B100241390/full/!{MAX_SIDE},{MAX_SIDE}/0/default.jpg"] == 1


def test_collection_list_and_reingest_never_duplicate(herbarium, tmp_path, capsys):
    base = herbarium.url
    kew = herbarium.serve("/manifests/K000697001.json", _kew(base))
    jacq = herbarium.serve("/manifests/B100241390.json", _jacq(base))
    inner = herbarium.serve("/inner.json", _collection(base, "/inner.json", [(jacq, "Manifest")]))
    top = herbarium.serve("/collection.json", _collection(base, "/collection.json", [
        (kew, "Manifest"), (inner, "Collection"), (f"{base}/collection.json", "Collection")]))  # and a loop
    out = tmp_path / "col"
    first = _ingest(top, out, capsys)
    assert (first["added"], first["skipped"], first["with_image"]) == (2, 0, 2)
    again = _ingest(top, out, capsys)
    assert (again["added"], again["unchanged"], again["total"]) == (0, 2, 2)
    listing = tmp_path / "manifests.txt"
    listing.write_text(f"# sheets to add\n{jacq}\n\n{kew}\n", encoding="utf-8")
    by_list = _ingest(listing, out, capsys)
    assert (by_list["added"], by_list["unchanged"], by_list["total"]) == (0, 2, 2)
    assert set(_rows(out)) == {"K000697001", "B 10 0241390"}
    assert herbarium.hits["/iiif/K000697001/full/!2048,2048/0/default.jpg"] == 1  # cached, never fetched twice
    as_json = tmp_path / "manifests.json"
    as_json.write_text(json.dumps([kew]), encoding="utf-8")
    assert detect_source(as_json) is read_iiif
    assert _ingest(as_json, out, capsys)["unchanged"] == 1


def test_unreadable_manifests_of_a_collection_are_counted(herbarium, tmp_path, capsys):
    base = herbarium.url
    kew = herbarium.serve("/manifests/K000697001.json", _kew(base))
    herbarium.serve("/manifests/broken.json", b'{"id": "x", "type": "Manif')
    herbarium.serve("/manifests/noid.json", {**_kew(base), "id": "javascript:alert(1)"})
    top = herbarium.serve("/collection.json", _collection(base, "/collection.json", [
        (kew, "Manifest"), (f"{base}/manifests/broken.json", "Manifest"), (f"{base}/missing.json", "Manifest"),
        ("file:///etc/passwd", "Manifest"), (f"{base}/manifests/noid.json", "Manifest")]))
    summary = _ingest(top, tmp_path / "col", capsys)
    assert (summary["added"], summary["skipped"]) == (1, 4)
    assert summary["reasons"] == {"IIIF manifest unreadable": 3, "IIIF manifest refused: not an http(s) URL": 1}


def test_file_and_local_path_image_services_are_refused(herbarium, tmp_path, capsys):
    base = herbarium.url
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(_jpeg((20, 20), "secret"))
    file_service = {"id": "file:///etc/passwd", "type": "Image",
                    "service": [{"id": "file:///etc/hostname", "type": "ImageService3"}]}
    remote_path = {"id": str(secret), "type": "Image"}
    herbarium.serve("/manifests/F-1.json", _v3(base, "F-1", [("Catalog Number", "F-1")], body=file_service))
    herbarium.serve("/manifests/F-2.json", _v3(base, "F-2", [("Catalog Number", "F-2")], body=remote_path))
    src = tmp_path / "src"
    src.mkdir()
    (src / "inside.jpg").write_bytes(_jpeg((30, 40), "inside"))
    outside = {"id": "../secret.jpg", "type": "Image", "service": [{"id": str(tmp_path), "type": "ImageService2"}]}
    (src / "F-3.json").write_text(json.dumps(_v3(base, "F-3", [("Catalog Number", "F-3")], body=outside)))
    (src / "F-4.json").write_text(json.dumps(_v3(base, "F-4", [("Catalog Number", "F-4")],
                                                 body={"id": "inside.jpg", "type": "Image"})))
    out = tmp_path / "col"
    remote = _ingest(herbarium.serve("/c.json", _collection(base, "/c.json", [
        (f"{base}/manifests/F-1.json", "Manifest"), (f"{base}/manifests/F-2.json", "Manifest")])), out, capsys)
    assert (remote["added"], remote["no_image"]) == (2, 2)
    assert remote["reasons"] == {"media refused: not an http(s) URL": 1, "media refused: outside the source folder": 1}
    local = _ingest(src / "F-3.json", out, capsys)
    assert local["reasons"] == {"media refused: outside the source folder": 1}
    assert _ingest(src / "F-4.json", out, capsys)["with_image"] == 1  # an image beside the manifest file is fine
    rows = _rows(out)
    assert [rows[c]["image"] for c in ("F-1", "F-2", "F-3")] == ["", "", ""] and rows["F-4"]["image"]
    stored = {p.read_bytes() for p in (out / "images").rglob("*.jpg")}
    assert secret.read_bytes() not in stored


def test_hostile_metadata_is_stored_as_plain_text(herbarium, tmp_path, capsys):
    base = herbarium.url
    manifest = _v3(base, "H-1", [
        ("Catalog Number", "H-1"),
        ("Scientific Name", "<script>alert(1)</script><b>Salix</b> <i>alba</i> L."),
        ("Collector", '<a href="javascript:alert(1)">Smith, J.</a>'),
        ("Locality", "Hill\x1b[31m top\x00 \u202eeast&lt;img src=x onerror=alert(1)&gt;"),
        ("<img src=x onerror=alert(1)>Notes", "<p onclick='x()'>pressed &amp; dried</p>"),
        ("Country", "<iframe src=javascript:alert(1)></iframe>Norway"),
    ], rights="javascript:alert(1)", homepage=[{"id": "javascript:alert(1)", "type": "Text"}],
        requiredStatement={"label": {"en": ["Attribution"]},
                           "value": {"en": ["<b onmouseover=x>Hostile Herbarium</b>"]}})
    url = herbarium.serve("/manifests/H-1.json", manifest)
    out = tmp_path / "col"
    _ingest(url, out, capsys)
    row = _rows(out)["H-1"]
    assert (row["scientificName"], row["recordedBy"], row["country"]) == ("Salix alba L.", "Smith, J.", "Norway")
    assert row["locality"] == "Hill top east"
    assert row["verbatim"]["Notes"] == "pressed & dried"
    assert (row["license"], row["rightsHolder"], row["references"]) == ("", "Hostile Herbarium", url)
    texts = [str(v) for v in row.values()] + [*row["verbatim"], *row["verbatim"].values()]
    for text in texts:
        assert not re.search(r"[<>\x00-\x08\x0b-\x1f\u202e]|javascript:", text), text


@pytest.mark.parametrize(
    ("path", "doc", "message"),
    [
        ("/garbage", b"<html>not json</html>", "not valid JSON"),
        ("/hello.json", {"hello": "world"}, "not a IIIF Manifest or Collection"),
        ("/nothing-here.json", None, "HTTP 404"),
        ("/noid.json", {"type": "Manifest", "items": 5, "metadata": "oops"}, "the manifest has no http(s) id"),
    ],
)
def test_malformed_manifests_give_one_line_errors(herbarium, tmp_path, capsys, path, doc, message):
    url = herbarium.serve(path, doc) if doc is not None else herbarium.url + path
    err = _error(["ingest", url, "--out", str(tmp_path / "col")], capsys)
    assert message in err
    assert not (tmp_path / "col").exists()


def test_redirects_and_retries(herbarium, tmp_path, capsys):
    """A manifest may move (redirect, even relative) or fail once (503); it may not redirect off http(s)."""
    kew = _kew(herbarium.url)
    herbarium.serve("/manifests/K000697001.json", kew)
    herbarium.redirects["/moved.json"] = "/flaky/manifests/K000697001.json"
    assert _ingest(herbarium.url + "/moved.json", tmp_path / "col", capsys)["added"] == 1
    assert herbarium.hits["/flaky/manifests/K000697001.json"] == 2
    herbarium.redirects["/evil.json"] = "file:///etc/passwd"
    err = _error(["ingest", herbarium.url + "/evil.json", "--out", str(tmp_path / "other")], capsys)
    assert "redirects to a non-http(s) URL" in err and not (tmp_path / "other").exists()


def test_bad_sources_give_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "col")
    assert "only http(s) URLs" in _error(["ingest", "file:///etc/passwd", "--out", out], capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n", encoding="utf-8")
    assert "lists no IIIF manifest URLs" in _error(["ingest", str(empty), "--out", out], capsys)
    offline = f"http://127.0.0.1:{closed_port()}/manifest.json"
    assert "no connection" in _error(["ingest", offline, "--out", out], capsys, code=1)
    assert not (tmp_path / "col").exists()


def test_gbif_json_is_still_read_as_gbif(tmp_path):
    page = tmp_path / "page.json"
    page.write_text(json.dumps({"results": [{"key": 1, "scientificName": "Abies alba"}]}), encoding="utf-8")
    assert detect_source(page) is read_gbif_json


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ({"id": "https://h.org/iiif/a", "type": "ImageService3", "profile": "level2"},
         "https://h.org/iiif/a/full/!2048,2048/0/default.jpg"),
        ({"@id": "https://h.org/iiif/a/info.json", "profile": "http://iiif.io/api/image/2/level0.json"},
         "https://h.org/iiif/a/full/full/0/default.jpg"),
        ({"id": "https://h.org/iiif/a/", "type": "ImageService3", "profile": "level0"},
         "https://h.org/iiif/a/full/max/0/default.jpg"),
        ({"@id": "https://h.org/iiif/a", "profile": "level0", "sizes": [{"width": 1000, "height": 1500},
                                                                         {"width": 4000, "height": 6000}]},
         "https://h.org/iiif/a/full/1000,/0/default.jpg"),
    ],
)
def test_image_requests_are_bounded(service, expected):
    assert image_request(str(service.get("id") or service.get("@id")), service) == expected


def test_plain_text_drops_markup_even_when_escaped():
    assert plain_text("&lt;script&gt;x&lt;/script&gt;Viola") == "Viola"
    assert plain_text("a < b and c > d") == "a < b and c > d"  # not markup: kept
    assert plain_text("Rosa <img src=x onerror=alert(1)") == "Rosa"


def test_map_option_names_a_label_term(herbarium, tmp_path, capsys):
    url = herbarium.serve("/manifests/X-9.json", _v3(herbarium.url, "X-9", [("Sheet No.", "X-9"), ("Taxon", "Viola")]))
    out = tmp_path / "col"
    _ingest(url, out, capsys, "--map", "sheet no=catalogNumber", "--quiet")
    assert _rows(out)["X-9"]["scientificName"] == "Viola"
    assert "not a Darwin Core term" in _error(["ingest", url, "--out", str(out), "--map", "Taxon=kingdom"], capsys)
