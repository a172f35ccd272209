"""The page in a real browser: Debian's chromium driven by Playwright (skipped without them).

Playwright's own browser download is not used: the system chromium is launched directly,
with the flags a closed network needs (no background connections). Set
``OFFROADSEG_APP_SCREENSHOT`` to a path to keep the synthetic scene's screenshot, taken with the
scene's largest class excluded (``docs/img/app.png`` is made this way) and ``OFFROADSEG_APP_CHECKPOINT`` to show another model.
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


def _legend(page) -> dict[str, float]:
    """Class -> share of model A's pixels (%), as the page's legend table shows it."""
    rows = page.evaluate(
        "() => [...document.querySelectorAll('table.offroadseg-legend tr')].slice(1)"
        ".map(r => [...r.querySelectorAll('td')].map(c => c.textContent.trim()))"
    )
    return {cells[1]: float(cells[2].rstrip(" %")) for cells in rows}


def _mask_pixels_of(page, colour: tuple[int, int, int]) -> int:
    """Pixels of the shown colour mask (a lossless PNG) that have exactly ``colour``."""
    return page.evaluate(
        """([r, g, b]) => {
            const img = document.querySelector('#mask-a img');
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const ctx = canvas.getContext('2d');
            ctx.drawImage(img, 0, 0);
            const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] === r && d[i + 1] === g && d[i + 2] === b) n++;
            return n;
        }""",
        list(colour),
    )


def test_synthetic_scene_overlay_is_shown_and_excluded_classes_get_no_pixel(app, browser_page, tmp_path):
    from offroadseg.data.synth import generate_scene
    from offroadseg.taxonomy import load_taxonomy

    page = browser_page
    rgb, _ = generate_scene(np.random.default_rng(7), size=(270, 480))
    image = tmp_path / "synthetic_desert.png"
    Image.fromarray(rgb).save(image)
    _upload_and_wait(page, app.url, image)
    assert tuple(_shown_size(page)) == (270, 480)
    before = _legend(page)
    assert len(before) == 11 and sum(before.values()) == pytest.approx(100.0, abs=0.1)  # 11 Duality classes
    # the class the model gives most pixels, excluded through the page's control
    top = max(before, key=before.get)
    colour = tuple(load_taxonomy("duality").classes[load_taxonomy("duality").names.index(top)].color)
    assert before[top] > 0 and _mask_pixels_of(page, colour) > 0
    page.locator("#exclude").get_by_label(top, exact=True).check()
    page.locator("#segment").click()
    page.locator("#latency").filter(has_text=f"excluded: {top}").wait_for(timeout=60_000)
    page.wait_for_function(
        "() => { const i = document.querySelector('#mask-a img'); return i && i.complete && i.naturalWidth > 0; }",
        timeout=60_000,
    )
    after = _legend(page)
    assert after[top] == 0.0 and sum(after.values()) == pytest.approx(100.0, abs=0.1)
    assert _mask_pixels_of(page, colour) == 0  # not one pixel of it in the mask the page shows
    assert any(after[c] > before[c] for c in after if c != top)  # its pixels went to other classes
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("OFFROADSEG_APP_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep)
