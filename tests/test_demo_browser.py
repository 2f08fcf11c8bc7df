"""A real browser (Debian's headless Chromium through Playwright) drives the demo as a botanist would.

Asks a question and sees the gallery; opens a cited catalog number, a permalink, zooms a sheet, reads the
maps, and loads the page on a 390x844 phone. Screenshots land in tests/artifacts/ (demo_*.png).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import browser_page, need_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Generated sheets with label data and coordinates (the maps need them; the Harvard sheets have none),
    one of them scanned at 1600x2400 for deep zoom."""
    need_chromium()
    from demo.server import create_server, start_server
    from test_iiif_serving import large_sheet_id, located_collection

    work = tmp_path_factory.mktemp("demo-browser")
    collection = located_collection(work)
    server = start_server(create_server(collection, model="tiny-test"))
    try:
        yield {"url": server.url, "question": "How do the leaves of Geranium maculatum look?",
               "image": next((collection / "images").rglob("*.jpg")), "big": large_sheet_id(collection)}
    finally:
        server.close()


@pytest.fixture(scope="module")
def page(served: dict[str, Any]) -> Iterator[Any]:
    with browser_page() as pg:
        yield pg


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
    page.locator("#herbaria-results-map img").wait_for()  # where the results were collected
    page.screenshot(path=str(ARTIFACTS / "demo_answer.png"), full_page=True)

    page.locator("#herbaria-gallery button.thumbnail-item").first.click()
    fields = page.locator("#herbaria-fields")
    fields.get_by_text("Collector and number").wait_for()
    assert taxon in fields.inner_text() and "Classification" in fields.inner_text()
    page.locator("#herbaria-specimen-header").get_by_text("source record").wait_for()
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
    sent = page.locator("#herbaria-chat .user img").first
    sent.wait_for()
    page.wait_for_function("() => { const i = document.querySelector('#herbaria-chat .user img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    shown = sent.bounding_box()
    assert shown and shown["width"] >= 100 and shown["height"] >= 100  # the sheet, not a thin strip
    page.locator("#herbaria-traits").get_by_text("Trait description").wait_for()
    page.locator("#herbaria-gallery button.thumbnail-item img").first.wait_for()
    assert "Candidate taxa" in page.locator("#herbaria-traits").inner_text()
    page.screenshot(path=str(ARTIFACTS / "demo_image.png"), full_page=True)


def _open_specimen_page(page: Any) -> None:
    page.locator("#herbaria-fields").get_by_text("Collector and number").wait_for()
    page.wait_for_function("() => { const i = document.querySelector('#herbaria-map img');"
                           " return i && i.complete && i.naturalWidth > 0; }")


def test_a_cited_catalog_number_opens_its_page(served: dict[str, Any], page: Any) -> None:
    page.goto(served["url"], wait_until="domcontentloaded")
    box = page.locator("#herbaria-input textarea")
    box.wait_for()
    box.fill(served["question"])
    box.press("Enter")
    link = page.locator("#herbaria-chat .bot a[href*='specimen=']").first
    link.wait_for()
    label = link.inner_text().strip("[]")
    assert re.fullmatch(r"[A-Z]+ \w+", label), label
    href = link.get_attribute("href") or ""
    assert href.endswith("?specimen=" + label.replace(" ", "%20"))
    try:  # the chat opens links in a new tab; the page it opens is the specimen's
        with page.context.expect_page(timeout=10_000) as opened:
            link.click()
        target = opened.value
    except Exception:  # noqa: BLE001 - same tab
        target = page
    target.set_default_timeout(60_000)
    target.wait_for_load_state("domcontentloaded")
    target.locator("#herbaria-specimen-header").get_by_text(label).first.wait_for()
    _open_specimen_page(target)
    assert label in target.locator("#herbaria-citation textarea").input_value()
    target.screenshot(path=str(ARTIFACTS / "demo_cited_page.png"), full_page=True)
    if target is not page:
        target.close()


def test_permalink_by_label_and_by_occurrence_id(served: dict[str, Any], page: Any) -> None:
    page.goto(served["url"] + "?specimen=HUH%2017348", wait_until="domcontentloaded")
    _open_specimen_page(page)
    header = page.locator("#herbaria-specimen-header").inner_text()
    assert "HUH 17348" in header and "Geranium maculatum" in header
    assert page.locator("#herbaria-specimen-box input, #herbaria-specimen-box textarea").first.input_value() \
        == "HUH 17348"
    fields = page.locator("#herbaria-fields").inner_text()
    for name in ("Identification", "Collector and number", "Date", "Locality", "Country", "Coordinates",
                 "Licence", "Rights holder", "Source record", "Download"):
        assert name in fields, name
    viewer = page.frame(url=re.compile(r"/viewer/\d+$"))
    assert viewer is not None
    viewer.wait_for_function("() => window.viewer && window.viewer.world.getItemCount() === 1"
                             " && window.viewer.world.getItemAt(0).getFullyLoaded()")
    page.screenshot(path=str(ARTIFACTS / "demo_permalink.png"), full_page=True)
    page.goto(served["url"] + "?specimen=urn%3Auuid%3A0000-0011", wait_until="domcontentloaded")
    page.locator("#herbaria-specimen-header").get_by_text("P 17348").first.wait_for()
    page.goto(served["url"] + "?specimen=17348", wait_until="domcontentloaded")  # two herbaria use 17348
    page.locator("#herbaria-specimen-header").get_by_text("add the institution").wait_for()


def test_zoom_and_pan_on_a_sheet(served: dict[str, Any], page: Any) -> None:
    tiles: list[str] = []
    page.on("request", lambda r: tiles.append(r.url) if "/default.jpg" in r.url else None)
    page.goto(served["url"] + f"?specimen=%23{served['big']}", wait_until="domcontentloaded")
    page.locator("#herbaria-viewer iframe").wait_for()
    frame = page.frame_locator("#herbaria-viewer iframe")
    frame.locator("#osd canvas").first.wait_for()
    viewer = page.frame(url=re.compile(rf"/viewer/{served['big']}$"))
    assert viewer is not None
    viewer.wait_for_function("() => window.viewer && window.viewer.world.getItemCount() === 1"
                             " && window.viewer.world.getItemAt(0).getFullyLoaded()")
    home = viewer.evaluate("() => window.viewer.viewport.getZoom()")
    for _ in range(4):
        frame.locator("#zoom-in").click()
    viewer.evaluate("() => window.viewer.viewport.panBy(new OpenSeadragon.Point(0.05, 0.1))")
    viewer.wait_for_function("() => window.viewer.world.getItemAt(0).getFullyLoaded()")
    page.wait_for_timeout(800)  # the zoom animation
    zoomed = viewer.evaluate("() => window.viewer.viewport.getZoom()")
    assert zoomed > 3 * home
    full_resolution = [u for u in tiles if re.search(r"/iiif/\d+/\d+,\d+,\d+,\d+/512,512/0/default\.jpg$", u)]
    assert full_resolution, tiles[:10]  # deep zoom fetched full-resolution tiles, not one big image
    page.locator("#herbaria-viewer").screenshot(path=str(ARTIFACTS / "demo_zoom.png"))


def test_maps_of_a_locality_and_of_a_result_set(served: dict[str, Any], page: Any) -> None:
    page.goto(served["url"] + "?specimen=HUH%2017348", wait_until="domcontentloaded")
    _open_specimen_page(page)
    size = page.evaluate("() => { const i = document.querySelector('#herbaria-map img');"
                         " return [i.naturalWidth, i.naturalHeight]; }")
    assert size[0] >= 300 and size[1] >= 100
    page.locator("#herbaria-map").screenshot(path=str(ARTIFACTS / "demo_map.png"))
    page.get_by_role("tab", name="Specimens").click()
    box = page.locator("#herbaria-input textarea")
    box.fill("Which specimens have opposite, toothed leaves?")
    box.press("Enter")
    page.wait_for_function("() => { const i = document.querySelector('#herbaria-results-map img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    page.locator("#herbaria-results-map").screenshot(path=str(ARTIFACTS / "demo_results_map.png"))


def test_phone_viewport(served: dict[str, Any], page: Any) -> None:
    context = page.context.browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                               has_touch=True, device_scale_factor=2)
    phone = context.new_page()
    phone.set_default_timeout(60_000)
    try:
        phone.goto(served["url"], wait_until="domcontentloaded")
        phone.locator("#herbaria-input textarea").wait_for()
        phone.wait_for_timeout(1000)
        header = phone.locator("#herbaria-header").bounding_box()
        assert phone.evaluate("() => window.scrollY") == 0 and header and 0 <= header["y"] < 844
        assert phone.locator("#herbaria-chat [data-testid='block-label']").count() == 0  # no badge over the chat
        phone.screenshot(path=str(ARTIFACTS / "demo_phone.png"))
        box = phone.locator("#herbaria-input textarea")
        box.fill("How do the leaves of Geranium maculatum look?")
        box.press("Enter")
        phone.locator("#herbaria-gallery button.thumbnail-item img").first.wait_for()
        phone.wait_for_function("() => [...document.querySelectorAll('#herbaria-gallery img')]"
                                ".every(img => img.complete && img.naturalWidth > 0)")
        thumb = phone.locator("#herbaria-gallery button.thumbnail-item").first.bounding_box()
        assert thumb and thumb["width"] >= 140  # two columns on a phone, not three slivers
        phone.locator("#herbaria-gallery").scroll_into_view_if_needed()
        phone.screenshot(path=str(ARTIFACTS / "demo_phone_gallery.png"))
        phone.goto(served["url"] + "?specimen=HUH%2017348", wait_until="domcontentloaded")
        phone.locator("#herbaria-fields").get_by_text("Collector and number").wait_for()
        phone.wait_for_function("() => { const r = document.querySelector('#herbaria-specimen-header')"
                                ".getBoundingClientRect(); return r.top > -4 && r.top < 844; }")  # scrolled to it
        name_cell = phone.locator("#herbaria-fields th").first.bounding_box()
        assert name_cell and name_cell["width"] >= 80
        phone.screenshot(path=str(ARTIFACTS / "demo_phone_specimen.png"), full_page=True)
    finally:
        context.close()
