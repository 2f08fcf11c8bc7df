"""The GBIF species API, for names and descriptions: `/v1/species/match` and `/v1/species/{key}/descriptions`.

Both answers are cached on disk (one JSON file per request under `cache_dir`), so a second
`descriptions add` asks nothing, and requests are spaced per host like media downloads
(retrieval.collections.HostRateLimiter). The base URL is configurable
($HERBARIA_GBIF_API, default https://api.gbif.org/v1) so tests run a stand-in on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from retrieval.collections import USER_AGENT, HostRateLimiter
from retrieval.errors import BadInput
from retrieval.flora.names import normalize_name, species_of
from retrieval.flora.readers import MORPHOLOGY_TYPES, TaxonDescription, clean_text, guess_language

DEFAULT_API = "https://api.gbif.org/v1"
_LANG = {"eng": "en", "en": "en", "fra": "fr", "fre": "fr", "fr": "fr", "spa": "es", "deu": "de", "por": "pt"}


def gbif_api() -> str:
    return (os.environ.get("HERBARIA_GBIF_API") or DEFAULT_API).rstrip("/")


class GbifSpecies:
    """Cached, rate-limited GET requests to GBIF's species API."""

    def __init__(self, cache_dir: str | Path, *, base_url: str | None = None, min_interval: float = 0.2,
                 timeout: float = 20.0, session: requests.Session | None = None) -> None:
        self.base_url = (base_url or gbif_api()).rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.limiter = HostRateLimiter(min_interval)
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", USER_AGENT)
        self.requests = 0  # sent over the network (not answered from the cache)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}{path}" + (f"?{urlencode(sorted((params or {}).items()))}" if params else "")
        cached = self.cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.json"
        if cached.exists():
            return json.loads(cached.read_text())
        self.limiter.wait(urlsplit(url).netloc)
        try:
            response = self.session.get(url, timeout=self.timeout)
        except requests.RequestException as err:
            raise BadInput(f"GBIF API unreachable at {self.base_url} ({type(err).__name__}); "
                           "it needs the network (set $HERBARIA_GBIF_API for another server)") from None
        self.requests += 1
        if response.status_code == 404:
            data: Any = None
        elif response.status_code != 200:
            raise BadInput(f"GBIF API answered {response.status_code} for {path}")
        else:
            data = response.json()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(cached)
        return data

    def match(self, name: str) -> dict[str, Any]:
        """The backbone match of a name, reduced to what linking keeps: usageKey, acceptedName, status,
        rank, matchType (EXACT, FUZZY, HIGHERRANK, NONE) and confidence."""
        data = self.get("/species/match", {"name": name, "kingdom": "Plantae"}) or {}
        rank = (data.get("rank") or "").lower()
        accepted = data.get("acceptedScientificName") or data.get("species") if data.get("synonym") else data.get("canonicalName")
        if rank and rank not in {"species", "subspecies", "variety", "form"}:
            accepted = data.get("canonicalName") or ""
        return {"usageKey": data.get("usageKey"), "acceptedUsageKey": data.get("acceptedUsageKey") or data.get("usageKey"),
                "acceptedName": normalize_name(accepted or ""), "status": data.get("status", ""), "rank": rank,
                "matchType": data.get("matchType", "NONE"), "confidence": data.get("confidence")}

    def descriptions(self, key: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.get(f"/species/{int(key)}/descriptions", {"limit": 100, "offset": offset}) or {}
            out.extend(page.get("results") or [])
            if page.get("endOfRecords", True) or not page.get("results"):
                return out
            offset += len(page["results"])


def match_names(client: GbifSpecies, specimen_names: list[str], described: set[str]) -> dict[str, dict[str, Any]]:
    """Specimen name -> its GBIF match, for names whose accepted name (or its species) is described."""
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(set(specimen_names)):
        match = client.match(name)
        if match["matchType"] in {"NONE", "HIGHERRANK"} or not match["acceptedName"]:
            continue
        accepted = match["acceptedName"]
        target = accepted if accepted in described else species_of(accepted) if species_of(accepted) in described else ""
        if target and target != name:
            found[name] = {**match, "acceptedName": target}
    return found


def gbif_descriptions(client: GbifSpecies, names: list[str]) -> list[TaxonDescription]:
    """Morphology descriptions GBIF holds for these names' accepted backbone taxa, one record per source."""
    records: list[TaxonDescription] = []
    for name in sorted(set(names)):
        match = client.match(name)
        key = match["acceptedUsageKey"]
        if not key or match["matchType"] in {"NONE", "HIGHERRANK"}:
            continue
        by_source: dict[str, list[dict[str, Any]]] = {}
        for item in client.descriptions(key):
            kind = (item.get("type") or "general").strip().lower()
            if kind in MORPHOLOGY_TYPES and (item.get("description") or "").strip():
                by_source.setdefault(str(item.get("source") or item.get("sourceTaxonKey") or "GBIF"), []).append(item)
        accepted = match["acceptedName"] or normalize_name(name)
        for source, items in sorted(by_source.items()):
            text = clean_text(" ".join(i["description"] for i in items))
            first = items[0]
            records.append(TaxonDescription(
                taxon=accepted, name=accepted, text=text, rank=match["rank"], source=f"GBIF: {source}"[:200],
                language=_LANG.get((first.get("language") or "").lower(), "") or guess_language(text),
                dataset=str(first.get("datasetKey") or first.get("sourceTaxonKey") or ""),
                licence=str(first.get("license") or first.get("licence") or ""),
                url=f"https://www.gbif.org/species/{key}",
                name_matches={normalize_name(name): match} if normalize_name(name) != accepted else {}))
    return records
