"""One writer at a time per collection: an advisory lock on COLLECTION/.lock.

Ingest, index, descriptions and captioner training all write into the collection
folder, and their clean-up and commit steps assume nobody else is writing: two
ingests into one new folder used to delete each other's work. `flock` is released
by the kernel when the holder exits, however it exits, so a killed writer never
leaves a stale lock. The lock file stays in place between writers; only a run that
created the folder (and leaves nothing in it) removes it, and a waiter that finds
its lock file unlinked that way starts over (the inode check below).

Re-entrant within a thread (a writer that opens the collection may take it again);
other threads of the process wait like other processes do.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrieval.errors import BadInput

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
DEFAULT_WAIT = 60.0  # seconds a second writer waits before giving up with "busy"
_POLL = 0.1


class CollectionBusy(BadInput):
    """Another writer holds the collection (exit code 2)."""


class CollectionLock:
    """A held lock; `created_folder` / `created_file` say what taking it created."""

    def __init__(self, folder: Path, fd: int, *, created_folder: bool, created_file: bool) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self.fd = fd
        self.created_folder = created_folder
        self.created_file = created_file
        self.depth = 1
        self.owner = threading.get_ident()

    def discard(self) -> None:
        """Undo what taking the lock created (lock file, folder), while still holding it.

        For a run that leaves nothing behind: the folder is removed only when it is empty."""
        if self.created_file:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.created_file = False
        if self.created_folder:
            try:
                self.folder.rmdir()
            except OSError:  # something else is in it now: it stays
                pass
            self.created_folder = False


_held: dict[str, CollectionLock] = {}
_guards: dict[str, threading.RLock] = {}
_registry = threading.Lock()


def _key(folder: Path) -> str:
    return os.path.join(os.path.realpath(folder.parent), folder.name)


def _guard(key: str) -> threading.RLock:
    with _registry:
        return _guards.setdefault(key, threading.RLock())


def holder(folder: str | Path) -> str:
    """Who holds (or last held) the lock, in words, from the lock file."""
    try:
        info = json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another writer"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0))) if info.get("since") else "?"
    return f"{info.get('purpose') or 'a writer'} (pid {info.get('pid', '?')}, since {since})"


@contextmanager
def collection_lock(folder: str | Path, *, purpose: str, wait: float = DEFAULT_WAIT,
                    create: bool = False) -> Iterator[CollectionLock]:
    """Hold the collection's write lock; waits up to `wait` seconds (saying so once), then CollectionBusy.

    `create=True` makes the folder when it is missing, under the same retry loop, so two
    writers racing to create one new collection both end up holding the lock in turn."""
    path = Path(folder)
    key = _key(path)
    guard = _guard(key)
    started = time.monotonic()
    acquired = guard.acquire(timeout=wait) if wait > 0 else guard.acquire(blocking=False)
    if not acquired:  # another thread of this process is writing
        raise _busy(path, wait)
    try:
        held = _held.get(key)
        if held is not None:  # this thread holds it already
            held.depth += 1
            try:
                yield held
            finally:
                held.depth -= 1
            return
        lock = _acquire(path, purpose=purpose, wait=wait, deadline=started + max(wait, 0.0), create=create)
        _held[key] = lock
        try:
            yield lock
        finally:
            del _held[key]
            os.close(lock.fd)  # releases the flock
    finally:
        guard.release()


def _acquire(folder: Path, *, purpose: str, wait: float, deadline: float, create: bool) -> CollectionLock:
    told = False
    made_folder = False
    while True:
        if create:
            try:
                folder.mkdir(parents=True)
                made_folder = True
            except FileExistsError:
                pass
        if not folder.is_dir():
            raise BadInput(f"{folder} is not a folder")
        made_file = False
        try:
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            made_file = True
        except FileExistsError:
            try:
                fd = os.open(folder / LOCK_FILE, os.O_RDWR)
            except FileNotFoundError:  # its creator removed it just now: start over
                continue
        except FileNotFoundError:  # the folder went away (a creator gave up): start over
            continue
        if not _flock(fd):
            os.close(fd)
            if time.monotonic() >= deadline:
                raise _busy(folder, wait)
            if not told:
                log.warning("%s is busy: %s is writing to it; waiting up to %g s", folder.name, holder(folder), wait)
                told = True
            time.sleep(_POLL)
            continue
        if not _same_file(fd, folder / LOCK_FILE):  # unlinked by a holder that created it for nothing
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        return CollectionLock(folder, fd, created_folder=made_folder, created_file=made_file)


def _flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev)


def _busy(folder: Path, wait: float) -> CollectionBusy:
    waited = f" after waiting {wait:g} s" if wait > 0 else ""
    return CollectionBusy(f"collection {folder.name} is busy{waited}: {holder(folder)} is writing to it; "
                          "try again when it has finished (or pass --wait SECONDS)")
