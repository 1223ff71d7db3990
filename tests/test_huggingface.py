"""Hugging Face image classifiers: save_pretrained folders (tiny random configs) through the CLI and the app."""

from __future__ import annotations

import json
import zipfile
import io
from pathlib import Path

import numpy as np
import pytest

import hf_tiny
from workbench import analysis, intake
from workbench.cli import main
from workbench.errors import UnsafeModel, UnsupportedFormat
from workbench.images import image_to_png_bytes, load_image

ARCHITECTURES = list(hf_tiny.TINY)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: hf_tiny.save(name, root / name) for name in ARCHITECTURES}


def picture(size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pixels = rng.random((size, size, 3)).astype(np.float32)
    return load_image(image_to_png_bytes(pixels), f"random{seed}.png")


def test_every_listed_architecture_is_one_transformers_ships():
    from workbench.adapters.loading_hf import classifier_types

    shipped = classifier_types()
    for name in ("vit", "deit", "swin", "convnext", "resnet", "mobilenet_v2", "efficientnet", "regnet", "beit"):
        assert name in shipped and name in hf_tiny.TINY
    assert "timm_wrapper" not in shipped


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_loads_through_the_cli_and_every_method_gives_a_map(name, folders, capsys):
    folder = folders[name]
    assert main(["inspect", str(folder), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    size = hf_tiny.size_of(name)
    assert report["input_size"][:2] == [size, size]
    assert report["labels"] == ["cat", "dog", "bird"]
    assert report["default_cam_layer"]

    adapter = intake.load_model(intake.folder_zip(folder), filename=f"{name}.zip", device="cpu")
    assert adapter.preset.name == "model" and adapter.preset.scale[0] == pytest.approx(2.0)  # (x - 0.5) / 0.5
    comparison = analysis.run_comparison(
        adapter,
        [picture(size)],
        ["gradcam", "integrated_gradients", "shap"],
        params={"integrated_gradients": {"steps": 8}, "shap": {"max_evals": 40, "batch_size": 40}},
    )
    for result in comparison.results[0]:
        assert result.map.shape == (size, size)
        assert np.all(np.isfinite(result.map)), (name, result.method)
        assert np.ptp(result.map) > 0, (name, result.method, "constant map")


@pytest.mark.slow
def test_vit_integrated_gradients_complete_within_one_percent_at_64_steps(folders):
    adapter = intake.load_model(intake.folder_zip(folders["vit"]), filename="vit.zip", device="cpu")
    import explainers

    batch = adapter.prepare(np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32))
    for result in explainers.get("integrated_gradients").explain(adapter, batch, params={"steps": 64}):
        assert result.completeness_ratio is not None and result.completeness_ratio <= 0.01, result.completeness_ratio


def test_zip_with_a_top_folder_and_labels_and_preprocessing(folders):
    data = hf_tiny.zipped(folders["vit"], prefix="my-vit/")
    assert intake.sniff_model(data) == "huggingface"
    adapter = intake.load_model(data, filename="my-vit.zip", device="cpu")
    assert adapter.labels == ("cat", "dog", "bird")
    assert adapter.info().source_format == "huggingface"
    assert adapter.resize_mode == "stretch" and adapter.resample == "bilinear"
    np.testing.assert_allclose(adapter.preset.apply(np.full((1, 1, 3), 0.75, np.float32)), 0.5, rtol=1e-6)
    # the wrapped module is the transformers model: its logits are what the adapter returns
    import torch

    x = adapter.test_input(1)
    with torch.no_grad():
        expected = adapter.module.model(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2)).logits.numpy()
    np.testing.assert_allclose(adapter.predict(x), expected, rtol=1e-5, atol=1e-6)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_custom_code_pickles_and_mismatched_weights_are_refused(folders):
    folder = folders["vit"]
    config = json.loads((folder / "config.json").read_text())
    weights = (folder / "model.safetensors").read_bytes()
    custom = dict(config, auto_map={"AutoModelForImageClassification": "modeling_evil.EvilModel"})
    with pytest.raises(UnsafeModel, match="custom code.*modeling_evil"):
        intake.load_model(_zip({"config.json": json.dumps(custom), "model.safetensors": weights, "modeling_evil.py": b"import os"}), filename="evil.zip")
    with pytest.raises(UnsupportedFormat, match="without model.safetensors"):
        intake.load_model(_zip({"config.json": json.dumps(config), "pytorch_model.bin": b"\x80\x04pickle"}), filename="bin.zip")
    with pytest.raises(UnsupportedFormat, match="timm_wrapper"):
        intake.load_model(_zip({"config.json": json.dumps(dict(config, model_type="timm_wrapper")), "model.safetensors": weights}), filename="t.zip")
    with pytest.raises(UnsupportedFormat, match="not an image classifier"):
        intake.load_model(_zip({"config.json": json.dumps(dict(config, model_type="bert")), "model.safetensors": weights}), filename="b.zip")
    bigger = dict(config, hidden_size=32, intermediate_size=64)  # the file's 16-wide weights do not fit
    with pytest.raises(UnsupportedFormat, match="could not load mismatch.zip"):
        intake.load_model(_zip({"config.json": json.dumps(bigger), "model.safetensors": weights}), filename="mismatch.zip")
    deeper = dict(config, num_hidden_layers=3)  # transformers would fill the third layer with random weights
    with pytest.raises(UnsupportedFormat, match="does not fit config.json.*missing keys"):
        intake.load_model(_zip({"config.json": json.dumps(deeper), "model.safetensors": weights}), filename="deeper.zip")


@pytest.mark.slow
def test_every_architecture_through_the_apps_uploader(folders):
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "app.py"), default_timeout=180).run()
    at.switch_page("pages/models.py").run()
    for name in ARCHITECTURES:
        at.file_uploader(key="models_upload").set_value((f"{name}.zip", hf_tiny.zipped(folders[name]), "application/zip")).run()
        assert not at.exception and not at.error, (name, [e.value for e in at.error])
        ws = at.session_state["workspace"]
        assert ws.model.name == f"{name}.zip" and ws.model.adapter.info().source_format == "huggingface"
        assert ws.model.adapter.labels == ("cat", "dog", "bird")
        assert any("✓" in str(row) for row in at.dataframe[-1].value.to_dict("records")), (name, "default CAM layer marked")


@pytest.mark.parametrize(
    "pre, mode, fraction, resample",
    [
        ({"size": {"shortest_edge": 32}, "crop_pct": 0.875, "resample": 3}, "center-crop", 0.875, "bicubic"),  # ConvNeXt
        ({"size": {"shortest_edge": 36}, "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3},
         "center-crop", 32 / 36, "bicubic"),  # DeiT / ResNet processors
        ({"size": {"height": 32, "width": 32}, "resample": 2}, "stretch", 1.0, "bilinear"),  # ViT
    ],
)
def test_preprocessor_config_sets_size_resize_mode_crop_and_filter(folders, tmp_path, pre, mode, fraction, resample):
    import shutil

    folder = tmp_path / "convnext"
    shutil.copytree(folders["convnext"], folder)
    config = dict(hf_tiny.PREPROCESSOR, **pre)
    config.pop("size") if "size" not in pre else None
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    adapter = intake.load_model(intake.folder_zip(folder), filename="c.zip", device="cpu")
    assert adapter.input_size == (32, 32, 3)
    assert (adapter.resize_mode, adapter.resample) == (mode, resample)
    assert adapter.crop_fraction == pytest.approx(fraction)
    placement = analysis.placement_for(adapter, load_image(image_to_png_bytes(np.zeros((100, 200, 3), np.float32)), "w.png"))
    if mode == "center-crop":
        short = int(32 / fraction)  # transformers: int(size / crop_pct), the long side floored
        assert placement.resized == (short, int(short * 200 / 100))
        assert placement.offset == (-float((short - 32) // 2), -float((2 * short - 32) // 2))
    assert adapter.info().resize_mode == mode


def test_a_hugging_face_model_loads_after_an_onnx_conversion(folders):
    """ONNX conversion puts a torchvision stand-in in sys.modules, and transformers caches "torchvision is here"
    when asked while it is: a fresh process, as a server that converted an ONNX model first."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        "from workbench.adapters import loading_torch\n"
        "loading_torch.ensure_torchvision()\n"
        "from transformers.utils import import_utils\n"
        "assert import_utils.is_torchvision_available()\n"  # the stand-in answered, and the answer is cached
        "from workbench import intake\n"
        f"adapter = intake.load_model(intake.folder_zip({str(folders['vit'])!r}), filename='vit.zip', device='cpu')\n"
        "print(adapter.default_cam_layer())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=str(root))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("layernorm_before")
