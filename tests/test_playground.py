"""The browser playground at ``/``, driven by a real (Debian) Chromium through Playwright.

Skipped when Playwright's Python package or /usr/bin/chromium is missing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)

from test_serve import Server, train  # noqa: E402

import attnkit  # noqa: E402
from attnkit.serve import create_app  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 30_000  # hang protection only


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = attnkit.load(train(tmp_path_factory.mktemp("playground")), device="cpu")
    with Server(create_app(model, "tiny")) as s:
        yield s


def bar_probs(page) -> list[str]:
    return page.eval_on_selector_all("#bars rect.bar", "els => els.map(e => e.dataset.prob)")


def test_playground_streams_plots_and_draws_attention(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            page.fill("#prompt", "def ")
            page.fill("#max-tokens", "40")
            page.click("#generate")
            page.wait_for_function("document.getElementById('generated')?.dataset.done === '1'")
            assert len(page.text_content("#generated")) > 0
            page.wait_for_function("document.querySelectorAll('#bars rect.bar').length === 10")
            page.wait_for_function("document.getElementById('heatmap').dataset.drawn === '4'")
            before = bar_probs(page)
            page.eval_on_selector("#temperature", "el => { el.value = '2'; "
                                  "el.dispatchEvent(new Event('input', {bubbles: true})); }")
            page.wait_for_function("old => JSON.stringify([...document.querySelectorAll("
                                   "'#bars rect.bar')].map(e => e.dataset.prob)) !== old",
                                   arg=json.dumps(before, separators=(",", ":")))
            after = bar_probs(page)
            assert float(after[0]) < float(before[0])  # a hotter softmax is flatter
            assert page.text_content("#error") == ""
            out = ROOT / "tests" / "artifacts" / "playground.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            if os.environ.get("ATTNKIT_UPDATE_DOCS"):  # refresh the picture in docs/serving.md
                shutil.copyfile(out, ROOT / "docs" / "img" / "playground.png")
        finally:
            browser.close()
