"""Screenshots the proxy's web page for the docs, from a running deployment.

    python scripts/screenshot.py http://127.0.0.1:5000/ IMAGE_ID [-o docs/screenshots/proxy-page.png]

Run it against `make demo` (real synthetic scenes, a trained model): it opens the page in
Debian's headless Chromium through Playwright, picks IMAGE_ID as a user would, waits for the
photo, ground truth and prediction, and saves a full-page PNG.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CITYSEG_CHROMIUM", "/usr/bin/chromium")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the proxy's page, e.g. http://127.0.0.1:5000/")
    parser.add_argument("image_id")
    parser.add_argument("-o", "--output", type=Path,
                        default=REPO / "docs" / "screenshots" / "proxy-page.png")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(args.url)
        page.fill("#id-input", args.image_id)
        page.press("#id-input", "Enter")
        page.wait_for_selector("#iou-table tbody tr", timeout=60_000)
        for selector in ("#img-photo", "#img-truth", "#img-prediction"):
            page.wait_for_function(
                f"document.querySelector('{selector}').complete && "
                f"document.querySelector('{selector}').naturalWidth > 0", timeout=60_000)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.output), full_page=True)
        browser.close()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
