"""The target score: logits (a final softmax peeled off) or probabilities, recorded in every result."""

import json

import numpy as np
import pytest

import explainers
from workbench.errors import ParameterError
from workbench.resize import bilinear_resize


def keras_recipe_gradcam(model, image, layer_name, class_index):
    """https://keras.io/examples/vision/grad_cam/ make_gradcam_heatmap, on a copy whose last activation is None,
    before the recipe's division by the maximum (returned separately so the scale is compared too)."""
    import keras
    import tensorflow as tf

    model.layers[-1].activation = None  # the recipe's "Remove last layer's softmax"
    try:
        grad_model = keras.models.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
        with tf.GradientTape() as tape:
            last_conv_layer_output, preds = grad_model(image)
            class_channel = preds[:, class_index]
        grads = tape.gradient(class_channel, last_conv_layer_output)
        pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
        heatmap = last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis]
        heatmap = tf.squeeze(heatmap)
        heatmap = tf.maximum(heatmap, 0)
        return heatmap.numpy(), preds.numpy()
    finally:
        model.layers[-1].activation = keras.activations.softmax


@pytest.fixture(scope="module")
def mobilenet():
    import keras

    from workbench.adapters.keras_adapter import KerasAdapter

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35, classes=5)
    adapter = KerasAdapter(model, name="mobilenetv2", source_format="test", device="cpu")
    adapter.validate()
    return model, adapter


@pytest.mark.slow
def test_keras_softmax_head_gradcam_equals_the_keras_io_recipe(mobilenet):
    model, adapter = mobilenet
    assert adapter.softmax_head and adapter.output_kind == "logits"  # the default peels the softmax off
    x = adapter.test_input(1, seed=3)
    target = 2
    (result,) = explainers.get("gradcam").explain(adapter, x, [target], params={"layer": "out_relu"})
    heatmap, logits = keras_recipe_gradcam(model, x, "out_relu", target)
    expected = bilinear_resize(heatmap[None], (64, 64))[0]
    assert result.score == "logits"
    np.testing.assert_allclose(result.target_score, logits[0, target], rtol=1e-5)
    np.testing.assert_allclose(result.map, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
    # probabilities are another scale: the same call with score=probabilities differs
    (prob,) = explainers.get("gradcam").explain(adapter.view(score="probabilities"), x, [target], params={"layer": "out_relu"})
    assert prob.score == "probabilities"
    assert 0 < prob.target_score < 1
    assert not np.allclose(prob.map, result.map, rtol=0.05, atol=0)


def test_keras_dense_softmax_and_activation_softmax_are_peeled():
    import keras

    from workbench.adapters.keras_adapter import KerasAdapter

    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(3, name="fc")(x)
    probs = keras.layers.Activation("softmax")(logits)
    for model in (keras.Model(inp, probs), keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))):
        adapter = KerasAdapter(model, name="m", source_format="test", device="cpu")
        assert adapter.output_kind == "logits" and adapter.softmax_head
        batch = adapter.test_input(2)
        out = adapter.predict(batch)
        raw = model.predict(batch, verbose=0)
        np.testing.assert_allclose(np.exp(out) / np.exp(out).sum(1, keepdims=True), raw, rtol=1e-5, atol=1e-7)
        probs_view = adapter.view(score="probabilities")
        np.testing.assert_allclose(probs_view.predict(batch), raw, rtol=1e-6)
        _, grad_logits = adapter.input_gradients(batch, [0, 1])
        _, grad_probs = probs_view.input_gradients(batch, [0, 1])
        assert not np.allclose(grad_logits, grad_probs)


def test_torch_final_softmax_is_peeled_and_an_inner_one_is_not():
    import torch

    from workbench.adapters.torch_adapter import TorchAdapter

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    head = torch.nn.Sequential(body, torch.nn.Softmax(dim=1))
    adapter = TorchAdapter(head, name="m", source_format="test", input_size=(16, 16, 3), device="cpu")
    assert adapter.output_kind == "logits" and adapter.softmax_head
    batch = adapter.test_input(2)
    with torch.no_grad():
        expected = body(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(adapter.predict(batch), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adapter.view(score="probabilities").predict(batch).sum(1), 1.0, rtol=1e-5)
    passed = adapter.layer_gradients(batch, "0.0", [0, 1])
    np.testing.assert_allclose(passed.outputs, expected, rtol=1e-5, atol=1e-6)

    class Inner(torch.nn.Module):  # a softmax followed by more ops: no peelable head
        def __init__(self):
            super().__init__()
            self.body, self.soft = body, torch.nn.Softmax(dim=1)

        def forward(self, x):
            p = self.soft(self.body(x))
            return torch.roll(p, 1, dims=1)  # still probabilities, but not the softmax output itself

    inner = TorchAdapter(Inner(), name="inner", source_format="test", input_size=(16, 16, 3), device="cpu")
    assert inner.output_kind == "probabilities" and not inner.softmax_head
    with pytest.raises(ParameterError, match="cannot separate"):
        inner.set_score("logits")
    # a logit model explained as probabilities
    logit_model = TorchAdapter(body, name="b", source_format="test", input_size=(16, 16, 3), device="cpu")
    assert logit_model.output_kind == "logits"
    np.testing.assert_allclose(logit_model.view(score="probabilities").predict(batch).sum(1), 1.0, rtol=1e-5)


def test_score_is_in_summary_json_the_saved_run_and_the_export(tmp_path, monkeypatch, capsys):
    import keras

    from workbench import store
    from workbench.cli import main
    from workbench.images import image_to_png_bytes

    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    keras.utils.set_random_seed(2)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="fc")(x)).save(tmp_path / "m.keras")
    image = tmp_path / "a.png"
    image.write_bytes(image_to_png_bytes(np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)))
    for score in ("logits", "probabilities"):
        out = tmp_path / score
        code = main(["explain", "--model", str(tmp_path / "m.keras"), "--image", str(image), "--method", "gradcam",
                     "--out", str(out), "--save", "--export", "--score", score])
        assert code == 0, capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert [row["score"] for row in summary["results"]] == [score]
        provenance = json.loads((out / "provenance.json").read_text())
        assert provenance["summary"]["images"][0]["results"][0]["score"] == score
        assert provenance["summary"]["model"]["score"] == score
        with store.RunStore() as runs:
            saved = runs.load(summary["run_id"])
        assert saved.results[0][0].score == score
        if score == "probabilities":
            assert 0 < summary["results"][0]["target_score"] < 1


@pytest.mark.slow
def test_models_page_sets_score_and_resize_mode(tmp_path):
    import keras
    from streamlit.testing.v1 import AppTest

    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="fc")(x)).save(tmp_path / "soft.keras")
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "app.py"), default_timeout=180).run()
    at.switch_page("pages/models.py").run()
    at.file_uploader(key="models_upload").set_value(("soft.keras", (tmp_path / "soft.keras").read_bytes(), "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    record = at.session_state["workspace"].model
    assert record.adapter.output_kind == "logits" and record.adapter.softmax_head
    score_key = f"models_score_{record.id}"
    resize_key = f"models_resize_{record.id}"
    at.segmented_control(key=score_key).set_value("probabilities").run()
    at.segmented_control(key=resize_key).set_value("letterbox").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    record = at.session_state["workspace"].model
    assert record.adapter.output_kind == "probabilities" and record.adapter.resize_mode == "letterbox"
    assert any("probabilities" in str(row) for row in at.dataframe[0].value.to_dict("records"))


@pytest.mark.parametrize("opset", [11, 17])
def test_onnx_final_softmax_is_peeled(opset, tmp_path):
    import io

    import torch

    from workbench.intake import load_model

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(torch.nn.Sequential(body, torch.nn.Softmax(dim=1)), (torch.rand(1, 3, 16, 16),), buffer, dynamo=False,
                      opset_version=opset, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    adapter = load_model(buffer.getvalue(), filename="soft.onnx", device="cpu")
    assert adapter.softmax_head and adapter.output_kind == "logits"
    batch = adapter.test_input(2)
    with torch.no_grad():
        expected = body(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(adapter.predict(batch), expected, rtol=1e-5, atol=1e-6)
    assert adapter.info().score == "logits"


def test_randomised_copy_of_a_softmax_headed_keras_model_explains_its_own_logits():
    import keras

    from workbench.adapters.keras_adapter import KerasAdapter

    keras.utils.set_random_seed(4)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp))
    adapter = KerasAdapter(keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="fc")(x)), name="m", source_format="t", device="cpu")
    batch = adapter.test_input(2)
    original = adapter.predict(batch)
    twin = adapter.randomised_copy(len(adapter.randomisable_layers()), seed=1)
    out = twin.predict(batch)
    assert twin.output_kind == "logits" and not np.allclose(out, original)
    probs = twin.model.predict(batch, verbose=0)  # the clone's own softmax output
    np.testing.assert_allclose(np.exp(out) / np.exp(out).sum(1, keepdims=True), probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(adapter.predict(batch), original)  # the original is untouched
