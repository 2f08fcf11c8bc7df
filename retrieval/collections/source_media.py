"""The one rule for what a source may name as a specimen's image.

A source (image folder, CSV, Darwin Core Archive, GBIF JSON) is data from someone
else, and ingest copies the images it names into a collection that is then
served. So a source must not be able to pull in files of the machine it is read
on: local media must resolve, after following symlinks, inside the source folder,
and remote media must be http(s) URLs with a host (no file:, ftp:, data: ...).
Anything else is refused, with a reason the ingest summary counts. Every reader
and the media downloader (for redirects) apply this module, and nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

OUTSIDE = "media refused: outside the source folder"
NOT_HTTP = "media refused: not an http(s) URL"

# A URL scheme as RFC 3986 spells it; two letters at least, so that "C:\scans\a.jpg" is a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


class MediaRefused(Exception):
    """Why a source's media reference is not used: `reason` is counted, the message names the row and value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def is_http_url(value: str) -> bool:
    """True for an http(s) URL with a host: the only remote media ingest fetches."""
    try:
        parts = urlsplit(value)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a malformed IPv6 host
        return False


def url_scheme(value: str) -> str:
    """The scheme `value` starts with ("" for a path), lower-cased."""
    match = _SCHEME.match(value.strip())
    return match.group(1).lower() if match else ""


def _shown(value: str) -> str:
    text = value if len(value) <= 80 else value[:77] + "..."
    return repr(text)


class SourceFolder:
    """The folder a source may read media from; `media()` applies the rule to one reference."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def contains(self, path: str | Path) -> bool:
        """True when `path` (relative to the folder, or absolute) resolves inside it, links followed."""
        try:
            return (self.root / path).resolve().is_relative_to(self.root)
        except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte
            return False

    def media(self, value: str, where: str) -> str:
        """The URL, or the resolved local path, that `value` names; raises `MediaRefused` naming `where`.

        `where` locates the reference for the curator ("labels.csv line 7", "result 3").
        Local paths are taken relative to the folder; an absolute path is allowed only
        when it lies inside it. Existence is not checked here: ingest reports missing files.
        """
        value = value.strip()
        scheme = url_scheme(value)
        if scheme:
            if is_http_url(value):
                return value
            what = f"a {scheme}: reference" if scheme not in ("http", "https") else "a URL without a host"
            raise MediaRefused(NOT_HTTP, f"{where}: media {_shown(value)} is {what}, not an http(s) URL; refused")
        if not self.contains(value):
            raise MediaRefused(OUTSIDE, f"{where}: media {_shown(value)} resolves outside the source folder; "
                                        "refused")
        return str((self.root / value).resolve())
