"""The Layers page in a real browser: what AppTest cannot see — the graph drawn as SVG (Graphviz in the
page), its residual branches, the charts and the feature-map tiles served."""

from __future__ import annotations

import pytest

from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, server  # noqa: F401 - the server fixture

import model_zoo

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not (model_zoo.SAMPLES_DIR / "index.json").is_file(), reason="model zoo not built"),
]


def test_layers_page_draws_the_resnet_graph_with_branches(server):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    wait = {"timeout": 120_000}  # a cold server loads the model and runs the statistics pass first

    url, _log = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2700})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.locator("[data-testid='stSelectbox']").filter(has_text="Zoo model").click()
            page.keyboard.type("resnet-mini-torch")
            page.keyboard.press("Enter")
            page.get_by_role("button", name="Load zoo model").click()
            expect(page.get_by_text("Active model: resnet-mini-torch")).to_be_visible(**wait)
            page.get_by_role("link", name="Images").click()
            page.get_by_role("button", name="Add all samples").click()
            expect(page.get_by_text("Predictions of")).to_be_visible(**wait)

            page.get_by_role("link", name="Layers").click()
            expect(page.get_by_text("Statistics over the images")).to_be_visible(**wait)
            graph = page.locator("[data-testid='stGraphVizChart'] svg")
            expect(graph).to_have_count(1, **wait)
            expect(graph.locator("g.node")).to_have_count(71, **wait)  # 60 layers, 8 additions, flatten, input, output
            expect(graph.locator("g.edge path[stroke='#d81b60']")).to_have_count(11, **wait)  # residual branches
            expect(graph.locator("g.node polygon[fill='#ffd54f'], g.node path[fill='#ffd54f']")).to_have_count(1, **wait)
            expect(page.locator("[data-testid='stVegaLiteChart']")).to_have_count(4, **wait)
            tiles = page.locator("[data-testid='stMain'] [data-testid='stImage'] img")
            expect(tiles).to_have_count(1 + 16, **wait)  # the colour bar and 16 channels
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "browser_layers.png"))
        finally:
            browser.close()
