"""A stand-in for GBIF's species API on 127.0.0.1: `/v1/species/match` and `/v1/species/{key}/descriptions`,
answering in the real API's shapes (fields as api.gbif.org returns them), and counting the requests it gets."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_CLASSIFICATION = {"kingdom": "Plantae", "phylum": "Tracheophyta", "kingdomKey": 6, "phylumKey": 7707728}

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


@contextmanager
def gbif_standin() -> Iterator[dict[str, Any]]:
    """Yields {"url": base URL ending in /v1, "requests": [paths asked]}; descriptions come one per page."""
    state: dict[str, Any] = {"requests": []}

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
            if url.path == "/v1/species/match":
                name = query.get("name", "")
                self._send(200, MATCHES.get(name, {"confidence": 100, "matchType": "NONE", "synonym": False}))
                return
            found = re.fullmatch(r"/v1/species/(\d+)/descriptions", url.path)
            if found:
                items = DESCRIPTIONS.get(int(found.group(1)), [])
                offset = int(query.get("offset", 0))
                page = items[offset:offset + 1]  # one per page: the client must follow endOfRecords
                self._send(200, {"offset": offset, "limit": 1, "endOfRecords": offset + 1 >= len(items), "results": page})
                return
            self._send(404, {"error": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state["url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
        yield state
    finally:
        server.shutdown()
        server.server_close()
