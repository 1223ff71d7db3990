"""Aspect ratio: stretch / centre-crop / letterbox, overlays on the original image, maps mapped back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import explainers
from workbench import analysis, export
from workbench.adapters.torch_adapter import TorchAdapter
from workbench.images import image_to_png_bytes, load_image
from workbench.resize import place, to_original

MODEL = 32
ROW, COL = 20, 9  # the one model pixel the model looks at


class OnePixel(torch.nn.Module):
    """Class 0's score is 3 x the red value of model pixel (ROW, COL); class 1's is its negative."""

    def forward(self, x):
        v = x[:, 0, ROW, COL] * 3.0
        return torch.stack([v, -v], dim=1)


def one_pixel_adapter(mode: str) -> TorchAdapter:
    adapter = TorchAdapter(OnePixel(), name="one-pixel", source_format="test", input_size=(MODEL, MODEL, 3), device="cpu")
    return adapter.view(resize=mode)


def wide_image():
    rng = np.random.default_rng(0)
    pixels = rng.random((100, 200, 3)).astype(np.float32)  # H 100, W 200
    return load_image(image_to_png_bytes(pixels), "wide.png")


def tent_inverse(model_map, placement):
    """Independently of workbench.resize: original pixel (i, j) lands at model position p = (i + .5) * s + o - .5;
    a bilinear read there weighs model pixel k by max(0, 1 - |p - k|) (positions outside the input read 0)."""
    out = np.zeros(placement.original, dtype=np.float64)
    for axis_i in range(placement.original[0]):
        py = (axis_i + 0.5) * placement.scale[0] + placement.offset[0] - 0.5
        if not -0.5 <= py <= MODEL - 0.5:
            continue
        py = min(max(py, 0.0), MODEL - 1.0)
        wy = np.maximum(0.0, 1.0 - np.abs(py - np.arange(MODEL)))
        for axis_j in range(placement.original[1]):
            px = (axis_j + 0.5) * placement.scale[1] + placement.offset[1] - 0.5
            if not -0.5 <= px <= MODEL - 0.5:
                continue
            px = min(max(px, 0.0), MODEL - 1.0)
            wx = np.maximum(0.0, 1.0 - np.abs(px - np.arange(MODEL)))
            out[axis_i, axis_j] = wy @ model_map @ wx
    return out


def test_placements_of_a_200x100_image():
    crop = place((100, 200), (MODEL, MODEL), "center-crop")
    assert crop.resized == (32, 64) and crop.offset == (0.0, -16.0)
    box = place((100, 200), (MODEL, MODEL), "letterbox")
    assert box.resized == (16, 32) and box.offset == (8.0, 0.0)
    stretch = place((100, 200), (MODEL, MODEL), "stretch")
    assert stretch.scale == (0.32, 0.16) and stretch.offset == (0.0, 0.0)


@pytest.mark.parametrize("mode", ["letterbox", "center-crop", "stretch"])
def test_map_mapped_back_equals_the_inverse_transform_and_the_overlay_has_the_originals_size(mode, tmp_path):
    adapter = one_pixel_adapter(mode)
    image = wide_image()
    comparison = analysis.run_comparison(adapter, [image], ["saliency"], targets=[0])
    explained, result = comparison.images[0], comparison.results[0][0]
    placement = analysis.placement_for(adapter, image)
    assert dict(explained.placement)["mode"] == mode
    # the model-resolution map is still there, raw: saliency of a one-pixel model is that pixel
    expected_raw = np.zeros((MODEL, MODEL), np.float32)
    expected_raw[ROW, COL] = 3.0
    np.testing.assert_allclose(result.map, expected_raw, atol=1e-6)
    # mapped back onto the 200 x 100 original
    pixels, mapped = explained.display(result.map)
    assert pixels.shape == (100, 200, 3) and mapped.shape == (100, 200)
    np.testing.assert_allclose(pixels, image.pixels, atol=1e-6)
    np.testing.assert_allclose(mapped, tent_inverse(result.map, placement), rtol=1e-5, atol=1e-6)
    # where the map peaks on the original is where that model pixel came from
    peak = np.unravel_index(np.argmax(mapped), mapped.shape)
    centre_y = (peak[0] + 0.5) * placement.scale[0] + placement.offset[0]
    centre_x = (peak[1] + 0.5) * placement.scale[1] + placement.offset[1]
    assert abs(centre_y - (ROW + 0.5)) <= max(0.5, placement.scale[0]) and abs(centre_x - (COL + 0.5)) <= max(0.5, placement.scale[1])
    # the model really saw the original pixel the placement says: its score is 3 x the red value there
    model_pixels = analysis.to_model_pixels(adapter, image)
    assert result.target_score == pytest.approx(3.0 * model_pixels[ROW, COL, 0], rel=1e-5)
    # overlays in the export grid and the npz are drawn on the original
    from PIL import Image
    import io

    data = np.load(io.BytesIO(export.attributions_npz(comparison)), allow_pickle=False)
    assert data["0__original"].shape == (100, 200, 3) and data["0__saliency__map_original"].shape == (100, 200)
    layout = export.grid_layout(comparison)
    assert layout.cell_size[0] * 2 == layout.cell_size[1]  # the original's 1:2 aspect ratio
    assert Image.open(io.BytesIO(export.grid_png(comparison))).size[0] > 0


def test_letterbox_pads_and_crop_drops_the_sides():
    image = wide_image()
    box = analysis.to_model_pixels(one_pixel_adapter("letterbox"), image)
    assert box.shape == (MODEL, MODEL, 3)
    assert np.all(box[:8] == 0) and np.all(box[24:] == 0) and box[8:24].std() > 0
    crop_placement = place((100, 200), (MODEL, MODEL), "center-crop")
    mapped = to_original(np.ones((MODEL, MODEL), np.float32), crop_placement)
    # the left and right quarters of the original were cropped away: nothing maps back onto them
    assert np.all(mapped[:, :45] == 0) and np.all(mapped[:, 155:] == 0) and np.all(mapped[:, 55:145] > 0.99)


def test_cli_writes_maps_on_the_original_and_the_mode(tmp_path, capsys):
    import onnx  # noqa: F401  (the CLI reads the model from a file: an ONNX export of the one-pixel model)

    from workbench.cli import main

    path = tmp_path / "one_pixel.onnx"
    torch.onnx.export(OnePixel(), (torch.rand(1, 3, MODEL, MODEL),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, opset_version=17)
    image = tmp_path / "wide.png"
    image.write_bytes(image_to_png_bytes(wide_image().pixels))
    out = tmp_path / "out"
    code = main(["explain", "--model", str(path), "--image", str(image), "--method", "saliency", "--target", "0",
                 "--resize", "letterbox", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    row = json.loads((out / "summary.json").read_text())["results"][0]
    assert row["placement"]["mode"] == "letterbox"
    assert np.load(row["file"]).shape == (MODEL, MODEL)
    assert np.load(row["file_original"]).shape == (100, 200)


def test_saved_run_keeps_the_original_and_the_placement(tmp_path, monkeypatch):
    from workbench import store

    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    comparison = analysis.run_comparison(one_pixel_adapter("center-crop"), [wide_image()], ["saliency"], targets=[0])
    with store.RunStore() as runs:
        run_id = runs.save(comparison, model_bytes=None, image_bytes=None, model_name="one-pixel")
        loaded = runs.load(run_id)
    image = loaded.images[0]
    assert image.original.shape == (100, 200, 3) and dict(image.placement)["mode"] == "center-crop"
    np.testing.assert_allclose(image.display(loaded.results[0][0].map)[1], comparison.images[0].display(comparison.results[0][0].map)[1])


def test_resampling_filter_of_the_model_is_used():
    from workbench.images import resize_for_model

    adapter = one_pixel_adapter("stretch")
    image = wide_image()
    bilinear = analysis.to_model_pixels(adapter, image)
    adapter.resample = "bicubic"
    bicubic = analysis.to_model_pixels(adapter, image)
    np.testing.assert_allclose(bicubic, resize_for_model(image.pixels, (MODEL, MODEL), "bicubic"))
    assert not np.allclose(bicubic, bilinear)
