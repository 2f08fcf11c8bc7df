"""The whole `herbaria demo` path, offline: stand-in servers on 127.0.0.1, a real browser at the end.

`herbaria demo` runs as a user runs it (a subprocess of the CLI) against a GBIF stand-in
(species match, occurrence search with media, species descriptions, the image cache), an
image host serving real sheet JPEGs and a flora file host serving real FlorML volumes, both
read from ../shared/data at request time. The encoder is a checkpoint laid out exactly as the
Hugging Face hub caches `hf-hub:imageomics/bioclip` (BioCLIP's open_clip config, ViT-B/16,
random weights). Chromium then asks the served page a morphology question built from the
sample's own traits and uploads a sheet; the answers must quote a flora about specimens in
the gallery. The screenshot lands in tests/artifacts/demo_grounded_answer.png.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SHARED_DATA, browser_page, need_chromium
from gbif_standin import file_host, gbif_standin

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VOLUMES = {"flora-malesiana/vol20_final.xml": "flora/malesiana/vol20_final.xml",  # English, 15 species
           "flora-gabon/fdgvol4_final.xml": "flora/gabon/fdgvol4_final.xml"}  # French, 23 species
SAMPLE, PER_TAXON = 16, 2
BIOCLIP_CONFIG = {  # imageomics/bioclip's open_clip_config.json
    "model_cfg": {"embed_dim": 512,
                  "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def bioclip_hub_cache(root: Path) -> Path:
    """A Hugging Face hub cache holding `imageomics/bioclip` as the hub lays it out (refs/main -> a snapshot
    with open_clip_config.json and open_clip_pytorch_model.bin), with random ViT-B/16 weights."""
    import open_clip
    import torch

    commit = "8d2d2e2c6f3b1f0a9e7d5c3b1a0f9e8d7c6b5a49"
    repo = root / "models--imageomics--bioclip"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "open_clip_config.json").write_text(json.dumps(BIOCLIP_CONFIG))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16")  # the same architecture as the config above
    torch.save(model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    return root


def _occurrence(template: dict[str, Any], key: int, taxon_key: int, name: str, family: str, image_url: str,
                country: str) -> dict[str, Any]:
    """A record in the occurrence search's shape: a real response's record with the sheet's own fields."""
    keep = {k: v for k, v in template.items() if k not in ("extensions", "facts", "relations", "identifiers", "gadm")}
    genus, epithet = name.split()[:2]
    return {**keep, "key": key, "gbifID": str(key), "institutionCode": "P", "collectionCode": "P",
            "datasetName": "The vascular plants collection (P) at the Herbarium of the Muséum national d'Histoire "
                           "Naturelle (MNHN - Paris)", "basisOfRecord": "PRESERVED_SPECIMEN",
            "catalogNumber": f"P{key:08d}", "occurrenceID": f"http://coldb.mnhn.fr/catalognumber/mnhn/p/p{key:08d}",
            "scientificName": f"{name} Stand-in", "acceptedScientificName": f"{name} Stand-in", "species": name,
            "genus": genus, "specificEpithet": epithet, "family": family, "taxonKey": taxon_key,
            "acceptedTaxonKey": taxon_key, "speciesKey": taxon_key, "taxonRank": "SPECIES", "kingdom": "Plantae",
            "country": country, "countryCode": {"Gabon": "GA", "Indonesia": "ID"}[country],
            "decimalLatitude": -0.5 if country == "Gabon" else -2.5, "decimalLongitude": 11.5 if country == "Gabon" else 118.0,
            "license": "http://creativecommons.org/licenses/by/4.0/legalcode", "rightsHolder": "MNHN",
            "references": f"https://science.mnhn.fr/institution/mnhn/collection/p/item/p{key:08d}",
            "year": 1950 + key % 60, "eventDate": f"{1950 + key % 60}-03-12", "recordedBy": "Stand-in collector",
            "media": [{"type": "StillImage", "format": "image/jpeg", "identifier": image_url,
                       "references": f"https://science.mnhn.fr/institution/mnhn/collection/p/item/p{key:08d}",
                       "license": "http://creativecommons.org/licenses/by/4.0/", "rightsHolder": "MNHN",
                       "publisher": "MNHN"}]}


def standin_data(shared: Path, image_base: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Path]]:
    """Matches, occurrences and GBIF descriptions for the two volumes' species, and the image files.

    Every third species has no sheet at P; one sheet filed under another name is returned with the
    others (GBIF's taxonKey search widens to synonyms) and must stay out of the sample."""
    from retrieval.flora import read_descriptions

    template = next(r for r in json.loads((shared / "gbif" / "occurrence_search_taxon2431762.json").read_text())["results"]
                    if r.get("media"))
    sheets = sorted((shared / "specimens" / "ml-herbarium").glob("*.jpeg"))
    files = {f"img/{i}.jpg": path for i, path in enumerate(sheets)}
    matches: dict[str, Any] = {}
    occurrences: dict[int, list[dict[str, Any]]] = {}
    descriptions: dict[int, list[dict[str, Any]]] = {}
    image = 0
    for volume, local in sorted(VOLUMES.items()):
        country = "Gabon" if "gabon" in volume else "Indonesia"
        species = sorted({r.name: r for r in read_descriptions(shared / local) if r.rank == "species"}.values(),
                         key=lambda r: r.name)
        for i, record in enumerate(species):
            key = 7_000_000 + len(matches)
            genus = record.name.split()[0]
            matches[record.name] = {"usageKey": key, "scientificName": record.taxon, "canonicalName": record.name,
                                    "rank": "SPECIES", "status": "ACCEPTED", "confidence": 99, "matchType": "EXACT",
                                    "kingdom": "Plantae", "family": record.family, "genus": genus,
                                    "species": record.name, "speciesKey": key, "synonym": False}
            if i % 3 == 2:
                continue
            occurrences[key] = []
            for j in range(3):
                occurrences[key].append(_occurrence(template, key * 10 + j, key, record.name, record.family,
                                                    f"{image_base}img/{image % len(sheets)}.jpg", country))
                image += 1
            occurrences[key].insert(1, _occurrence(template, key * 10 + 9, key, "Mangifera indica", "Anacardiaceae",
                                                   f"{image_base}img/{image % len(sheets)}.jpg", country))
            if country == "Indonesia":
                descriptions[key] = [{"key": key, "taxonKey": key, "type": "morphology", "language": "eng",
                                      "sourceTaxonKey": key + 1, "source": "Stand-in checklist of Malesia",
                                      "license": "CC BY 4.0", "description": f"<p>{record.sections.get('leaves') or record.text[:300]}</p>"}]
    return matches, occurrences, descriptions, files


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_served(process: subprocess.Popen, url: str, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"herbaria demo exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"herbaria demo did not serve {url} in {timeout:g} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (clone ../shared beside the repo to run this test)")
    need_chromium()
    work = tmp_path_factory.mktemp("demo-whole-path")
    hub = bioclip_hub_cache(work / "hub")
    flora_files = {name: SHARED_DATA / local for name, local in VOLUMES.items()}
    image_files: dict[str, Path] = {}  # filled below: the host reads its table at request time
    with file_host(image_files) as images, file_host(flora_files) as flora:
        matches, occurrences, descriptions, files = standin_data(SHARED_DATA, images["url"])
        image_files.update(files)
        with gbif_standin(matches=matches, occurrences=occurrences, descriptions=descriptions) as gbif:
            yield from _run_demo(work, hub, gbif, flora, images, occurrences, descriptions)


def _run_demo(work: Path, hub: Path, gbif: dict[str, Any], flora: dict[str, Any], images: dict[str, Any],
              occurrences: dict[int, Any], descriptions: dict[int, Any]) -> Iterator[dict[str, Any]]:
    port = _free_port()
    cache = work / "cache"
    # the GBIF base URL through the environment; the flora's through the flag, which wins over a dead one in the
    # environment; the hub cache offline, as on a machine that downloaded BioCLIP before
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "HERBARIA_CACHE": str(cache),
           "HERBARIA_GBIF_API": gbif["url"], "HERBARIA_FLORA_URL": "http://127.0.0.1:9/unused/",
           "PYTHONUNBUFFERED": "1"}
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    command = [sys.executable, "-m", "herbaria", "demo", "--sample", str(SAMPLE), "--per-taxon", str(PER_TAXON),
               "--flora-url", flora["url"], "--host", "127.0.0.1", "--port", str(port)]
    for volume in VOLUMES:
        command += ["--flora-volume", volume]
    log = work / "demo.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_served(process, url, log)
        folder = next(cache.glob("mnhn-paris-described-*"))
        yield {"url": url, "folder": folder, "log": log, "gbif": gbif, "flora": flora, "images": images,
               "occurrences": occurrences, "descriptions": descriptions}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_sample_is_described_and_fetched_through_the_standins(demo: dict[str, Any]) -> None:
    from retrieval.collections import Collection
    from retrieval.flora import description_coverage, open_descriptions

    table = Collection.open(demo["folder"]).specimens()
    assert len(table) == SAMPLE and set(table["institutionCode"]) == {"P"}
    assert not table["scientificName"].str.startswith("Mangifera").any()  # filed under another name: left out
    assert table["scientificName"].str.split().str[0].nunique() >= 4
    coverage = description_coverage(demo["folder"])
    assert coverage["linked_specimens"] >= 0.8 * coverage["specimens"] and coverage["specimens"] == SAMPLE
    assert "coverage:" in demo["log"].read_text()  # the command said so while it worked
    assert sorted(set(demo["flora"]["requests"])) == sorted(VOLUMES)  # both volumes, once each
    assert len(demo["flora"]["requests"]) == len(VOLUMES)
    paths = demo["gbif"]["requests"]
    assert "/v1/species/match" in paths and any(p.endswith("/descriptions") for p in paths)
    searches = [q for p, q in demo["gbif"]["queries"] if p == "/v1/occurrence/search"]
    assert searches and all(q["institutionCode"] == "P" and q["mediaType"] == "StillImage" and q["taxonKey"]
                            for q in searches)
    assert sum(p.startswith("/v1/image/cache/occurrence/") for p in paths) == SAMPLE  # through GBIF's image cache
    assert len(demo["images"]["requests"]) == SAMPLE
    index = open_descriptions(demo["folder"])
    sources = {r.source for r in index.records}
    assert any(s.startswith("Flora Malesiana") for s in sources) and "Flore du Gabon, Volume 4" in sources
    from_gbif = [r for r in index.records if r.source.startswith("GBIF:")]
    assert from_gbif and all(r.licence == "CC BY 4.0" for r in from_gbif)  # licences kept


def _examples(folder: Path) -> list[dict[str, str]]:
    return json.loads((folder / "demo-examples.json").read_text())


def test_examples_ask_for_traits_the_described_taxa_have(demo: dict[str, Any]) -> None:
    from retrieval.flora import open_descriptions

    examples = _examples(demo["folder"])
    morphology = examples[0]
    assert morphology["text"].startswith("Which specimens have ") and morphology["taxon"]
    record = next(r for r in open_descriptions(demo["folder"]).records if r.name == morphology["taxon"])
    words = re.findall(r"[a-z]{4,}", morphology["text"].split(" have ", 1)[1])
    described = record.text.lower()
    assert sum(w in described for w in words) >= len(words) - 2, (words, record.text[:300])


def test_a_grounded_answer_and_a_photo_in_the_browser(demo: dict[str, Any]) -> None:
    from retrieval.flora import description_coverage

    ARTIFACTS.mkdir(exist_ok=True)
    question = _examples(demo["folder"])[0]
    coverage = description_coverage(demo["folder"])
    with browser_page(height=1100, timeout_ms=120_000) as page:
        page.goto(demo["url"], wait_until="domcontentloaded")
        page.get_by_role("tab", name="About").click()
        about = page.locator("#herbaria-about")
        about.get_by_text("Description coverage").wait_for()
        assert (f"{coverage['linked_taxa']} of {coverage['taxa']} taxa and {coverage['linked_specimens']} of "
                f"{coverage['specimens']} specimens") in about.inner_text()
        assert "licence CC BY 4.0" in about.inner_text()
        page.get_by_role("tab", name="Specimens").click()

        box = page.locator("#herbaria-input textarea")
        box.fill(question["text"])
        box.press("Enter")
        page.wait_for_function("() => document.querySelector('#herbaria-gallery button.thumbnail-item img') || "
                               "[...document.querySelectorAll('#herbaria-chat .bot')].some(b => "
                               "b.innerText.includes('close enough'))")  # the answer, with or without sheets
        assert page.locator("#herbaria-gallery button.thumbnail-item img").count(), (
            "no sheet shown beside the quoted descriptions: " + page.locator("#herbaria-chat .bot").last.inner_text()[-300:])
        page.wait_for_function("() => [...document.querySelectorAll('#herbaria-gallery img')]"
                               ".every(img => img.complete && img.naturalWidth > 0)")
        answer = page.locator("#herbaria-chat .bot").last.inner_text()
        captions = page.locator("#herbaria-gallery .caption-label").all_inner_texts()
        assert any(c.startswith(question["taxon"]) for c in captions), captions  # its sheets are shown
        quoted = re.search(re.escape(question["taxon"]) + r"\W+“([^”]{20,})”", answer)
        assert quoted, answer[:800]  # the flora's own words about a taxon in the gallery
        assert "Flora Malesiana" in answer or "Flore du Gabon" in answer or "GBIF:" in answer
        cited = set(re.findall(r"\[P (P\d+)\]", answer))
        assert cited and all(any(c in caption for caption in captions) for c in cited), (cited, captions)
        page.screenshot(path=str(ARTIFACTS / "demo_grounded_answer.png"), full_page=True)

        sheet = next(iter(sorted((demo["folder"] / "images").rglob("*.jpg"))))
        page.goto(demo["url"], wait_until="domcontentloaded")
        box = page.locator("#herbaria-input textarea")
        box.wait_for()
        page.locator("#herbaria-input input[type=file]").set_input_files(str(sheet))
        page.locator("#herbaria-input img").first.wait_for()
        box.fill("What is this, and which sheets look like it?")
        box.press("Enter")
        page.locator("#herbaria-traits").get_by_text("Candidate taxa").wait_for()
        page.locator("#herbaria-gallery button.thumbnail-item img").first.wait_for()
        traits = page.locator("#herbaria-traits").inner_text()
        shown = {" ".join(c.split()[:2]) for c in page.locator("#herbaria-gallery .caption-label").all_inner_texts()}
        candidates = re.findall(r"([A-Z][a-z]+ [a-z-]+) \(\d+/\d+\)", traits.split("Candidate taxa", 1)[1])
        assert candidates and set(candidates) <= shown  # read from the descriptions of the sheets shown
