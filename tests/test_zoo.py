"""Model zoo: the shapes generator, the shipped twins and their parity, the import contract."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import model_zoo
from model_zoo import shapes

PARITY_TOLERANCE = 1e-4


# --- generator -------------------------------------------------------------------------


def test_generate_is_deterministic_per_seed():
    first = shapes.generate(12, seed=7)
    again = shapes.generate(12, seed=7)
    other = shapes.generate(12, seed=8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_generate_shapes_types_and_balanced_labels():
    images, labels, masks = shapes.generate(30, seed=0, size=48)
    assert images.shape == (30, 48, 48, 3) and images.dtype == np.uint8
    assert labels.shape == (30,) and labels.dtype == np.int64
    assert masks.shape == (30, 48, 48) and masks.dtype == bool
    assert np.bincount(labels, minlength=len(shapes.CLASSES)).tolist() == [5] * len(shapes.CLASSES)


def test_masks_cover_one_whole_object_inside_the_image():
    images, labels, masks = shapes.generate(60, seed=3)
    for image, label, mask in zip(images, labels, masks):
        area = mask.sum()
        assert area >= 100, shapes.CLASSES[label]
        # The whole shape lies inside the frame: nothing on the border rows/columns.
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        # Mask pixels are the object's single colour (plus pixel noise); the pixels just
        # outside the mask are background, so they differ clearly from that colour.
        inside = image[mask].astype(float)
        assert inside.std(axis=0).max() < 15
        border = _dilate(mask) & ~mask
        assert np.linalg.norm(image[border].astype(float).mean(0) - inside.mean(0)) > 40


def test_ring_has_a_hole_and_circle_has_none():
    images, labels, masks = shapes.generate(24, seed=5)
    for label, mask in zip(labels, masks):
        ys, xs = np.nonzero(mask)
        centre = mask[int(round(ys.mean())), int(round(xs.mean()))]
        if shapes.CLASSES[label] == "ring":
            assert not centre
        if shapes.CLASSES[label] in ("circle", "square", "triangle", "star", "cross"):
            assert centre


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


# --- catalogue -------------------------------------------------------------------------


def test_entries_and_get():
    names = [e.name for e in model_zoo.entries()]
    assert names == ["shapes-cnn-torch", "shapes-cnn-keras", "resnet-mini-torch", "resnet-mini-keras"]
    for entry in model_zoo.entries():
        arch = model_zoo.ARCHITECTURES[entry.architecture]
        assert entry.weights.is_file(), entry.weights
        assert entry.weights.suffix == {"pytorch": ".safetensors", "keras": ".keras"}[entry.framework]
        assert entry.input_size == arch.input_size and entry.labels == arch.labels == shapes.CLASSES
        assert entry.preset == "unit"
    assert model_zoo.get("resnet-mini-keras").framework == "keras"
    with pytest.raises(KeyError, match="shapes-cnn-torch"):
        model_zoo.get("resnet-50")


def test_samples_index_and_loading():
    samples = model_zoo.samples()
    assert len(samples) == 12
    assert sorted(s.label for s in samples) == sorted(list(range(6)) * 2)
    for sample in samples:
        assert sample.name.startswith(shapes.CLASSES[sample.label])
        image, mask = model_zoo.load_sample(sample)
        assert image.shape == (64, 64, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert mask.shape == (64, 64) and mask.dtype == bool and mask.sum() >= 100
    image, _ = model_zoo.load_sample(samples[0].name)
    np.testing.assert_array_equal(image, model_zoo.load_sample(samples[0])[0])


def test_metrics_record_the_held_out_accuracy():
    metrics = json.loads((model_zoo.WEIGHTS_DIR / "metrics.json").read_text())
    assert metrics["shapes_cnn"]["heldout_accuracy"] >= 0.95


def test_import_does_not_load_frameworks():
    code = (
        "import sys, model_zoo; model_zoo.entries(); model_zoo.samples(); model_zoo.get('shapes-cnn-keras');"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=model_zoo.ROOT.parent
    )
    assert result.stdout.strip() == "[]"


# --- shipped models --------------------------------------------------------------------


def _torch_model(architecture: str):
    import safetensors.torch as safetensors_torch
    model = model_zoo.build_torch(architecture)
    weights = model_zoo.get(f"{architecture}-torch").weights
    model.load_state_dict(safetensors_torch.load_file(str(weights)), strict=True)
    return model


def _keras_model(architecture: str):
    import model_zoo.keras_models  # noqa: F401  # quiets TensorFlow and picks its backend first
    import keras

    return keras.saving.load_model(model_zoo.get(f"{architecture}-keras").weights, safe_mode=True, compile=False)


def _run_torch(model, nhwc: np.ndarray) -> np.ndarray:
    import torch

    assert not model.training
    with torch.no_grad():
        return model(torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def _sample_batch() -> tuple[np.ndarray, np.ndarray]:
    samples = model_zoo.samples()
    return np.stack([model_zoo.load_sample(s)[0] for s in samples]), np.array([s.label for s in samples])


@pytest.fixture(scope="module")
def shapes_twins():
    return _torch_model("shapes-cnn"), _keras_model("shapes-cnn")


@pytest.fixture(scope="module")
def resnet_twins():
    return _torch_model("resnet-mini"), _keras_model("resnet-mini")


def test_shapes_cnn_classifies_the_samples(shapes_twins):
    images, labels = _sample_batch()
    predicted = _run_torch(shapes_twins[0], images).argmax(1)
    assert (predicted == labels).sum() >= len(labels) - 1, predicted


def test_shapes_cnn_twins_agree_on_the_samples(shapes_twins):
    images, _ = _sample_batch()
    torch_out = _run_torch(shapes_twins[0], images)
    keras_out = np.asarray(shapes_twins[1](images, training=False))
    assert keras_out.shape == (12, 6)
    assert np.abs(torch_out - keras_out).max() <= PARITY_TOLERANCE


def test_resnet_mini_twins_agree(resnet_twins):
    images = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)
    torch_out = _run_torch(resnet_twins[0], images)
    keras_out = np.asarray(resnet_twins[1](images, training=False))
    assert keras_out.shape == (2, 6)
    assert np.abs(torch_out).max() > 1e-2  # not a degenerate all-zero output
    assert np.abs(torch_out - keras_out).max() <= PARITY_TOLERANCE


def test_resnet_mini_last_block_is_named_like_torchvision(resnet_twins):
    torch_model, keras_model = resnet_twins
    assert [name for name, _ in torch_model.named_children()][4:8] == ["layer1", "layer2", "layer3", "layer4"]
    last = keras_model.get_layer("layer4_1_out")
    assert tuple(last.output.shape[1:]) == (7, 7, 128)
    assert keras_model.layers[keras_model.layers.index(last) + 1].name == "avgpool"


@pytest.mark.parametrize("architecture", ["shapes-cnn", "resnet-mini"])
def test_convert_copies_random_weights_exactly(architecture):
    """Parity of fresh twins, independent of the shipped files; BatchNorm stats are randomised."""
    import torch
    from model_zoo.convert import torch_to_keras

    generator = torch.Generator().manual_seed(0)
    model = model_zoo.build_torch(architecture)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    twin = torch_to_keras(model, model_zoo.build_keras(architecture))
    size = model_zoo.ARCHITECTURES[architecture].input_size[0]
    images = np.random.default_rng(1).random((2, size, size, 3), dtype=np.float32)
    assert np.abs(_run_torch(model, images) - np.asarray(twin(images, training=False))).max() <= PARITY_TOLERANCE


def test_convert_refuses_a_mismatched_twin():
    import torch  # noqa: F401
    from model_zoo.convert import torch_to_keras

    with pytest.raises(ValueError):
        torch_to_keras(model_zoo.build_torch("shapes-cnn", num_classes=3), model_zoo.build_keras("shapes-cnn"))


def test_build_returns_eval_mode_models_with_the_requested_classes():
    import torch  # noqa: F401
    model = model_zoo.build_torch("shapes-cnn", num_classes=4)
    assert not model.training and model.fc.out_features == 4
    assert model_zoo.build_keras("shapes-cnn", num_classes=4).output_shape == (None, 4)
    with pytest.raises(KeyError, match="resnet-mini"):
        model_zoo.build_torch("vgg16")
