"""One rule for every reader: local media resolve inside the source folder, remote media are http(s).

Each test plants a readable image outside the source (`private/secret.jpg`) and
checks that no source kind can get it copied into a collection: GBIF JSON, image
folders with and without labels.csv, CSV rows, Darwin Core Archives (extension
media, descriptor file locations, archive members). Refused rows are counted
under their reason and named by row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from herbaria.cli import main
from retrieval.collections import Collection
from retrieval.errors import BadInput
from retrieval.collections import ingest
from retrieval.collections import read_dwca

OUTSIDE = "media refused: outside the source folder"
NOT_HTTP = "media refused: not an http(s) URL"


def _image(path: Path, color: tuple[int, int, int]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), color).save(path, "JPEG")
    return path.read_bytes()


@pytest.fixture
def secret(tmp_path) -> Path:
    """An image the source must not reach (beside, not inside, every source folder)."""
    path = tmp_path / "private" / "secret.jpg"
    _image(path, (200, 10, 10))
    return path


def _stored(out: Path) -> list[bytes]:
    images = out / "images"
    return sorted(p.read_bytes() for p in images.rglob("*") if p.is_file()) if images.is_dir() else []


def _labels(folder: Path, files: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "scientificName", "catalogNumber"])
        writer.writerows([name, "Viola alba", f"C-{i}"] for i, name in enumerate(files))


# --------------------------------------------------------------------------- GBIF JSON


def _gbif(path: Path, identifiers: list[str]) -> Path:
    results = [{"key": 1000 + i, "scientificName": "Viola alba", "media": [{"type": "StillImage", "identifier": ident}]}
               for i, ident in enumerate(identifiers)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results}))
    return path


@pytest.mark.parametrize(
    ("identifier", "reason"),
    [
        ("{secret}", OUTSIDE),  # absolute path
        ("../private/secret.jpg", OUTSIDE),
        ("secret.jpg", "image file not found"),  # relative to the JSON's folder, not to the working directory
        ("file://{secret}", NOT_HTTP),
        ("FILE:{secret}", NOT_HTTP),
        ("ftp://127.0.0.1/secret.jpg", NOT_HTTP),
        ("data:image/jpeg;base64,/9j/4AAQ", NOT_HTTP),
        ("http:///secret.jpg", NOT_HTTP),  # no host
    ],
    ids=["absolute", "dotdot", "cwd-relative", "file-url", "file-scheme-upper", "ftp", "data", "no-host"],
)
def test_gbif_json_local_identifiers_cannot_leave_its_folder(tmp_path, secret, monkeypatch, identifier, reason):
    monkeypatch.chdir(secret.parent)  # so "secret.jpg" would name the secret relative to the working directory
    page = _gbif(tmp_path / "download" / "page.json", [identifier.format(secret=secret)])
    out = tmp_path / "col"
    summary = ingest(page, out, progress=False)
    assert _stored(out) == []
    assert (summary["added"], summary["no_image"]) == (1, 1)  # the specimen stays, without the image
    assert summary["reasons"] == {reason: 1}
    if reason != "image file not found":
        (example,) = summary["examples"]
        assert "page.json result 1" in example and "refused" in example


def test_gbif_json_image_beside_the_json_is_used(tmp_path, secret):
    beside = _image(tmp_path / "download" / "beside.jpg", (10, 200, 10))
    page = _gbif(tmp_path / "download" / "page.json", ["beside.jpg", str(secret)])
    out = tmp_path / "col"
    summary = ingest(page, out, progress=False)
    assert _stored(out) == [beside]
    assert summary["reasons"] == {OUTSIDE: 1}


def test_gbif_json_takes_the_first_acceptable_still_image(tmp_path, secret):
    beside = _image(tmp_path / "download" / "beside.jpg", (10, 200, 10))
    occ = {"key": 7, "media": [{"type": "StillImage", "identifier": f"file://{secret}"},
                               {"type": "StillImage", "identifier": "beside.jpg"}]}
    page = tmp_path / "download" / "one.json"
    page.write_text(json.dumps(occ))
    summary = ingest(page, tmp_path / "col", progress=False)
    assert _stored(tmp_path / "col") == [beside] and summary["reasons"] == {}


# --------------------------------------------------------------------------- image folders and CSV


def test_symlink_out_of_a_folder_without_labels_is_refused(tmp_path, secret):
    src = tmp_path / "scans"
    own = _image(src / "own.jpg", (10, 10, 200))
    (src / "leak.jpg").symlink_to(secret)
    (src / "again.jpg").symlink_to(src / "own.jpg")  # a link that stays inside is fine
    (src / "elsewhere").symlink_to(secret.parent, target_is_directory=True)
    out = tmp_path / "col"
    summary = ingest(src, out, progress=False)
    assert _stored(out) == [own]
    assert summary["reasons"].get(OUTSIDE, 0) >= 1 and set(summary["reasons"]) == {OUTSIDE}
    assert summary["added"] == 2 and summary["skipped"] == summary["reasons"][OUTSIDE]
    assert any(e.startswith("leak.jpg: ") and "outside the source folder" in e for e in summary["examples"])
    assert sorted(Collection.open(out).specimens()["image"].str.len() > 0) == [True, True]


def test_csv_rows_outside_the_folder_are_refused_with_their_line(tmp_path, secret):
    src = tmp_path / "src"
    own = _image(src / "own.jpg", (10, 10, 200))
    (src / "leak.jpg").symlink_to(secret)
    _labels(src, ["own.jpg", "leak.jpg", "../private/secret.jpg", str(secret), f"file://{secret}",
                  "ftp://127.0.0.1/x.jpg"])
    out = tmp_path / "col"
    summary = ingest(src, out, progress=False)
    assert _stored(out) == [own]
    assert (summary["added"], summary["skipped"]) == (1, 5)
    assert summary["reasons"] == {OUTSIDE: 3, NOT_HTTP: 2}
    for line in (3, 4, 5, 6, 7):
        assert sum(f"labels.csv line {line}: " in e for e in summary["examples"]) == 1


def test_cli_prints_refusal_counts_and_rows(tmp_path, secret, capsys, caplog):
    src = tmp_path / "src"
    _image(src / "own.jpg", (10, 10, 200))
    _labels(src, ["own.jpg", "../private/secret.jpg"])
    assert main(["ingest", str(src), "--out", str(tmp_path / "col"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1" in out and f"1 x {OUTSIDE}" in out
    assert any("labels.csv line 3" in r.getMessage() and "outside the source folder" in r.getMessage()
               for r in caplog.records)


# --------------------------------------------------------------------------- Darwin Core Archives

META = """<archive xmlns="http://rs.tdwg.org/dwc/text/">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>{core}</location></files>
    <id index="0"/>
    <field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
    <field index="2" term="http://rs.tdwg.org/dwc/terms/catalogNumber"/>
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>media.txt</location></files>
    <coreid index="0"/>
    <field index="1" term="http://purl.org/dc/terms/identifier"/>
    <field index="2" term="http://purl.org/dc/terms/type"/>
  </extension>
</archive>
"""


def _dwca_files(media: list[str], core: str = "occurrence.txt") -> dict[str, str]:
    occurrences = "".join(f"{i}\tViola alba\tB-{i}\n" for i in range(1, len(media) + 1))
    rows = "".join(f"{i}\t{m}\tStillImage\n" for i, m in enumerate(media, start=1))
    return {"meta.xml": META.format(core=core), "occurrence.txt": "id\tscientificName\tcatalogNumber\n" + occurrences,
            "media.txt": "coreid\tidentifier\ttype\n" + rows}


def test_dwca_multimedia_paths_outside_the_archive_are_refused(tmp_path, secret):
    archive = tmp_path / "herbarium.zip"
    inside = _image(tmp_path / "ok.jpg", (10, 200, 10))
    media = ["images/ok.jpg", "../../private/secret.jpg", str(secret), f"file://{secret}", "images/../../x.jpg"]
    with zipfile.ZipFile(archive, "w") as zf:
        for name, text in _dwca_files(media).items():
            zf.writestr(name, text)
        zf.writestr("images/ok.jpg", inside)
    out = tmp_path / "col"
    summary = ingest(archive, out, progress=False)
    assert _stored(out) == [inside]
    assert (summary["added"], summary["no_image"]) == (5, 4)
    assert summary["reasons"] == {OUTSIDE: 3, NOT_HTTP: 1}
    assert any("herbarium.zip core row 2: " in e for e in summary["examples"])


def test_dwca_folder_links_and_paths_outside_are_refused(tmp_path, secret):
    folder = tmp_path / "dwca"
    folder.mkdir()
    for name, text in _dwca_files(["images/leak.jpg", "../private/secret.jpg"]).items():
        (folder / name).write_text(text)
    (folder / "images").mkdir()
    (folder / "images" / "leak.jpg").symlink_to(secret)
    out = tmp_path / "col"
    summary = ingest(folder, out, progress=False)
    assert _stored(out) == [] and summary["reasons"] == {OUTSIDE: 2}


@pytest.mark.parametrize("core", ["{private}/occurrence.txt", "../private/occurrence.txt", "linked.txt"])
def test_dwca_descriptor_cannot_name_files_outside(tmp_path, secret, core):
    private_rows = "id\tscientificName\tcatalogNumber\n1\tSecretus privatus\tPRIVATE-1\n"
    (secret.parent / "occurrence.txt").write_text(private_rows)
    folder = tmp_path / "dwca"
    folder.mkdir()
    for name, text in _dwca_files(["x.jpg"], core=core.format(private=secret.parent)).items():
        (folder / name).write_text(text)
    (folder / "linked.txt").symlink_to(secret.parent / "occurrence.txt")
    with pytest.raises(BadInput, match=r"^dwca: '.*' lies outside the archive .*refusing the archive$"):
        list(read_dwca(folder))


def test_dwca_metadata_under_dataset_cannot_be_a_link_outside(tmp_path, secret):
    folder = tmp_path / "dwca"
    folder.mkdir()
    for name, text in _dwca_files(["x.jpg"]).items():
        (folder / name).write_text(text)
    (folder / "dataset").mkdir()
    (secret.parent / "eml.xml").write_text("<eml/>")
    (folder / "dataset" / "d1.xml").symlink_to(secret.parent / "eml.xml")
    with pytest.raises(BadInput, match="'dataset/d1.xml' lies outside the archive"):
        list(read_dwca(folder))


def test_dwca_dataset_folder_cannot_be_a_link_outside(tmp_path, secret):
    folder = tmp_path / "dwca"
    folder.mkdir()
    for name, text in _dwca_files(["x.jpg"]).items():
        (folder / name).write_text(text)
    (secret.parent / "eml.xml").write_text("<eml/>")
    (folder / "dataset").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(BadInput, match="'dataset' lies outside the archive"):
        list(read_dwca(folder))


def test_dwca_linked_image_folder_costs_rows_not_the_archive(tmp_path, secret):
    folder = tmp_path / "dwca"
    folder.mkdir()
    for name, text in _dwca_files(["images/secret.jpg"]).items():
        (folder / name).write_text(text)
    (folder / "images").symlink_to(secret.parent, target_is_directory=True)
    (record,) = read_dwca(folder)
    assert record["media"] == "" and record["problem"].reason == OUTSIDE
    assert "dwca core row 1: media 'images/secret.jpg' resolves outside" in str(record["problem"])


def _zip_with(path: Path, extra: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in _dwca_files(["x.jpg"]).items():
            zf.writestr(name, text)
        info = zipfile.ZipInfo("placeholder")
        info.filename = extra  # ZipInfo() would tidy some names; a hostile archive is not tidy
        zf.writestr(info, "planted")
    return path


@pytest.mark.parametrize("member", ["../planted.txt", "a/../../planted.txt", "/tmp/planted.txt",
                                    "..\\planted.txt", "C:/planted.txt"])
def test_zip_members_that_could_escape_refuse_the_archive(tmp_path, monkeypatch, member):
    extraction = tmp_path / "tmp"
    extraction.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(extraction))
    archive = _zip_with(tmp_path / "evil.zip", member)
    with pytest.raises(BadInput, match=r"^evil.zip: archive member .* is an? (absolute|'\.\.') path; refusing"):
        list(read_dwca(archive))
    assert not list(tmp_path.rglob("planted.txt"))
    assert not list(extraction.iterdir())  # the extraction folder is removed too


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in _dwca_files(["x.jpg"]).items():
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../planted.txt"), "a '..' path"),
        (_member("/tmp/planted.txt"), "an absolute path"),
        (_member("images/a.jpg", tarfile.SYMTYPE, "/etc/hostname"), "a symbolic link"),
        (_member("images/b.jpg", tarfile.SYMTYPE, "../occurrence.txt"), "a symbolic link"),
        (_member("images/c.jpg", tarfile.LNKTYPE, "occurrence.txt"), "a hard link"),
        (_member("fifo", tarfile.FIFOTYPE), "a special file"),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-in", "hardlink", "fifo"],
)
def test_tar_members_that_are_links_or_escape_refuse_the_archive(tmp_path, monkeypatch, member, why):
    extraction = tmp_path / "tmp"
    extraction.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(extraction))
    data = b"planted" if member.isfile() else b""
    archive = _tar_with(tmp_path / "evil.tgz", member, data)
    with pytest.raises(BadInput, match=rf"^evil.tgz: archive member .* is {why}; refusing the archive$"):
        list(read_dwca(archive))
    assert not list(tmp_path.rglob("planted.txt")) and not list(extraction.iterdir())


# --------------------------------------------------------------------------- the rule itself


def test_rule_edges(tmp_path):
    from retrieval.collections import MediaRefused, SourceFolder  # noqa: PLC0415

    folder = SourceFolder(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert folder.media("  https://img.example.org/a.jpg ", "row 1") == "https://img.example.org/a.jpg"
    assert folder.media("sub/../a.jpg", "row 1") == str((tmp_path / "a.jpg").resolve())
    assert folder.media(str(tmp_path / "a.jpg"), "row 1") == str((tmp_path / "a.jpg").resolve())
    for value in ("/etc/hostname", "..", "loop", "a\x00.jpg", os.path.join("..", tmp_path.name + "x", "a.jpg")):
        with pytest.raises(MediaRefused, match="outside the source folder"):
            folder.media(value, "row 1")
    for value in ("javascript:alert(1)", "HTTPS:/no-host", "gopher://h/x", "urn:x:y"):
        with pytest.raises(MediaRefused, match="not an http\\(s\\) URL"):
            folder.media(value, "row 1")
