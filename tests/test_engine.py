"""The engine: one typed request, normalised once, every model evaluation counted, provenance that
round-trips, and Re-run of CLI-saved runs for every way a model loads."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import model_zoo
from workbench import cli, engine, session, sharing
from workbench.errors import ParameterError
from workbench.images import load_image
from workbench.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def zoo_built() -> bool:
    return all(e.weights.is_file() for e in model_zoo.entries() if e.name.startswith("shapes-cnn")) and (
        model_zoo.SAMPLES_DIR / "index.json"
    ).is_file()


needs_zoo = pytest.mark.skipif(not zoo_built(), reason="model zoo not built (python -m model_zoo.train)")


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)


def record(**change) -> engine.ModelRecord:
    base = dict(name="m.pt", source="file", filename="m.pt", format="state_dict", fingerprint="f" * 64, preset="unit",
                architecture="shapes-cnn", input_size=None, labels=("a", "b"))
    return engine.ModelRecord(**{**base, **change})


def images(n=2) -> list[engine.ImageRef]:
    return [engine.ImageRef(f"im{i}.png", f"{i}" * 64) for i in range(n)]


# --------------------------------------------------------------------------- the request
def test_request_is_normalised_once_and_round_trips_through_json():
    request = engine.ExplainRequest.build(
        record(), images(), ["gradcam", "integrated_gradients"], {"integrated_gradients": {"steps": "16"}},
        targets=[1, 0], seed=3, background=images(1),
    )
    assert request.params["integrated_gradients"]["steps"] == 16, "coerced from the CLI's text"
    assert "layer" in request.params["gradcam"], "every parameter present, defaults filled"
    text = json.dumps(request.to_json())
    again = engine.ExplainRequest.from_json(json.loads(text))
    assert again == request and hash(again) == hash(request)
    assert again.key == request.key
    assert engine.ExplainRequest.build(record(), images(), ["gradcam"], seed=4).key != engine.ExplainRequest.build(
        record(), images(), ["gradcam"], seed=3
    ).key


def test_request_refusals_are_one_line():
    with pytest.raises(ParameterError, match="no parameter bogus"):
        engine.ExplainRequest.build(record(), images(), ["gradcam"], {"gradcam": {"bogus": 1}})
    with pytest.raises(ParameterError, match="Unknown method"):
        engine.ExplainRequest.build(record(), images(), ["nope"])
    with pytest.raises(ParameterError, match="at least one image"):
        engine.ExplainRequest.build(record(), [], ["gradcam"])
    with pytest.raises(ParameterError, match="every image, or for none"):
        engine.ExplainRequest.build(record(), images(), ["gradcam"], targets=[1, None])


def test_result_keys_depend_on_the_model_record_and_the_background():
    a = engine.ExplainRequest.build(record(), images(), ["expected_gradients"], background=images(1))
    for change in ({"preset": "imagenet"}, {"labels": ("x", "y")}, {"fingerprint": "e" * 64}, {"architecture": None}):
        b = dataclasses.replace(a, model=record(**change))
        assert b.result_key(0, "expected_gradients") != a.result_key(0, "expected_gradients"), change
    assert dataclasses.replace(a, model=record(name="renamed")).result_key(0, "expected_gradients") == a.result_key(
        0, "expected_gradients"
    ), "the display name decides nothing"
    c = dataclasses.replace(a, background=images(2))
    assert c.result_key(0, "expected_gradients") != a.result_key(0, "expected_gradients")


# --------------------------------------------------------------------------- counting
@needs_zoo
def test_every_model_evaluation_is_counted(monkeypatch):
    """No uncounted forward pass: the rows the model saw equal the evaluations the results report."""
    adapter = session.load_base(session.ModelKey(sha256="zoo:shapes-cnn-torch", filename="shapes-cnn-torch"), None)
    cls = type(adapter)
    seen = {"rows": 0}

    def counting(name, per_row):
        original = getattr(cls, name)

        def wrapper(self, batch, *args, **kwargs):
            seen["rows"] += per_row * len(batch)
            return original(self, batch, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    # the device primitives: explainers call them, and the numpy ones go through them
    counting("predict_on_device", 1)
    counting("input_gradients_on_device", 2)
    counting("layer_gradients_on_device", 2)
    counting("layer_activations_on_device", 1)
    pictures = [load_image(s.image.read_bytes(), s.image.name) for s in model_zoo.samples()[:2]]
    request = engine.ExplainRequest.build(
        engine.ModelRecord.of(adapter, source="zoo", filename="shapes-cnn-torch"),
        [engine.ImageRef(p.name, p.sha256) for p in pictures],
        ["gradcam", "saliency", "integrated_gradients"],
        {"integrated_gradients": {"steps": 8}},
    )
    comparison = engine.Engine(adapter, {p.sha256: p for p in pictures}, forward_seconds=0.001).run(request)
    reported = sum(r.evaluations for row in comparison.results for r in row)
    assert seen["rows"] == reported
    assert comparison.request == request


# --------------------------------------------------------------------------- Re-run of CLI-saved runs
@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """The zoo's shapes CNN in every format the workbench loads (made in a separate interpreter)."""
    folder = tmp_path_factory.mktemp("models")
    script = textwrap.dedent(
        f"""
        import shutil, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        import torch, keras
        from safetensors.torch import load_file
        import model_zoo
        out = Path({str(folder)!r})
        torch_entry, keras_entry = model_zoo.get("shapes-cnn-torch"), model_zoo.get("shapes-cnn-keras")
        shutil.copy(torch_entry.weights, out / "shapes.safetensors")
        shutil.copy(keras_entry.weights, out / "shapes.keras")
        keras.models.load_model(keras_entry.weights).save(out / "shapes.h5")
        module = model_zoo.build_torch("shapes-cnn")
        module.load_state_dict(load_file(torch_entry.weights))
        module.eval()
        torch.save(module.state_dict(), out / "shapes.pt")
        torch.onnx.export(module, torch.zeros(1, 3, 64, 64), out / "shapes.onnx", dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={{"x": {{0: "n"}}}})
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=600, capture_output=True)
    return {p.suffix[1:]: p for p in folder.iterdir()}


PATHS = {
    "zoo": ("zoo", []),
    "keras": ("keras", []),
    "h5": ("h5", []),
    "onnx": ("onnx", []),
    "state_dict": ("pt", ["--architecture", "shapes-cnn"]),
    "safetensors": ("safetensors", ["--architecture", "shapes-cnn"]),
}


@needs_zoo
@pytest.mark.slow
@pytest.mark.parametrize("path", list(PATHS))
def test_rerun_of_a_cli_saved_run_for_every_loading_path(path, model_files, tmp_path, capsys):
    suffix, extra = PATHS[path]
    spec = "shapes-cnn-torch" if path == "zoo" else str(model_files[suffix])
    sample = str(model_zoo.samples()[0].image)
    out = tmp_path / "out"
    code = cli.main(["explain", "--model", spec, *extra, "--image", sample, "--method", "gradcam", "--method", "saliency",
                     "--out", str(out), "--save"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    written = engine.ExplainRequest.from_json(summary["request"])
    assert written.model.source == ("zoo" if path == "zoo" else "file")
    assert written.model.architecture == ("shapes-cnn" if path in ("state_dict", "safetensors") else None)

    with RunStore() as store:
        saved = store.load(summary["run_id"])
        assert saved.request == written, "the stored provenance is the request the CLI ran"
        ws = session.Workspace()
        rerun = sharing.reload(ws, summary["run_id"], store, loader=session.load_in_worker)
    assert rerun.saved == written
    assert rerun.request.model == written.model, "the model loads back exactly as the CLI loaded it"
    assert (rerun.request.methods, rerun.request.targets, rerun.request.seed) == (written.methods, written.targets, written.seed)
    assert [im.name for im in rerun.request.images] == [im.name for im in written.images]
    work = session.plan(ws, rerun.record, list(rerun.entries), rerun.methods, rerun.params, rerun.seed)
    again = session.run(ws, rerun.record, list(rerun.entries), work, rerun.seed)
    for j, method in enumerate(saved.methods):
        assert np.allclose(again.results[0][j].map, saved.results[0][j].map, atol=1e-5), method
