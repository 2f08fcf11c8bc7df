"""`herbaria demo`'s preparation: a real sample collection whose taxa are described, fetched once into a cache.

Why this way: an answer is worth showing only when it quotes what a flora says about the
specimens in the gallery. So the taxa come first, from public FlorML volumes of Flore du
Gabon and Flora Malesiana (fetched from a flora file host, $HERBARIA_FLORA_URL); then the
GBIF occurrence search is asked for imaged MNHN Paris sheets (institution code P) of each
of those taxa ($HERBARIA_GBIF_API); the volumes that gave taxa are added as descriptions,
and the GBIF species descriptions of the sample's taxa beside them, each with its licence.
Images come through GBIF's image cache (at most 1200 px, as GBIF asks scripted users to
fetch), each record keeps its license and rights holder, and `references` links to the
source record. Example questions are built from traits the sample's described taxa have.
Offline, the command stops at once with what to do instead, not after timing out on every URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from retrieval.cache import cache_dir
from retrieval.errors import BadInput, NetworkUnavailable

log = logging.getLogger("herbaria.demo")

IMAGE_CACHE_PATH = "/image/cache/occurrence/{key}/media/{md5}"  # GBIF's resized copy of an occurrence's image
SAMPLE_QUERY: dict[str, Any] = {
    "institutionCode": "P",
    "basisOfRecord": "PRESERVED_SPECIMEN",
    "mediaType": "StillImage",
    "kingdomKey": 6,  # Plantae in the GBIF backbone
}
DEFAULT_SAMPLE = 300
DEFAULT_MODEL = "bioclip"
NETWORK_HOSTS = (("api.gbif.org", 443), ("huggingface.co", 443))
HUB_HOSTS = (("huggingface.co", 443),)

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


DEFAULT_GBIF_API = "https://api.gbif.org/v1"
# The FLOPO project's FlorML files, at a fixed commit so that the same names always mean the same files.
DEFAULT_FLORA_URL = ("https://raw.githubusercontent.com/flora-phenotype-ontology/flopoontology/"
                     "7937cbf88a9fcdadede2cd2a089b712668cd30da/")
DEFAULT_VOLUMES = (  # Flore du Gabon (French) and Flora Malesiana (English): MNHN Paris holds sheets of both
    "flora-gabon/fdgvol4_final.xml", "flora-gabon/fdgvol7_final.xml", "flora-gabon/fdgvol8_final.xml",
    "flora-gabon/fdgvol11_final.xml", "flora-malesiana/vol16_final.xml", "flora-malesiana/fmvol17_part1_final.xml",
    "flora-malesiana/vol14_final.xml",
)
DEFAULT_PER_TAXON = 3
DEFAULT_TEXT_MODEL = "minilm-static"  # retrieval.flora.text_encoders' default (not imported: numpy at CLI start)
MAX_VOLUME_BYTES = 64 * 1024 * 1024
MIN_DESCRIPTION_CHARS = 200  # a name with a line of text makes no demo
SPECIES_RANKS = {"species", "subspecies", "variety", "form"}
MIN_COVERAGE = 0.8  # of the sample's sheets with a description of their taxon (below: a warning)
EXAMPLES_FILE = "demo-examples.json"  # written last: its presence marks a finished sample
_VOLUME_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\.xml")


def gbif_api_url(url: str | None = None) -> str:
    """The GBIF API base: `url`, else $HERBARIA_GBIF_API, else api.gbif.org/v1 (the one `descriptions add gbif` uses)."""
    return _checked_url(url or os.environ.get("HERBARIA_GBIF_API") or DEFAULT_GBIF_API, "--gbif-api").rstrip("/")


def flora_base_url(url: str | None = None) -> str:
    """The flora file host: `url`, else $HERBARIA_FLORA_URL, else the FLOPO repository's files."""
    return _checked_url(url or os.environ.get("HERBARIA_FLORA_URL") or DEFAULT_FLORA_URL, "--flora-url").rstrip("/") + "/"


def _checked_url(url: str, flag: str) -> str:
    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"{flag} must be an http(s) URL, not {str(url)[:80]!r}")
    return str(url).strip()


def _hosts(*urls: str) -> tuple[tuple[str, int], ...]:
    out: dict[tuple[str, int], None] = {}
    for url in urls:
        parts = urlsplit(url)
        out[(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))] = None
    return tuple(out)


def _say(message: str, progress: bool) -> None:
    log.info(message)
    if progress:
        print(message, file=sys.stderr, flush=True)


def fetch_volumes(base_url: str, names: Sequence[str], folder: Path, *, session: Any = None,
                  progress: bool = True) -> list[Path]:
    """The FlorML volumes `names` (paths under `base_url`), downloaded once into `folder`."""
    import requests
    from tqdm.auto import tqdm

    from retrieval.collections import USER_AGENT

    session = session or requests.Session()
    session.headers.setdefault("User-Agent", USER_AGENT)
    paths = []
    for name in tqdm(names, desc="flora volumes", unit="volume", disable=not progress):
        if not _VOLUME_NAME.fullmatch(name) or ".." in name:
            raise BadInput(f"flora volume {name[:80]!r}: give a relative path ending in .xml")
        url = base_url + name
        # the file keeps its name (a FlorML volume without a title is cited by it), in a folder per URL
        target = folder / hashlib.sha256(url.encode()).hexdigest()[:12] / Path(name).name
        if not target.is_file():
            try:
                with session.get(url, timeout=(5, 120), stream=True) as reply:
                    if reply.status_code != 200:
                        raise NetworkUnavailable(f"the flora file host answered {reply.status_code} for {url}")
                    body = reply.raw.read(MAX_VOLUME_BYTES + 1, decode_content=True)
            except requests.RequestException as err:
                raise NetworkUnavailable(f"flora file host unreachable for {url} ({type(err).__name__})") from None
            if len(body) > MAX_VOLUME_BYTES or not body.lstrip()[:1] == b"<":
                raise BadInput(f"{url}: not a FlorML file (over {MAX_VOLUME_BYTES >> 20} MB or not XML)")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            tmp.write_bytes(body)
            os.replace(tmp, target)
        paths.append(target)
    return paths


def candidate_taxa(volumes: Sequence[Path]) -> list[dict[str, Any]]:
    """Species-rank taxa with a real description, taken in turn from each volume (name order within one),
    so that a small sample still spans both floras."""
    from retrieval.flora import read_descriptions

    per_volume = []
    for path in volumes:
        records = [r for r in read_descriptions(path)
                   if r.rank in SPECIES_RANKS and len(r.text) >= MIN_DESCRIPTION_CHARS and len(r.name.split()) >= 2]
        chosen: dict[str, dict[str, Any]] = {}
        for r in sorted(records, key=lambda r: (r.name, r.taxon)):
            chosen.setdefault(r.name, {"name": r.name, "synonyms": list(r.synonyms), "volume": path,
                                       "source": r.source, "language": r.language})
        per_volume.append(list(chosen.values()))
    taxa, seen = [], set()
    for row in zip_longest(*per_volume):
        for taxon in row:
            if taxon is not None and taxon["name"] not in seen:
                seen.add(taxon["name"])
                taxa.append(taxon)
    return taxa


def _same_taxon(occurrence: dict[str, Any], names: set[str]) -> bool:
    from retrieval.flora import normalize_name, species_of

    for field in ("species", "acceptedScientificName", "scientificName"):
        value = occurrence.get(field)
        if isinstance(value, str) and value:
            name = normalize_name(value)
            if name in names or species_of(name) in names:
                return True
    return False


def _media(occurrence: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in occurrence.get("media") or [] if isinstance(m, dict) and m.get("type") == "StillImage"
            and isinstance(m.get("identifier"), str) and m["identifier"].startswith(("http://", "https://"))]


def sample_occurrences(client: Any, taxa: Sequence[dict[str, Any]], n: int, *, per_taxon: int = DEFAULT_PER_TAXON,
                       image_cache: str | None = None, progress: bool = True,
                       picked: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Up to `n` imaged MNHN Paris sheets, at most `per_taxon` per taxon, of `taxa` in order.

    Each name is matched against the GBIF backbone (`/species/match`) and its accepted key's
    occurrences are searched; a sheet is kept only when GBIF names it as the described taxon
    or one of its synonyms, so the descriptions reach it. `image_cache` (a URL template with
    {key} and {md5}) rewrites image URLs to GBIF's image cache; the original is kept. `picked`
    (when given) receives the number of sheets taken per taxon name."""
    from tqdm.auto import tqdm

    from retrieval.flora import normalize_name, species_of

    results: list[dict[str, Any]] = []
    seen: set[Any] = set()
    with tqdm(total=n, desc="MNHN Paris sheets of described taxa", unit="sheet", disable=not progress) as bar:
        for taxon in taxa:
            if len(results) >= n:
                break
            match = client.match(taxon["name"])
            key = match.get("acceptedUsageKey") or match.get("usageKey")
            if not isinstance(key, int) or match.get("matchType") in ("NONE", "HIGHERRANK", None):
                continue
            page = client.get("/occurrence/search", {**SAMPLE_QUERY, "taxonKey": key, "limit": 4 * per_taxon}) or {}
            names = {taxon["name"], species_of(taxon["name"]), match.get("acceptedName") or ""}
            names = (names | {normalize_name(s) for s in taxon["synonyms"]}) - {""}
            taken = 0
            for occurrence in page.get("results") or []:
                if not isinstance(occurrence, dict) or taken >= per_taxon or len(results) >= n:
                    break
                media = _media(occurrence)
                okey = occurrence.get("key")
                if not media or not isinstance(okey, int) or okey in seen or not _same_taxon(occurrence, names):
                    continue
                seen.add(okey)
                occurrence["media"] = media
                if image_cache:
                    for item in media:
                        item["originalIdentifier"] = item["identifier"]
                        item["identifier"] = image_cache.format(
                            key=okey, md5=hashlib.md5(item["identifier"].encode()).hexdigest())
                results.append(occurrence)
                taken += 1
                bar.update(1)
            if picked is not None and taken:
                picked[taxon["name"]] = taken
    return results


def _example_organ(organ: str) -> str:
    plural = {"leaf": "leaves", "leaf blade": "leaf blades", "calyx": "calyces", "ovary": "ovaries", "leaflet": "leaflets"}
    return plural.get(organ, organ if organ.endswith("s") else organ + "s")


_EXAMPLE_ORGANS = {"leaf", "leaf blade", "leaflet", "flower", "petal", "sepal", "corolla", "calyx", "fruit", "stipule",
                   "inflorescence", "seed", "stem", "twig", "branchlet"}
_EXAMPLE_CHARACTERS = {"shape", "colour", "color", "arrangement", "margin", "apex", "base", "texture", "surface",
                       "pubescence", "venation", "division", "composition"}


def _example_traits(traits: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    from retrieval.flora import triple

    out = []
    for trait in traits:
        if trait.get("negated") or trait.get("modifier"):
            continue
        organ, character, value = triple(trait)
        if (organ in _EXAMPLE_ORGANS and character in _EXAMPLE_CHARACTERS and re.fullmatch(r"[a-z]+( [a-z]+){0,2}", value)
                and value not in {"present", "absent", "basal", "glabrescent"}):
            out.append((organ, character, value))
    return sorted(set(out))


def _phrase(organ: str, character: str, value: str) -> str:
    if character in ("margin", "apex", "base", "venation"):
        return f"{_example_organ(organ)} with {value} {character}"
    return f"{value} {_example_organ(organ)}"


def demo_examples(index: Any, links: dict[str, list[int]]) -> list[dict[str, str]]:
    """Questions the sample answers: traits that its held, described (English) taxa have in their descriptions.

    The trait question joins two of one held taxon's rarest traits, on two organs, so the taxon's own
    sheets answer it; the taxon question names the held, described taxon with the most sheets."""
    held = [(len(links.get(r.name, [])), r.name, i) for i, r in enumerate(index.records)
            if links.get(r.name) and r.language == "en"]
    if not held:
        held = [(len(links.get(r.name, [])), r.name, i) for i, r in enumerate(index.records) if links.get(r.name)]
    traits = {i: _example_traits(index.traits[i]) for _, _, i in held}
    frequency = Counter(t for ts in traits.values() for t in set(ts))
    examples: list[dict[str, str]] = []
    by_sheets = sorted(held, key=lambda h: (-h[0], h[1]))  # most sheets first
    for _, name, i in by_sheets:
        ranked = sorted(traits[i], key=lambda t: (frequency[t], t))
        pair = next(((a, b) for a in ranked for b in ranked if a[0] != b[0] and a < b), None)
        if pair:
            question = f"Which specimens have {_phrase(*pair[0])} and {_phrase(*pair[1])}?"
            examples.append({"text": question, "label": f"Morphology: {pair[0][2]} {pair[0][0]}, {pair[1][2]} {pair[1][0]}",
                             "taxon": name})
            break
    if held:
        name = by_sheets[0][1]
        examples.append({"text": f"How do the leaves of {name} look?", "label": f"Taxon: leaves of {name}", "taxon": name})
    common = sorted(((c, t) for t, c in frequency.items() if t[0] in ("leaf", "leaf blade")), key=lambda x: (-x[0], x[1]))
    if common and common[0][0] > 1:
        organ, character, value = common[0][1]
        examples.append({"text": f"Which specimens have {_phrase(organ, character, value)}?",
                         "label": f"Morphology: {value} {organ} ({common[0][0]} described taxa)", "taxon": ""})
    return examples


def read_demo_examples(collection: str | Path) -> list[dict[str, str]]:
    """The examples `prepare_demo` wrote for a sample ([] for other collections or an unreadable file)."""
    try:
        data = json.loads((Path(collection) / EXAMPLES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and isinstance(item.get("text"), str) and isinstance(item.get("label"), str):
            out.append({"text": item["text"][:300], "label": item["label"][:120]})
    return out[:6]


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


def _hub_cached(model: str) -> bool:
    """Whether an `hf-hub:` encoder's checkpoint is already in the Hugging Face cache (no need to reach the hub)."""
    from retrieval.registry import preset

    try:
        name = str(preset("encoders", model).get("model", ""))
        if not name.startswith("hf-hub:"):
            return False
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name[len("hf-hub:"):], "open_clip_config.json"), str)
    except Exception:  # noqa: BLE001 - an unknown name or an odd cache: the hub may be needed
        return False


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


def _serve_existing(collection: str | Path, model: str | None, progress: bool,
                    network_check: Callable[[], str | None]) -> Path:
    from retrieval.collections import Collection
    from retrieval.vectors import build_index

    folder = Collection.open(collection).path
    _offline_reason(model or _index_encoder(folder) or DEFAULT_MODEL, network_check)
    try:
        build_index(folder, model=model, progress=progress)
    except NetworkUnavailable as err:
        if "--model" in str(err):
            raise
        raise NetworkUnavailable(f"{err}; or serve it with a local encoder: "
                                 f"`herbaria demo --collection {folder} --model tiny-test`") from None
    return folder


def prepare_demo(collection: str | Path | None = None, *, model: str | None = None, sample: int = DEFAULT_SAMPLE,
                 cache: str | Path | None = None, progress: bool = True,
                 network_check: Callable[[], str | None] | None = None, gbif_api: str | None = None,
                 flora_url: str | None = None, volumes: Sequence[str] | None = None,
                 per_taxon: int = DEFAULT_PER_TAXON, text_model: str = DEFAULT_TEXT_MODEL) -> Path:
    """A collection ready to serve: `collection` indexed (when it is not yet), or the cached described sample.

    `network_check` None: a TCP check of the GBIF API and flora file hosts (and of the
    Hugging Face hub when the encoder's weights are not cached)."""
    if sample < 1:
        raise BadInput(f"--sample must be at least 1, not {sample}")
    if per_taxon < 1:
        raise BadInput(f"--per-taxon must be at least 1, not {per_taxon}")
    if collection is not None:  # only the encoder's weights may need the network
        return _serve_existing(collection, model, progress, network_check or (lambda: check_network(HUB_HOSTS)))
    api, flora = gbif_api_url(gbif_api), flora_base_url(flora_url)
    names = tuple(volumes or DEFAULT_VOLUMES)
    name = model or DEFAULT_MODEL
    if network_check is None:
        hosts = _hosts(api, flora) + (HUB_HOSTS if _needs_download(name) and not _hub_cached(name) else ())
        network_check = lambda: check_network(hosts)  # noqa: E731

    root = Path(cache) if cache else cache_dir()
    settings = json.dumps([api, flora, names, per_taxon, text_model], sort_keys=True)
    folder = root / f"mnhn-paris-described-{sample}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
    reason = network_check()
    if reason is not None:  # as in _offline_reason: cached weights load at once, missing ones fail at once
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    offline = NetworkUnavailable(
        f"herbaria demo needs the network to fetch the {name} weights and a sample collection "
        f"({reason}); {OFFLINE_HINT}")
    from retrieval.vectors import build_index

    if (folder / EXAMPLES_FILE).is_file() and _index_ready(folder):
        try:  # a finished sample: serve it, even offline when the weights are cached too
            build_index(folder, model=model, progress=progress)
            return folder
        except NetworkUnavailable:
            if reason is not None:
                raise offline from None
            raise
    if reason is not None:
        raise offline
    _build_sample(folder, root, name=name, sample=sample, api=api, flora=flora, names=names, per_taxon=per_taxon,
                  text_model=text_model, progress=progress)
    return folder


def _build_sample(folder: Path, root: Path, *, name: str, sample: int, api: str, flora: str, names: Sequence[str],
                  per_taxon: int, text_model: str, progress: bool) -> None:
    from retrieval.collections import Collection, ingest
    from retrieval.flora import GbifSpecies, add_descriptions, coverage_of, open_descriptions
    from retrieval.vectors import build_index, create_encoder

    create_encoder(name)  # the weights first: fail before fetching anything else
    _say(f"fetching {len(names)} flora volumes from {flora}", progress)
    paths = fetch_volumes(flora, names, root / "flora", progress=progress)
    taxa = candidate_taxa(paths)
    _say(f"{len(taxa)} described taxa; asking GBIF ({api}) for MNHN Paris sheets of them", progress)
    client = GbifSpecies(root / "gbif-api", base_url=api)
    picked: dict[str, int] = {}
    try:
        occurrences = sample_occurrences(client, taxa, sample, per_taxon=per_taxon, progress=progress, picked=picked,
                                         image_cache=api + IMAGE_CACHE_PATH)
    except BadInput as err:  # GbifSpecies' one-line reasons: unreachable, or an HTTP error
        raise NetworkUnavailable(str(err)) from None
    if not occurrences:
        raise NetworkUnavailable(f"GBIF found no imaged MNHN Paris sheets of the {len(taxa)} described taxa; "
                                 f"try other --flora-volume files, or {OFFLINE_HINT}")
    pages = root / "gbif" / f"{folder.name}.json"
    pages.parent.mkdir(parents=True, exist_ok=True)
    pages.write_text(json.dumps({"count": len(occurrences), "results": occurrences}, ensure_ascii=False), encoding="utf-8")
    summary = ingest(pages, folder, progress=progress, cache_dir=root / "media", workers=1)
    log.info("sample ingested: %s", {k: summary.get(k) for k in ("added", "skipped", "no_image", "with_image")})
    if not summary.get("with_image"):
        raise NetworkUnavailable(f"none of the {len(occurrences)} sample images could be downloaded; try again later, "
                                 f"or {OFFLINE_HINT}")
    build_index(folder, model=name, progress=progress)
    used = sorted({str(taxon["volume"]) for taxon in taxa if taxon["name"] in picked})
    _say(f"{len(occurrences)} sheets of {len(picked)} taxa", progress)
    _say(f"adding the descriptions of {len(used)} flora volumes and GBIF's", progress)
    add_descriptions(folder, used, text_model=text_model, progress=progress, gbif_api=api)
    try:
        add_descriptions(folder, ["gbif"], text_model=text_model, progress=progress, gbif_api=api)
    except BadInput as err:  # no GBIF description for the sample's taxa (or GBIF failed): the floras' stand
        _say(f"GBIF species descriptions: none added ({err})", progress)
    index = open_descriptions(folder)  # linked to the sample's sheets as it opens: no second linking
    links = index.specimen_links
    cov = coverage_of(index, Collection.open(folder).specimens())
    _say(f"coverage: {cov['linked_taxa']}/{cov['taxa']} taxa and {cov['linked_specimens']}/{cov['specimens']} "
         "specimens have a description", progress)
    if cov["linked_specimens"] < MIN_COVERAGE * cov["specimens"]:
        _say(f"warning: under {MIN_COVERAGE:.0%} of the sheets have a description of their taxon; "
             "`herbaria descriptions coverage` lists the names left unlinked", progress)
    tmp = folder / (EXAMPLES_FILE + ".part")
    tmp.write_text(json.dumps(demo_examples(index, links), ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, folder / EXAMPLES_FILE)
