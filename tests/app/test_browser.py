"""The page in a real browser: Debian's chromium driven by Playwright (skipped without them).

Playwright's own browser download is not used: the system chromium is launched directly,
with the flags a closed network needs (no background connections). Set
``OFFROADSEG_APP_SCREENSHOT`` to a path to keep the synthetic scene's screenshot (the README's
``docs/img/app.png`` is made this way) and ``OFFROADSEG_APP_CHECKPOINT`` to show another model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the [app] extra)")


@pytest.fixture(scope="module")
def app(request):
    from offroadseg.app.server import start_app
    from offroadseg.app.service import load_models

    checkpoint = os.environ.get("OFFROADSEG_APP_CHECKPOINT") or request.getfixturevalue("app_checkpoint")
    running = start_app(load_models(checkpoint, device="cpu"), port=0)
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser_page():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        yield page
        browser.close()


def _upload_and_wait(page, url: str, image: Path) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#upload input[type=file]").set_input_files(str(image))
    page.locator("#segment").click()
    overlay = page.locator("#overlay-a img")
    overlay.wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        "() => { const i = document.querySelector('#overlay-a img'); return i && i.complete && i.naturalWidth > 0; }",
        timeout=60_000,
    )
    page.locator("#latency").filter(has_text=image.name).wait_for(timeout=30_000)


def _shown_size(page) -> tuple[int, int]:
    return page.evaluate(
        "() => { const i = document.querySelector('#overlay-a img'); return [i.naturalHeight, i.naturalWidth]; }"
    )


@pytest.mark.shared_data
def test_real_desert_image_overlay_is_shown(app, browser_page, shared_data, tmp_path):
    image = sorted((shared_data / "duality_rgb").glob("*.png"))[0]
    _upload_and_wait(browser_page, app.url, image)
    h, w = np.asarray(Image.open(image)).shape[:2]
    assert tuple(_shown_size(browser_page)) == (h, w)
    shot = tmp_path / "app_real.png"
    browser_page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_synthetic_scene_overlay_is_shown(app, browser_page, tmp_path):
    from offroadseg.data.synth import generate_scene

    rgb, _ = generate_scene(np.random.default_rng(7), size=(270, 480))
    image = tmp_path / "synthetic_desert.png"
    Image.fromarray(rgb).save(image)
    _upload_and_wait(browser_page, app.url, image)
    assert tuple(_shown_size(browser_page)) == (270, 480)
    legend = browser_page.locator("table.offroadseg-legend")
    assert legend.locator("tr").count() == 12  # header + 11 Duality classes
    shot = tmp_path / "app.png"
    browser_page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("OFFROADSEG_APP_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep)
