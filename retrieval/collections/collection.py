"""A specimen collection on disk: a transactional store for writers, a columnar snapshot for readers.

Ingest writes into `collection.sqlite` (WAL, one transaction per batch), so a
crash or Ctrl-C never leaves half a batch and re-running resumes. Everyone else
(index builder, filters, chat, demo) reads `specimens.parquet`, rewritten
atomically (tmp file + os.replace) from the store, so readers never see a torn
file and need no database. A snapshot older than the store (a killed ingest) is
rebuilt when the collection is next opened.

Dedupe: a specimen is the same specimen when its occurrenceID matches; without
one, when institutionCode+catalogNumber match (catalogNumber scoped to the source
when there is no institutionCode); without those, when the source name and the
record's place in it (file name, row id) match. Its `specimen_id` never changes.

Serving reads `specimens.arrow` instead (`Collection.table()`, retrieval/collections/table.py): the same rows,
memory-mapped and dictionary-encoded, written beside each snapshot and naming it; the Arrow file is renamed into
place before the Parquet, and a reader that finds it missing or naming another snapshot rebuilds it.

Writers hold the collection's lock (retrieval.collections.locking); the snapshot repair above
happens only when no writer does.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retrieval.errors import BadInput, HerbariaError
from retrieval.collections.locking import LOCK_FILE, CollectionBusy, collection_lock
from retrieval.collections.schema import DWC_TERMS, FLOAT_TERMS
from retrieval.collections.table import ARROW, SpecimenTable, snapshot_token, write_arrow

SNAPSHOT = "specimens.parquet"
STORE = "collection.sqlite"
META = "collection.json"
IMAGES = "images"
FORMAT_VERSION = 1
_VERSION_KEY = b"herbaria.store_version"

# Columns of the snapshot, in order: the contract's table plus `verbatim` (a JSON
# object of source columns with no Darwin Core home, e.g. violaceae's speciesCode).
COLUMNS: tuple[str, ...] = ("specimen_id", *DWC_TERMS, "image", "imageUrl", "year", "verbatim")
_STORED = (*DWC_TERMS, "image", "imageUrl", "year", "verbatim")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS specimens (
    specimen_id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    record_hash TEXT NOT NULL,
    {", ".join(f'"{t}" REAL' if t in FLOAT_TERMS else f'"{t}" TEXT NOT NULL DEFAULT ' + "''" for t in DWC_TERMS)},
    image TEXT NOT NULL DEFAULT '',
    imageUrl TEXT NOT NULL DEFAULT '',
    year INTEGER,
    verbatim TEXT NOT NULL DEFAULT '{{}}',
    added REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    summary TEXT NOT NULL DEFAULT '{{}}'
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO state (key, value) VALUES ('version', 0);
"""

_ARROW_SCHEMA = pa.schema(
    [pa.field("specimen_id", pa.int64(), nullable=False)]
    + [pa.field(t, pa.float64() if t in FLOAT_TERMS else pa.string()) for t in DWC_TERMS]
    + [pa.field("image", pa.string()), pa.field("imageUrl", pa.string()), pa.field("year", pa.int64()),
       pa.field("verbatim", pa.string())]
)


def dedupe_key(record: Mapping[str, Any], source: str) -> str:
    """The identity of a specimen across re-ingests (see the module docstring)."""
    occurrence = str(record.get("occurrenceID") or "").strip()
    if occurrence:
        return f"occ:{occurrence}"
    catalog = str(record.get("catalogNumber") or "").strip()
    if catalog:
        institution = str(record.get("institutionCode") or "").strip() or f"@{source}"
        return f"cat:{institution}:{catalog}"
    return f"src:{source}:{record.get('locator') or ''}"


_YEAR = re.compile(r"(?<!\d)(1[5-9]\d\d|20\d\d)(?!\d)")


def parse_year(event_date: str) -> int | None:
    """Collecting year from an ISO date or interval ('1892-05-03', '1892/1893', '3 May 1892')."""
    match = _YEAR.search(event_date or "")
    return int(match.group(1)) if match else None


def _coordinate(value: Any, limit: float) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and -limit <= number <= limit else None


def normalise(record: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a record: every column present, strings stripped, numbers parsed."""
    row: dict[str, Any] = {}
    for term in DWC_TERMS:
        value = record.get(term)
        if term in FLOAT_TERMS:
            row[term] = _coordinate(value, 90.0 if term == "decimalLatitude" else 180.0)
        else:
            row[term] = "" if value is None else str(value).strip()
    row["image"] = str(record.get("image") or "")
    row["imageUrl"] = str(record.get("imageUrl") or "")
    verbatim = record.get("verbatim") or {}
    row["year"] = record.get("year")
    if row["year"] is None:
        row["year"] = parse_year(row["eventDate"])
    if row["year"] is None and isinstance(verbatim, Mapping):  # dwc:year without an eventDate
        row["year"] = parse_year(str(verbatim.get("year") or ""))
    row["verbatim"] = verbatim if isinstance(verbatim, str) else json.dumps(verbatim, ensure_ascii=False,
                                                                             sort_keys=True)
    return row


# What `Collection.create` (and a run that failed before storing anything) can leave in a
# folder before collection.json exists; the store is made first and removed last.
_CREATION_PIECES = frozenset({LOCK_FILE, STORE, f"{STORE}-wal", f"{STORE}-shm", f"{STORE}-journal", IMAGES, SNAPSHOT,
                              ARROW, "media-cache"})


def unfinished(folder: Path) -> bool:
    """Whether `folder` (no collection.json) is empty or holds only a cut-short creation's pieces."""
    names = {entry.name for entry in folder.iterdir()}
    names = {n for n in names if not (n.startswith((f".{SNAPSHOT}.", f".{META}.", f".{ARROW}.")) and n.endswith(".tmp"))}
    return names <= {LOCK_FILE} or (STORE in names and names <= _CREATION_PIECES)


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temp file in the same folder, then rename: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Collection:
    """A collection folder; get one with `Collection.open` or `Collection.create`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._table: tuple[tuple[int, int, int], SpecimenTable] | None = None
        self._local = threading.local()  # one store connection per thread

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, path: str | Path) -> Collection:
        """Open an existing collection (BadInput if `path` is not one); refreshes a stale snapshot."""
        folder = Path(path)
        if not (folder / META).is_file():
            raise BadInput(
                f"{folder} is not a Herbaria collection (no {META}); "
                f"create one with: herbaria ingest SOURCE --out {folder}"
            )
        collection = cls(folder)
        collection._refresh_if_stale()
        return collection

    @classmethod
    def create(cls, path: str | Path, *, name: str | None = None, exist_ok: bool = False) -> Collection:
        """Make a new, empty collection; an existing one is returned only with `exist_ok`.

        collection.json is written last: a folder without it holds at most the pieces of a
        creation that was cut short, which a new `create` completes (see `unfinished`)."""
        folder = Path(path)
        if (folder / META).is_file():
            if exist_ok:
                return cls.open(folder)
            raise BadInput(f"{folder} is already a Herbaria collection")
        if folder.exists() and not (folder.is_dir() and unfinished(folder)):
            raise BadInput(f"{folder} exists and is not an empty folder; choose a new folder for the collection")
        folder.mkdir(parents=True, exist_ok=True)
        collection = cls(folder)
        collection._db()
        (folder / IMAGES).mkdir(exist_ok=True)
        meta = {"name": name or folder.resolve().name, "created": _now_iso(), "sources": []}
        collection.write_snapshot(meta)
        return collection

    # ------------------------------------------------------------------ reading (snapshot)
    @property
    def snapshot_path(self) -> Path:
        return self.path / SNAPSHOT

    @property
    def images_dir(self) -> Path:
        return self.path / IMAGES

    def table(self) -> SpecimenTable:
        """The specimen table for serving: memory-mapped Arrow, one per snapshot and Collection object (a new
        one after a writer commits a snapshot). Filters, rows by id and distinct values without pandas."""
        try:
            stat = self.snapshot_path.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = (0, 0, 0)
        cached = self._table
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with self._lock:
            if self._table is None or self._table[0] != stamp:
                self._table = (stamp, SpecimenTable.open(self.path, snapshot=SNAPSHOT))
            return self._table[1]

    def specimens(self) -> pd.DataFrame:
        """The specimen table as pandas (a fresh DataFrame each call; `year` is a nullable Int64), for offline
        and small callers; serving reads `table()`."""
        if not self.snapshot_path.is_file():
            table = _ARROW_SCHEMA.empty_table()
        else:
            table = pq.read_table(self.snapshot_path)
        frame = table.to_pandas()
        frame["year"] = frame["year"].astype("Int64")
        return frame

    def __len__(self) -> int:
        if not self.snapshot_path.is_file():
            return 0
        return pq.read_metadata(self.snapshot_path).num_rows

    def image_path(self, specimen_id: int) -> Path | None:
        """Absolute path of the specimen's image, None when it has none; KeyError for an unknown id."""
        row = self.table().row(int(specimen_id))
        if row is None:
            raise KeyError(int(specimen_id))
        image = row.get("image") or ""
        return self.path / image if image else None

    @property
    def info(self) -> dict[str, Any]:
        """collection.json plus live counts: name, created, sources ingested, specimens, with_image."""
        meta = self._read_meta()
        counts = {"specimens": 0, "with_image": 0}
        if self.snapshot_path.is_file():
            images = self.table().arrow.column("image")  # mapped, not decoded from the Parquet
            with_image = pc.sum(pc.greater(pc.fill_null(pc.utf8_length(images), 0), 0)).as_py() or 0
            counts = {"specimens": len(images), "with_image": int(with_image)}
        return {**meta, "path": str(self.path), **counts}

    # ------------------------------------------------------------------ writing (store)
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db_path = self.path / STORE
            if not db_path.exists() and len(self) > 0:
                raise HerbariaError(f"{self.path.name}: {STORE} is missing, so this collection is read-only")
            db = sqlite3.connect(db_path, timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's store connection (reading the snapshot needs none)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored rows by dedupe key (specimen_id, record_hash, image, imageUrl) for `keys` that exist."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        db = self._db()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            query = (
                "SELECT dedupe_key, specimen_id, record_hash, image, imageUrl FROM specimens "
                f"WHERE dedupe_key IN ({','.join('?' * len(chunk))})"
            )
            for key, sid, digest, image, url in db.execute(query, chunk):
                found[key] = {"specimen_id": sid, "record_hash": digest, "image": image, "imageUrl": url}
        return found

    def upsert(self, rows: Iterable[Mapping[str, Any]], *, source: str) -> tuple[int, int]:
        """Insert or update rows (each with dedupe_key, record_hash and record fields) in one transaction.

        Returns (added, updated). Existing specimens keep their specimen_id.
        """
        batch = [(str(r["dedupe_key"]), str(r["record_hash"]), normalise(r)) for r in rows]
        if not batch:
            return 0, 0
        now = _now()
        columns = ", ".join(f'"{c}"' for c in _STORED)
        updates = ", ".join(f'"{c}"=excluded."{c}"' for c in (*_STORED, "source", "record_hash", "updated"))
        sql = (
            f"INSERT INTO specimens (dedupe_key, source, record_hash, {columns}, added, updated) "
            f"VALUES (?, ?, ?, {', '.join('?' * len(_STORED))}, ?, ?) "
            f"ON CONFLICT(dedupe_key) DO UPDATE SET {updates}"
        )
        added = updated = 0
        seen: set[str] = set()
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")  # added/updated counts agree with what another writer did
            existing = self.lookup(key for key, _, _ in batch)
            for key, digest, row in batch:
                if key in existing or key in seen:
                    updated += 1
                else:
                    added += 1
                seen.add(key)
                db.execute(sql, (key, source, digest, *(row[c] for c in _STORED), now, now))
            db.execute("UPDATE state SET value = value + 1 WHERE key = 'version'")
        return added, updated

    def begin_source(self, name: str, path: str, kind: str) -> None:
        """Mark `name` as being ingested (it stays 'running' in collection.json if the process dies)."""
        with self._db() as db:
            db.execute(
                "INSERT INTO sources (name, path, kind, status, started) VALUES (?, ?, ?, 'running', ?) "
                "ON CONFLICT(name) DO UPDATE SET path=excluded.path, kind=excluded.kind, status='running', "
                "started=excluded.started, finished=NULL",
                (name, path, kind, _now()),
            )

    def finish_source(self, name: str, status: str, summary: Mapping[str, Any]) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE sources SET status=?, finished=?, summary=? WHERE name=?",
                (status, _now(), json.dumps(summary, default=str), name),
            )

    def _store_version(self, db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT value FROM state WHERE key='version'").fetchone()[0])

    def write_snapshot(self, meta: dict[str, Any] | None = None) -> Path:
        """Export the store to specimens.parquet atomically and refresh collection.json's counts
        (`meta`: collection.json's starting content, for a new collection)."""
        db = self._db()
        db.execute("BEGIN")  # one read transaction: rows, version and sources agree
        try:
            version = self._store_version(db)
            quoted = ", ".join(f'"{c}"' for c in _STORED)
            rows = db.execute(f"SELECT specimen_id, {quoted} FROM specimens ORDER BY specimen_id").fetchall()
            sources = [
                {"name": n, "path": p, "kind": k, "status": s, "started": _iso(st), "finished": _iso(f),
                 "summary": json.loads(sm)}
                for n, p, k, s, st, f, sm in db.execute(
                    "SELECT name, path, kind, status, started, finished, summary FROM sources ORDER BY started"
                )
            ]
        finally:
            db.commit()
        names = ("specimen_id", *_STORED)
        arrays = [pa.array([r[i] for r in rows], type=_ARROW_SCHEMA.field(n).type) for i, n in enumerate(names)]
        table = pa.Table.from_arrays(arrays, schema=_ARROW_SCHEMA.with_metadata({_VERSION_KEY: str(version)}))
        self._write_snapshot_files(table)
        meta = self._read_meta() if meta is None else meta
        meta.update(
            sources=sources,
            counts={"specimens": len(rows), "with_image": sum(1 for r in rows if r[names.index("image")])},
            updated=_now_iso(),
        )
        self._write_meta(meta)
        return self.snapshot_path

    def _write_snapshot_files(self, table: pa.Table) -> None:
        """specimens.parquet and its serving copy specimens.arrow, each written to a temp file and renamed: the
        Arrow file first, naming the Parquet it copies, so a reader that finds a new Parquet finds its Arrow."""
        fd, tmp = tempfile.mkstemp(prefix=f".{SNAPSHOT}.", suffix=".tmp", dir=self.path)
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd")
            _atomic_write(self.path / ARROW, lambda arrow: write_arrow(table, Path(arrow), snapshot_token(Path(tmp))))
            os.replace(tmp, self.snapshot_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _refresh_if_stale(self) -> None:
        """Rebuild the snapshot when an ingest died between committing a batch and exporting it."""
        if not (self.path / STORE).is_file():
            return
        try:
            version = self._store_version(self._db())
            snapshot = -1
            if self.snapshot_path.is_file():
                metadata = pq.read_schema(self.snapshot_path).metadata or {}
                snapshot = int(metadata.get(_VERSION_KEY, b"-1"))
            if snapshot != version:
                # Only when no writer is at work (it exports its own batches); a read-only
                # copy, where the lock cannot even be taken, is served as it is.
                with collection_lock(self.path, purpose="snapshot repair", wait=0.0):
                    self.write_snapshot()
        except (OSError, sqlite3.Error, CollectionBusy):
            self.close()

    # ------------------------------------------------------------------ metadata file
    def _read_meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / META).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def _write_meta(self, meta: dict[str, Any]) -> None:
        meta.setdefault("format", FORMAT_VERSION)
        text = json.dumps(meta, indent=2, ensure_ascii=False, default=str)
        _atomic_write(self.path / META, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r})"


def _now() -> float:
    return time.time()


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _now_iso() -> str:
    return _iso(_now()) or ""
