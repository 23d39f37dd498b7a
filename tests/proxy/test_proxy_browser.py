"""The web page in a real headless Chromium (Debian's) driven by Playwright, against the proxy
served for real on a free port with the real model server behind it."""
from __future__ import annotations

import os

import pytest

CHROMIUM = os.environ.get("CITYSEG_CHROMIUM", "/usr/bin/chromium")
IMAGE = "frankfurt_000000_000294"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                              "CITYSEG_CHROMIUM)"),
]


@pytest.fixture
def page(app, live_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with live_server(app) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # Nothing may leave localhost: any other request fails the test.
            outside = []
            page.on("request", lambda r: None if r.url.startswith(server.url) or
                    r.url.startswith(("data:", "blob:")) else outside.append(r.url))
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server.url + "/")
            yield page
            assert outside == [], f"page requested outside addresses: {outside}"
            assert errors == [], f"JavaScript errors: {errors}"
        finally:
            browser.close()


def loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_choosing_an_id_shows_images_metrics_and_model(page, tmp_path):
    page.wait_for_selector(f"#id-list li[data-id='{IMAGE}']")
    # Filter by split and city, search, then pick from the list.
    page.select_option("#split-filter", "val")
    page.select_option("#city-filter", "frankfurt")
    page.wait_for_function("document.querySelectorAll('#id-list li').length === 2")
    page.fill("#search", "294")
    page.wait_for_function("document.querySelectorAll('#id-list li').length === 1")
    page.click(f"#id-list li[data-id='{IMAGE}']")

    page.wait_for_selector("#iou-table tbody tr")
    for selector in ("#img-photo", "#img-truth", "#img-prediction", "#overlay-photo",
                     "#overlay-mask"):
        page.wait_for_function(
            f"document.querySelector('{selector}').complete && "
            f"document.querySelector('{selector}').naturalWidth > 0")
        assert loaded(page, selector), selector
    widths = [page.eval_on_selector(s, "img => img.naturalWidth")
              for s in ("#img-photo", "#img-truth", "#img-prediction")]
    assert widths == [192, 192, 192]  # full resolution, all three

    rows = page.locator("#iou-table tbody tr")
    assert rows.count() == 7  # the non-void categories
    assert page.inner_text("#mean-iou").endswith("%")
    assert page.inner_text("#model-version") == "1"
    assert "tiny" in page.inner_text("#model-info")
    assert "tiny v1" in page.inner_text("#result-meta")

    # The opacity slider drives the overlay mask.
    page.fill("#opacity", "80")
    page.dispatch_event("#opacity", "input")
    assert page.eval_on_selector("#overlay-mask", "img => img.style.opacity") == "0.8"
    page.check("input[name=overlay][value=truth]")
    assert page.eval_on_selector("#overlay-mask", "img => img.src") == \
        page.eval_on_selector("#img-truth", "img => img.src")

    # The page renders as a whole (docs/screenshots/ is taken from the demo by
    # scripts/screenshot.py; a test never writes into the repository).
    shot = tmp_path / "proxy-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000


def test_typing_an_unknown_id_shows_the_error(page):
    page.fill("#id-input", "paris_000000_000000")
    page.click("#go")
    page.wait_for_selector("#error:not([hidden])")
    assert "unknown image id" in page.inner_text("#error")


def test_upload_shows_the_prediction(page, dataset):
    raw_root = dataset[1]
    image = next(raw_root / r["image"] for r in dataset[2] if r["image_id"] == IMAGE)
    page.set_input_files("#upload-file", str(image))
    page.click("#upload-form button")
    page.wait_for_selector("#upload-result:not([hidden])")
    page.wait_for_function("document.querySelector('#upload-prediction').naturalWidth > 0")
    assert page.eval_on_selector("#upload-prediction", "img => img.naturalWidth") == 192
    assert "tiny v1" in page.inner_text("#upload-model")
