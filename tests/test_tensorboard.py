"""A saved run written as TensorBoard event files and read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import model_zoo
from workbench import tensorboard
from workbench.analysis import run_comparison
from workbench.cli import main
from workbench.images import load_image
from workbench.intake import load_zoo_model
from workbench.metrics import Evaluation, MetricResult
from workbench.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (model_zoo.SAMPLES_DIR / "index.json").is_file(), reason="model zoo not built (python -m model_zoo.train)"
)
METHODS = ("gradcam", "integrated_gradients")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run of shapes-cnn-torch on two samples x two methods, saved with its images in its own store."""
    data_dir = tmp_path_factory.mktemp("data")
    patch = pytest.MonkeyPatch()
    patch.setenv("WORKBENCH_DATA_DIR", str(data_dir))
    patch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    adapter = load_zoo_model("shapes-cnn-torch")
    paths = [s.image for s in model_zoo.samples()[:2]]
    images = [load_image(p.read_bytes(), p.name) for p in paths]
    comparison = run_comparison(adapter, images, METHODS, params={"integrated_gradients": {"steps": 16}})
    results = tuple(
        MetricResult(image=im.name, image_index=i, method=m, metric="deletion", value=0.1 * (i + 1) + 0.01 * j, params={}, random_baseline=0.5 + i)
        for i, im in enumerate(comparison.images)
        for j, m in enumerate(METHODS)
    )
    evaluation = Evaluation(METHODS, ("deletion",), tuple(im.name for im in comparison.images), {"deletion": {}}, 0, results)
    with RunStore() as store:
        run_id = store.save(comparison, model_bytes=None, image_bytes=[p.read_bytes() for p in paths], model_name=adapter.name)
        store.save_evaluation(run_id, evaluation.to_dict())
        comparison = store.load(run_id)
        evaluation = Evaluation.from_dict(store.load_evaluation(run_id)[0])
        layers, weights = tensorboard.run_layer_report(store, run_id, comparison)
    yield {"run_id": run_id, "comparison": comparison, "layers": layers, "weights": weights, "evaluation": evaluation}
    patch.undo()


@pytest.fixture(scope="module")
def accumulator(saved, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tb")
    path = tensorboard.write_run(
        saved["comparison"], logdir, layers=saved["layers"], weights=saved["weights"], evaluation=saved["evaluation"]
    )
    assert path.parent == logdir and path.name == f"run-{saved['run_id'][:12]}"
    return tensorboard.read_back(path)


def test_one_image_per_image_and_method(saved, accumulator):
    comparison = saved["comparison"]
    tags = accumulator.Tags()["images"]
    names = tensorboard.image_tags(comparison)
    expected = {f"{n}/{m}" for n in names for m in METHODS}
    assert {t for t in tags if not t.endswith("/raw")} == expected
    assert {t for t in tags if t.endswith("/raw")} == {f"{t}/raw" for t in expected}
    for tag in tags:
        events = accumulator.Images(tag)
        assert len(events) == 1
        assert (events[0].height, events[0].width) == comparison.images[0].pixels.shape[:2]
        assert events[0].encoded_image_string.startswith(b"\x89PNG")


def test_scalars_carry_the_run_values(saved, accumulator):
    comparison = saved["comparison"]
    scalars = set(accumulator.Tags()["scalars"])
    for name, row in zip(tensorboard.image_tags(comparison), comparison.results):
        for result in row:
            for key in ("seconds", "evaluations", "target_score"):
                (event,) = accumulator.Scalars(f"{key}/{name}/{result.method}")
                assert event.value == pytest.approx(getattr(result, key), rel=1e-6)
            gap = f"completeness_gap/{name}/{result.method}"
            if result.completeness_gap is None:
                assert gap not in scalars
            else:
                assert accumulator.Scalars(gap)[0].value == pytest.approx(result.completeness_gap, rel=1e-6)
        assert f"agreement_spearman/{name}/gradcam_vs_integrated_gradients" in scalars
    assert any(r.completeness_gap is not None for row in comparison.results for r in row), "IG reports its gap"
    names = tensorboard.image_tags(comparison)
    for result in saved["evaluation"].results:
        (event,) = accumulator.Scalars(f"metrics/deletion/{names[result.image_index]}/{result.method}")
        assert event.value == pytest.approx(result.value)
        assert accumulator.Scalars(f"metrics/deletion/{names[result.image_index]}/random")[0].value == pytest.approx(result.random_baseline)


def test_layer_histograms_and_curves_have_the_report_values(saved, accumulator):
    report = saved["layers"]
    assert report is not None and report.targets == tuple(im.target for im in saved["comparison"].images)
    for row in report.rows:
        (event,) = accumulator.Histograms(f"layers/{tensorboard.tag_part(row.name)}/channel_mean")
        means = np.asarray(report.channel_means[row.name], dtype=np.float64)
        assert event.histogram_value.num == means.size
        assert event.histogram_value.sum == pytest.approx(means.sum(), rel=1e-5, abs=1e-6)
        assert event.histogram_value.min == pytest.approx(means.min(), rel=1e-6)
    depth = accumulator.Scalars("layer_statistics/grad_norm")
    assert [e.step for e in depth] == [row.order for row in report.rows]
    assert [e.value for e in depth] == pytest.approx([row.grad_norm for row in report.rows], rel=1e-6)
    for row in saved["weights"]:
        (event,) = accumulator.Histograms(f"weights/{tensorboard.tag_part(row.name)}")
        assert event.histogram_value.num == row.count
        assert list(event.histogram_value.bucket) == row.histogram.tolist()
    assert {r.name for r in saved["weights"]} == {"conv1", "conv2", "conv3", "conv4", "fc"}


def test_provenance_is_text(saved, accumulator):
    (event,) = accumulator.Tensors("provenance/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    document = json.loads(text.split("```json\n", 1)[1].rsplit("\n```", 1)[0])
    assert document["run_id"] == saved["run_id"] and document["summary"]["methods"] == list(METHODS)
    assert document["evaluation"]["metrics"] == ["deletion"]


@pytest.mark.slow
def test_command_and_the_apps_zip(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(Path(RunStore().data_dir)))
    assert main(["tensorboard", saved["run_id"], "--logdir", str(tmp_path / "logs"), "--no-layers"]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    written = tensorboard.read_back(tmp_path / "logs" / f"run-{saved['run_id'][:12]}")
    assert len(written.Tags()["images"]) == 8 and not written.Tags()["histograms"]
    assert "metrics/deletion/" + tensorboard.image_tags(saved["comparison"])[0] + "/gradcam" in written.Tags()["scalars"]
    assert main(["tensorboard", "nosuchrun", "--logdir", str(tmp_path / "x")]) == 2

    data = tensorboard.event_zip(saved["run_id"], layers=False)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "unzipped")
    assert len(names) == 1 and names[0].startswith(f"run-{saved['run_id'][:12]}/events.out.tfevents.")
    assert len(tensorboard.read_back(tmp_path / "unzipped" / names[0].split("/")[0]).Tags()["images"]) == 8


def test_the_module_imports_no_framework():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, workbench.tensorboard; print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
