"""Extract a zip or tar archive without letting it write or link outside the target folder.

Archives come from publishers Herbaria does not control. Every member is checked
before anything is written: an absolute or '..' name, a symbolic or hard link, or
a device file refuses the whole archive with one line (a Darwin Core Archive needs
none of them). The uncompressed size is bounded before extracting (zip bombs).
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from pathlib import Path

from retrieval.errors import BadInput

MAX_ARCHIVE_BYTES = 20 * 1024**3  # uncompressed


def _unsafe_name(name: str) -> str:
    """Why an archive member's name could land outside the extraction folder ("" when it cannot)."""
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in parts:
        return "a '..' path"
    return ""


def _check_members(archive: Path, members: list[tuple[str, str]]) -> None:
    """Refuse the whole archive for one member that is a link or could escape: a Darwin Core Archive needs neither."""
    for name, kind in members:
        why = _unsafe_name(name) or (f"a {kind}" if kind != "file" else "")
        if why:
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise BadInput(f"{archive.name}: archive member {shown!r} is {why}; refusing the archive")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    """zipfile extracts every member as a plain file (often with no type bits set); only links are marked."""
    return "symbolic link" if stat.S_ISLNK(info.external_attr >> 16) else "file"


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    return "file" if member.isfile() or member.isdir() else "special file"


def extract_archive(archive: Path, into: Path) -> Path:
    """Extract `archive` into `into`; returns the archive's root (its single top folder when it has one).

    Herbaria extracts rather than python-dwca-reader, which leaks its temporary folder
    when an archive is invalid. zipfile would silently rename a '../x' member and
    tarfile's "data" filter would refuse it mid-way; refusing up front says why and
    writes nothing.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                _check_members(archive, [(info.filename, _zip_kind(info)) for info in infos])
                total = sum(info.file_size for info in infos)
                if total > MAX_ARCHIVE_BYTES:
                    raise BadInput(f"{archive.name}: archive expands to {total // 1024**3} GB, over the limit")
                zf.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                _check_members(archive, [(m.name, _tar_kind(m)) for m in members])
                total = sum(m.size for m in members)
                if total > MAX_ARCHIVE_BYTES:
                    raise BadInput(f"{archive.name}: archive expands to {total // 1024**3} GB, over the limit")
                tf.extractall(into, filter="data")  # a second guard: the checks above already refuse what it would
        else:
            raise BadInput(f"{archive.name}: not a Darwin Core Archive (neither a zip nor a tar file)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise BadInput(f"{archive.name}: damaged archive ({err})") from None
    content = list(into.iterdir())
    # Many publishers zip a single top folder; its content is the archive.
    return content[0] if len(content) == 1 and content[0].is_dir() else into
