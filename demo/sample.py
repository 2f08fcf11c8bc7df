"""`herbaria demo`'s preparation: a real sample collection and its index, fetched once into a cache.

The sample is a few hundred imaged sheets of the MNHN Paris herbarium (institution
code P) from the GBIF occurrence API, read from pages spread over the first
100,000 results so that it spans many families rather than one dataset's first
page. Images come through GBIF's image cache (at most 1200 px, as GBIF asks
scripted users to fetch), so the sample is tens of megabytes, not gigabytes; each
record keeps its license and rights holder, and `references` links to the source
record. Offline, the command must stop at once with what to do instead, not time
out on every URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retrieval.cache import cache_dir
from retrieval.errors import BadInput, NetworkUnavailable

log = logging.getLogger("herbaria.demo")

GBIF_SEARCH = "https://api.gbif.org/v1/occurrence/search"
GBIF_IMAGE_CACHE = "https://api.gbif.org/v1/image/cache/occurrence/{key}/media/{md5}"
SAMPLE_QUERY: dict[str, Any] = {
    "institutionCode": "P",
    "basisOfRecord": "PRESERVED_SPECIMEN",
    "mediaType": "StillImage",
    "kingdomKey": 6,  # Plantae in the GBIF backbone
}
MAX_OFFSET = 100_000  # the search API pages no deeper than this
PAGE_SIZE = 50
DEFAULT_SAMPLE = 300
DEFAULT_MODEL = "bioclip"
NETWORK_HOSTS = (("api.gbif.org", 443), ("huggingface.co", 443))

OFFLINE_HINT = (
    "offline, build a collection from local images and serve it with the tiny encoder, e.g. "
    "`herbaria ingest ../shared/data/specimens/harvard --out harvard` then "
    "`herbaria demo --collection harvard --model tiny-test`"
)


def check_network(hosts: tuple[tuple[str, int], ...] = NETWORK_HOSTS, timeout: float = 3.0) -> str | None:
    """None when every host accepts a TCP connection within `timeout`, else why not (one line).

    Name resolution has no timeout of its own, so each attempt runs in a thread
    that is abandoned after `timeout`: an offline machine answers in seconds.
    """
    for host, port in hosts:
        outcome: list[BaseException | None] = []

        def attempt(host: str = host, port: int = port) -> None:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                outcome.append(None)
            except OSError as err:
                outcome.append(err)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        if not outcome:
            return f"{host}: no answer within {timeout:g} s"
        if outcome[0] is not None:
            err = outcome[0]
            return f"{host}: {getattr(err, 'strerror', None) or err}"
    return None


def _get_json(session: Any, params: dict[str, Any], *, retries: int = 3) -> dict[str, Any]:
    import requests

    for attempt in range(retries + 1):
        try:
            response = session.get(GBIF_SEARCH, params=params, timeout=(5, 60))
        except (requests.ConnectionError, requests.Timeout) as err:
            if attempt == retries:
                raise NetworkUnavailable(f"GBIF did not answer ({type(err).__name__}); try again later") from None
        else:
            if response.status_code == 200:
                return response.json()
            if response.status_code not in (429, 500, 502, 503, 504) or attempt == retries:
                raise NetworkUnavailable(f"GBIF answered {response.status_code} to the occurrence search")
        time.sleep(2.0 * (attempt + 1))
    raise NetworkUnavailable("GBIF did not answer the occurrence search")


def _cached_image_url(occurrence: dict[str, Any], media: dict[str, Any]) -> str:
    md5 = hashlib.md5(str(media["identifier"]).encode()).hexdigest()
    return GBIF_IMAGE_CACHE.format(key=occurrence["key"], md5=md5)


def fetch_gbif_sample(n: int, out: str | Path, *, query: dict[str, Any] | None = None, page_size: int = PAGE_SIZE,
                      full_size: bool = False, session: Any = None, progress: bool = True) -> Path:
    """Write `n` imaged occurrences as one GBIF search-response JSON file at `out` (reused when present).

    With `full_size=False` each image URL is rewritten to GBIF's image cache (the
    publisher's URL is kept in `media[].originalIdentifier`).
    """
    import requests
    from tqdm.auto import tqdm

    from retrieval.collections import USER_AGENT

    target = Path(out)
    if target.is_file():
        return target
    if n < 1:
        raise BadInput(f"--sample must be at least 1, not {n}")
    session = session or requests.Session()
    session.headers.setdefault("User-Agent", USER_AGENT)
    params = {**(query or SAMPLE_QUERY)}
    total = int(_get_json(session, {**params, "limit": 0}).get("count") or 0)
    if total == 0:
        raise NetworkUnavailable("GBIF found no imaged specimens for the sample query")
    span = max(0, min(total, MAX_OFFSET) - page_size)
    pages = max(1, -(-n // page_size))
    offsets = sorted({int(i * span / pages) for i in range(pages)}) if pages > 1 else [0]
    results: list[dict[str, Any]] = []
    seen: set[Any] = set()
    with tqdm(total=n, desc="fetching the GBIF sample", unit="record", disable=not progress) as bar:
        for offset in offsets:
            page = _get_json(session, {**params, "limit": page_size, "offset": offset})
            for occurrence in page.get("results") or []:
                media = [m for m in occurrence.get("media") or []
                         if isinstance(m, dict) and m.get("type") == "StillImage" and m.get("identifier")]
                if not media or occurrence.get("key") in seen or len(results) >= n:
                    continue
                seen.add(occurrence.get("key"))
                if not full_size:
                    for item in media:
                        item["originalIdentifier"] = item["identifier"]
                        item["identifier"] = _cached_image_url(occurrence, item)
                results.append(occurrence)
                bar.update(1)
            if len(results) >= n:
                break
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_text(json.dumps({"count": len(results), "query": params, "results": results}, ensure_ascii=False),
                   encoding="utf-8")
    os.replace(tmp, target)
    return target


def _index_ready(collection: Path) -> bool:
    return (collection / "index" / "manifest.json").is_file()


def _index_encoder(collection: Path) -> str | None:
    try:
        return json.loads((collection / "index" / "manifest.json").read_text()).get("encoder")
    except (OSError, ValueError):
        return None


def _needs_download(model: str) -> bool:
    """Whether loading `model` may fetch weights (a hub checkpoint or pretrained tag), unlike tiny-test or local-dir:."""
    from retrieval.registry import preset

    try:
        spec = preset("encoders", model)
    except BadInput:
        return True
    return str(spec.get("model", "")).startswith("hf-hub:") or bool(spec.get("pretrained"))


def _offline_reason(model: str, network_check: Callable[[], str | None]) -> str | None:
    """Why the network is unreachable (None when it is, or when `model` needs none).

    Offline, the Hugging Face hub is told so before anything imports it: cached
    weights then load at once and missing ones fail at once, instead of after a
    minute of retries.
    """
    if not _needs_download(model):
        return None
    reason = network_check()
    if reason is not None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return reason


def prepare_demo(collection: str | Path | None = None, *, model: str | None = None, sample: int = DEFAULT_SAMPLE,
                 cache: str | Path | None = None, progress: bool = True,
                 network_check: Callable[[], str | None] = check_network) -> Path:
    """A collection ready to serve: `collection` indexed (when it is not yet), or the cached GBIF sample."""
    from retrieval.collections import Collection

    if collection is not None:
        folder = Collection.open(collection).path
        _offline_reason(model or _index_encoder(folder) or DEFAULT_MODEL, network_check)
        from retrieval.vectors import build_index

        try:
            build_index(folder, model=model, progress=progress)
        except NetworkUnavailable as err:
            if "--model" in str(err):
                raise
            raise NetworkUnavailable(f"{err}; or serve it with a local encoder: "
                                     f"`herbaria demo --collection {folder} --model tiny-test`") from None
        return folder

    root = Path(cache) if cache else cache_dir()
    folder = root / f"mnhn-paris-{sample}"
    name = model or DEFAULT_MODEL
    reason = _offline_reason(name, network_check)
    offline = NetworkUnavailable(
        f"herbaria demo needs the network to fetch the {name} weights and a sample collection "
        f"({reason}); {OFFLINE_HINT}")
    from retrieval.vectors import build_index

    if (folder / "collection.json").is_file() and _index_ready(folder):
        try:  # a finished sample: serve it, even offline when the weights are cached too
            build_index(folder, model=model, progress=progress)
            return folder
        except NetworkUnavailable:
            if reason is not None:
                raise offline from None
            raise
    if reason is not None:
        raise offline
    from retrieval.vectors import create_encoder
    from retrieval.collections import ingest

    create_encoder(name)  # the weights first: fail before fetching anything else
    pages = fetch_gbif_sample(sample, root / "gbif" / f"mnhn-paris-{sample}.json", progress=progress)
    summary = ingest(pages, folder, progress=progress, cache_dir=root / "media", workers=1)
    log.info("sample ingested: %s", {k: summary.get(k) for k in ("added", "skipped", "no_image", "with_image")})
    if not summary.get("with_image"):
        raise NetworkUnavailable(f"none of the {sample} sample images could be downloaded; try again later, "
                                 f"or {OFFLINE_HINT}")
    build_index(folder, model=name, progress=progress)
    return folder
