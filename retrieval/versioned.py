"""Versioned folders: a writer's files are committed together or not at all.

Why: an index is several files (a FAISS file and its manifest; descriptions, chunks,
embeddings, links and their manifest) and a reader must never pair files from two
saves. Each save writes a new version folder (FOLDER/v0007/, every file fsynced),
then switches the symlink FOLDER/current to it with one atomic rename, then prunes
older versions (the one before stays for readers that resolved it a moment ago). A
crash at any point leaves `current` on a complete version. Each file name also gets
a fixed symlink FOLDER/NAME -> current/NAME, so the folder still reads like the flat
layout of earlier releases; a flat folder loads as it is and is migrated by its next save.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from retrieval.errors import HerbariaError

CURRENT = "current"
_VERSION = re.compile(r"^v(\d{4,})$")
T = TypeVar("T")


def commit_version(folder: str | Path, files: Sequence[str], write: Callable[[Path, int], None]) -> int:
    """Make `write(version_folder, number)`, which creates `files` there, the committed version of `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    previous = _current_name(folder)
    number = 1 + max((int(m.group(1)) for m in map(_VERSION.match, os.listdir(folder)) if m), default=0)
    version = folder / f"v{number:04d}"
    version.mkdir()
    write(version, number)
    for name in files:
        fsync(version / name)
    fsync(version)
    fixed = [name for name in files if not _links_through_current(folder / name)]
    for name in fixed:  # missing ones now (they resolve once `current` exists) ...
        if not os.path.lexists(folder / name):
            _symlink(f"{CURRENT}/{name}", folder / name)
    if (folder / CURRENT).is_dir() and not (folder / CURRENT).is_symlink():  # a copy that followed links
        os.replace(folder / CURRENT, folder / f".{CURRENT}-copy-{number:04d}")
    _symlink(version.name, folder / CURRENT)  # the commit
    fsync(folder)
    for name in fixed:  # ... the flat layout's files after the commit
        if not _links_through_current(folder / name):
            _symlink(f"{CURRENT}/{name}", folder / name)
    _prune(folder, keep={version.name, previous, CURRENT, *files})
    return number


def committed(folder: str | Path) -> Path:
    """The folder holding the committed files: the version `current` names, else `folder` itself (flat layout)."""
    folder = Path(folder)
    pointer = folder / CURRENT
    if pointer.is_symlink():
        return folder / os.readlink(pointer)
    if pointer.is_dir():
        return pointer
    return folder


def read_committed(folder: str | Path, read: Callable[[Path], T], *, what: str,
                   retry_on: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """`read(version_folder)` on one committed version; read again when a writer pruned it meanwhile."""
    for _ in range(3):
        where = committed(folder)  # every file from one version, even while a writer switches
        try:
            return read(where)
        except retry_on:
            if committed(folder) == where:
                raise  # not a version pruned under us: the files themselves are missing or damaged
    raise HerbariaError(f"{what} kept changing while it was being read; try again")


def version_token(folder: str | Path, marker: str) -> tuple[Any, ...] | None:
    """A cheap token that changes whenever a new version is committed (None: nothing committed).
    `marker` is the file whose stat identifies a flat-layout folder's state."""
    folder = Path(folder)
    try:
        if (folder / CURRENT).is_symlink():
            return (os.readlink(folder / CURRENT),)
        stat = (committed(folder) / marker).stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_name(folder: Path) -> str | None:
    return os.readlink(folder / CURRENT) if (folder / CURRENT).is_symlink() else None


def _links_through_current(path: Path) -> bool:
    return path.is_symlink() and os.readlink(path) == f"{CURRENT}/{path.name}"


def _symlink(target: str, path: Path) -> None:
    """Point `path` at `target`, replacing whatever is there in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _prune(folder: Path, *, keep: set[str | None]) -> None:
    """Versions other than `keep`, unfinished ones and leftovers of interrupted saves."""
    for entry in os.scandir(folder):
        name = entry.name
        if name in keep:
            continue
        if _VERSION.match(name) or name.startswith(f".{CURRENT}-copy-"):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif name.endswith(".tmp") and not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
