"""A collection is a transactional unit: one writer at a time, clean-up that removes only its own
work, index and manifest committed together, nothing lost when a writer is killed at any step,
and a running assistant that notices what writers committed."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import closed_port

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "writer_faults.py"


def _folder(root: Path, prefix: str, n: int, shade: int = 90) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "scientificName", "catalogNumber"])
        for i in range(n):
            Image.new("RGB", (40, 56), (shade, 50 * i % 255, 30 + 40 * i)).save(root / f"{prefix}{i}.png")
            writer.writerow([f"{prefix}{i}.png", f"Viola {prefix.lower()}{i}", f"{prefix}-{i}"])
    return root


def _unreachable(path: Path, n: int) -> Path:
    port = closed_port()
    results = [{"key": 700 + i, "scientificName": "Rosa canina",
                "media": [{"type": "StillImage", "identifier": f"http://127.0.0.1:{port}/{i}.jpg"}]} for i in range(n)]
    path.write_text(json.dumps({"offset": 0, "limit": 20, "results": results}))
    return path


def _catalog(collection: Path) -> dict[str, tuple[int, str]]:
    """catalogNumber -> (specimen_id, image) of a collection, checking that every image file is there."""
    from retrieval.collections import Collection

    table = Collection.open(collection).specimens()
    rows = {str(c): (int(s), str(i)) for c, s, i in zip(table["catalogNumber"], table["specimen_id"], table["image"])}
    for _, image in rows.values():
        assert not image or (collection / image).is_file(), image
    return rows


def _files(collection: Path) -> dict[str, bytes]:
    """The collection's files and their content, but the lock file (which names its last holder), SQLite's
    shared-memory index and an empty write-ahead log: those exist while a connection is open (garbage collection
    decides when) and hold no data. A write-ahead log with content is compared like any file."""
    return {str(p.relative_to(collection)): p.read_bytes() for p in sorted(collection.rglob("*"))
            if p.is_file() and p.name != ".lock" and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


def _herbaria(*args: str, stderr: Path | None = None, **popen: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=open(stderr, "w") if stderr else subprocess.PIPE, **popen)


def _paused(target: str, marker: Path, gate: Path, stderr: Path, *cli: str) -> subprocess.Popen:
    return _herbaria(str(DRIVER), "pause", target, str(marker), str(gate), "--", *cli, stderr=stderr)


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- two writers


def test_a_failing_ingest_never_removes_what_a_concurrent_one_stored(tmp_path):
    """Issue 8 item 3: a failing ingest's clean-up used to delete a concurrent ingest's specimens (which exited 0)."""
    out = tmp_path / "col"
    page = _unreachable(tmp_path / "page.json", 2)
    good = _folder(tmp_path / "good", "G", 3)
    marker, gate = tmp_path / "paused", tmp_path / "gate"
    # A creates the collection, then stops just before downloading (which will fail: no network).
    failing = _paused("retrieval.collections.media:MediaFetcher.fetch", marker, gate, tmp_path / "a.err",
                      "ingest", str(page), "--out", str(out), "--quiet")
    _wait_for(lambda: marker.exists() or failing.poll() is not None, "the first ingest to reach its download")
    second = _herbaria("-m", "herbaria", "ingest", str(good), "--out", str(out), "--quiet",
                       stderr=tmp_path / "b.err")
    # B either finishes (nothing stops it) or says it waits for A; then A goes on and fails.
    _wait_for(lambda: second.poll() is not None or "busy" in (tmp_path / "b.err").read_text(), "the second ingest")
    gate.touch()
    assert failing.wait(60) == 1
    assert second.wait(60) == 0, (tmp_path / "b.err").read_text()
    assert "no network" in (tmp_path / "a.err").read_text()
    assert set(_catalog(out)) == {"G-0", "G-1", "G-2"}  # B's specimens survived A's clean-up


def test_two_ingests_creating_one_new_folder_both_succeed(tmp_path):
    """The second used to fail with 'exists and is not a Herbaria collection' while the first was creating it."""
    out = tmp_path / "col"
    first_src, second_src = _folder(tmp_path / "a", "A", 2), _folder(tmp_path / "b", "B", 2, shade=200)
    marker, gate = tmp_path / "paused", tmp_path / "gate"
    first = _paused("retrieval.collections.collection:Collection._db", marker, gate, tmp_path / "a.err",
                    "ingest", str(first_src), "--out", str(out), "--quiet")
    _wait_for(lambda: marker.exists() or first.poll() is not None, "the first ingest to start creating the folder")
    second = _herbaria("-m", "herbaria", "ingest", str(second_src), "--out", str(out), "--quiet",
                       stderr=tmp_path / "b.err")
    _wait_for(lambda: second.poll() is not None or "busy" in (tmp_path / "b.err").read_text(), "the second ingest")
    gate.touch()
    assert first.wait(60) == 0, (tmp_path / "a.err").read_text()
    assert second.wait(60) == 0, (tmp_path / "b.err").read_text()
    assert set(_catalog(out)) == {"A-0", "A-1", "B-0", "B-1"}


@pytest.fixture
def held(tmp_path):
    """A collection whose write lock another process holds (until the test ends)."""
    from retrieval.collections import ingest

    out = tmp_path / "col"
    ingest(_folder(tmp_path / "src", "S", 2), out, progress=False)
    holder = _herbaria("-c", "import sys, time\nfrom retrieval.collections.locking import collection_lock\n"
                             "with collection_lock(sys.argv[1], purpose='curator script'):\n"
                             "    print('held', flush=True)\n    time.sleep(120)\n", str(out))
    assert holder.stdout.readline().strip() == "held"
    yield out
    holder.kill()
    holder.wait()


def test_a_busy_collection_makes_ingest_exit_2_with_one_line(held, tmp_path):
    before = _files(held)
    started = time.monotonic()
    done = _herbaria("-m", "herbaria", "ingest", str(_folder(tmp_path / "more", "M", 1)), "--out", str(held),
                     "--wait", "0.5", "--quiet")
    out, err = done.communicate(timeout=60)
    assert done.returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("herbaria:")]
    assert len(lines) == 1 and "col is busy after waiting 0.5 s: curator script (pid" in lines[0]
    assert "waiting up to 0.5 s" in err  # it said it was waiting first
    assert time.monotonic() - started >= 0.5
    assert _files(held) == before


def test_every_writer_takes_the_lock(held, tmp_path):
    from captioning.api import train_captioner
    from retrieval.flora import add_descriptions
    from retrieval.vectors import build_index
    from retrieval.collections import CollectionBusy

    flora = tmp_path / "flora.csv"
    flora.write_text("taxon,text\nViola s0,Leaves opposite.\n", encoding="utf-8")
    with pytest.raises(CollectionBusy, match="curator script"):
        build_index(held, model="tiny-test", progress=False, wait=0.2)
    with pytest.raises(CollectionBusy, match="busy"):
        add_descriptions(held, [flora], text_model="tiny-test", progress=False, wait=0)
    with pytest.raises(CollectionBusy, match="busy"):
        train_captioner(held, captioner="tiny-test", descriptions={"Viola s0": "Leaves opposite."}, wait=0,
                        progress=False)
    assert not (held / "index").exists() and not (held / "descriptions").exists()
    assert not (held / "captioner").exists()


def test_the_lock_is_reentrant_in_a_thread_and_exclusive_between_threads(tmp_path):
    import threading

    from retrieval.collections import CollectionBusy, collection_lock

    seen = []
    with collection_lock(tmp_path, purpose="outer"):
        with collection_lock(tmp_path, purpose="inner", wait=0):  # the same thread takes it again
            seen.append("nested")

        def other() -> None:
            try:
                with collection_lock(tmp_path, purpose="other thread", wait=0.1):
                    seen.append("other got it")
            except CollectionBusy:
                seen.append("other busy")

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == ["nested", "other busy"]


# --------------------------------------------------------------------------- nothing stored


def test_an_ingest_that_stores_nothing_exits_2_and_leaves_no_folder(tmp_path):
    """Issue 8 item 9: every row failing used to exit 0 and print '0 specimens' for a folder never created."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "scientificName", "catalogNumber"])
        writer.writerows([f"missing{i}.jpg", "Rosa canina", str(i)] for i in range(5000))
    out = tmp_path / "col"
    done = _herbaria("-m", "herbaria", "ingest", str(src), "--out", str(out), "--quiet")
    stdout, stderr = done.communicate(timeout=120)
    assert done.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("herbaria:")]  # after the first rows' warnings
    assert len(errors) == 1 and errors[0] == stderr.splitlines()[-1]
    assert errors[0].startswith("herbaria: error: 0 of 5000 records ingested from src: 5000 image file not found")
    assert errors[0].endswith("no collection was created")
    assert "specimens" not in stdout
    assert not out.exists()

    from retrieval.collections import NothingIngested, ingest

    ingest(_folder(tmp_path / "good", "G", 1), out, progress=False)
    before = _files(out)
    with pytest.raises(NothingIngested, match="0 of 5000 records ingested .*the collection is unchanged") as caught:
        ingest(src, out, progress=False)
    assert caught.value.summary["skipped"] == 5000
    assert _files(out) == before


def test_a_failed_ingest_into_an_empty_folder_leaves_it_empty(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    from retrieval.errors import NetworkUnavailable
    from retrieval.collections import ingest

    with pytest.raises(NetworkUnavailable):
        ingest(_unreachable(tmp_path / "page.json", 3), out, progress=False)
    assert out.is_dir() and list(out.iterdir()) == []


# --------------------------------------------------------------------------- killed at every step


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """Every writer killed at each of its filesystem steps (see writer_faults.py), then run again."""
    root = tmp_path_factory.mktemp("faults")
    done = _herbaria(str(DRIVER), "crash", str(root))
    stdout, stderr = done.communicate(timeout=900)
    assert done.returncode == 0, stderr[-3000:]
    steps: dict[str, list[dict]] = {}
    for line in stdout.splitlines():
        record = json.loads(line)
        steps.setdefault(record["scenario"], []).append(record)
    return root, steps


def _steps(killed, scenario: str) -> list[tuple[Path, Path, dict]]:
    root, steps = killed
    *each, last = steps[scenario]
    assert last["finished"] == 0 and last["steps"] == len(each) >= 10, last
    for step in each:
        assert step["resume"] == 0, f"{scenario}: re-running after a kill before {step['op']} failed"
    return [(root / scenario / f"crashed-{s['step']}", root / scenario / f"resumed-{s['step']}", s) for s in each]


def _vectors(index_folder: Path) -> dict[int, bytes]:
    from retrieval.vectors import SpecimenIndex

    index = SpecimenIndex.load(index_folder)
    return {int(i): index.vector(int(i)).tobytes() for i in index.ids()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_ingest_into_a_collection_loses_nothing(killed):
    root = killed[0]
    base = root / "base-existing" / "col"
    before, vectors = _catalog(base), _vectors(base / "index")
    reference = _catalog(root / "ingest-existing" / "reference" / "col")
    assert len(reference) == 6
    for crashed, resumed, step in _steps(killed, "ingest-existing"):
        where = f"killed before {step['op']}"
        now = _catalog(crashed / "col")
        assert {c: now[c] for c in before} == before, where  # same ids, images still there
        for _, image in before.values():
            assert _digest(crashed / "col" / image) == _digest(base / image), where
        assert _vectors(crashed / "col" / "index") == vectors, where
        assert _catalog(resumed / "col") == reference, where


def test_killed_ingest_into_a_new_folder_can_always_be_run_again(killed):
    root = killed[0]
    reference = _catalog(root / "ingest-new" / "reference" / "col")
    assert len(reference) == 3
    for scenario in ("ingest-new", "ingest-new-failing"):
        for crashed, resumed, step in _steps(killed, scenario):
            if (crashed / "col" / "collection.json").exists():
                _catalog(crashed / "col")  # a collection it left opens
            assert _catalog(resumed / "col") == reference, f"{scenario}: killed before {step['op']}"
    # run to the end, the failing ingest left nothing behind
    assert not (root / "ingest-new-failing" / "reference" / "col").exists()


def test_killed_indexing_keeps_a_loadable_index(killed):
    """Issue 8 item 7: a kill between replacing the index file and its manifest used to leave neither usable."""
    root = killed[0]
    base = root / "base-index" / "col"
    assert not (base / "index" / "current").exists()  # it starts from the single-pair layout of 51d512c
    before = _vectors(base / "index")
    assert len(before) == 3
    reference = _vectors(root / "index" / "reference" / "col" / "index")
    assert len(reference) == 6
    for crashed, resumed, step in _steps(killed, "index"):
        where = f"killed before {step['op']}"
        now = _vectors(crashed / "col" / "index")
        assert {i: now[i] for i in before} == before and set(now) <= set(reference), where
        assert set(_vectors(resumed / "col" / "index")) == set(reference), where
        versions = [p.name for p in (resumed / "col" / "index").iterdir() if p.name.startswith("v")]
        assert len(versions) <= 2, f"{where}: old versions were not pruned: {versions}"


def _descriptions(collection: Path) -> dict:
    """A collection's stored descriptions: taxa with their text and traits, chunks, embeddings, specimen links."""
    from retrieval.flora import DescriptionIndex

    index = DescriptionIndex.load(collection / "descriptions")
    return {"taxa": {(r.source, r.taxon): (r.text, t) for r, t in zip(index.records, index.traits)},
            "chunks": index.chunks.tolist(), "links": index.specimen_links, "embeddings": index.embeddings}


def _same_descriptions(a: dict, b: dict, *, exact: bool) -> bool:
    """Equal, embeddings bit for bit when `exact` (files left untouched), else to float noise (embedded again)."""
    if any(a[key] != b[key] for key in ("taxa", "chunks", "links")) or a["embeddings"].shape != b["embeddings"].shape:
        return False
    if exact:
        return a["embeddings"].tobytes() == b["embeddings"].tobytes()
    return bool(np.allclose(a["embeddings"], b["embeddings"], atol=1e-5))


@pytest.mark.parametrize("scenario, base", [("descriptions", "base-described"),
                                            ("descriptions-flat", "base-described-flat")])
def test_killed_descriptions_add_keeps_the_previous_descriptions(killed, scenario, base):
    """Issue 8 gap: `descriptions add` moved its files into place one by one, so a kill part-way left a mixed index
    (new taxa with old embeddings, or links of another index). Killed at each step, the collection holds the
    previous descriptions or the new ones, whole; the flat layout of 51d512c is migrated by the run that completes."""
    from retrieval.flora.morphology.index import FILES

    root = killed[0]
    base = root / base / "col"
    assert (base / "descriptions" / "current").is_symlink() == (scenario == "descriptions")
    before = _descriptions(base)
    reference = _descriptions(root / scenario / "reference" / "col")
    assert len(before["taxa"]) == 3 and len(reference["taxa"]) == 5
    assert set(before["links"]) == {"Viola odorata", "Viola hirta", "Viola alba"}
    assert set(reference["links"]) == {*before["links"], "Viola arvensis"}  # V. tricolor has no specimen
    alba = ("viola", "Viola alba Besser")
    assert "glabrous" in reference["taxa"][alba][0] and "glabrous" not in before["taxa"][alba][0]  # described anew
    switched = False
    for crashed, resumed, step in _steps(killed, scenario):
        where = f"{scenario}: killed before {step['op']}"
        now = _descriptions(crashed / "col")
        if _same_descriptions(now, before, exact=True):
            assert not switched, f"{where}: the previous descriptions came back after the new ones were committed"
        else:
            assert _same_descriptions(now, reference, exact=False), f"{where}: neither the previous nor the new index"
            switched = True
        assert _same_descriptions(_descriptions(resumed / "col"), reference, exact=False), where
        folder = resumed / "col" / "descriptions"
        versions = [p.name for p in folder.iterdir() if p.name.startswith("v")]
        assert len(versions) <= 2, f"{where}: old versions were not pruned: {versions}"
        assert all(os.readlink(folder / name) == f"current/{name}" for name in FILES), where
    assert switched  # the last steps ran after the commit


# --------------------------------------------------------------------------- a running server


def test_a_running_assistant_answers_from_what_was_committed_since(tmp_path, caplog):
    """Issue 8 item 9: a server kept serving the state it started with until restarted."""
    from test_agent import make_collection

    from assistant.agent import HerbariaAssistant
    from retrieval.vectors import build_index
    from retrieval.collections import ingest

    collection = make_collection(tmp_path)
    assistant = HerbariaAssistant(collection, captioner="none")
    assert assistant.info()["specimens"] == assistant.info()["indexed"] == 24
    assert assistant.res.find_catalog("Q-0") is None
    assert not assistant.res.refresh()  # nothing changed: nothing is loaded again

    src = tmp_path / "oaks"
    src.mkdir()
    with open(src / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "scientificName", "family", "catalogNumber"])
        for i in range(2):
            Image.new("RGB", (96, 128), (20 + 90 * i, 140, 60)).save(src / f"q{i}.png")
            writer.writerow([f"q{i}.png", "Quercus robur L.", "Fagaceae", f"Q-{i}"])
    ingest(src, collection, progress=False)
    build_index(collection, model="tiny-test", progress=False)

    result = assistant.ask("Quercus robur")  # the next turn loads what was committed
    assert assistant.info()["specimens"] == assistant.info()["indexed"] == 26
    assert {s["catalogNumber"] for s in result.specimens} >= {"Q-0", "Q-1"}

    # A description index caught half-written: the turn is answered from the state already loaded.
    manifest = collection / "descriptions" / "manifest.json"
    good = manifest.read_bytes()
    manifest.write_text("{not json")
    with caplog.at_level("WARNING"):
        assert assistant.ask("Quercus robur").specimens
    assert "could not be loaded again" in caplog.text and assistant.info()["specimens"] == 26
    manifest.write_bytes(good)
    assert assistant.res.refresh()
