"""IIIF sources: a Presentation 3 or 2.1 manifest, a IIIF Collection, or a list of manifest URLs.

Many herbaria publish each sheet as a IIIF manifest (JACQ, Kew, MNHN e-ReColNat ...):
label/value metadata ("Catalog Number", "Scientific Name", "Collector" ...), rights or a
licence, a provider, and the sheet as an image service. A manifest is someone else's
text, so every label and value is stripped of markup, passed through
`retrieval.textnorm` and kept as plain text; links are kept only when they are http(s).
Labels map onto Darwin Core through one explicit table (case, punctuation, language and
a `dwc:` prefix ignored); the others are kept verbatim. The image is asked of the image
service at a bounded size (`full/!2048,2048/0/default.jpg`) and downloaded by ingest's
MediaFetcher like any remote media, under the same source rule
(`retrieval.collections.source_media`): a file: URL or a path outside the source folder
is refused and counted. The manifest id stands as occurrenceID when the metadata gives
none, so re-ingesting (directly, in a list or through a collection) never duplicates.
A manifest of a list or collection that cannot be read costs that manifest only: it comes
out as a record with `refused` set, which ingest counts and skips.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from retrieval.collections.readers import MEDIA, Record, check_mapping, new_record, complete_names
from retrieval.collections.schema import DWC_TERMS
from retrieval.collections.source_media import NOT_HTTP, OUTSIDE, MediaRefused, SourceFolder, is_http_url, url_scheme
from retrieval.errors import BadInput, NetworkUnavailable
from retrieval.textnorm import normalize_text

log = logging.getLogger(__name__)

MAX_SIDE = 2048  # longest side asked of an image service: a sheet is legible, a download bounded
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 4  # collections inside collections
MAX_VALUE_CHARS = 2000
FETCH_INTERVAL = 0.5  # seconds between two manifest requests to one host
TIMEOUT = 30.0
UNREADABLE = "IIIF manifest unreadable"
MANIFEST_NOT_HTTP = "IIIF manifest refused: not an http(s) URL"
MANIFEST_OUTSIDE = "IIIF manifest refused: outside the source folder"

# Normalised metadata label (lowercase, letters and digits only, `dwc:`-like prefix dropped) -> term.
LABEL_TERMS: dict[str, str] = {
    **dict.fromkeys(["occurrenceid", "cetafid", "stableidentifier", "stableuri", "permalink", "purl"],
                    "occurrenceID"),
    **dict.fromkeys(["catalognumber", "catalogno", "cataloguenumber", "barcode", "herbariumbarcode",
                     "specimennumber", "accessionnumber", "herbariumnumber"], "catalogNumber"),
    **dict.fromkeys(["institution", "institutioncode", "herbarium", "holdinginstitution"], "institutionCode"),
    **dict.fromkeys(["collection", "collectioncode"], "collectionCode"),
    **dict.fromkeys(["scientificname", "taxon", "taxonname", "species", "currentname", "name"], "scientificName"),
    "family": "family", "genus": "genus", "specificepithet": "specificEpithet",
    **dict.fromkeys(["collector", "collectors", "collectedby", "recordedby", "leg"], "recordedBy"),
    **dict.fromkeys(["date", "collectiondate", "datecollected", "eventdate", "collected", "dateofcollection"],
                    "eventDate"),
    **dict.fromkeys(["country", "countryname"], "country"),
    **dict.fromkeys(["locality", "location", "place", "collectionlocality", "verbatimlocality"], "locality"),
    **dict.fromkeys(["latitude", "decimallatitude"], "decimalLatitude"),
    **dict.fromkeys(["longitude", "decimallongitude"], "decimalLongitude"),
    **dict.fromkeys(["license", "licence", "rights", "usageterms"], "license"),
    **dict.fromkeys(["rightsholder", "copyright", "attribution"], "rightsHolder"),
}
_OPEN_TAG = re.compile(r"<[A-Za-z/!?][^<>]*$")  # a tag left open at the end ("<img src=x onerror=...")
_PREFIX = re.compile(r"^\s*(?:dwc|dwciri|dc|dcterms|ac)\s*:", re.IGNORECASE)


class ManifestRefused(Exception):
    """A manifest of a list or collection that could not be used; `reason` is counted by ingest."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _NoConnection(ManifestRefused):
    """The host did not answer: one manifest of a list is skipped, the source itself is NetworkUnavailable."""


# --------------------------------------------------------------------------- text


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment; script and style contents are dropped."""

    _BREAKS = frozenset({"br", "p", "div", "li", "tr", "td", "th"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden = max(0, self._hidden - 1)

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def plain_text(value: Any) -> str:
    """One line of plain text: markup removed (also markup that was entity-escaped), controls and
    invisible characters removed (`normalize_text`), whitespace collapsed, length bounded."""
    text = normalize_text(value)
    for _ in range(3):  # "&lt;b&gt;" unescapes to "<b>": strip until nothing changes
        parser = _TextOnly()
        parser.feed(text)
        parser.close()
        stripped = _OPEN_TAG.sub("", normalize_text("".join(parser.parts)))
        if stripped == text:
            break
        text = stripped
    return " ".join(text.split())[:MAX_VALUE_CHARS]


def _language_text(value: Any) -> str:
    """The text of a IIIF label or value: a v3 language map, a v2 string / {"@value"} / list of them."""
    if isinstance(value, Mapping):
        if "@value" in value:
            return str(value["@value"] or "")
        english = sorted(k for k in value if str(k).lower().startswith("en"))
        for language in (*english, "none", "@none", *sorted(value, key=str)):
            entries = value.get(language)
            if entries:
                return "; ".join(str(e) for e in entries) if isinstance(entries, list) else str(entries)
        return ""
    if isinstance(value, list):
        items = [v for v in value if v not in (None, "")]
        english = [v for v in items if isinstance(v, Mapping) and str(v.get("@language", "")).startswith("en")]
        return "; ".join(t for t in (_language_text(v) for v in (english or items)) if t)
    return "" if value is None else str(value)


def _text(value: Any) -> str:
    return plain_text(_language_text(value))


def _label_key(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", _PREFIX.sub("", label).lower())


def _link(value: Any) -> str:
    """An http(s) link, or "" (a javascript:, data: or file: link is dropped)."""
    if isinstance(value, Mapping):
        value = value.get("id") or value.get("@id") or ""
    text = plain_text(value)
    return text if is_http_url(text) else ""


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


# --------------------------------------------------------------------------- fetching


class _Loader:
    """Reads IIIF JSON from http(s) URLs (rate-limited per host, redirects only to http(s), bounded size)
    or from files inside the source folder."""

    def __init__(self, folder: SourceFolder | None) -> None:
        self.folder = folder
        self._session: Any = None
        self._limiter: Any = None

    def load(self, ref: str) -> tuple[Any, str]:
        """(document, its location); raises ManifestRefused with a one-line reason."""
        ref = ref.strip()
        if url_scheme(ref):
            if not is_http_url(ref):
                raise ManifestRefused(MANIFEST_NOT_HTTP, f"{_shown(ref)} is not an http(s) URL; refused")
            return _parse(self._get(ref), ref), ref
        if self.folder is None or not self.folder.contains(ref):
            raise ManifestRefused(MANIFEST_OUTSIDE, f"{_shown(ref)} is a local path outside the source folder; "
                                                    "refused")
        path = self.folder.root / ref
        try:
            if path.stat().st_size > MAX_JSON_BYTES:
                raise ManifestRefused(UNREADABLE, f"{path.name}: over {MAX_JSON_BYTES >> 20} MB; refused")
            return _parse(path.read_bytes(), path.name), str(path)
        except OSError as err:
            raise ManifestRefused(UNREADABLE, f"{path.name}: cannot be read ({err.strerror or err})") from None

    def _get(self, url: str) -> bytes:
        """The body at `url`; transient failures (5xx, 429, no connection) are tried three times."""
        import requests  # noqa: PLC0415 (only a IIIF source needs it)

        from retrieval.collections.media import USER_AGENT, HostRateLimiter  # noqa: PLC0415

        if self._session is None:
            self._session = requests.Session()
            self._session.headers["User-Agent"] = USER_AGENT
            self._limiter = HostRateLimiter(FETCH_INTERVAL)
        for attempt in range(3):
            if attempt:
                time.sleep(0.5 * 2**attempt)
            try:
                body = self._get_once(url)
            except requests.ConnectionError:
                if attempt == 2:
                    raise _NoConnection("IIIF host unreachable", f"cannot read {_shown(url)}: no connection to "
                                        f"{urlsplit(url).hostname}; run again when online") from None
                continue
            except requests.RequestException as err:
                raise ManifestRefused(UNREADABLE, f"{_shown(url)}: {type(err).__name__}") from None
            if body is not None:
                return body
        raise ManifestRefused(UNREADABLE, f"{_shown(url)}: the server kept failing")

    def _get_once(self, url: str) -> bytes | None:
        """One request, following at most five redirects, each to http(s); None for a transient HTTP status."""
        current = url
        for _ in range(6):
            self._limiter.wait(urlsplit(current).netloc)
            with self._session.get(current, stream=True, timeout=TIMEOUT, allow_redirects=False) as reply:
                target = self._session.get_redirect_target(reply)
                if target:
                    current = urljoin(current, target)
                    if not is_http_url(current):
                        raise ManifestRefused(MANIFEST_NOT_HTTP, f"{_shown(url)} redirects to a non-http(s) URL")
                    continue
                if reply.status_code in (429, 500, 502, 503, 504):
                    return None
                if reply.status_code >= 400:
                    raise ManifestRefused(UNREADABLE, f"{_shown(url)}: HTTP {reply.status_code}")
                body = reply.raw.read(MAX_JSON_BYTES + 1, decode_content=True)
                if len(body) > MAX_JSON_BYTES:
                    raise ManifestRefused(UNREADABLE, f"{_shown(url)}: over {MAX_JSON_BYTES >> 20} MB")
                return body
        raise ManifestRefused(UNREADABLE, f"{_shown(url)}: too many redirects")


def _parse(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        detail = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ManifestRefused(UNREADABLE, f"{_shown(where)}: not valid JSON ({detail})") from None


def _shown(value: str) -> str:
    text = plain_text(value)
    return repr(text if len(text) <= 100 else text[:97] + "...")


# --------------------------------------------------------------------------- documents


def _kind(doc: Any) -> str:
    """'Manifest', 'Collection' or '' for a IIIF document (v3 `type`, v2 `@type` sc:...)."""
    if not isinstance(doc, Mapping):
        return ""
    kind = str(doc.get("type") or doc.get("@type") or "")
    kind = kind.split(":")[-1]
    return kind if kind in ("Manifest", "Collection") else ""


def _id(doc: Mapping[str, Any]) -> str:
    return str(doc.get("id") or doc.get("@id") or "").strip()


def looks_like_iiif(path: Path) -> bool:
    """True for a JSON file holding a IIIF manifest or collection, or a list of manifest URLs (strings)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536).decode("utf-8-sig", errors="replace")
    except OSError:
        return False
    return bool(re.search(r"iiif\.io/api/presentation|\"(?:@?type)\"\s*:\s*\"(?:sc:)?(?:Manifest|Collection)\"",
                          head) or re.match(r"\s*\[\s*\"", head))


def read_iiif(source: str | Path, *, mapping: Mapping[str, str] | None = None) -> Iterator[Record]:
    """Records from a IIIF manifest or collection (an http(s) URL or a file), or a .txt/.json list of them.

    `mapping` {metadata label: term} overrides the built-in label table.
    """
    checked = {_label_key(label): term for label, term in check_mapping(mapping).items()}
    if isinstance(source, str) and url_scheme(source):
        loader = _Loader(None)
        yield from _walk_top(lambda: loader.load(source), loader, checked)
        return
    path = Path(source)
    if not path.is_file():
        raise BadInput(f"IIIF source not found: {path}")
    loader = _Loader(SourceFolder(path.parent))
    if path.suffix.lower() == ".txt":
        lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
        refs = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not refs:
            raise BadInput(f"{path.name}: lists no IIIF manifest URLs")
        yield from _walk_list(refs, loader, checked, path.name)
        return
    yield from _walk_top(lambda: loader.load(path.name), loader, checked)


def _walk_top(load: Any, loader: _Loader, mapping: Mapping[str, str]) -> Iterator[Record]:
    """The source itself must be readable and IIIF: anything else is one BadInput line."""
    try:
        doc, where = load()
    except _NoConnection as err:
        raise NetworkUnavailable(str(err)) from None
    except ManifestRefused as err:
        raise BadInput(str(err)) from None
    folder = None if url_scheme(where) else loader.folder
    if isinstance(doc, list) and all(isinstance(item, str) for item in doc):
        yield from _walk_list(doc, loader, mapping, Path(where).name)
        return
    kind = _kind(doc)
    if not kind:
        raise BadInput(f"{_shown(where)}: not a IIIF Manifest or Collection (no Manifest/Collection type)")
    if kind == "Manifest":
        try:
            yield manifest_record(doc, folder, mapping, loader)
        except ManifestRefused as err:
            raise BadInput(f"{_shown(where)}: {err}") from None
        return
    yield from _walk_collection(doc, folder, loader, mapping, {_id(doc)}, depth=1)


def _walk_list(refs: list[str], loader: _Loader, mapping: Mapping[str, str], where: str) -> Iterator[Record]:
    seen: set[str] = set()
    for number, ref in enumerate(refs, start=1):
        yield from _child(str(ref), loader, mapping, seen, depth=1, where=f"{where} entry {number}")


def _walk_collection(doc: Mapping[str, Any], folder: SourceFolder | None, loader: _Loader,
                     mapping: Mapping[str, str], seen: set[str], depth: int) -> Iterator[Record]:
    members: list[Any] = []
    for key in ("items", "manifests", "collections", "members"):  # v3 items; v2 manifests, collections, members
        if isinstance(doc.get(key), list):
            members += doc[key]
    where = _shown(_id(doc) or "collection")
    for number, member in enumerate(members, start=1):
        place = f"{where} item {number}"
        if isinstance(member, Mapping) and _kind(member) == "Manifest" and (
                member.get("items") or member.get("sequences")):
            yield _record_or_refused(member, folder, loader, mapping, _id(member) or place)  # embedded in full
        elif isinstance(member, Mapping) and _kind(member) and _id(member):
            yield from _child(_id(member), loader, mapping, seen, depth, place)
        else:
            yield _refused(place, ManifestRefused(UNREADABLE, f"{place}: not a IIIF Manifest or Collection reference"))


def _child(ref: str, loader: _Loader, mapping: Mapping[str, str], seen: set[str], depth: int,
           where: str) -> Iterator[Record]:
    if ref in seen:
        return
    seen.add(ref)
    try:
        doc, location = loader.load(ref)
    except ManifestRefused as err:
        yield _refused(ref, err)
        return
    kind = _kind(doc)
    folder = None if url_scheme(location) else loader.folder
    if kind == "Collection" and depth < MAX_DEPTH:
        yield from _walk_collection(doc, folder, loader, mapping, seen, depth + 1)
    elif kind == "Manifest":
        yield _record_or_refused(doc, folder, loader, mapping, ref)
    else:
        what = "collections nested too deep" if kind else "not a IIIF Manifest or Collection"
        yield _refused(ref, ManifestRefused(UNREADABLE, f"{_shown(location)} ({where}): {what}"))


def _record_or_refused(doc: Mapping[str, Any], folder: SourceFolder | None, loader: _Loader,
                       mapping: Mapping[str, str], where: str) -> Record:
    try:
        return manifest_record(doc, folder, mapping, loader)
    except ManifestRefused as err:
        return _refused(where, ManifestRefused(err.reason, f"{_shown(where)}: {err}"))


def _refused(locator: str, err: ManifestRefused) -> Record:
    record = new_record(plain_text(locator)[:200])
    record["refused"] = err
    return record


# --------------------------------------------------------------------------- one manifest


def manifest_record(doc: Mapping[str, Any], folder: SourceFolder | None, mapping: Mapping[str, str],
                    loader: _Loader | None = None) -> Record:
    """The record of one manifest: metadata -> Darwin Core, rights, provider, links, image.

    `folder` is the folder of a manifest read from a file (its images may lie there), None for a remote one.
    With a `loader`, a seeAlso Darwin Core JSON record fills the terms the metadata left empty."""
    manifest_id = _link(_id(doc))
    if not manifest_id:
        raise ManifestRefused(UNREADABLE, "the manifest has no http(s) id")
    record = new_record(manifest_id)
    verbatim = record["verbatim"]
    verbatim["iiifManifest"] = manifest_id
    entries = doc.get("metadata") if isinstance(doc.get("metadata"), list) else []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        label, value = _text(entry.get("label"))[:80], _text(entry.get("value"))
        if not label or not value:
            continue
        key = _label_key(label)
        term = mapping.get(key) or LABEL_TERMS.get(key)
        if term in ("license", "references") and url_scheme(value) and not is_http_url(value):
            term = None  # a javascript: or data: "licence" is not kept as a link
        if term and term != MEDIA and not record.get(term):
            record[term] = value
        elif term != MEDIA:
            verbatim.setdefault(label, value)
    title = _text(doc.get("label"))
    if title:
        verbatim.setdefault("label", title)
    _rights(doc, record)
    homepage = _link(_first(doc.get("homepage"))) or _link(_first(doc.get("related")))
    record["references"] = _link(record.pop("references", "")) or homepage or manifest_id
    see_also = _link(_first(doc.get("seeAlso")))
    if see_also:
        verbatim["seeAlso"] = see_also
    if loader is not None:
        for term, value in _darwin_core(doc, loader).items():
            if not record.get(term):
                record[term] = value
    if not record.get("occurrenceID"):
        record["occurrenceID"] = manifest_id
    _image(doc, record, folder, manifest_id)
    return complete_names(record)


def _darwin_core(doc: Mapping[str, Any], loader: _Loader) -> dict[str, str]:
    """Terms of the manifest's first seeAlso that is a Darwin Core JSON record (by its format and profile);
    {} when there is none or it cannot be read: it only adds to what the manifest says."""
    entries = doc.get("seeAlso")
    for entry in _list(entries if isinstance(entries, list) else [entries]):
        link = _link(entry)
        about = json.dumps([entry.get("profile", ""), entry.get("format", "")]).lower()
        if not link or "json" not in about or not ("dwc" in about or "rs.tdwg.org" in about):
            continue
        try:
            data, _ = loader.load(link)
        except ManifestRefused as err:
            log.debug("seeAlso not read: %s", err)
            return {}
        if isinstance(data, list) and data and isinstance(data[0], Mapping):
            data = data[0]
        if not isinstance(data, Mapping):
            return {}
        terms = {term.lower(): term for term in DWC_TERMS}
        found: dict[str, str] = {}
        for key, value in data.items():
            term = terms.get(re.split(r"[/#:]", str(key))[-1].lower())
            if term and isinstance(value, (str, int, float)) and not isinstance(value, bool):
                text = plain_text(value)
                if text and not (term in ("license", "references") and url_scheme(text) and not is_http_url(text)):
                    found.setdefault(term, text)
        return found
    return {}


def _rights(doc: Mapping[str, Any], record: Record) -> None:
    """License from v3 `rights` / v2 `license`; rights holder from requiredStatement / attribution / provider."""
    for value in (doc.get("rights"), _first(doc.get("license"))):
        link = _link(value)
        if link and not record.get("license"):
            record["license"] = link
    providers = [_text(p.get("label")) for p in doc.get("provider") or [] if isinstance(p, Mapping)]
    providers = [p for p in providers if p]
    if providers:
        record["verbatim"]["provider"] = "; ".join(providers)
    statement = doc.get("requiredStatement")
    holder = _text(statement.get("value")) if isinstance(statement, Mapping) else _text(doc.get("attribution"))
    if not record.get("rightsHolder"):
        record["rightsHolder"] = holder or (providers[0] if providers else "")


def _image(doc: Mapping[str, Any], record: Record, folder: SourceFolder | None, manifest_id: str) -> None:
    """The first canvas's image, asked of its image service at a bounded size; a refused one is recorded."""
    resource = _first_image(doc)
    if resource is None:
        return
    where = f"manifest {_shown(manifest_id)}"
    candidates: list[str] = []
    service = _image_service(resource)
    if service is not None:
        base = str(service.get("id") or service.get("@id") or "").strip()
        if base:
            candidates.append(image_request(base, service))
    direct = str(resource.get("id") or resource.get("@id") or "").strip()
    if direct:
        candidates.append(direct)
    refusal: MediaRefused | None = None
    for candidate in candidates:
        try:
            record[MEDIA] = _media(candidate, folder, where)
            return
        except MediaRefused as err:
            refusal = refusal or err
    if refusal is not None:
        record["problem"] = refusal


def _media(value: str, folder: SourceFolder | None, where: str) -> str:
    """The source rule: http(s), or (for a manifest file) a path inside its folder; else MediaRefused."""
    if folder is not None:
        return folder.media(value, where)
    if is_http_url(value):
        return value
    if url_scheme(value):
        raise MediaRefused(NOT_HTTP, f"{where}: media {_shown(value)} is a {url_scheme(value)}: reference, not an "
                                     "http(s) URL; refused")
    raise MediaRefused(OUTSIDE, f"{where}: media {_shown(value)} is a local path named by a remote manifest; "
                                "refused")


def _first_image(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """v3: items[canvas].items[page].items[annotation].body; v2: sequences[0].canvases[].images[].resource."""
    for canvas in _list(doc.get("items")):
        for page in _list(canvas.get("items")):
            for annotation in _list(page.get("items")):
                body = _first(annotation.get("body"))
                if isinstance(body, Mapping) and str(body.get("type", "")) == "Choice":
                    body = _first(body.get("items"))
                if isinstance(body, Mapping):
                    return body
    for sequence in _list(doc.get("sequences"))[:1]:
        for canvas in _list(sequence.get("canvases")):
            for image in _list(canvas.get("images")):
                resource = image.get("resource")
                if isinstance(resource, Mapping):
                    return resource
    return None


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _image_service(resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
    services = resource.get("service")
    for service in services if isinstance(services, list) else [services]:
        if not isinstance(service, Mapping):
            continue
        kind = str(service.get("type") or service.get("@type") or "")
        profile = json.dumps(service.get("profile", ""))
        if "ImageService" in kind or "iiif.io/api/image" in profile or "level" in profile:
            return service
    return None


def image_request(base: str, service: Mapping[str, Any]) -> str:
    """{service}/full/{size}/0/default.jpg: at most MAX_SIDE on the long side, else the whole image.

    v3 spells the whole image `max`, v2 `full`; a level-0 service answers only the sizes it lists."""
    base = re.sub(r"/info\.json$", "", base).rstrip("/")
    kind = str(service.get("type") or service.get("@type") or "")
    context = json.dumps(service.get("@context", ""))
    version3 = kind == "ImageService3" or "image/3" in context
    whole = "max" if version3 else "full"
    sizes = [s for s in _list(service.get("sizes")) if isinstance(s.get("width"), int)
             and isinstance(s.get("height"), int) and max(s["width"], s["height"]) <= MAX_SIDE]
    profile = json.dumps(service.get("profile", "")).lower()
    if sizes:
        best = max(sizes, key=lambda s: s["width"] * s["height"])
        size = f"{best['width']},{best['height']}" if version3 else f"{best['width']},"
    elif "level0" in profile:
        size = whole
    else:
        size = f"!{MAX_SIDE},{MAX_SIDE}"
    return f"{base}/full/{size}/0/default.jpg"
