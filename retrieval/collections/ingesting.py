"""The ingest stage: any supported source -> specimens (and their images) in a collection.

Records stream from a reader; each record's image is validated by decoding it
(a corrupt or non-image file costs that record, never the collection) and
copied into `images/` under a content hash. Records are committed in batches,
each batch one store transaction followed by a snapshot, so an interrupted
ingest keeps every committed batch, and running it again skips what is already
stored and unchanged (no image is decoded or downloaded twice).

The run holds the collection's write lock (retrieval.collections.locking) from before it creates
anything until it has exported its last batch. A run that stores nothing removes
exactly what it created (the files it copied, a new collection's pieces, the folder)
and nothing else, and ends with NothingIngested (exit code 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from retrieval.collections.collection import IMAGES, META, STORE, Collection, dedupe_key, unfinished
from retrieval.collections.coordinates import coordinate_summary
from retrieval.errors import BadInput, ImageError, NetworkUnavailable
from retrieval.collections.locking import DEFAULT_WAIT, CollectionLock, collection_lock
from retrieval.collections.images import image_format, verify_image
from retrieval.collections.iiif import read_iiif
from retrieval.collections.readers import MEDIA, Record, detect_source, read_dwca, read_gbif_json, read_image_folder
from retrieval.collections.source_media import url_scheme

log = logging.getLogger(__name__)

_KINDS = {read_image_folder: "image-folder", read_dwca: "dwca", read_gbif_json: "gbif-json", read_iiif: "iiif"}
MAX_EXAMPLES = 20


class NothingIngested(BadInput):
    """No record of the source was stored (exit code 2); `summary` says why."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class _Item:
    """One record on its way into the store."""

    record: Record
    key: str
    digest: str
    existing: dict[str, Any] | None
    image: str = ""
    url: str = ""


@dataclass
class _Tally:
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    no_image: int = 0
    downloaded: int = 0
    unlisted: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def problem(self, item: Record, reason: str, detail: str, *, skipped: bool, quiet: bool = False) -> None:
        """Count a record that was skipped or stored without its image; the first few are logged."""
        if skipped:
            self.skipped += 1
        else:
            self.no_image += 1
        self.reasons[reason] += 1
        if quiet:
            return
        message = f"{item.get('locator') or '?'}: {detail}"
        outcome = "skipped" if skipped else "stored without image"
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)
            log.warning("%s (%s)", message, outcome)
        else:
            self.unlisted += 1
            log.debug("%s (%s)", message, outcome)


def _record_hash(record: Record, local: Path | None) -> str:
    """Changes when the record's fields or its local image file change."""
    payload = {k: v for k, v in record.items() if k != "problem"}
    if local is not None and local.is_file():
        stat = local.stat()
        payload["_file"] = [stat.st_size, stat.st_mtime_ns]
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_url(media: str) -> bool:
    return media.lower().startswith(("http://", "https://"))


def _store_image(collection: Collection, path: Path, *, link: bool, made: list[Path]) -> str:
    """Copy (or hard-link, for our own cache files) `path` under its content hash; returns the relative path.

    What this creates (the file, its folder) is appended to `made`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    name = digest.hexdigest()[:32]
    relative = f"{IMAGES}/{name[:2]}/{name}.{image_format(path)}"
    target = collection.path / relative
    if target.is_file():
        return relative
    try:
        target.parent.mkdir()
        made.append(target.parent)
    except FileExistsError:
        pass
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if link:
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
        else:
            shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        made.append(target)
    finally:
        tmp.unlink(missing_ok=True)
    return relative


def _check_out(out: Path) -> None:
    """Refuse a non-collection, non-empty target (before reading anything, and again under the lock)."""
    if (out / META).is_file():
        return
    if out.exists() and not (out.is_dir() and unfinished(out)):
        raise BadInput(f"{out} exists and is not a Herbaria collection; choose a new or empty folder for --out")


def _peek(records: Iterator[Record], name: str) -> Iterator[Record]:
    """Pull the first record now so that a broken source fails before the collection is touched."""
    first = next(records, None)
    if first is None:
        raise BadInput(f"{name}: no records found in this source")
    return chain([first], records)


def ingest(
    source: str | Path,
    out: str | Path,
    *,
    mapping: Mapping[str, str] | None = None,
    limit: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    download: bool = True,
    workers: int = 4,
    wait: float = DEFAULT_WAIT,
) -> dict[str, Any]:
    """Add the specimens of `source` (image folder, DwC-A, GBIF JSON, IIIF URL/file) to the collection at `out`.

    Returns a summary: read, added, updated, unchanged, skipped (not stored),
    no_image (stored without their image), reasons {reason: count}, examples,
    downloaded, total and with_image (the whole collection afterwards), coordinates (the
    collection's coordinate flags: (0,0), swapped, outside the stated country, low precision).
    `download=False` stores remote specimens with their imageUrl but no image. Another
    writer of the collection is waited for up to `wait` seconds (then CollectionBusy).
    NothingIngested when no record was stored (every record refused or failed).
    """
    url = isinstance(source, str) and bool(url_scheme(source))  # a IIIF URL: not a path
    src, target = (source if url else Path(source)), Path(out)
    if limit is not None and limit < 0:
        raise BadInput(f"--limit must be 0 or more, not {limit}")
    if batch_size < 1:
        raise BadInput("batch_size must be at least 1")
    reader = detect_source(src)
    _check_out(target)
    stream = iter(reader(src, mapping=mapping))
    name = str(src) if url else (src.resolve().name or str(src))
    try:
        records = _peek(stream, name if url else src.name)
        if limit is not None:
            records = islice(records, limit)
        with collection_lock(target, purpose=f"ingest {name}", wait=wait, create=True) as lock:
            _check_out(target)  # what it holds now, with no other writer at work
            collection = Collection.open(target) if (target / META).is_file() else None
            run = _Run(collection, target, name, str(src), _KINDS.get(reader, "source"), lock=lock,
                       images_required=reader is read_image_folder, cache_dir=cache_dir, download=download,
                       workers=workers, progress=progress)
            status = "interrupted"
            try:
                run.consume(records, batch_size)
                status = "complete"
            finally:
                run.finish(status)
            summary = run.summary()
            if run.coordinates is not None:  # flags are kept, counted, never trained on
                summary["coordinates"] = run.coordinates
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # an archive reader removes its extracted files now, not at garbage collection
    if not (summary["added"] or summary["updated"] or summary["unchanged"]):
        raise NothingIngested(_nothing_line(summary, existed=collection is not None), summary)
    return summary


def _nothing_line(summary: dict[str, Any], *, existed: bool) -> str:
    """'0 of 100000 records ingested from src: 100000 image file not found (e.g. ...); no collection was created'."""
    reasons = sorted(summary["reasons"].items(), key=lambda item: (-item[1], item[0]))
    why = ", ".join(f"{count} {reason}" for reason, count in reasons[:3]) or "the source yielded no records"
    if summary["examples"]:
        why += f" (e.g. {' '.join(summary['examples'][0].split())})"
    outcome = "the collection is unchanged" if existed else "no collection was created"
    return f"0 of {summary['read']} records ingested from {summary['source']}: {why}; {outcome}"


def _add_counts(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """Coordinate counts of two batches as one: numbers (also those of the "flagged" mapping) add up."""
    if total is None:
        return part
    merged = {k: (v + total[k] if isinstance(v, int) else v) for k, v in part.items()}
    merged["flagged"] = {flag: n + total["flagged"].get(flag, 0) for flag, n in part["flagged"].items()}
    return merged


class _Run:
    """State of one ingest run: the tally, the pending batch, snapshot pacing and the media fetcher."""

    def __init__(self, collection: Collection | None, out: Path, name: str, path: str, kind: str, *,
                 lock: CollectionLock, images_required: bool, cache_dir: str | Path | None, download: bool,
                 workers: int, progress: bool) -> None:
        self.collection = collection
        self.out = out
        self.name = name
        self.path = path
        self.kind = kind
        self.images_required = images_required
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.download = download
        self.workers = workers
        self.progress = progress
        self.tally = _Tally()
        self.seen: set[str] = set()
        self._fetcher: Any = None
        self.lock = lock
        self._begun = False
        self._made: list[Path] = []  # a new collection's pieces and media cache, made by this run
        self._pending: list[Path] = []  # images (and their folders) stored since the last commit
        self._last_snapshot = 0.0
        self._snapshot_cost = 0.0
        self.coordinates: dict[str, Any] | None = None  # coordinate flags of the records this run stored

    # ------------------------------------------------------------------ flow
    def consume(self, records: Iterator[Record], batch_size: int) -> None:
        batch: list[_Item] = []
        with tqdm(records, desc=f"ingesting {self.name}", unit="specimen", disable=not self.progress) as bar:
            for record in bar:
                item = self._admit(record)
                if item is not None:
                    batch.append(item)
                if len(batch) >= batch_size:
                    self._commit(batch)
                    batch = []
            self._commit(batch)

    def _admit(self, record: Record) -> _Item | None:
        """Decide what a record needs; local images are stored now, while the source is still open."""
        tally = self.tally
        tally.read += 1
        if record.get("refused") is not None:  # an entry the source could not read (a IIIF list's manifest)
            refusal = record["refused"]
            tally.problem(record, getattr(refusal, "reason", "unreadable entry"), str(refusal), skipped=True)
            return None
        media = str(record.get(MEDIA) or "")
        local = Path(media) if media and not _is_url(media) else None
        key = dedupe_key(record, self.name)
        if key in self.seen:
            tally.problem(record, "duplicate record in source", f"same specimen as an earlier record ({key})",
                          skipped=True)
            return None
        self.seen.add(key)
        digest = _record_hash(record, local)
        existing = self._existing(key)
        if existing and existing["record_hash"] == digest and (existing["image"] or not media):
            tally.unchanged += 1
            return None
        item = _Item(record, key, digest, existing)
        if record.get("problem"):
            reason = getattr(record["problem"], "reason", "bad image path")  # a readers' MediaRefused
            return self._image_problem(item, reason, str(record["problem"]))
        if not media:
            if self.images_required:
                tally.problem(record, "no image file named", "row names no image file", skipped=True)
                return None
            return item
        if local is not None:
            if not local.is_file():
                return self._image_problem(item, "image file not found", f"image file not found: {local.name}")
            return self._attach(item, local, link=False)
        item.url = media
        return item

    def _attach(self, item: _Item, path: Path, *, link: bool) -> _Item | None:
        try:
            verify_image(path)
        except ImageError as err:
            return self._image_problem(item, "unreadable image", str(err))
        if self.collection is None:
            self._create()
        item.image = _store_image(self.collection, path, link=link, made=self._pending)
        return item

    def _image_problem(self, item: _Item, reason: str, detail: str, *, quiet: bool = False) -> _Item | None:
        """Image-folder rows are their image: skip them. Other specimens stay, without an image."""
        skip = self.images_required
        self.tally.problem(item.record, reason, detail, skipped=skip, quiet=quiet)
        if skip:
            return None
        if item.existing and item.existing["image"] and item.existing["imageUrl"] == item.url:
            item.image = item.existing["image"]  # keep the image we already have
        return item

    def _create(self) -> None:
        before = set(os.listdir(self.out))
        self.collection = Collection.create(self.out)
        self._made += [self.out / name for name in sorted(set(os.listdir(self.out)) - before)]

    def _existing(self, key: str) -> dict[str, Any] | None:
        if self.collection is None:
            return None
        return self.collection.lookup([key]).get(key)

    def _commit(self, batch: list[_Item]) -> None:
        self._fetch_remote(batch)
        rows = []
        for item in batch:
            row = {k: v for k, v in item.record.items() if k not in (MEDIA, "locator", "problem")}
            row.update(dedupe_key=item.key, record_hash=item.digest, image=item.image, imageUrl=item.url)
            rows.append(row)
        if not rows:
            return
        if self.collection is None:
            self._create()
        if not self._begun:
            self.collection.begin_source(self.name, self.path, self.kind)
            self._begun = True
        added, updated = self.collection.upsert(rows, source=self.name)
        self._pending.clear()  # committed: these images belong to stored specimens now
        self.coordinates = _add_counts(self.coordinates, coordinate_summary(rows))
        self.tally.added += added
        self.tally.updated += updated
        # Snapshot after each batch, unless exporting has become slow relative to the
        # batch rate (large collections); finish() always exports, and Collection.open
        # repairs a snapshot left stale by a killed process.
        now = time.monotonic()
        if now - self._last_snapshot >= 5 * self._snapshot_cost:
            self.collection.write_snapshot()
            self._snapshot_cost = time.monotonic() - now
            self._last_snapshot = time.monotonic()

    def _fetch_remote(self, batch: list[_Item]) -> None:
        """Download the batch's remote images in parallel, then validate and store them like local ones."""
        remote = [item for item in batch if item.url and not item.image]
        if not remote:
            return
        report = None
        if self.download:
            try:
                report = self._media().fetch([item.url for item in remote], progress=self.progress)
            except NetworkUnavailable as err:
                raise NetworkUnavailable(f"{err} (or pass download=False / --no-download to keep the records "
                                         "without images)") from None
        dropped: set[int] = set()
        for item in remote:
            path = report.paths.get(item.url) if report else None
            if path is not None:
                done = self._attach(item, path, link=True)
            elif report is None:
                done = self._image_problem(item, "not downloaded (download=False)", item.url, quiet=True)
            else:
                error = report.errors.get(item.url, "unknown error")
                done = self._image_problem(item, "download failed", f"download failed ({error}): {item.url}")
            if done is None:
                dropped.add(id(item))
        if report:
            self.tally.downloaded += report.downloaded
        batch[:] = [item for item in batch if id(item) not in dropped]

    def _media(self) -> Any:
        if self._fetcher is None:
            from retrieval.collections.media import MediaFetcher  # noqa: PLC0415 (requests only when needed)

            if self.collection is None:
                self._create()
            cache = self.cache_dir or self.collection.path / "media-cache"
            if self.cache_dir is None and not cache.exists():
                self._made.insert(0, cache)
            self._fetcher = MediaFetcher(cache, state_path=self.collection.path / STORE, workers=self.workers)
        return self._fetcher

    def finish(self, status: str) -> None:
        """Export and record the run; a run that stored nothing removes what it made, and only that."""
        if not self._begun:
            if self.collection is not None:
                self.collection.close()
            _remove(reversed(self._pending))
            made = list(self._made)
            if any(path.name == STORE for path in made):  # the store's companions go with it
                made += [self.out / f"{STORE}{suffix}" for suffix in ("-wal", "-shm", "-journal")]
            if any(path.name == META for path in made):  # a new collection that never got a specimen
                self.collection = None
            # collection.json first (the folder stops looking like a collection), the store last
            _remove(sorted(made, key=lambda p: (p.name.startswith(STORE), p.name != META)))
            if self.collection is None:
                self.lock.discard()  # the lock file and the folder, when this run made them
            return
        if self.tally.unlisted:
            log.warning("... and %d more records with problems (counted in the summary's reasons)",
                        self.tally.unlisted)
        self.collection.finish_source(self.name, status, self.summary(counts=False))
        self.collection.write_snapshot()
        self.collection.close()
        _remove(reversed(self._pending))  # images of a batch that was never committed

    def summary(self, *, counts: bool = True) -> dict[str, Any]:
        tally = self.tally
        result: dict[str, Any] = {
            "source": self.name,
            "collection": str(self.out),
            "read": tally.read,
            "added": tally.added,
            "updated": tally.updated,
            "unchanged": tally.unchanged,
            "skipped": tally.skipped,
            "no_image": tally.no_image,
            "reasons": dict(tally.reasons),
            "examples": list(tally.examples),
            "downloaded": tally.downloaded,
        }
        if counts:
            info = self.collection.info if self.collection is not None else {"specimens": 0, "with_image": 0}
            result.update(total=info["specimens"], with_image=info["with_image"])
        return result


def _remove(paths: Iterable[Path]) -> None:
    """Remove paths this run created, in the order given; an image folder only once it is empty."""
    for path in paths:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        elif path.parent.name == IMAGES:
            try:
                path.rmdir()
            except OSError:
                pass
        else:
            shutil.rmtree(path, ignore_errors=True)
