"""python -m workbench evaluate: metrics.json in the issue's schema, masks found beside images or given with
--mask, maps read from an explain --out directory, and one-line refusals with exit status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import model_zoo
from workbench.cli import main

ROW_KEYS = {"image", "method", "metric", "value", "params", "curve", "random_baseline", "seconds", "evaluations"}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def images(tmp_path):
    """Two zoo samples copied with their <stem>_mask.png beside them."""
    paths = []
    for sample in (model_zoo.samples()[0], model_zoo.samples()[5]):
        image = tmp_path / sample.image.name
        shutil.copy(sample.image, image)
        shutil.copy(sample.mask, tmp_path / f"{image.stem}_mask.png")
        paths.append(image)
    return paths


def _rows(out_dir: Path) -> list[dict]:
    document = json.loads((out_dir / "metrics.json").read_text())
    assert set(document) == {"results"}
    for row in document["results"]:
        assert set(row) == ROW_KEYS
    return document["results"]


def test_evaluate_writes_metrics_json_with_masks_found_beside_the_images(capsys, tmp_path, images):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        capsys, "evaluate", "--model", "shapes-cnn-torch", "--image", images[0], "--image", images[1],
        "--method", "gradcam", "--method", "saliency",
        "--metric", "deletion", "--metric", "pointing_game", "--metric", "sparseness", "--metric", "randomisation",
        "--param", "deletion.steps=8", "--out", out,
    )
    assert code == 0, stderr
    rows = _rows(out)
    assert len(rows) == 2 * 2 * 4
    by = {(Path(r["image"]).name, r["method"], r["metric"]): r for r in rows}
    deletion = by[(images[0].name, "gradcam", "deletion")]
    assert deletion["params"] == {"steps": 8} and deletion["evaluations"] == 9 and len(deletion["curve"]) == 9
    assert deletion["curve"][0][0] == 0.0 and deletion["curve"][-1][0] == 1.0
    assert isinstance(deletion["random_baseline"], float) and deletion["seconds"] >= 0
    pointing = by[(images[1].name, "saliency", "pointing_game")]
    assert pointing["value"] in (0.0, 1.0) and pointing["curve"] is None, "the mask beside the image is used"
    randomisation = by[(images[0].name, "gradcam", "randomisation")]
    assert randomisation["random_baseline"] is None and len(randomisation["curve"]) == 5
    assert randomisation["value"] == randomisation["curve"][-1][1]
    assert by[(images[0].name, "gradcam", "sparseness")]["evaluations"] == 0
    assert "metrics.json" in stdout


def test_evaluate_maps_of_an_explain_directory_equal_computing_them(capsys, tmp_path, images):
    maps_dir, direct, from_maps = tmp_path / "maps", tmp_path / "direct", tmp_path / "from_maps"
    common = ["--model", "shapes-cnn-torch", "--image", images[0], "--image", images[1]]
    assert run_cli(capsys, "explain", *common, "--method", "gradcam", "--method", "integrated_gradients", "--out", maps_dir)[0] == 0
    metrics = ["--metric", "insertion", "--metric", "mask_energy", "--metric", "complexity", "--param", "insertion.steps=10"]
    code, _, stderr = run_cli(capsys, "evaluate", *common, "--maps", maps_dir, *metrics, "--out", from_maps)
    assert code == 0, stderr
    assert run_cli(capsys, "evaluate", *common, "--method", "gradcam", "--method", "integrated_gradients", *metrics, "--out", direct)[0] == 0
    a, b = _rows(from_maps), _rows(direct)
    assert [(r["image"], r["method"], r["metric"]) for r in a] == [(r["image"], r["method"], r["metric"]) for r in b]
    np.testing.assert_allclose([r["value"] for r in a], [r["value"] for r in b], atol=1e-6)
    # a map file changed on disk is what gets evaluated
    summary = json.loads((maps_dir / "summary.json").read_text())
    first = next(r for r in summary["results"] if r["method"] == "gradcam")
    np.save(first["file"], np.ones((64, 64), np.float32))
    assert run_cli(capsys, "evaluate", *common, "--maps", maps_dir, "--method", "gradcam", "--metric", "complexity", "--out", tmp_path / "ones")[0] == 0
    ones = _rows(tmp_path / "ones")
    assert ones[0]["value"] == pytest.approx(np.log(64 * 64))


def test_explicit_masks_in_image_order(capsys, tmp_path, images):
    full = tmp_path / "full.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(full)
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "evaluate", "--model", "shapes-cnn-torch", "--image", images[0], "--mask", full,
                              "--method", "saliency", "--metric", "mask_energy", "--out", out)
    assert code == 0, stderr
    assert _rows(out)[0]["value"] == pytest.approx(1.0), "the whole image is the mask: all positive mass is inside"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metric", "faithfulness"], "Unknown metric 'faithfulness'"),
        (["--metric", "deletion", "--param", "deletion.stepz=3"], "no parameter stepz"),
        (["--metric", "deletion", "--param", "steps=3"], "must look like METRIC.KEY=VALUE"),
        (["--metric", "deletion", "--mask", "a.png", "--mask", "b.png"], "give one per image"),
        (["--metric", "deletion", "--maps", "nowhere"], "no summary.json"),
    ],
)
def test_refusals_exit_2_with_one_line(capsys, tmp_path, images, argv, message):
    code, _, stderr = run_cli(capsys, "evaluate", "--model", "shapes-cnn-torch", "--image", images[0], "--method", "gradcam",
                              *argv, "--out", tmp_path / "out")
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr


def test_batch_jobs_score_their_maps_with_the_same_metrics(images):
    from workbench import batch, metrics
    from workbench.analysis import run_comparison
    from workbench.cli import read_images
    from workbench.errors import ParameterError
    from workbench.intake import load_zoo_model

    adapter = load_zoo_model("shapes-cnn-torch", device="cpu")
    comparison = run_comparison(adapter, read_images([str(p) for p in images], 3), ["gradcam", "saliency"])
    evaluate = batch.metric_evaluator(["deletion", "sparseness"], {"deletion": {"steps": "8"}}, seed=0)
    values = evaluate(adapter, comparison)
    direct = metrics.evaluate_comparison(adapter, comparison, ["deletion", "sparseness"], params={"deletion": {"steps": 8}})
    assert values[1][0] == {"deletion": direct.find(1, "gradcam", "deletion").value, "sparseness": direct.find(1, "gradcam", "sparseness").value}
    with pytest.raises(ParameterError, match="Unknown metric"):
        batch.metric_evaluator(["faithfulness"], {}, seed=0)


def test_export_of_a_stored_run_includes_its_evaluation(capsys, tmp_path, monkeypatch, images):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    from workbench import metrics
    from workbench.analysis import run_comparison
    from workbench.cli import read_images
    from workbench.intake import load_zoo_model
    from workbench.store import RunStore

    adapter = load_zoo_model("shapes-cnn-torch", device="cpu")
    comparison = run_comparison(adapter, read_images([str(images[0])], 3), ["gradcam"])
    evaluation = metrics.evaluate_comparison(adapter, comparison, ["sparseness", "deletion"], params={"deletion": {"steps": 4}})
    with RunStore() as store:
        run_id = store.save(comparison, model_bytes=None, image_bytes=None, model_name="shapes")
        store.save_evaluation(run_id, evaluation.to_dict())
    code, _, stderr = run_cli(capsys, "export", run_id, "--out", tmp_path / "export")
    assert code == 0, stderr
    provenance = json.loads((tmp_path / "export" / "provenance.json").read_text())
    assert provenance["evaluation"]["metrics"] == ["sparseness", "deletion"]
    assert "<h2>Evaluation</h2>" in (tmp_path / "export" / "report.html").read_text()
