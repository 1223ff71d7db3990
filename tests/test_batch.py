"""Batch jobs: the same maps as ``explain``, resumable after a kill, failures recorded, Ray and local alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import model_zoo
from workbench import batch, cli

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ["--param", "integrated_gradients.steps=16"]
METHODS = ["--method", "gradcam", "--method", "integrated_gradients"]


def write_images(folder: Path, n: int, seed: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pixels, _, _ = model_zoo.shapes.generate(n, seed=seed, size=64)
    paths = []
    for i, image in enumerate(pixels):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def run_cli(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


def explain_maps(tmp_path: Path, model: str, images: list[Path]) -> dict[str, np.ndarray]:
    out = tmp_path / "explain"
    args = ["explain", "--model", model, *METHODS, *PARAMS, "--out", out]
    for image in images:
        args += ["--image", image]
    assert run_cli(*args) == 0
    summary = json.loads((out / "summary.json").read_text())
    return {f"{Path(r['image']).stem}__{r['method']}": np.load(r["file"]) for r in summary["results"]}


def assert_same_maps(out: Path, expected: dict[str, np.ndarray]) -> None:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert {f"{r['key']}__{r['method']}" for r in rows} == set(expected)
    for key, reference in expected.items():
        np.testing.assert_allclose(np.load(out / "maps" / f"{key}.npy"), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["shapes-cnn-torch", "shapes-cnn-keras"])
def test_local_pool_gives_the_maps_explain_gives(tmp_path, model):
    images = write_images(tmp_path / "images", 3)
    expected = explain_maps(tmp_path, model, images)
    out = tmp_path / "batch"
    assert run_cli("batch", "--model", model, "--images", tmp_path / "images", *METHODS, *PARAMS, "--chunk-size", 2, "--out", out) == 0
    assert_same_maps(out, expected)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images_explained"], summary["images_failed"], summary["results"]) == (3, 0, 6)
    assert summary["throughput_images_per_second"] > 0
    # per-class aggregates cover every explained image once
    assert sum(entry["images"] for entry in summary["per_class"].values()) == 3


@pytest.mark.slow
def test_ray_local_gives_the_maps_explain_gives(tmp_path):
    import ray

    images = write_images(tmp_path / "images", 3)
    try:
        for model in ("shapes-cnn-torch", "shapes-cnn-keras"):
            expected = explain_maps(tmp_path / model, model, images)
            out = tmp_path / model / "batch"
            code = run_cli("batch", "--model", model, "--images", tmp_path / "images", *METHODS, *PARAMS, "--chunk-size", 2,
                           "--ray", "local", "--out", out)
            assert code == 0
            assert_same_maps(out, expected)
            assert json.loads((out / "summary.json").read_text())["engine"] == "ray"
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_bad_image_is_recorded_and_the_job_goes_on(tmp_path, capsys):
    write_images(tmp_path / "images", 100)
    (tmp_path / "images" / "img_050_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    out = tmp_path / "batch"
    assert run_cli("batch", "--model", "shapes-cnn-torch", "--images", tmp_path / "images", "--method", "gradcam",
                   "--chunk-size", 16, "--out", out) == 0
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "results.parquet").to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(ok) == 100 and len({r["path"] for r in ok}) == 100
    assert [Path(r["path"]).name for r in failed] == ["img_050_broken.png"]
    assert failed[0]["error"] and "\n" not in failed[0]["error"]
    assert "failed: " in capsys.readouterr().out


@pytest.mark.slow
def test_killed_job_resumes_with_every_image_exactly_once(tmp_path):
    images = write_images(tmp_path / "images", 24)
    out = tmp_path / "batch"
    argv = [sys.executable, "-m", "workbench", "batch", "--model", "shapes-cnn-torch", "--images", str(tmp_path / "images"),
            *METHODS, *PARAMS, "--chunk-size", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(list((out / "parts").glob("*.json"))) < 2 and job.poll() is None:
            time.sleep(0.2)
        assert job.poll() is None, "the job finished before it could be interrupted"
        os.killpg(job.pid, signal.SIGKILL)  # the driver and its workers, mid-way
        job.wait(30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    written = {r["path"] for r in batch.read_parts(out)}
    assert 0 < len(written) < len(images)
    # without --resume the folder is refused rather than mixed
    assert run_cli("batch", "--model", "shapes-cnn-torch", "--images", tmp_path / "images", *METHODS, *PARAMS, "--out", out) == 2
    assert run_cli("batch", "--model", "shapes-cnn-torch", "--images", tmp_path / "images", *METHODS, *PARAMS,
                   "--chunk-size", "4", "--out", out, "--resume") == 0
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "results.parquet").to_pylist()
    pairs = [(r["path"], r["method"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == 2 * len(images)
    assert {Path(p).name for p, _ in pairs} == {p.name for p in images}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_explained"] == len(images)
    assert summary["images_this_run"] == len(images) - len(written)


def test_image_lists_skip_masks_and_name_collisions_apart(tmp_path):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 1)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a" / "img_000_mask.png")
    found = batch.list_images(str(tmp_path))
    assert [Path(p).relative_to(tmp_path).as_posix() for p in found] == ["a/img_000.png", "a/img_001.png", "b/img_000.png"]
    assert batch.image_keys(found) == ["a-img_000", "a-img_001", "b-img_000"]
    assert batch.image_keys(found[:2]) == ["img_000", "img_001"]
    (tmp_path / "list.txt").write_text("a/img_001.png\n# a comment\n\nb/img_000.png\n")
    assert [Path(p).name for p in batch.list_images(str(tmp_path / "list.txt"))] == ["img_001.png", "img_000.png"]
    assert len(batch.list_images(str(tmp_path / "*" / "img_00[01].png"))) == 3
    with pytest.raises(Exception, match="No images found"):
        batch.list_images(str(tmp_path / "nothing-here"))


def test_bad_requests_are_one_line_refusals(tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    assert run_cli("batch", "--model", "shapes-cnn-torch", "--images", tmp_path / "none", "--method", "gradcam", "--out", tmp_path / "o") == 2
    assert run_cli("batch", "--model", "shapes-cnn-torch", "--images", tmp_path / "images", "--method", "nope", "--out", tmp_path / "o") == 2
    assert run_cli("batch", "--model", "shapes-cnn-torch", "--images", tmp_path / "images", "--method", "gradcam",
                   "--workers", "0", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)


@pytest.mark.slow
def test_the_app_opens_a_batch_result(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    write_images(tmp_path / "images", 4)
    out = batch.batch_root() / "val-run"
    assert run_cli("batch", "--model", "shapes-cnn-torch", "--images", tmp_path / "images", *METHODS, *PARAMS, "--out", out) == 0
    result = batch.open_result("val-run")
    assert len(result.table()) == 8 and result.methods == ["gradcam", "integrated_gradients"]
    one_class = result.classes[0]
    filtered = result.table(classes=[one_class], methods=["gradcam"])
    assert filtered and all(r["class"] == one_class and r["method"] == "gradcam" for r in filtered)
    image, row = result.overlay(filtered[0]["key"], "gradcam")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and row["target_label"] == one_class
    with pytest.raises(Exception, match="No batch result"):
        batch.open_result("../../etc")

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/batch.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="batch_folder").value == "val-run"
    table = at.dataframe[0].value
    assert len(table) == 8 and set(table["method"]) == {"gradcam", "integrated_gradients"}
    at.multiselect(key="batch_methods").set_value(["gradcam"]).run()
    assert not at.exception
    assert set(at.dataframe[0].value["method"]) == {"gradcam"} and len(at.dataframe[0].value) == 4


@pytest.mark.slow
def test_batch_metrics_use_the_masks_beside_the_images(tmp_path):
    import shutil

    import pyarrow.parquet as pq

    folder = tmp_path / "images"
    folder.mkdir()
    for sample in model_zoo.samples()[:2]:
        for name in (f"{sample.name}.png", f"{sample.name}_mask.png"):
            shutil.copy(ROOT / "model_zoo" / "samples" / name, folder / name)
    write_images(tmp_path / "unmasked", 1)
    shutil.copy(tmp_path / "unmasked" / "img_000.png", folder / "img_000.png")
    out = tmp_path / "batch"
    assert run_cli("batch", "--model", "shapes-cnn-torch", "--images", folder, "--method", "gradcam", "--metric", "pointing_game",
                   "--metric", "sparseness", "--out", out) == 0
    rows = {r["key"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert len(rows) == 3  # the masks are not explained as images
    for sample in model_zoo.samples()[:2]:
        assert rows[sample.name]["metric.pointing_game"] in (0.0, 1.0)
        assert 0.0 < rows[sample.name]["metric.sparseness"] < 1.0
    assert rows["img_000"]["metric.pointing_game"] is None  # no mask, no localisation value
    summary = json.loads((out / "summary.json").read_text())
    means = [m["gradcam"]["mean_sparseness"] for m in (c["methods"] for c in summary["per_class"].values())]
    assert len(means) >= 1 and all(0.0 < v < 1.0 for v in means)
