"""End to end in a real browser: Debian's Chromium drives ``streamlit run app.py`` through its real
``<input type=file>`` elements — what AppTest cannot see (uploads over HTTP, layout, charts drawn) —
then opens the run's share link in a second browser context (a new session, no shared cookies)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import pytest

import model_zoo

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
GRID_IMAGES = "[data-testid='stMain'] [data-testid='stImage'] img"
EXPLAINER_LOG = " image(s) of "  # session.run logs "<method> on <n> image(s) of <model> in <s> s" per explainer call
# streamlit run, with the workbench's own INFO log (explainer calls, saved runs) in the server log
SERVE = (
    "import logging, sys\n"
    "handler = logging.StreamHandler()\n"
    "handler.setFormatter(logging.Formatter('%(asctime)s %(name)s %(levelname)s %(message)s'))\n"
    "logging.getLogger('workbench').addHandler(handler)\n"
    "logging.getLogger('workbench').setLevel(logging.INFO)\n"
    "from streamlit.web import cli\n"
    "sys.argv = ['streamlit', *sys.argv[1:]]\n"
    "sys.exit(cli.main())\n"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"streamlit was not healthy within {seconds:.0f} s")


@pytest.fixture()
def upload_files(tmp_path) -> tuple[Path, Path]:
    """The zoo's Keras model and a zoo sample PNG (built on the spot when the zoo is not built)."""
    model = model_zoo.WEIGHTS_DIR / "shapes_cnn.keras"
    if not model.is_file():
        model = tmp_path / "shapes_cnn.keras"
        model_zoo.build_keras("shapes-cnn").save(model)
    if (model_zoo.SAMPLES_DIR / "index.json").is_file():
        image = model_zoo.samples()[0].image
    else:
        from PIL import Image

        image = tmp_path / "sample.png"
        Image.fromarray(model_zoo.shapes.generate(1, seed=7)[0][0]).save(image)
    return model, image


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    log_path = tmp_path / "streamlit.log"
    url = f"http://127.0.0.1:{port}"
    # no WORKBENCH_PUBLIC_BASE_URL: share links must follow the address the browser used (a free port here)
    env = {**os.environ, "WORKBENCH_DATA_DIR": str(tmp_path / "data")}
    env.pop("WORKBENCH_DATABASE_URL", None)
    env.pop("WORKBENCH_PUBLIC_BASE_URL", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-c", SERVE, "run", "app.py",
                "--server.headless", "true",
                "--server.port", str(port),
                "--server.address", "127.0.0.1",
                "--server.fileWatcherType", "none",
                "--browser.gatherUsageStats", "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(url, process)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / "streamlit.log")


def explainer_calls(log_path: Path) -> int:
    return sum(EXPLAINER_LOG in line for line in log_path.read_text(errors="replace").splitlines())


def grid_pictures(page) -> list[bytes]:
    """The grid's images as served (the original, then one heatmap per method), fetched in the page's context."""
    page.wait_for_function(
        "selector => [...document.querySelectorAll(selector)].every(img => img.complete && img.naturalWidth > 0)",
        arg=GRID_IMAGES,
    )
    sources = page.locator(GRID_IMAGES).evaluate_all("images => images.map(img => img.src)")
    return [page.request.get(urljoin(page.url, src)).body() for src in sources]


def test_upload_keras_model_and_image_then_compare_three_methods_and_share(server, upload_files):
    from playwright.sync_api import expect, sync_playwright

    url, log_path = server
    model, image = upload_files
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            expect(page.get_by_text("Upload a model")).to_be_visible()

            page.locator("input[type=file]").first.set_input_files(str(model))
            expect(page.get_by_text(f"Active model: {model.name}")).to_be_visible(timeout=90_000)
            expect(page.get_by_text("Test prediction")).to_be_visible()

            page.get_by_role("link", name="Images").click()
            expect(page.get_by_text("Drop one or more images")).to_be_visible()
            page.locator("input[type=file]").first.set_input_files(str(image))
            expect(page.get_by_text("Target class")).to_be_visible()

            page.get_by_role("link", name="Explain & compare").click()
            run = page.get_by_role("button", name="Run")
            expect(run).to_be_enabled()
            run.click()
            expect(page.get_by_text("Agreement and cost")).to_be_visible(timeout=120_000)

            grid = page.locator(GRID_IMAGES)
            expect(grid).to_have_count(4)  # the image and three heatmaps
            computed = grid_pictures(page)
            sidebar = page.locator("[data-testid='stSidebar']")
            expect(sidebar.get_by_role("combobox", name="Active model")).to_have_value(model.name)
            expect(sidebar.get_by_text("Images: 1")).to_be_visible()
            charts = page.locator("[data-testid='stVegaLiteChart']")
            expect(charts).to_have_count(2)  # agreement heatmap and time per method
            expect(charts.first.locator("canvas, svg").first).to_be_visible()
            expect(page.get_by_text("Copy share link")).to_be_visible()
            link = page.locator("[data-testid='stCode'] code").first.inner_text().strip()
            assert link.startswith(f"{url}/?run="), link
            for label in ("Grid .png", "Attributions .npz", "Provenance .json", "Report .html"):
                expect(page.get_by_role("button", name=label)).to_be_visible()
            assert explainer_calls(log_path) == 3
            # the app scrolls inside its main block, so a tall window shows the whole page
            page.set_viewport_size({"width": 1500, "height": 2300})
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "browser_explain.png"))

            # the link in a new browser context: another session, which never saw the model or the image
            other = browser.new_context(viewport={"width": 1500, "height": 2300}, accept_downloads=True)
            reader = other.new_page()
            reader.set_default_timeout(60_000)
            reader.goto(link)
            expect(reader.get_by_text("Read-only view of a saved run")).to_be_visible()
            expect(reader.locator(GRID_IMAGES)).to_have_count(4)
            assert grid_pictures(reader) == computed, "the same image and heatmaps, pixel for pixel"
            reader_charts = reader.locator("[data-testid='stVegaLiteChart']")
            expect(reader_charts).to_have_count(2)
            expect(reader_charts.first.locator("canvas, svg").first).to_be_visible()
            expect(reader.locator("[data-testid='stCode'] code").first).to_have_text(link)
            expect(reader.locator("[data-testid='stSidebar']").get_by_text("No model loaded yet.")).to_be_visible()
            with reader.expect_download() as download:
                reader.get_by_role("button", name="Report .html").click()
            report = Path(download.value.path()).read_text(encoding="utf-8")
            assert "data:image/png;base64," in report and link in report
            assert explainer_calls(log_path) == 3, "opening the link ran no explainer"
            reader.wait_for_timeout(1000)
            reader.screenshot(path=str(ARTIFACTS / "browser_shared.png"))
            other.close()
        finally:
            browser.close()


def quick_start_seconds(browser, url: str) -> float:
    """A new session: open the app, press Quick start, wait for the three heatmaps and both charts drawn."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    started = time.perf_counter()
    page.goto(url)
    page.get_by_role("button", name=re.compile("^Quick start")).click()
    expect(page.get_by_text("Agreement and cost")).to_be_visible(timeout=180_000)
    expect(page.locator(GRID_IMAGES)).to_have_count(4)
    grid_pictures(page)  # every heatmap decoded
    charts = page.locator("[data-testid='stVegaLiteChart']")
    expect(charts).to_have_count(2)
    expect(charts.first.locator("canvas, svg").first).to_be_visible()
    seconds = time.perf_counter() - started
    page.set_viewport_size({"width": 1500, "height": 2300})
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "browser_quick_start.png"))
    context.close()
    return seconds


def test_new_user_quick_start_on_a_fresh_and_on_a_running_server(server):
    """What the README promises a new user: open the app, one click, Grad-CAM, IG and SHAP side by side with
    the agreement chart. Timed twice, in two sessions: the first on a server no one has used yet (shap's
    kernels still compiling in the background), the second once the server is warm. The times go to
    test-artifacts/quick_start.json: a record, not a timed assertion (shared machines are noisy)."""
    from playwright.sync_api import sync_playwright

    url, log_path = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            fresh = quick_start_seconds(browser, url)
            assert explainer_calls(log_path) == 3
            warm = quick_start_seconds(browser, url)
            assert explainer_calls(log_path) == 6, "a new session computes its own maps"
        finally:
            browser.close()
    lines = log_path.read_text(errors="replace").splitlines()
    record = {
        "seconds_from_page_open_to_charts": {"fresh_server": round(fresh, 2), "running_server": round(warm, 2)},
        "explainer_log": [line.split(" INFO ", 1)[-1] for line in lines if EXPLAINER_LOG in line],
        "warm_up_log": [line.split(" INFO ", 1)[-1] for line in lines if "warm-up" in line],  # done in, waited for
        "load_average": os.getloadavg(),
    }
    (ARTIFACTS / "quick_start.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


def test_a_page_url_opened_first_on_a_fresh_server_goes_through_the_entry_point(server):
    """Before any session has run app.py, Streamlit runs a page's file alone (it still sees pages/): the page
    must not fail, nor skip the entry point's checks, and the user lands on the page the URL named."""
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{url}/runs?model=none")
            expect(page.get_by_role("heading", name="Runs")).to_be_visible()
            expect(page.locator("[data-testid='stSidebar']").get_by_text("No model loaded yet.")).to_be_visible()
            expect(page.get_by_text("encountered an error")).to_have_count(0)
            assert page.url.startswith(f"{url}/runs?model=none"), page.url  # (then the workspace id, &ws=)
        finally:
            browser.close()


def test_a_share_link_copied_from_a_server_on_another_port_opens_in_a_fresh_context(server, tmp_path):
    """Without WORKBENCH_PUBLIC_BASE_URL the link is built from the address the browser used, so it works on a
    port other than 8501 (and its HTML report carries the same link)."""
    import numpy as np
    from playwright.sync_api import expect, sync_playwright

    from workbench.result import Attribution, Comparison, ExplainedImage
    from workbench.store import RunStore

    url, _ = server
    assert not url.endswith(":8501")
    rng = np.random.default_rng(3)
    pixels = rng.random((32, 32, 3), dtype=np.float32)
    result = Attribution(method="saliency", map=rng.random((32, 32), dtype=np.float32), target=0, target_label="square",
                         target_score=0.9, signed=False, params={}, seconds=0.1, evaluations=1, device="cpu", seed=0)
    comparison = Comparison(model={"name": "net", "fingerprint": "fp"}, images=(ExplainedImage("a.png", "0" * 64, pixels, 0, "square"),),
                            methods=("saliency",), results=((result,),), seed=0, versions={}, created=time.time())
    with RunStore(data_dir=tmp_path / "data") as store:
        run_id = store.save(comparison, model_bytes=None, image_bytes=None, model_name="net")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            author = browser.new_context().new_page()
            author.set_default_timeout(60_000)
            elsewhere: list[str] = []  # the page asks nothing of any other host (icons, fonts, trackers)
            author.on("request", lambda request: None if request.url.startswith((url, "data:", "blob:")) else elsewhere.append(request.url))
            author.goto(f"{url}/runs")
            author.get_by_role("button", name="Open", exact=True).and_(author.get_by_test_id("stBaseButton-secondary")).click()
            expect(author.get_by_text("Read-only view of a saved run")).to_be_visible()
            link = author.locator("[data-testid='stCode'] code").first.inner_text().strip()
            assert link == f"{url}/?run={run_id}", link
            author.wait_for_timeout(1000)
            assert elsewhere == [], elsewhere

            reader = browser.new_context().new_page()  # no cookies, no session: only the link
            reader.set_default_timeout(60_000)
            reader.goto(link)
            expect(reader.get_by_text("Read-only view of a saved run")).to_be_visible()
            expect(reader.locator(GRID_IMAGES)).to_have_count(2)
            expect(reader.locator("[data-testid='stCode'] code").first).to_have_text(link)
            with reader.expect_download() as download:
                reader.get_by_role("button", name="Report .html").click()
            assert f'href="{link}"' in Path(download.value.path()).read_text(encoding="utf-8")
        finally:
            browser.close()
