"""The adapter seam: same behaviour for PyTorch and Keras, nothing left on the model, lazy imports."""

import subprocess
import sys
import threading

import numpy as np
import pytest

import torch
import keras
import tensorflow as tf

from workbench.adapters.base import LayerInfo, choose_cam_layer, detect_output_kind  # noqa: E402
from workbench.adapters.keras_adapter import KerasAdapter  # noqa: E402
from workbench.adapters.torch_adapter import TorchAdapter  # noqa: E402
from workbench.errors import LayerError, ModelRejected  # noqa: E402


def small_torch(channels_last_input=False):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 4),
    )


def small_keras(softmax=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(4, activation="softmax" if softmax else None, name="fc")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def torch_adapter():
    return TorchAdapter(small_torch(), name="small", source_format="test", input_size=(16, 16, 3))


@pytest.fixture(scope="module")
def keras_adapter():
    return KerasAdapter(small_keras(), name="small", source_format="test")


def test_torch_primitives_match_the_framework(torch_adapter):
    x = torch_adapter.test_input(3, seed=1)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    out = torch_adapter.module(xt)
    (expected,) = torch.autograd.grad(out[:, 2].sum(), xt)
    np.testing.assert_allclose(torch_adapter.predict(x), out.detach().numpy(), atol=1e-6)
    outputs, grads = torch_adapter.input_gradients(x, [2, 2, 2])
    np.testing.assert_allclose(grads, expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(outputs, out.detach().numpy(), atol=1e-6)


def test_keras_primitives_match_the_framework(keras_adapter):
    x = keras_adapter.test_input(3, seed=1)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = keras_adapter.model(xt)
        score = tf.reduce_sum(out[:, 1])
    np.testing.assert_allclose(keras_adapter.predict(x), out.numpy(), atol=1e-6)
    _, grads = keras_adapter.input_gradients(x, [1, 1, 1])
    np.testing.assert_allclose(grads, tape.gradient(score, xt).numpy(), atol=1e-6)


def test_metadata_and_output_kind(torch_adapter, keras_adapter):
    assert torch_adapter.info().input_size == (16, 16, 3)
    assert keras_adapter.info().input_size == (16, 16, 3)
    assert torch_adapter.output_kind == "logits"
    assert keras_adapter.labels == ("class 0", "class 1", "class 2", "class 3")
    probs = KerasAdapter(small_keras(softmax=True), name="p", source_format="test")
    # a final softmax is peeled off by default (issue 13): the model's own probabilities stay one setting away
    assert probs.output_kind == "logits" and probs.softmax_head
    assert probs.view(score="probabilities").output_kind == "probabilities"
    assert detect_output_kind(np.array([[0.2, 0.8], [0.5, 0.5]])) == "probabilities"
    assert detect_output_kind(np.array([[2.0, -1.0]])) == "logits"


@pytest.mark.parametrize("which", ["torch", "keras"])
def test_layer_gradients_are_channels_last_and_match_layer_choice(which, torch_adapter, keras_adapter):
    adapter = torch_adapter if which == "torch" else keras_adapter
    layer = adapter.default_cam_layer()
    assert adapter.layer(layer).output_shape == (8, 8, 6)
    passed = adapter.layer_gradients(adapter.test_input(2), layer, [0, 3])
    assert passed.activations.shape == passed.gradients.shape == (2, 8, 8, 6)
    assert passed.outputs.shape == (2, 4)
    assert np.abs(passed.gradients).sum() > 0


def test_torch_layer_gradients_leave_no_hooks_even_on_error(torch_adapter):
    with pytest.raises(LayerError):
        torch_adapter.layer_gradients(torch_adapter.test_input(1), "no-such-layer", [0])
    torch_adapter.layer_gradients(torch_adapter.test_input(1), "4", [0])
    for module in torch_adapter.module.modules():
        assert not module._forward_hooks
    assert not any(p.grad is not None for p in torch_adapter.module.parameters())


def test_keras_layer_gradients_restore_layers(keras_adapter):
    keras_adapter.layer_gradients(keras_adapter.test_input(1), "c2", [0])
    keras_adapter.layers()
    for layer in keras_adapter.model.layers:
        assert "call" not in layer.__dict__


def test_keras_compiled_calls_wait_while_a_layer_is_wrapped(keras_adapter):
    """A first trace of a new input shape must not run while another call has a layer's ``call`` wrapped."""
    seen = []
    outputs = []
    batch = keras_adapter.test_input(5, seed=2)  # a batch size no other test traced
    worker = threading.Thread(target=lambda: outputs.append(keras_adapter.predict(batch)))
    with keras_adapter._capture({"c2": keras_adapter._get_layer("c2")}, lambda path, out: seen.append(path)):
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive(), "predict ran while c2 was wrapped"
    worker.join(timeout=60)
    assert not worker.is_alive() and len(outputs) == 1
    assert seen == []  # the trace did not go through the wrapper
    np.testing.assert_allclose(outputs[0], np.asarray(keras_adapter.model(batch)), atol=1e-5)
    assert all("call" not in layer.__dict__ for layer in keras_adapter.model.layers)


def test_concurrent_layer_calls_agree(torch_adapter):
    x = torch_adapter.test_input(2, seed=5)
    expected = torch_adapter.layer_gradients(x, "4", [1, 2]).gradients
    results, errors = [], []

    def work():
        try:
            results.append(torch_adapter.layer_gradients(x, "4", [1, 2]).gradients)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(results) == 6
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-6)


def test_nhwc_torch_model():
    class NHWC(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = small_torch()

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    adapter = TorchAdapter(NHWC(), name="nhwc", source_format="test", input_size=(16, 16, 3), layout="NHWC")
    x = adapter.test_input(2)
    reference = TorchAdapter(NHWC().inner, name="nchw", source_format="test", input_size=(16, 16, 3))
    np.testing.assert_allclose(adapter.predict(x), reference.predict(x), atol=1e-6)
    np.testing.assert_allclose(adapter.input_gradients(x, [0, 1])[1], reference.input_gradients(x, [0, 1])[1], atol=1e-6)


def test_non_classifier_output_is_rejected():
    conv = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(ModelRejected, match="batch, classes"):
        TorchAdapter(conv, name="conv", source_format="test", input_size=(16, 16, 3)).validate()


def test_choose_cam_layer_prefers_outermost_last_spatial_output():
    layers = [
        LayerInfo("conv", "Conv", (8, 8, 4), 1),
        LayerInfo("block.relu", "ReLU", (8, 8, 4), 2),
        LayerInfo("block", "Block", (8, 8, 4), 3),
        LayerInfo("pool", "Pool", (1, 1, 4), 4),
        LayerInfo("fc", "Linear", (3,), 5),
    ]
    assert choose_cam_layer(layers) == "block"
    with pytest.raises(LayerError):
        choose_cam_layer(layers[3:])


@pytest.mark.slow
@pytest.mark.parametrize(
    "factory, expected",
    [("ResNet50", "conv5_block3_out"), ("MobileNetV2", "out_relu")],
)
def test_default_cam_layer_on_keras_applications(factory, expected):
    model = getattr(keras.applications, factory)(weights=None)
    adapter = KerasAdapter(model, name=factory, source_format="test")
    assert adapter.default_cam_layer() == expected
    passed = adapter.layer_gradients(adapter.test_input(1), expected, [0])
    assert passed.activations.shape[1:3] == (7, 7)


def test_default_cam_layer_in_nested_keras_model():
    inner_in = keras.Input((32, 32, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="inner_conv")(inner_in)
    inner = keras.Model(inner_in, y, name="backbone")
    inp = keras.Input((32, 32, 3))
    z = keras.layers.GlobalAveragePooling2D()(inner(inp))
    model = keras.Model(inp, keras.layers.Dense(3)(z))
    adapter = KerasAdapter(model, name="nested", source_format="test")
    names = [l.name for l in adapter.layers()]
    assert "backbone/inner_conv" in names
    chosen = adapter.default_cam_layer()
    assert chosen in ("backbone", "backbone/inner_conv")
    inner_pass = adapter.layer_gradients(adapter.test_input(1), "backbone/inner_conv", [1])
    outer_pass = adapter.layer_gradients(adapter.test_input(1), "backbone", [1])
    np.testing.assert_allclose(inner_pass.gradients, outer_pass.gradients, atol=1e-6)
    assert "call" not in inner.get_layer("inner_conv").__dict__


def test_core_imports_no_framework():
    code = (
        "import sys, workbench, workbench.cli, workbench.analysis, workbench.result, workbench.render, "
        "workbench.agreement, workbench.adapters, explainers\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(__import__('pathlib').Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_default_cam_layer_on_zoo_resnet_and_its_onnx_export(tmp_path):
    import io

    from workbench import intake

    torch_adapter = intake.load_zoo_model("resnet-mini-torch")
    assert torch_adapter.default_cam_layer() == "layer4"
    assert torch_adapter.layer("layer4").output_shape == (7, 7, 128)
    keras_adapter = intake.load_zoo_model("resnet-mini-keras")
    assert keras_adapter.default_cam_layer() == "layer4_1_out"

    buffer = io.BytesIO()
    torch.onnx.export(torch_adapter.module, torch.zeros(1, 3, 224, 224), buffer, dynamo=False, input_names=["x"])
    onnx_adapter = intake.load_model(buffer.getvalue(), filename="resnet.onnx")
    chosen = onnx_adapter.default_cam_layer()
    info = onnx_adapter.layer(chosen)
    # the last block's output: the residual Add + ReLU of layer4, 7x7x128, after which only pooling follows
    assert info.output_shape == (7, 7, 128)
    later = [l for l in onnx_adapter.layers() if l.order > info.order]
    assert all(not l.spatial for l in later)
    x = torch_adapter.test_input(2)
    np.testing.assert_allclose(onnx_adapter.predict(x), torch_adapter.predict(x), atol=1e-4)
    cam_onnx = onnx_adapter.layer_gradients(x, chosen, [0, 1]).activations
    cam_torch = torch_adapter.layer_gradients(x, "layer4", [0, 1]).activations
    np.testing.assert_allclose(cam_onnx, cam_torch, rtol=1e-4, atol=1e-4)
