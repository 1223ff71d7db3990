"""The app through streamlit.testing.v1.AppTest: every page renders, the zoo flow, uploads through the
file uploader (AppTest 1.67 supports ``FileUploader.set_value``), refusals, and caching of results.
Saved runs, share links and exports are in test_sharing.py."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import model_zoo
from workbench import session
from workbench.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ("pages/models.py", "pages/images.py", "pages/explain.py", "pages/runs.py", "pages/batch.py", "pages/shared.py", "pages/about.py")
TIMEOUT = 180


def zoo_built() -> bool:
    return all(e.weights.is_file() for e in model_zoo.entries() if e.name.startswith("shapes-cnn")) and (
        model_zoo.SAMPLES_DIR / "index.json"
    ).is_file()


needs_zoo = pytest.mark.skipif(not zoo_built(), reason="model zoo not built (python -m model_zoo.train)")


def png_bytes() -> bytes:
    if (model_zoo.SAMPLES_DIR / "index.json").is_file():
        return model_zoo.samples()[0].image.read_bytes()
    from PIL import Image

    images, _, _ = model_zoo.shapes.generate(1, seed=7)
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def keras_bytes(tmp_path_factory) -> bytes:
    """The zoo's Keras shapes CNN; a freshly built (untrained) one when the zoo is not built."""
    shipped = model_zoo.WEIGHTS_DIR / "shapes_cnn.keras"
    if shipped.is_file():
        return shipped.read_bytes()
    path = tmp_path_factory.mktemp("keras") / "shapes_cnn.keras"
    model_zoo.build_keras("shapes-cnn").save(path)
    return path.read_bytes()


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Every completed run is saved: each test gets its own data directory and SQLite database."""
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)


def start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def page(at: AppTest, path: str) -> AppTest:
    at.switch_page(path).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def workspace(at: AppTest) -> session.Workspace:
    return at.session_state["workspace"]


def charts(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("vega_lite_chart")]


def chart_titles(at: AppTest) -> list[str]:
    titles = []
    for spec in charts(at):
        title = spec.get("title")
        titles.append(title.get("text") if isinstance(title, dict) else title or "")
    return titles


def shown(value: str) -> str:
    """What a Markdown element displays for text escaped by pages.controls.plain: the escapes removed."""
    return re.sub(r"\\(.)", r"\1", value)


def rendered(value: str) -> tuple[str, str]:
    """Markdown source -> (HTML as CommonMark renders it, the text a reader sees)."""
    import html

    from markdown_it import MarkdownIt  # rich's Markdown parser, installed with Streamlit

    page_html = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(value)
    return page_html, html.unescape(re.sub(r"<[^>]+>", "", page_html)).strip()


def markdown_texts(at: AppTest) -> list[str]:
    """The source of every element Streamlit renders as Markdown, main area and sidebar."""
    texts = []
    for kind in ("markdown", "caption", "title", "header", "subheader", "error", "warning", "info", "success"):
        texts += [el.value for el in at.get(kind)] + [el.value for el in getattr(at.sidebar, kind, [])]
    texts += [caption for el in at.get("image") for caption in el.captions if caption]
    return texts


def load_zoo_and_sample(at: AppTest, model: str = "shapes-cnn-torch", sample: str | None = None) -> None:
    page(at, "pages/models.py")
    at.selectbox(key="models_zoo").set_value(model)
    at.button(key="models_zoo_load").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    page(at, "pages/images.py")
    at.multiselect(key="images_samples").set_value([sample or model_zoo.samples()[0].name]).run()
    at.button(key="images_add_samples").click().run()
    assert not at.exception, [e.value for e in at.exception]


# --------------------------------------------------------------------------- pages
def test_every_page_renders_without_a_model():
    at = start()
    # AppTest (1.67) keeps the entry point's sidebar in its tree only before the first switch_page
    assert any("Device: " in c.value for c in at.sidebar.caption)
    for path in PAGES:
        page(at, path)
        if path != "pages/about.py":
            assert at.info, f"{path} says what to do first"
    assert [m.label for m in at.metric] == ["Device", "Trusted formats", "Sign-in"]
    assert at.metric[2].value == "off" and any("Sign-in is off" in c.value for c in at.caption)


def test_home_page_imports_no_framework():
    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({APP!r}, default_timeout=120).run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_unsafe_environment_stops_with_its_message(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in e.value for e in at.error)


# --------------------------------------------------------------------------- the main flow
@needs_zoo
def test_zoo_model_sample_three_methods_grid_and_agreement(explain_calls):
    spy = explain_calls
    at = start()
    load_zoo_and_sample(at)
    ws = workspace(at)
    assert ws.model.name == "shapes-cnn-torch" and len(ws.images) == 1
    assert any(spec.get("layer") or spec.get("mark") for spec in charts(at)), "top-5 chart on the Images page"

    page(at, "pages/explain.py")
    assert at.multiselect(key="explain_methods").value == ["gradcam", "integrated_gradients", "shap"]
    assert any("estimated" in c.value for c in at.caption), "the cost is estimated before running"
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert spy.calls == 3
    # original + one overlay per method
    assert len(at.image) == 4
    assert any(t.startswith("Agreement") for t in chart_titles(at))
    assert "Time per method" in chart_titles(at)
    assert at.dataframe, "completeness table for IG and SHAP"
    assert at.button(key="explain_run").disabled, "nothing left to compute"


@needs_zoo
def test_quick_start_opens_the_comparison_computed(explain_calls):
    """A new user's one click: the zoo CNN, its first sample, and Grad-CAM, IG and SHAP already computed."""
    spy = explain_calls
    at = start()
    at.button(key="models_quick_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    ws = workspace(at)
    assert ws.model.name == "shapes-cnn-torch" and [e.name for e in ws.images.values()] == [model_zoo.samples()[0].image.name]
    assert at.title[0].value == "Explain & compare"
    assert spy.calls == 3
    assert len(at.image) == 4
    assert any(t.startswith("Agreement") for t in chart_titles(at))
    assert at.button(key="explain_run").disabled, "nothing left to compute"
    assert at.code and "?run=" in at.code[0].value, "the run is saved, with its share link"


@needs_zoo
def test_display_options_and_page_switches_call_no_explainer(explain_calls):
    at = start()
    load_zoo_and_sample(at)
    page(at, "pages/explain.py")
    at.button(key="explain_run").click().run()
    spy = explain_calls
    spy.calls = 0  # count from here: only display options and page switches follow

    at.selectbox(key="display_normalise").set_value("image").run()
    at.slider(key="display_opacity").set_value(0.8).run()
    at.selectbox(key="display_cmap").set_value("viridis").run()
    at.toggle(key="display_positive").set_value(True).run()
    at.toggle(key="display_raw").set_value(True).run()
    at.segmented_control(key="explain_metric").set_value("top-k % IoU").run()
    at.slider(key="explain_k").set_value(25).run()
    page(at, "pages/images.py")
    page(at, "pages/about.py")
    page(at, "pages/explain.py")
    assert not at.exception
    assert spy.calls == 0
    assert len(at.image) == 4

    # the spy does see work: new parameters are a cache miss, computed on Run
    at.number_input(key="explain_integrated_gradients_steps").set_value(20).run()
    assert not at.button(key="explain_run").disabled
    at.button(key="explain_run").click().run()
    assert spy.calls == 1


@needs_zoo
def test_parameter_over_a_cap_shows_the_message():
    at = start()
    load_zoo_and_sample(at)
    page(at, "pages/explain.py")
    at.number_input(key="explain_integrated_gradients_steps").set_value(10_000).run()
    assert not at.exception
    assert any("cap" in e.value and "WORKBENCH_MAX_IG_STEPS" in shown(e.value) for e in at.error)


@needs_zoo
def test_one_method_across_two_models():
    at = start()
    load_zoo_and_sample(at, "shapes-cnn-torch")
    load_zoo_and_sample(at, "shapes-cnn-keras")
    page(at, "pages/explain.py")
    at.segmented_control(key="explain_mode").set_value("models").run()
    at.selectbox(key="explain_method").set_value("gradcam").run()
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 3  # original, torch map, keras map
    assert any("Spearman" in m.value for m in at.markdown)



@needs_zoo
def test_sidebar_switches_the_active_model():
    ws = session.Workspace()
    for name in ("shapes-cnn-torch", "shapes-cnn-keras"):
        session.load_zoo(ws, name, loader=session.load_base)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["workspace"] = ws
    at.run()
    assert at.selectbox(key="sidebar_model").value == "shapes-cnn-keras"
    at.selectbox(key="sidebar_model").set_value("shapes-cnn-torch").run()
    assert not at.exception
    assert ws.active == "shapes-cnn-torch"
    assert any("Active model: shapes-cnn-torch" in shown(h.value) for h in at.subheader)


# --------------------------------------------------------------------------- uploads
def test_keras_model_and_png_through_the_file_uploaders(keras_bytes):
    at = start()
    at.file_uploader(key="models_upload").set_value(("shapes_cnn.keras", keras_bytes, "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    ws = workspace(at)
    assert ws.model is not None and ws.model.name == "shapes_cnn.keras"
    assert ws.model.adapter.framework == "keras"
    assert any("✓" in str(row) for row in at.dataframe[-1].value.to_dict("records")), "default CAM layer marked"

    page(at, "pages/images.py")
    at.file_uploader(key="images_upload").set_value([("sample.png", png_bytes(), "image/png")]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [e.name for e in ws.images.values()] == ["sample.png"]
    assert at.selectbox(key=next(k for k in at.session_state if str(k).startswith("images_target_"))) is not None


def test_markdown_in_file_and_class_names_is_shown_as_literal_text(keras_bytes):
    """A file name is not markup: no page turns one into a link, a remote image or HTML."""
    name = "[Sign in again](https://evil.example/login) ![px](https://evil.example/px.png).keras"
    image_name = "<b>x</b> [y](https://evil.example/y).png"
    label = "**bold** [z](https://evil.example/z)"
    at = start()
    at.file_uploader(key="models_upload").set_value((name, keras_bytes, "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    record = workspace(at).model
    assert record.name == name
    labels = "\n".join([label] + [f"class {k}" for k in range(1, record.adapter.num_classes)])
    at.file_uploader(key=f"models_labels_{record.id}").set_value(("labels.txt", labels.encode(), "text/plain")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    page(at, "pages/images.py")
    at.file_uploader(key="images_upload").set_value([(image_name, png_bytes(), "image/png")]).run()
    seen = markdown_texts(at)
    page(at, "pages/models.py")
    seen += markdown_texts(at)
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam"]).run()
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    seen += markdown_texts(at)

    for text in (name, image_name):
        assert any(text in shown(value) for value in seen), f"{text!r} is shown"
    for value in seen:
        page_html, text = rendered(value)
        assert "<b>" not in page_html, value
        if "evil.example" in value:  # the page's own links (a method's paper) are fine; a user's never are
            assert "<a " not in page_html and "<img" not in page_html, value
            assert re.search(r"(?<!\\)://", value) is None, f"an autolink in {value!r}"
            assert any(n in text for n in (name, image_name, label)), f"{value!r} reads {text!r}"
    assert f"Active model: {name}" in [rendered(v)[1] for v in seen]


def tiny_onnx(channels: int) -> bytes:
    """A small untrained CNN for ``channels``-channel 32 x 32 input, exported to ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(module, torch.rand(1, channels, 32, 32), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return buffer.getvalue()


def test_other_channel_counts_are_refused_at_intake_and_greyscale_works_on_every_page():
    at = start()
    at.file_uploader(key="models_upload").set_value(("five.onnx", tiny_onnx(5), "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1 and "5-channel" in at.error[0].value, [e.value for e in at.error]
    assert workspace(at).model is None

    at.file_uploader(key="models_upload").set_value(("grey.onnx", tiny_onnx(1), "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert workspace(at).model.adapter.input_size == (32, 32, 1)
    page(at, "pages/images.py")
    at.file_uploader(key="images_upload").set_value([("colour.png", png_bytes(), "image/png")]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam", "saliency"]).run()
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    for path in PAGES:
        page(at, path)
        assert not at.error, (path, [e.value for e in at.error])


def test_labels_file_applies_or_is_refused_with_its_message(keras_bytes):
    at = start()
    at.file_uploader(key="models_upload").set_value(("shapes_cnn.keras", keras_bytes, "application/octet-stream")).run()
    record = workspace(at).model
    labels_key = f"models_labels_{record.id}"
    at.file_uploader(key=labels_key).set_value(("three.txt", b"a\nb\nc\n", "text/plain")).run()
    assert not at.exception
    assert any("3 labels" in e.value for e in at.error), [e.value for e in at.error]
    names = [f"shape {k}" for k in range(record.adapter.num_classes)]
    at.file_uploader(key=labels_key).set_value(("names.txt", "\n".join(names).encode(), "text/plain")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert workspace(at).model.adapter.labels == tuple(names)
    assert record.base.labels != tuple(names), "the shared model keeps its own labels"


@needs_zoo
def test_weights_only_upload_asks_for_the_architecture_then_loads():
    at = start()
    data = model_zoo.get("shapes-cnn-torch").weights.read_bytes()
    at.file_uploader(key="models_upload").set_value(("shapes.safetensors", data, "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1 and "architecture" in at.error[0].value.lower()
    at.selectbox(key="models_architecture").set_value("shapes-cnn").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert workspace(at).model.name == "shapes.safetensors"


def test_refused_upload_shows_its_message_and_the_next_upload_works(keras_bytes):
    at = start()
    noise = np.random.default_rng(0).bytes(4096)
    at.file_uploader(key="models_upload").set_value(("weights.pt", noise, "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1 and "weights.pt" in shown(at.error[0].value)
    assert "Traceback" not in at.error[0].value and "\n" not in at.error[0].value
    assert workspace(at).model is None

    at.file_uploader(key="models_upload").set_value(("shapes_cnn.keras", keras_bytes, "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert workspace(at).model.name == "shapes_cnn.keras"


def test_refused_image_shows_its_message_and_the_next_image_works():
    at = start()
    page(at, "pages/images.py")
    at.file_uploader(key="images_upload").set_value([("scan.pdf", b"%PDF-1.7 not an image", "application/pdf")]).run()
    assert not at.exception
    assert len(at.error) == 1 and "scan.pdf" in shown(at.error[0].value)
    at.file_uploader(key="images_upload").set_value([("sample.png", png_bytes(), "image/png")]).run()
    assert not at.exception and not at.error
    assert len(workspace(at).images) == 1


# --------------------------------------------------------------------------- session logic
def test_bounded_cache_evicts_least_recently_used_by_count_and_bytes():
    cache = session.BoundedCache(3)
    for key in "abc":
        cache.put(key, key)
    cache.get("a")
    cache.put("d", "d")
    assert "b" not in cache and all(k in cache for k in "acd")
    sized = session.BoundedCache(100, max_bytes=10, size=len)
    sized.put("x", "123456")
    sized.put("y", "123456")
    assert "x" not in sized and "y" in sized and sized.nbytes == 6


def test_result_key_depends_on_every_input():
    class Record:
        identity = "model"

    class Entry:
        id = "image"

    base = dict(record=Record(), entry=Entry(), method="shap", params={"max_evals": 500}, klass=1, seed=0)
    key = session.result_key(**base)
    assert session.result_key(**base) == key
    for change in (
        {"method": "gradcam"},
        {"params": {"max_evals": 501}},
        {"klass": 2},
        {"seed": 1},
        {"background": ("other",)},
    ):
        assert session.result_key(**{**base, **change}) != key, change


def test_new_uploads_hands_each_file_over_once():
    class Upload:
        def __init__(self, file_id):
            self.file_id = file_id

    ws = session.Workspace()
    a, b = Upload("1"), Upload("2")
    assert session.new_uploads(ws, "image", [a]) == [a]
    assert session.new_uploads(ws, "image", [a, b]) == [b]
    assert session.new_uploads(ws, "image", [a, b]) == []
    assert session.new_uploads(ws, "model|other options", [a]) == [a]


def test_plan_refuses_parameters_over_caps(monkeypatch):
    monkeypatch.setenv("WORKBENCH_MAX_SHAP_EVALS", "100")
    with pytest.raises(ParameterError, match="WORKBENCH_MAX_SHAP_EVALS"):
        session.normalised_params(["shap"], {"shap": {"max_evals": 500}})


def test_display_probabilities_softmax_only_for_logits():
    logits = np.array([[2.0, 0.0, -1.0]])
    probs = session.display_probabilities(logits, "logits")
    assert np.isclose(probs.sum(), 1.0) and probs.argmax() == 0
    given = np.array([[0.7, 0.2, 0.1]])
    assert np.array_equal(session.display_probabilities(given, "probabilities"), given)


@needs_zoo
def test_two_sessions_share_one_parsed_model_but_not_their_settings():
    loads = []

    def loader(key, data):
        loads.append(key)
        return shared.setdefault(key, session.load_base(key, data))

    shared = {}
    alice, bob = session.Workspace(), session.Workspace()
    a = session.load_zoo(alice, "shapes-cnn-torch", loader=loader)
    b = session.load_zoo(bob, "shapes-cnn-torch", loader=loader)
    assert a.base is b.base and a.adapter is not b.adapter
    session.set_preset(a, "imagenet")
    assert a.adapter.preset.name == "imagenet" and b.adapter.preset.name == "unit" and a.base.preset.name == "unit"
    assert a.identity != b.identity, "results of different presets never mix"
    assert a.adapter.lock is a.base.lock, "views guard the shared model with its one lock"


# --------------------------------------------------------------------------- parameters
CHOSEN = {
    "explain_integrated_gradients_steps": 24,
    "explain_integrated_gradients_blur_sigma": 3.5,
    "explain_integrated_gradients_baseline": "blur",
    "explain_shap_max_evals": 300,
    "explain_shap_batch_size": 25,
    "explain_gradcam_relu": False,
    "explain_seed": 7,
}


def shown_parameters(at: AppTest) -> dict:
    values = {}
    for key in CHOSEN:
        for kind in ("number_input", "toggle", "selectbox"):
            found = [w for w in at.get(kind) if w.key == key]
            if found:
                values[key] = found[0].value
    return values


@needs_zoo
def test_switching_models_and_pages_never_changes_the_parameters_a_run_uses(explain_calls):
    ws = session.Workspace()
    for name in ("shapes-cnn-keras", "shapes-cnn-torch"):
        session.load_zoo(ws, name, loader=session.load_base)
    session.add_sample(ws, model_zoo.samples()[0])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["workspace"] = ws
    at.run()
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam", "integrated_gradients", "shap"]).run()
    for key, value in CHOSEN.items():
        widget = next(w for kind in ("number_input", "toggle", "selectbox") for w in at.get(kind) if w.key == key)
        widget.set_value(value).run()
    assert shown_parameters(at) == CHOSEN

    for step in ("keras", "models", "explain", "rerun", "torch", "images", "explain", "about", "explain"):
        if step in ("keras", "torch"):
            ws.active = f"shapes-cnn-{step}"  # what the sidebar's on_change does
            at.run()
        elif step == "rerun":
            at.run()
        else:
            page(at, f"pages/{step}.py")
        if step in ("explain", "rerun", "keras", "torch"):
            assert shown_parameters(at) == CHOSEN, step
    at.multiselect(key="explain_methods").set_value(["gradcam", "integrated_gradients"]).run()
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    run_id = at.code[0].value.rsplit("?run=", 1)[1]
    comparison = ws.opened.get(run_id).comparison
    assert comparison.seed == 7
    used = {r.method: dict(r.params) for r in comparison.results[0]}
    assert used["integrated_gradients"]["steps"] == 24 and used["integrated_gradients"]["blur_sigma"] == 3.5
    assert used["integrated_gradients"]["baseline"] == "blur" and used["gradcam"]["relu"] is False


# --------------------------------------------------------------------------- reading the maps
def test_default_colormaps_are_perceptually_uniform_and_diverging_for_signed_maps():
    from workbench import render

    assert render.default_cmap(signed=False) in ("viridis", "inferno")
    assert render.default_cmap(signed=True) == "RdBu_r" and render.default_cmap(signed=True, positive_only=True) == "viridis"
    bar = render.colorbar(100, "RdBu_r", signed=True)
    assert bar.shape == (10, 100, 3)
    middle = bar[0, 50].astype(int)
    assert abs(middle - 247).max() < 12, "zero is the diverging map's neutral centre"


def test_default_opacity_shows_the_small_values_of_a_signed_map():
    """An IG-like map (heavy-tailed: a few extreme pixels, most mass small): at the default opacity far more
    pixels are visibly coloured than with the former linear blend at 0.5."""
    from workbench import render

    rng = np.random.default_rng(0)
    attribution = (rng.laplace(size=(64, 64)) ** 3).astype(np.float32)
    grey = np.full((64, 64, 3), 0.5, np.float32)
    shown_now = render.overlay(grey, attribution, signed=True)
    visible = (np.abs(shown_now.astype(int) - 128).max(axis=-1) >= 16).mean()
    former = (np.abs(render.normalise(attribution, True)) * 0.5 * 0.5 * 255 >= 16).mean()
    assert visible >= 0.2 and visible >= 2.5 * former, (visible, former)


@needs_zoo
def test_every_map_has_a_colour_bar_and_its_value_range():
    at = start()
    load_zoo_and_sample(at)
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam", "saliency", "integrated_gradients"]).run()
    at.number_input(key="explain_integrated_gradients_steps").set_value(8).run()
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="display_cmap").value == "viridis" and at.slider(key="display_opacity").value == 0.7
    maps = [el for el in at.get("image") if el.captions and el.captions[0].startswith("colour")]
    assert len(maps) == 3, [el.captions for el in at.get("image")]
    signed = [el.captions[0] for el in maps if "… 0 …" in el.captions[0]]
    assert len(signed) == 1, "Grad-CAM and saliency are unsigned; IG is signed"


@needs_zoo
def test_the_exports_draw_the_colour_bars_the_page_shows(monkeypatch):
    """The page's display options reach the grid PNG and the HTML report: the same colormaps and values."""
    import re

    from PIL import Image

    from workbench import export, sharing

    built = []
    original = sharing.exports

    def recorded(comparison, **options):
        built.append({e.kind: e for e in original(comparison, **options)})
        return original(comparison, **options)

    monkeypatch.setattr(sharing, "exports", recorded)
    at = start()
    load_zoo_and_sample(at)
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam", "integrated_gradients"]).run()
    at.number_input(key="explain_integrated_gradients_steps").set_value(8).run()
    at.button(key="explain_run").click().run()
    at.selectbox(key="display_diverging").set_value("coolwarm")
    at.selectbox(key="display_normalise").set_value("image").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = [el.captions[0].split(" · ")[0].removeprefix("colour ") for el in at.get("image") if el.captions and el.captions[0].startswith("colour")]
    assert len(shown) == 2 and "… 0 …" in shown[1] and "… 0 …" not in shown[0], shown
    report = built[-1]["html"].build()
    table = report.split("<h3>Colour scales</h3>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<code class="cmap">([^<]+)</code> <span class="range">([^<]+)</span>', table) == [
        ("viridis", shown[0]), ("coolwarm", shown[1])
    ], "the page's colormaps and the values its captions give"
    [row] = json.loads(Image.open(io.BytesIO(built[-1]["grid"].build())).text[export.PNG_SCALES_KEY])["rows"]
    assert [c["cmap"] for c in row] == ["viridis", "coolwarm"] and row[0]["high"] == row[1]["high"], "one scale per image"


def test_an_uploaded_model_is_test_predicted_on_a_neutral_image_not_a_zoo_sample(keras_bytes):
    at = start()
    at.file_uploader(key="models_upload").set_value(("mine.keras", keras_bytes, "application/octet-stream")).run()
    assert not at.exception and not at.error
    assert any("Test prediction" in m.value and "neutral grey image" in m.value for m in at.markdown)
    page(at, "pages/images.py")
    at.file_uploader(key="images_upload").set_value([("own.png", png_bytes(), "image/png")]).run()
    page(at, "pages/models.py")
    assert any("Test prediction" in m.value and "own.png" in shown(m.value) for m in at.markdown), "the user's own first image"


# --------------------------------------------------------------------------- estimates
def test_estimates_follow_the_times_measured_on_the_model():
    from workbench import calibration
    from workbench.result import Attribution

    def done(method, seconds, evaluations):
        return Attribution(method=method, map=np.zeros((4, 4), np.float32), target=0, target_label="a", target_score=1.0,
                           signed=False, params={}, seconds=seconds, evaluations=evaluations, device="cpu")

    timings = calibration.Timings()
    plan = {"ig": {"evaluations": 100, "seconds": 40.0}, "shap": {"evaluations": 500, "seconds": 10.0}}
    assert calibration.seconds(timings, "m", plan) == (50.0, False), "nothing measured: the forward-pass guess"
    # IG ran on two images: 2 x 1.0 s for 2 x 100 evaluations, guessed at 2 x 40 s; the run's wall time 2.5 s
    calibration.record(timings, "m", {"ig": [done("ig", 1.0, 100), done("ig", 1.0, 100)]}, {"ig": 80.0}, wall_seconds=2.5)
    estimate, measured = calibration.seconds(timings, "m", plan)
    assert measured
    assert estimate == pytest.approx(1.25 + 10.0 * 2.5 / 80.0), "IG at its measured rate, SHAP at the model's ratio"
    assert calibration.seconds(timings, "other model", plan) == (50.0, False), "timings are per model"
    calibration.record(timings, "m", {"shap": [done("shap", 3.0, 500)]}, {"shap": 10.0})
    assert calibration.seconds(timings, "m", plan)[0] == pytest.approx(1.25 + 3.0)
    import pickle

    assert pickle.loads(pickle.dumps(timings)).per_evaluation == timings.per_evaluation


# --------------------------------------------------------------------------- the workspace across reloads
@needs_zoo
def test_a_reload_with_the_same_workspace_id_finds_the_same_models_images_and_maps(explain_calls):
    at = start()
    workspace_id = at.query_params["ws"]
    load_zoo_and_sample(at)
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam", "saliency"]).run()
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error
    before = workspace(at)
    maps = [el.value for el in at.get("image")]
    page(at, "pages/about.py")  # a later run stores what changed
    assert at.query_params["ws"] == workspace_id, "the id stays in the URL across pages"
    spy = explain_calls
    spy.calls = 0

    again = AppTest.from_file(APP, default_timeout=TIMEOUT)  # the reload: a new session, the same URL
    again.query_params["ws"] = workspace_id
    again.run()
    assert not again.exception
    ws = workspace(again)
    assert list(ws.models) == list(before.models) and ws.active == before.active
    assert list(ws.images) == list(before.images)
    assert len(ws.results) == len(before.results) == 2
    page(again, "pages/explain.py")
    again.multiselect(key="explain_methods").set_value(["gradcam", "saliency"]).run()
    assert not again.exception and not again.error, [e.value for e in again.error]
    assert again.button(key="explain_run").disabled, "every map is there: nothing to compute"
    assert spy.calls == 0 and len(again.get("image")) == len(maps)

    # a new workspace: empty, under a new id; the old id still opens the old one
    fresh = AppTest.from_file(APP, default_timeout=TIMEOUT)
    fresh.query_params["ws"] = workspace_id
    fresh.run()
    fresh.button(key="app_new_workspace").click().run()
    assert not fresh.exception
    assert fresh.session_state["workspace_id"] != workspace_id
    assert not workspace(fresh).models and not workspace(fresh).images


def test_an_unknown_or_malformed_workspace_id_starts_a_new_workspace():
    for wanted in (secrets.token_urlsafe(24), "../../etc/passwd"):
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.query_params["ws"] = wanted
        at.run()
        assert not at.exception and not at.error
        assert at.session_state["workspace_id"] != wanted and not workspace(at).models


@needs_zoo
def test_a_cancelled_run_keeps_the_maps_that_finished_and_run_computes_only_the_rest(explain_calls, monkeypatch):
    """Streamlit may also interrupt the script with a ScriptControlException at an st call (here the second
    method raises it): the finished maps are kept and saved as a partial run, and the line names the method."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from workbench import engine

    at = start()
    load_zoo_and_sample(at)
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam", "saliency"]).run()
    assert not at.button(key="explain_run").disabled
    original = engine.Engine._explain  # the explainers run in the model's worker; the server calls them here

    def interrupted(self, method, *args, **kwargs):
        if method == "saliency":
            raise StopException()
        return original(self, method, *args, **kwargs)

    monkeypatch.setattr(engine.Engine, "_explain", interrupted)
    at.button(key="explain_run").click().run()
    assert [b.key for b in at.button if b.key == "explain_cancel"] == ["explain_cancel"], "Cancel is shown while running"
    assert at.button(key="explain_run").disabled, "Run is disabled while a run is in flight"
    monkeypatch.setattr(engine.Engine, "_explain", original)

    at.run()  # the next run: the page says how far the run got; Grad-CAM's map is kept and saved as a partial run
    assert not at.exception, [e.value for e in at.exception]
    notices = [w.value.replace("\\", "") for w in at.warning]
    assert any(n.startswith("Cancelled: 1 of 2 methods finished; Saliency was running") and "partial run" in n for n in notices), notices
    ws = workspace(at)
    assert [r.method for r in (ws.results.get(k) for k in list(ws.results._items)) if r] == ["gradcam"]
    assert partial_runs() == [("gradcam",)]
    assert not at.button(key="explain_run").disabled
    # kept is stored too: a reload of the workspace finds the map that finished
    reloaded = AppTest.from_file(APP, default_timeout=TIMEOUT)
    reloaded.query_params["ws"] = at.query_params["ws"]
    reloaded.run()
    assert [r.method for _, (r, _) in workspace(reloaded).results._items.items()] == ["gradcam"]
    explain_calls.calls = 0
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error
    assert explain_calls.calls == 1, "only the method that did not finish is computed"
    assert at.code and "?run=" in at.code[0].value


def partial_runs() -> list[tuple[str, ...]]:
    """The methods of each stored run that is marked as stopped early."""
    from workbench.store import RunStore

    with RunStore() as store:
        return [run.methods for run in store.list_runs() if run.stopped == "cancelled"]


def interrupt_during(monkeypatch, stall: str, rerun_data) -> dict:
    """Make method ``stall`` hang in the model's worker; once it reports progress, ask Streamlit to rerun the
    script with ``rerun_data()`` from inside it, as a click on Cancel or on another page does while a run computes.
    -> what happened: when it was asked, the worker's pid, when the worker call ended, the error it ended with."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    from workbench import engine, workers
    from worker_functions import explain_stalling_on

    seen: dict = {}

    def stalling(self, method, *args, progress, cancel, doing):
        self.explainer_calls += 1

        def report(fraction, message):
            if "stalling" in message and "asked" not in seen:
                seen["asked"], seen["pid"] = time.monotonic(), self.adapter.worker_pid
                get_script_run_ctx().script_requests.request_rerun(rerun_data())
            progress(fraction, message)

        try:
            return workers.call(self.adapter, explain_stalling_on, stall, method, *args, progress=report, cancel=cancel, doing=doing)
        except BaseException as error:
            seen["ended"], seen["error"] = time.monotonic(), error
            raise

    monkeypatch.setattr(engine.Engine, "_explain", stalling)
    return seen


def reaped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return True


@needs_zoo
def test_cancel_stops_the_method_in_its_worker_keeps_and_saves_the_finished_maps(explain_calls, monkeypatch):
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    from workbench import engine, workers

    at = start()
    load_zoo_and_sample(at)
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam", "saliency", "integrated_gradients"]).run()
    original = engine.Engine._explain
    # the rerun a click on Cancel asks for: this page again
    seen = interrupt_during(monkeypatch, "saliency", lambda: RerunData(page_script_hash=get_script_run_ctx().page_script_hash))
    at.button(key="explain_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert isinstance(seen.get("error"), workers.Cancelled), seen
    assert seen["ended"] - seen["asked"] < 2.0, f"the worker call ended {seen['ended'] - seen['asked']:.2f} s after cancel"
    assert reaped(seen["pid"]), "the cancelled worker is killed and waited for"

    notices = [w.value.replace("\\", "") for w in at.warning]
    assert len(notices) == 1 and "\n" not in notices[0], notices
    assert notices[0].startswith(
        "Cancelled: 1 of 3 methods finished; Saliency was running and Integrated Gradients did not start (not in this run). "
        "The finished maps are kept and saved as partial run "
    ), notices[0]
    ws = workspace(at)
    assert sorted(r.method for r in (ws.results.get(k) for k in list(ws.results._items)) if r) == ["gradcam"]
    assert partial_runs() == [("gradcam",)]
    assert not at.button(key="explain_run").disabled, "Run is enabled again"

    page(at, "pages/runs.py")
    assert any("partial (cancelled)" in t.value for t in at.text), [t.value for t in at.text]
    from workbench.store import RunStore

    with RunStore() as store:
        run_id = store.list_runs()[0].run_id
    at.switch_page("pages/shared.py")
    at.query_params["run"] = run_id
    at.run()
    assert any(w.value.replace("\\", "").startswith("Partial run. Cancelled: 1 of 3") for w in at.warning), [w.value for w in at.warning]

    monkeypatch.setattr(engine.Engine, "_explain", original)
    at.query_params.pop("run", None)
    page(at, "pages/explain.py")
    explain_calls.calls = 0
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert explain_calls.calls == 2, "the model works again on a fresh worker; only the two missing methods are computed"
    assert not at.warning and len(at.image) == 4, "the image and its three maps"
    assert partial_runs() == [("gradcam",)], "the complete run is saved as complete"


@needs_zoo
def test_leaving_the_page_mid_run_keeps_and_saves_the_finished_maps_and_says_so(monkeypatch):
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    def to_runs_page():
        pages = get_script_run_ctx().pages_manager.get_pages()
        runs = next(h for h, info in pages.items() if info.get("url_pathname") == "runs")
        return RerunData(page_script_hash=runs)

    at = start()
    load_zoo_and_sample(at)
    page(at, "pages/explain.py")
    at.multiselect(key="explain_methods").set_value(["gradcam", "saliency"]).run()
    seen = interrupt_during(monkeypatch, "saliency", to_runs_page)
    at.button(key="explain_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert seen["ended"] - seen["asked"] < 2.0
    assert at.title[0].value == "Runs", "the user is on the page they opened"
    toasts = [t.value.replace("\\", "") for t in at.toast]
    assert len(toasts) == 1 and toasts[0].startswith("Cancelled: 1 of 2 methods finished; Saliency was running"), toasts
    assert any("partial (cancelled)" in t.value for t in at.text)
    assert partial_runs() == [("gradcam",)]
    page(at, "pages/explain.py")
    assert any(w.value.replace("\\", "").startswith("Cancelled: 1 of 2 methods finished") for w in at.warning)
