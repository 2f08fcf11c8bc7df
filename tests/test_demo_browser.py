"""A real browser (Debian's headless Chromium through Playwright) asks a question and sees the gallery.

Screenshots land in tests/artifacts/ (demo_answer.png, demo_specimen.png). The
collection is the Harvard sheets from ../shared/data when present (real sheets make
a screenshot worth looking at), else generated ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo_support import build_collection

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from demo.server import create_server, start_server
    from retrieval.indexing import build_index
    from retrieval.ingest import ingest

    work = tmp_path_factory.mktemp("demo-browser")
    try:
        harvard = request.getfixturevalue("shared_data") / "specimens" / "harvard"
    except pytest.skip.Exception:
        harvard = None
    if harvard is not None and harvard.is_dir():
        collection = work / "harvard"
        ingest(harvard, collection, progress=False)
        build_index(collection, model="tiny-test", progress=False)
        question = "How do the leaves of Geranium maculatum look?"
    else:
        collection = build_collection(work)
        question = "How do the leaves of Coffea arabica look?"
    server = start_server(create_server(collection, model="tiny-test"))
    try:
        yield {"url": server.url, "question": question, "image": next((collection / "images").rglob("*.jpg"))}
    finally:
        server.close()


@pytest.fixture(scope="module")
def page(served: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1440, "height": 1000})
            pg.set_default_timeout(60_000)
            yield pg
        finally:
            browser.close()


def test_ask_in_the_browser_and_see_the_gallery(served: dict[str, Any], page: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(served["url"], wait_until="domcontentloaded")
    box = page.locator("#herbaria-input textarea")
    box.wait_for()
    box.fill(served["question"])
    box.press("Enter")
    thumbs = page.locator("#herbaria-gallery button.thumbnail-item img")
    thumbs.first.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('#herbaria-gallery img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    answer = page.locator("#herbaria-chat .bot").last
    answer.wait_for()
    taxon = " ".join(served["question"].split()[5:7]).rstrip("?")
    captions = page.locator("#herbaria-gallery .caption-label").all_inner_texts()
    assert captions and all(c.startswith(taxon) for c in captions)
    cited = set(re.findall(r"\[(?:[\w-]+ )?(\w+)\]", answer.inner_text()))  # [HUH 102822] or [102822]
    assert cited and all(any(c in caption for caption in captions) for c in cited)
    page.screenshot(path=str(ARTIFACTS / "demo_answer.png"), full_page=True)

    page.locator("#herbaria-gallery button.thumbnail-item").first.click()
    table = page.locator("#herbaria-fields")
    table.get_by_text("scientificName").first.wait_for()
    assert taxon in table.inner_text()
    page.get_by_text("Source record").wait_for()
    page.screenshot(path=str(ARTIFACTS / "demo_specimen.png"), full_page=True)
    assert (ARTIFACTS / "demo_answer.png").stat().st_size > 10_000


def test_upload_a_photo_in_the_browser(served: dict[str, Any], page: Any) -> None:
    page.goto(served["url"], wait_until="domcontentloaded")
    box = page.locator("#herbaria-input textarea")
    box.wait_for()
    page.locator("#herbaria-input input[type=file]").set_input_files(str(served["image"]))
    page.locator("#herbaria-input img").first.wait_for()  # the attachment's preview
    box.fill("What is this, and which sheets look like it?")
    box.press("Enter")
    page.locator("#herbaria-traits").get_by_text("Trait description").wait_for()
    page.locator("#herbaria-gallery button.thumbnail-item img").first.wait_for()
    assert "Candidate taxa" in page.locator("#herbaria-traits").inner_text()
    page.screenshot(path=str(ARTIFACTS / "demo_image.png"), full_page=True)
