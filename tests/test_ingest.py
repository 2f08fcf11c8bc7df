"""Ingest into a collection: real folders and archives, bad images, upserts, interruption and resume, CLI."""

from __future__ import annotations

import csv
import functools
import json
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from conftest import closed_port

from herbaria.cli import main
from retrieval.collections import COLUMNS, Collection
from retrieval.errors import BadInput, NetworkUnavailable
from retrieval.collections import ingest
from retrieval.collections import read_dwca


def _folder(root: Path, n: int, *, names: list[str] | None = None) -> Path:
    """n distinct small JPEG sheets with a labels.csv."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (40, 60), (i * 20 % 255, 100, 200 - i * 10 % 200)).save(root / f"s{i}.jpg", quality=90)
        rows.append([f"s{i}.jpg", (names or [])[i] if names else f"Viola species{i}", f"C-{i}"])
    _labels(root, rows)
    return root


def _labels(root: Path, rows: list[list[str]]) -> None:
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "scientificName", "catalogNumber"])
        writer.writerows(rows)


def _ids(collection: str | Path) -> dict[str, int]:
    df = Collection.open(collection).specimens()
    return dict(zip(df["catalogNumber"], df["specimen_id"], strict=True))


def test_harvard_ingest_then_reingest(shared_data, tmp_path):
    out = tmp_path / "herbarium"
    summary = ingest(shared_data / "specimens" / "harvard", out, progress=False)
    assert summary["added"] == 45 and summary["skipped"] == 0
    assert summary["total"] == summary["with_image"] == 45
    collection = Collection.open(out)
    df = collection.specimens()
    assert list(df.columns) == list(COLUMNS)
    assert len(collection) == len(df) == 45
    assert sorted(df["specimen_id"]) == list(range(1, 46))
    assert df["scientificName"].nunique() == 9
    for sid, image in zip(df["specimen_id"], df["image"], strict=True):
        assert image.startswith("images/")
        path = collection.image_path(sid)
        assert path == out / image and path.is_file()
    assert str(df["year"].dtype) == "Int64"
    info = collection.info
    assert (info["specimens"], info["with_image"]) == (45, 45)
    assert info["sources"][0]["name"] == "harvard" and info["sources"][0]["status"] == "complete"
    with pytest.raises(KeyError):
        collection.image_path(999)

    again = ingest(shared_data / "specimens" / "harvard", out, progress=False)
    assert (again["added"], again["updated"], again["unchanged"], again["total"]) == (0, 0, 45, 45)
    after = Collection.open(out).specimens()
    assert after["specimen_id"].tolist() == df["specimen_id"].tolist()
    assert after["image"].tolist() == df["image"].tolist()
    assert len(list((out / "images").rglob("*.jpg"))) == 45


def _bomb(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 12_500, 12_500, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) +
                     chunk(b"IEND", b""))


def test_bad_images_are_skipped_with_reasons(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (30, 40), (10, 200, 10)).save(src / "good.jpg")
    Image.new("RGB", (30, 40), (10, 10, 200)).save(src / "good.png")
    good = (src / "good.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "text.jpg").write_text("not a picture")
    _bomb(src / "bomb.png")
    _labels(src, [["good.jpg", "A a", "1"], ["good.png", "B b", "2"], ["truncated.jpg", "C c", "3"],
                  ["text.jpg", "D d", "4"], ["bomb.png", "E e", "5"], ["missing.jpg", "F f", "6"]])
    out = tmp_path / "col"
    summary = ingest(src, out, progress=False)
    assert (summary["added"], summary["skipped"]) == (2, 4)
    assert summary["reasons"] == {"unreadable image": 3, "image file not found": 1}
    assert any("truncated.jpg" in e for e in summary["examples"])
    df = Collection.open(out).specimens()
    assert sorted(df["catalogNumber"]) == ["1", "2"]
    stored = sorted(p.suffix for p in (out / "images").rglob("*") if p.is_file())
    assert stored == [".jpg", ".png"]  # nothing of the bad files entered the collection


def _fail_on_second_batch(monkeypatch):
    """Make the second batch's commit fail like a pulled disk; returns the real `Collection.upsert`."""
    original = Collection.upsert
    calls = {"n": 0}

    def fail_on_second_batch(self, rows, *, source):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk unplugged")
        return original(self, rows, source=source)

    monkeypatch.setattr(Collection, "upsert", fail_on_second_batch)
    return original


def test_interrupted_ingest_loses_nothing_and_resumes(tmp_path, monkeypatch):
    src = _folder(tmp_path / "src", 10)
    out = tmp_path / "col"
    original = _fail_on_second_batch(monkeypatch)
    with pytest.raises(RuntimeError, match="disk unplugged"):
        ingest(src, out, progress=False, batch_size=3)
    monkeypatch.setattr(Collection, "upsert", original)

    interrupted = Collection.open(out)
    assert len(interrupted) == 3  # the first batch was committed and exported
    assert interrupted.info["sources"][0]["status"] == "interrupted"
    first_ids = _ids(out)

    summary = ingest(src, out, progress=False, batch_size=3)
    assert (summary["added"], summary["unchanged"], summary["total"]) == (7, 3, 10)
    ids = _ids(out)
    assert sorted(ids.values()) == list(range(1, 11))
    assert all(ids[k] == v for k, v in first_ids.items())  # committed specimens kept their ids
    assert Collection.open(out).info["sources"][0]["status"] == "complete"


def test_stale_snapshot_is_repaired_on_open(tmp_path):
    """A process killed between committing a batch and exporting it: the next open exports it."""
    out = tmp_path / "col"
    ingest(_folder(tmp_path / "src", 2), out, progress=False)
    store = Collection.open(out)
    store.upsert([{"dedupe_key": "occ:x1", "record_hash": "h", "occurrenceID": "x1", "scientificName": "Rosa canina",
                   "eventDate": "1893-06-01"}], source="manual")
    store.close()
    assert len(Collection(out)) == 2  # the snapshot on disk is stale ...
    reopened = Collection.open(out)
    assert len(reopened) == 3  # ... and open() rebuilt it
    row = reopened.specimens().set_index("occurrenceID").loc["x1"]
    assert row["year"] == 1893 and row["image"] == ""


def test_changed_labels_update_in_place(tmp_path):
    src = _folder(tmp_path / "src", 4)
    out = tmp_path / "col"
    ingest(src, out, progress=False)
    before = _ids(out)
    _labels(src, [[f"s{i}.jpg", "Viola odorata" if i == 2 else f"Viola species{i}", f"C-{i}"] for i in range(4)])
    summary = ingest(src, out, progress=False)
    assert (summary["added"], summary["updated"], summary["unchanged"]) == (0, 1, 3)
    assert _ids(out) == before
    df = Collection.open(out).specimens().set_index("catalogNumber")
    assert df.loc["C-2", "scientificName"] == "Viola odorata" and df.loc["C-2", "genus"] == "Viola"


def test_duplicate_rows_in_one_source(tmp_path):
    src = _folder(tmp_path / "src", 3)
    _labels(src, [["s0.jpg", "A a", "C-1"], ["s1.jpg", "A a", "C-1"], ["s2.jpg", "B b", "C-2"]])
    summary = ingest(src, tmp_path / "col", progress=False)
    assert (summary["added"], summary["skipped"]) == (2, 1)
    assert summary["reasons"] == {"duplicate record in source": 1}


def test_dwca_ingest_is_idempotent(shared_data, tmp_path):
    out = tmp_path / "col"
    first = ingest(shared_data / "dwca" / "gbif-results.zip", out, progress=False)
    assert (first["added"], first["total"], first["with_image"]) == (158, 158, 0)
    again = ingest(shared_data / "dwca" / "gbif-results.zip", out, progress=False)
    assert (again["added"], again["unchanged"], again["total"]) == (0, 158, 158)
    more = ingest(shared_data / "dwca" / "dwca-simple-csv.zip", out, progress=False)
    assert (more["added"], more["total"]) == (3, 161)
    df = Collection.open(out).specimens().set_index("occurrenceID")
    assert df["specimen_id"].is_unique
    records = list(read_dwca(shared_data / "dwca" / "gbif-results.zip"))
    dated = [r for r in records if r.get("eventDate") or r["verbatim"].get("year")]
    assert df["year"].notna().sum() == len(dated) + 2  # + the simple CSV's two dated rows
    with_year = [r for r in records if r["verbatim"].get("year")]
    assert len(with_year) > 40  # dwc:year agrees with the year parsed from eventDate ("Tue Mar 20 ... 1934")
    assert all(df.loc[r["occurrenceID"], "year"] == int(r["verbatim"]["year"]) for r in with_year)


def test_bad_archive_touches_nothing(shared_data, tmp_path):
    out = tmp_path / "col"
    ingest(_folder(tmp_path / "src", 2), out, progress=False)
    before = (out / "specimens.parquet").read_bytes()
    with pytest.raises(BadInput, match="dwca-malformed-descriptor: invalid Darwin Core Archive"):
        ingest(shared_data / "dwca" / "dwca-malformed-descriptor", out, progress=False)
    assert (out / "specimens.parquet").read_bytes() == before
    with pytest.raises(BadInput, match="invalid Darwin Core Archive"):
        ingest(shared_data / "dwca" / "dwca-invalid-simple-two.zip", tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_out_must_be_a_collection_or_empty(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.docx").write_text("x")
    with pytest.raises(BadInput, match="exists and is not a Herbaria collection"):
        ingest(_folder(tmp_path / "src", 1), tmp_path / "busy", progress=False)
    with pytest.raises(BadInput, match="not a Herbaria collection"):
        Collection.open(tmp_path / "busy")


# --------------------------------------------------------------------------- remote media


@pytest.fixture
def media_server(tmp_path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def _gbif_page(path: Path, media: list[str | None]) -> Path:
    results = []
    for i, url in enumerate(media):
        occ = {"key": 1000 + i, "scientificName": f"Amanita muscaria {i}", "eventDate": "2024-07-19",
               "license": "http://creativecommons.org/licenses/by/4.0/legalcode"}
        if url:
            occ["media"] = [{"type": "StillImage", "identifier": url}]
        results.append(occ)
    path.write_text(json.dumps({"offset": 0, "limit": 20, "results": results}))
    return path


def test_gbif_json_with_downloaded_media(tmp_path, media_server):
    base, root = media_server
    Image.new("RGB", (50, 30), (120, 30, 30)).save(root / "a.jpg")
    (root / "fake.jpg").write_text("<html>login required</html>")
    page = _gbif_page(tmp_path / "page.json", [f"{base}/a.jpg", f"{base}/fake.jpg", f"{base}/gone.jpg", None])
    out = tmp_path / "col"
    summary = ingest(page, out, progress=False)
    assert (summary["added"], summary["no_image"], summary["downloaded"]) == (4, 2, 2)
    assert summary["reasons"] == {"unreadable image": 1, "download failed": 1}
    assert (summary["total"], summary["with_image"]) == (4, 1)
    df = Collection.open(out).specimens().set_index("occurrenceID")
    assert df.loc["1000", "imageUrl"] == f"{base}/a.jpg" and (out / df.loc["1000", "image"]).is_file()
    assert df.loc["1001", "image"] == "" and df.loc["1001", "imageUrl"] == f"{base}/fake.jpg"
    assert df.loc["1003", "imageUrl"] == ""
    assert df.loc["1000", "year"] == 2024

    (root / "a.jpg").unlink()  # a second run needs neither the server's file nor a new download
    again = ingest(page, out, progress=False)
    assert again["unchanged"] >= 2 and again["added"] == 0 and again["downloaded"] == 0
    assert Collection.open(out).info["with_image"] == 1


def test_no_network_fails_early_and_leaves_nothing(tmp_path):
    port = closed_port()
    page = _gbif_page(tmp_path / "page.json", [f"http://127.0.0.1:{port}/{i}.jpg" for i in range(30)])
    with pytest.raises(NetworkUnavailable, match="cannot download 30 media files: no network"):
        ingest(page, tmp_path / "col", progress=False)
    assert not (tmp_path / "col").exists()

    offline = ingest(page, tmp_path / "col", progress=False, download=False)
    assert (offline["added"], offline["no_image"], offline["with_image"]) == (30, 30, 0)
    df = Collection.open(tmp_path / "col").specimens()
    assert df["imageUrl"].str.startswith("http://127.0.0.1").all()


# --------------------------------------------------------------------------- CLI


def test_cli_ingest(shared_data, tmp_path, capsys):
    src = shared_data / "specimens" / "ml-herbarium"
    out = tmp_path / "col"
    assert main(["ingest", str(src), "--out", str(out), "--limit", "5", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "added 5" in text and "5 specimens, 5 with images" in text
    assert main(["ingest", str(src), "--out", str(out), "--limit", "7", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["added"], summary["unchanged"], summary["total"]) == (2, 5, 7)


def test_cli_mapping(shared_data, tmp_path, capsys):
    out = tmp_path / "col"
    code = main(["ingest", str(shared_data / "specimens" / "violaceae"), "--out", str(out), "--limit", "3",
                 "--map", "speciesCode=scientificName", "--json"])
    assert code == 0
    capsys.readouterr()
    assert set(Collection.open(out).specimens()["scientificName"]) == {"V01"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{dwca}/dwca-invalid-simple-two.zip"], "dwca-invalid-simple-two.zip: invalid Darwin Core Archive"),
        (["{dwca}/dwca-star-test-archive.zip"], "core is Taxon, not Occurrence"),
        (["{tmp}/nothing-here"], "source not found"),
        (["{specimens}/harvard", "--map", "species"], "--map expects COLUMN=dwcTerm"),
        (["{specimens}/harvard", "--map", "file=media", "labelz=genus"], "no column 'labelz' to map"),
        (["{specimens}/harvard", "--limit", "-1"], "--limit must be 0 or more"),
    ],
)
def test_cli_bad_input_exit_2(shared_data, tmp_path, capsys, args, message):
    where = {"dwca": shared_data / "dwca", "specimens": shared_data / "specimens", "tmp": tmp_path}
    argv = ["ingest", *(a.format(**where) for a in args), "--out", str(tmp_path / "col")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("herbaria: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "col").exists()


def test_cli_no_network_exit_1(tmp_path, capsys):
    page = _gbif_page(tmp_path / "page.json", [f"http://127.0.0.1:{closed_port()}/x.jpg"])
    assert main(["ingest", str(page), "--out", str(tmp_path / "col"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no network connection" in err and "--no-download" in err


def test_store_schema(tmp_path):
    """The store keeps the dedupe key unique: the database itself refuses duplicates."""
    out = tmp_path / "col"
    ingest(_folder(tmp_path / "src", 2), out, progress=False)
    db = sqlite3.connect(out / "collection.sqlite")
    try:
        keys = [k for (k,) in db.execute("SELECT dedupe_key FROM specimens")]
        assert sorted(keys) == ["cat:@src:C-0", "cat:@src:C-1"]
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO specimens (dedupe_key, source, record_hash, added, updated) "
                       "VALUES ('cat:@src:C-0', 's', 'h', 0, 0)")
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_a_failed_batch_removes_the_images_it_copied_and_nothing_else(tmp_path, monkeypatch):
    """Clean-up takes back exactly what the failing run made: its uncommitted copies, not images already stored."""
    out = tmp_path / "col"
    ingest(_folder(tmp_path / "first", 2), out, progress=False)
    stored = {p.relative_to(out) for p in (out / "images").rglob("*.jpg")}
    assert len(stored) == 2
    second = _folder(tmp_path / "second", 6)  # s0, s1 are the same pictures as the first source's: already stored
    _fail_on_second_batch(monkeypatch)
    with pytest.raises(RuntimeError, match="disk unplugged"):
        ingest(second, out, progress=False, batch_size=3)
    table = Collection.open(out).specimens()
    referenced = {Path(p) for p in table["image"]}
    now = {p.relative_to(out) for p in (out / "images").rglob("*.jpg")}
    assert len(table) == 5 and stored < referenced  # the first batch (s0-s2) was committed
    assert now == referenced  # s3-s5 were copied, never committed, and are gone; nothing else was removed
    assert not [p for p in (out / "images").iterdir() if p.is_dir() and not any(p.iterdir())]
