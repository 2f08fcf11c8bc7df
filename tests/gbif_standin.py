"""Stand-ins on 127.0.0.1 for GBIF's API and for plain file hosts, counting the requests they get.

`gbif_standin` answers `/v1/species/match`, `/v1/species/{key}/descriptions`, `/v1/occurrence/search`
(taxonKey, institutionCode, mediaType, limit, offset) and GBIF's image cache
(`/v1/image/cache/occurrence/{key}/media/{md5}`, redirected to the publisher's URL as the cache
would fetch it) in the real API's shapes (fields as api.gbif.org returns them). `file_host` serves
files read from disk at request time (an image host, a flora file host)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MATCHES: dict[str, dict[str, Any]] = {
    "Hepatica nobilis": {"usageKey": 5371799, "acceptedUsageKey": 3033405, "scientificName": "Hepatica nobilis Schreb.",
                         "canonicalName": "Hepatica nobilis", "rank": "SPECIES", "status": "SYNONYM", "confidence": 97,
                         "matchType": "EXACT", "order": "Ranunculales", "family": "Ranunculaceae", "genus": "Anemone",
                         "species": "Anemone hepatica", "speciesKey": 3033405, "synonym": True, "class": "Magnoliopsida"},
    "Anemone hepatica": {"usageKey": 3033405, "scientificName": "Anemone hepatica L.", "canonicalName": "Anemone hepatica",
                         "rank": "SPECIES", "status": "ACCEPTED", "confidence": 98, "matchType": "EXACT",
                         "family": "Ranunculaceae", "genus": "Anemone", "species": "Anemone hepatica", "speciesKey": 3033405,
                         "synonym": False, "class": "Magnoliopsida"},
    "Geranium maculata": {"usageKey": 3178339, "scientificName": "Geranium maculatum L.", "canonicalName": "Geranium maculatum",
                          "rank": "SPECIES", "status": "ACCEPTED", "confidence": 90, "matchType": "FUZZY",
                          "family": "Geraniaceae", "genus": "Geranium", "species": "Geranium maculatum",
                          "speciesKey": 3178339, "synonym": False, "class": "Magnoliopsida"},
}
DESCRIPTIONS: dict[int, list[dict[str, Any]]] = {
    3033405: [
        {"key": 11, "taxonKey": 3033405, "type": "morphology", "language": "eng", "sourceTaxonKey": 100435,
         "source": "Flora of Somewhere", "license": "CC BY 4.0",
         "description": "<p>Leaves basal, three-lobed, lobes entire; flowers blue, solitary.</p>"},
        {"key": 12, "taxonKey": 3033405, "type": "distribution", "language": "eng", "sourceTaxonKey": 100435,
         "source": "Flora of Somewhere", "description": "Europe."},
        {"key": 13, "taxonKey": 3033405, "type": "description", "language": "eng", "sourceTaxonKey": 200111,
         "source": "Another checklist", "license": "CC0 1.0", "description": "Perennial herb with hairy scapes."},
    ],
}


def _serve(handler: type[BaseHTTPRequestHandler], state: dict[str, Any], suffix: str) -> Iterator[dict[str, Any]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state["url"] = f"http://127.0.0.1:{server.server_address[1]}{suffix}"
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _occurrence_page(occurrences: dict[int, list[dict[str, Any]]], query: dict[str, str]) -> dict[str, Any]:
    """One page of the occurrence search, filtered as GBIF filters (the fields the stand-in knows)."""
    found = [o for key, items in sorted(occurrences.items()) for o in items
             if "taxonKey" not in query or str(key) == query["taxonKey"]]
    if "institutionCode" in query:
        found = [o for o in found if o.get("institutionCode") == query["institutionCode"]]
    if query.get("mediaType") == "StillImage":
        found = [o for o in found if any(m.get("type") == "StillImage" for m in o.get("media") or [])]
    offset, limit = int(query.get("offset", 0)), min(int(query.get("limit", 20)), 300)
    page = found[offset:offset + limit]
    return {"offset": offset, "limit": limit, "endOfRecords": offset + limit >= len(found), "count": len(found),
            "results": page, "facets": []}


@contextmanager
def gbif_standin(*, matches: dict[str, dict[str, Any]] | None = None,
                 descriptions: dict[int, list[dict[str, Any]]] | None = None,
                 occurrences: dict[int, list[dict[str, Any]]] | None = None) -> Iterator[dict[str, Any]]:
    """Yields {"url": base URL ending in /v1, "requests": [paths asked], "queries": [(path, query)]};
    descriptions come one per page. `matches`, `descriptions` extend the built-in ones; `occurrences`
    (taxonKey -> records) answer the occurrence search and name the images the image cache redirects to."""
    state: dict[str, Any] = {"requests": [], "queries": []}
    known_matches = {**MATCHES, **(matches or {})}
    known_descriptions = {**DESCRIPTIONS, **(descriptions or {})}
    records = occurrences or {}
    cached_images = {(str(o["key"]), hashlib.md5(m["identifier"].encode()).hexdigest()): m["identifier"]
                     for items in records.values() for o in items for m in o.get("media") or []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            state["requests"].append(url.path)
            state["queries"].append((url.path, query))
            if url.path == "/v1/species/match":
                name = query.get("name", "")
                self._send(200, known_matches.get(name, {"confidence": 100, "matchType": "NONE", "synonym": False}))
                return
            if url.path == "/v1/occurrence/search":
                self._send(200, _occurrence_page(records, query))
                return
            cached = re.fullmatch(r"/v1/image/cache/occurrence/(\d+)/media/([0-9a-f]{32})", url.path)
            if cached and (cached.group(1), cached.group(2)) in cached_images:
                self.send_response(302)
                self.send_header("Location", cached_images[(cached.group(1), cached.group(2))])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            found = re.fullmatch(r"/v1/species/(\d+)/descriptions", url.path)
            if found:
                items = known_descriptions.get(int(found.group(1)), [])
                offset = int(query.get("offset", 0))
                page = items[offset:offset + 1]  # one per page: the client must follow endOfRecords
                self._send(200, {"offset": offset, "limit": 1, "endOfRecords": offset + 1 >= len(items), "results": page})
                return
            self._send(404, {"error": "not found"})

    yield from _serve(Handler, state, "/v1")


@contextmanager
def file_host(files: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """Serves `files` (URL path without the leading slash -> file on disk, read when asked) on 127.0.0.1.
    Yields {"url": base URL ending in /, "requests": [paths asked]}."""
    state: dict[str, Any] = {"requests": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = urlsplit(self.path).path.lstrip("/")
            state["requests"].append(path)
            source = files.get(unquote(path))
            if source is None:
                self.send_error(404)
                return
            data = source.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg" if source.suffix.lower() in (".jpg", ".jpeg")
                             else "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    yield from _serve(Handler, state, "/")
