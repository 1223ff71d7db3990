"""The command line: inspect, predict, explain (+ save/export), runs, cleanup; refusals exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
import model_zoo


def zoo_ready(name):
    try:
        return model_zoo.get(name).weights.is_file()
    except KeyError:
        return False


needs_zoo = pytest.mark.skipif(not zoo_ready("shapes-cnn-torch"), reason="zoo weights not built (python -m model_zoo.train)")


@pytest.fixture(scope="module")
def sample_paths():
    samples = model_zoo.samples()
    return [str(samples[0].image), str(samples[3].image)]


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_zoo
def test_inspect_json(capsys):
    code, out, _ = run_cli(capsys, "inspect", "shapes-cnn-torch", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["framework"] == "pytorch"
    assert report["input_size"] == [64, 64, 3]
    assert report["classes"] == 6
    assert report["output"] == "logits"
    assert report["default_cam_layer"] in [layer["name"] for layer in report["layers"]]


@needs_zoo
def test_inspect_text_marks_default_layer(capsys):
    code, out, _ = run_cli(capsys, "inspect", "shapes-cnn-keras")
    assert code == 0
    assert "<- default CAM layer" in out
    assert "keras" in out


@needs_zoo
def test_predict_json_shape_and_order(capsys, sample_paths):
    code, out, _ = run_cli(capsys, "predict", "shapes-cnn-torch", *sample_paths, "--json")
    assert code == 0
    report = json.loads(out)
    assert [item["image"] for item in report] == sample_paths
    for item in report:
        scores = [p["score"] for p in item["predictions"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert set(item["predictions"][0]) == {"index", "label", "score"}
    # the zoo model gets its own samples right
    labels = model_zoo.ARCHITECTURES["shapes-cnn"].labels
    samples = model_zoo.samples()
    assert report[0]["predictions"][0]["label"] == labels[samples[0].label]


@needs_zoo
def test_predict_with_labels_file(capsys, tmp_path, sample_paths):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"shape-{k}" for k in range(6)))
    code, out, _ = run_cli(capsys, "predict", "shapes-cnn-keras", sample_paths[0], "--labels", str(labels), "--json")
    assert code == 0
    assert json.loads(out)[0]["predictions"][0]["label"].startswith("shape-")


@needs_zoo
def test_explain_writes_maps_and_summary(capsys, tmp_path, sample_paths, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys,
        "explain", "--model", "shapes-cnn-torch",
        "--image", sample_paths[0], "--image", sample_paths[1],
        "--method", "gradcam", "--method", "integrated_gradients",
        "--param", "integrated_gradients.steps=16",
        "--out", str(out_dir), "--save", "--export",
    )
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert len(summary["results"]) == 4
    required = {"image", "method", "file", "params", "target", "target_score", "reference_score", "completeness_gap",
                "layer", "seconds", "evaluations", "device"}
    for row in summary["results"]:
        assert required <= set(row)
        arr = np.load(row["file"])
        assert arr.shape == (64, 64) and arr.dtype == np.float32
        if row["method"] == "gradcam":
            assert row["layer"] and row["reference_score"] is None and row["completeness_gap"] is None
        else:
            assert row["params"]["steps"] == 16 and row["completeness_gap"] is not None
    assert summary["versions"]["torch"].startswith("2.13")
    assert "run=" in summary["share_link"] and "share link:" in out
    for name in ("grid.png", "attributions.npz", "provenance.json", "report.html"):
        assert (out_dir / name).is_file()
    # stored names are base names: the share page and the report never show a local directory
    from workbench.store import RunStore

    with RunStore() as store:
        stored = store.load(summary["run_id"])
    assert [im.name for im in stored.images] == [Path(p).name for p in sample_paths]
    assert str(Path(sample_paths[0]).parent) not in (out_dir / "report.html").read_text()
    stem = Path(sample_paths[0]).stem
    assert (out_dir / f"{stem}__gradcam.npy").is_file()
    # the stored run lists and exports again
    code, out, _ = run_cli(capsys, "runs", "--json")
    runs = json.loads(out)
    assert runs and runs[0]["run_id"] == summary["run_id"]
    code, out, _ = run_cli(capsys, "export", summary["run_id"], "--out", str(tmp_path / "again"))
    assert code == 0 and (tmp_path / "again" / "report.html").is_file()


@needs_zoo
def test_explain_bad_param_is_a_refusal(capsys, tmp_path, sample_paths):
    code, _, err = run_cli(
        capsys, "explain", "--model", "shapes-cnn-torch", "--image", sample_paths[0], "--method", "gradcam",
        "--param", "gradcam.nope=1", "--out", str(tmp_path),
    )
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_unknown_method_and_model_are_refusals(capsys, tmp_path):
    code, _, err = run_cli(capsys, "explain", "--model", "x", "--image", "y", "--method", "nope", "--out", str(tmp_path))
    assert code == 2 and "Unknown method" in err
    code, _, err = run_cli(capsys, "inspect", "no-such-model")
    assert code == 2 and "neither a file nor a zoo model" in err


def test_refused_file_exits_2_with_one_line(tmp_path):
    bogus = tmp_path / "model.pth"
    bogus.write_bytes(b"\x00\x01not a model" * 10)
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "inspect", str(bogus)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr


def one_line_refusal(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_a_model_config_nested_5000_deep_is_refused_in_one_line(capsys, tmp_path):
    import h5py

    path = tmp_path / "deep.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = '{"class_name": "Sequential", "config": ' + "[" * 5000 + "]" * 5000 + "}"
        handle.create_dataset("model_weights/w", data=np.zeros(3, np.float32))
    line = one_line_refusal(*run_cli(capsys, "inspect", str(path))[::2])
    assert "nested too deeply" in line


def test_a_damaged_run_database_is_one_line(capsys, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "workbench.sqlite3").write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(data))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    line = one_line_refusal(*run_cli(capsys, "runs")[::2])
    assert "run database" in line and "workbench.sqlite3" in line


def test_a_data_directory_that_is_a_file_is_one_line(capsys, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file")
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(not_a_folder))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    line = one_line_refusal(*run_cli(capsys, "runs")[::2])
    assert "is a file, not a folder" in line and "WORKBENCH_DATA_DIR" in line
    line = one_line_refusal(*run_cli(capsys, "cleanup", "--days", "3")[::2])
    assert "is a file, not a folder" in line


def test_progress_bars_write_to_the_stderr_of_the_moment(monkeypatch):
    """Not to the one there was when the module was imported: a test's captured stream (closed since) made a later
    command fail with 'I/O operation on closed file' depending on which test imported the CLI first."""
    import io

    from workbench.batch import ProgressLine
    from workbench.cli import ProgressBar

    replaced = io.StringIO()
    monkeypatch.setattr(sys, "stderr", replaced)
    assert ProgressBar().stream is replaced and ProgressLine().stream is replaced
