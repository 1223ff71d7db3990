"""Explainers on tiny models whose answers are known or computed by the reference libraries.

Parity: captum (Grad-CAM, IG, Saliency, Occlusion), the keras.io Grad-CAM recipe, shap called
directly, pytorch-grad-cam's Grad-CAM++ / Score-CAM formulas (re-implemented here in torch:
the package needs torchvision). Properties: completeness, reproducibility from the seed, the
counted cost, parameter refusals, nothing left on the model, out-of-memory back-off.
The zoo models are exercised in ``test_explainer_zoo.py``.
"""

from __future__ import annotations

import ast
import gc
import pathlib
import tracemalloc

import numpy as np
import pytest

import torch
import keras
import tensorflow as tf
import captum.attr as captum_attr

import explainers
from conftest import shap_called_directly  # noqa: E402
from workbench.adapters.keras_adapter import KerasAdapter  # noqa: E402
from workbench.adapters.torch_adapter import TorchAdapter  # noqa: E402
from workbench.errors import LayerError, ParameterError  # noqa: E402

EXPLAINERS_DIR = pathlib.Path(explainers.__file__).resolve().parent
SIZE = (16, 16, 3)
CAM_LAYER_TORCH = "relu2"
CAM_LAYER_KERAS = "relu2"

# small settings for each method so every call takes a fraction of a second
FAST = {
    "gradcam": {},
    "gradcam++": {},
    "scorecam": {"batch_size": 4},
    "saliency": {},
    "smoothgrad": {"samples": 6},
    "integrated_gradients": {"steps": 8},
    "expected_gradients": {"samples": 12},
    "shap": {"max_evals": 40, "batch_size": 10},
    "occlusion": {"window": 4, "stride": 4},
    "attention_rollout": {},  # transformers only: on the tiny CNN it must refuse in one line (below)
}
# the methods that run on the tiny CNN twins (attention rollout needs a model that exposes attention weights;
# its maps are tested on a tiny ViT in test_vit.py)
CNN = [n for n in FAST if not getattr(explainers.REGISTRY[n], "needs_attention", False)]


# ---------------------------------------------------------------- tiny twins
class TinyCNN(torch.nn.Module):
    """conv-ReLU-maxpool, conv-ReLU, global average pool, linear: 16x16x3 -> 3 logits."""

    def __init__(self, tripwire: bool = False):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.pool1 = torch.nn.MaxPool2d(2)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = torch.nn.ReLU()
        self.trip = Tripwire() if tripwire else None
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        if self.trip is not None:
            x = self.trip(x)
        return self.fc(torch.flatten(self.gap(x), 1))


class Tripwire(torch.nn.Module):
    """Identity that raises once armed: a model failing mid-forward, after the CAM layer ran."""

    armed = False

    def forward(self, x):
        if self.armed:
            raise RuntimeError("tripwire: the model failed mid-forward")
        return x


def tiny_torch(seed: int = 0, tripwire: bool = False) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN(tripwire)
    with torch.no_grad():  # positive head weights keep the ReLU maps from vanishing for every class
        model.fc.weight.abs_()
    return model.eval()


class KerasTripwire(keras.layers.Layer):
    armed = False

    def call(self, x):
        if KerasTripwire.armed:
            raise RuntimeError("tripwire: the model failed mid-forward")
        return x


def keras_twin(module: TinyCNN, tripwire: bool = False) -> "keras.Model":
    """The same function in Keras (NHWC), weights copied from the torch module."""
    inputs = keras.Input(SIZE, name="input")
    conv1 = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
    conv2 = keras.layers.Conv2D(6, 3, padding="same", name="conv2")
    fc = keras.layers.Dense(3, name="fc")
    x = keras.layers.ReLU(name="relu1")(conv1(inputs))
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.ReLU(name="relu2")(conv2(x))
    if tripwire:
        x = KerasTripwire(name="trip")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, fc(x))
    for layer, source in ((conv1, module.conv1), (conv2, module.conv2)):
        layer.set_weights([source.weight.detach().permute(2, 3, 1, 0).numpy(), source.bias.detach().numpy()])
    fc.set_weights([module.fc.weight.detach().T.numpy(), module.fc.bias.detach().numpy()])
    return model


@pytest.fixture(scope="module")
def torch_model():
    return tiny_torch()


@pytest.fixture(scope="module")
def torch_adapter(torch_model):
    return TorchAdapter(torch_model, name="tiny", source_format="test", input_size=SIZE)


@pytest.fixture(scope="module")
def keras_model(torch_model):
    return keras_twin(torch_model)


@pytest.fixture(scope="module")
def keras_adapter(keras_model):
    return KerasAdapter(keras_model, name="tiny", source_format="test")


@pytest.fixture(scope="module")
def images():
    """Two smooth images in [0, 1] (model input for the 'unit' preset)."""
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    a = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1)
    b = np.stack([1 - yy, np.abs(xx - 0.5) * 2, xx * yy], axis=-1)
    return np.stack([a, b]).astype(np.float32)


def nchw(batch: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous()


def nhwc(t: "torch.Tensor") -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / np.abs(reference).max())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def predicted(adapter, batch) -> list[int]:
    return [int(t) for t in adapter.predict(batch).argmax(axis=1)]


# ---------------------------------------------------------------- registry and imports
def test_every_registered_method_is_in_the_cross_cutting_table():
    """FAST drives the tests every method must pass (defaults, costs, twins, hooks, errors): a new method
    cannot skip them by being left out of it."""
    assert sorted(FAST) == sorted(explainers.REGISTRY), "add the method to FAST with small settings"


@pytest.mark.parametrize("name", [n for n in FAST if n not in CNN])
def test_attention_methods_refuse_a_cnn_in_one_line(name, torch_adapter, keras_adapter, images):
    from workbench.errors import WorkbenchError

    for adapter in (torch_adapter, keras_adapter):
        with pytest.raises(WorkbenchError) as refused:
            explainers.get(name).explain(adapter, images[:1], [0], params=FAST[name])
        assert str(refused.value) and "\n" not in str(refused.value)


def test_every_registered_name_has_its_own_module():
    for name, cls in explainers.REGISTRY.items():
        module = cls.__module__.rsplit(".", 1)[-1]
        assert module == {"gradcam++": "gradcam_plus_plus", "shap": "shap_partition"}.get(name, name), name
        assert (EXPLAINERS_DIR / f"{module}.py").is_file()
    assert len({cls.__module__ for cls in explainers.REGISTRY.values()}) == len(explainers.REGISTRY)


def test_no_explainer_module_imports_a_framework():
    forbidden = {"torch", "tensorflow", "keras", "jax"}
    for path in sorted(EXPLAINERS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & forbidden, f"{path.name}:{node.lineno} imports {roots & forbidden}"


# ---------------------------------------------------------------- shared helpers
@pytest.mark.parametrize("namespace", ["numpy", "torch"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW view"])
def test_weighted_sum_reads_either_layout(layout, namespace):
    import array_api_compat.numpy as xn
    import array_api_compat.torch as xt

    from explainers.arrays import weighted_sum

    rng = np.random.default_rng(0)
    stack = rng.standard_normal((5, 4, 6, 3)).astype(np.float32)
    weights = rng.random(5)
    expected = np.tensordot(weights, stack, axes=(0, 0))
    if layout == "NCHW view":  # what a channels-first adapter hands back: a transposed view
        stack = np.ascontiguousarray(stack.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    xp = xn if namespace == "numpy" else xt
    if namespace == "torch":
        stack, weights = torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1), torch.from_numpy(weights)
    np.testing.assert_allclose(np.asarray(weighted_sum(xp, weights, stack)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, chunk, sizes", [(50, 27, [25, 25]), (50, 64, [50]), (7, 3, [3, 2, 2]), (65, 64, [33, 32])])
def test_blocks_are_even_and_cover_every_row(n, chunk, sizes, torch_adapter):
    from explainers.base import Calls
    from workbench.settings import Settings

    calls = Calls(torch_adapter, Settings(), max_rows=chunk)
    blocks = list(calls.blocks(n))
    assert [b.stop - b.start for b in blocks] == sizes
    assert blocks[0].start == 0 and blocks[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize("name", list(FAST))
def test_defaults_are_valid(name):
    params = explainers.REGISTRY[name].normalise_params({})
    assert set(params) == {p.name for p in explainers.REGISTRY[name].params}


@pytest.mark.parametrize(
    "name, params, pattern",
    [
        ("integrated_gradients", {"stepz": 10}, "no parameter stepz"),
        ("integrated_gradients", {"steps": "many"}, "steps must be int"),
        ("integrated_gradients", {"steps": 2.5}, "steps must be int"),
        ("integrated_gradients", {"method": "simpson"}, "method must be one of"),
        ("smoothgrad", {"noise": 2.0}, "at most"),
        ("occlusion", {"stride": 0}, "at least"),
        ("occlusion", {"window": 4, "stride": 5}, "larger than the window"),
        ("occlusion", {"window": 17}, "larger than the image"),
        ("gradcam", {"relu": "maybe"}, "relu must be bool"),
    ],
)
def test_bad_parameters_are_refused_in_one_line(name, params, pattern, torch_adapter, images):
    with pytest.raises(ParameterError, match=pattern) as caught:
        explainers.get(name).explain(torch_adapter, images, params=params)
    assert "\n" not in str(caught.value)


def test_caps_come_from_the_deployment_settings(monkeypatch, torch_adapter, images):
    monkeypatch.setenv("WORKBENCH_MAX_IG_STEPS", "10")
    explainers.get("integrated_gradients").explain(torch_adapter, images[:1], params={"steps": 10})
    with pytest.raises(ParameterError, match="WORKBENCH_MAX_IG_STEPS") as caught:
        explainers.get("integrated_gradients").explain(torch_adapter, images[:1], params={"steps": 11})
    assert "\n" not in str(caught.value)
    with pytest.raises(ParameterError, match="cap of 10"):
        explainers.REGISTRY["integrated_gradients"].cost(torch_adapter, {"steps": 11})


def test_unknown_method_bad_layer_and_bad_target(torch_adapter, images):
    with pytest.raises(ParameterError, match="Unknown method"):
        explainers.get("lime")
    with pytest.raises(LayerError):
        explainers.get("gradcam").explain(torch_adapter, images, params={"layer": "nope"})
    with pytest.raises(ParameterError, match="not a class"):
        explainers.get("saliency").explain(torch_adapter, images, [0, 7])
    with pytest.raises(ParameterError, match="one per image"):
        explainers.get("saliency").explain(torch_adapter, images, [0])
    with pytest.raises(ParameterError, match="model input"):
        explainers.get("saliency").explain(torch_adapter, images[:, :8])


# ---------------------------------------------------------------- cost
COST_CASES = [*((n, FAST[n]) for n in CNN), ("integrated_gradients", {"steps": 9, "method": "riemann_trapezoid"}),
              ("occlusion", {"window": 5, "stride": 3}), ("shap", {"max_evals": 41, "batch_size": 8}),
              ("gradcam", {"layer": "conv1"}), ("scorecam", {"layer": "relu1", "batch_size": 3})]


@pytest.mark.parametrize(
    "name, params", [pytest.param(n, p, marks=pytest.mark.slow) if n == "shap" else (n, p) for n, p in COST_CASES]
)
@pytest.mark.parametrize("given_targets", [True, False])
def test_counted_evaluations_match_cost(name, params, given_targets, torch_adapter, images):
    cls = explainers.REGISTRY[name]
    batch = images[:1]  # expected gradients scores its background once per call, so the cost is per image
    targets = [1] if given_targets else None
    cost = cls.cost(torch_adapter, params)
    (result,) = explainers.get(name).explain(torch_adapter, batch, targets, params=params)
    assert result.evaluations == cost.evaluations + (0 if given_targets else 1)


@pytest.mark.parametrize("name", ["integrated_gradients", "scorecam", "occlusion", "smoothgrad"])
def test_cost_is_per_image_for_a_batch(name, torch_adapter, images):
    (a, b) = explainers.get(name).explain(torch_adapter, images, [0, 1], params=FAST[name])
    assert a.evaluations == b.evaluations == explainers.REGISTRY[name].cost(torch_adapter, FAST[name]).evaluations


def test_shap_cost_rounds_an_odd_budget_up():
    assert explainers.REGISTRY["shap"].cost(None, {"max_evals": 41}).forward == 42


# ---------------------------------------------------------------- Grad-CAM
def captum_gradcam(model, layer, batch, targets) -> np.ndarray:
    cam = captum_attr.LayerGradCam(model, getattr(model, layer))
    attr = cam.attribute(nchw(batch), target=list(targets), relu_attributions=True)
    up = captum_attr.LayerAttribution.interpolate(attr, batch.shape[1:3], interpolate_mode="bilinear")
    return up[:, 0].detach().numpy()


def test_gradcam_matches_captum(torch_model, torch_adapter, images):
    targets = predicted(torch_adapter, images)
    ours = explainers.get("gradcam").explain(torch_adapter, images, targets)
    reference = captum_gradcam(torch_model, CAM_LAYER_TORCH, images, targets)
    for result, ref in zip(ours, reference):
        assert result.layer == CAM_LAYER_TORCH
        assert ref.max() > 0
        assert relative(result.map, ref) <= 1e-5  # with scale: a sum for a mean would fail


def test_gradcam_of_any_layer_and_class_matches_captum(torch_model, torch_adapter, images):
    ours = explainers.get("gradcam").explain(torch_adapter, images, [2, 0], params={"layer": "conv1", "relu": False})
    cam = captum_attr.LayerGradCam(torch_model, torch_model.conv1)
    attr = cam.attribute(nchw(images), target=[2, 0])
    reference = captum_attr.LayerAttribution.interpolate(attr, (16, 16), interpolate_mode="bilinear")[:, 0].detach().numpy()
    for result, ref in zip(ours, reference):
        assert relative(result.map, ref) <= 1e-5  # with scale: a sum for a mean would fail


def keras_io_gradcam(model, layer_name, image, pred_index) -> np.ndarray:
    """https://keras.io/examples/vision/grad_cam/ (make_gradcam_heatmap, without its final division by the
    maximum), then tf.image.resize."""
    grad_model = keras.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(image[None])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis]
    heatmap = tf.squeeze(heatmap)
    # the recipe then divides by the maximum for display; the map's own scale is what is compared here
    heatmap = tf.maximum(heatmap, 0)
    return tf.image.resize(heatmap[..., None], image.shape[:2], method="bilinear")[..., 0].numpy()


def test_gradcam_matches_the_keras_io_recipe(keras_model, keras_adapter, images):
    targets = predicted(keras_adapter, images)
    ours = explainers.get("gradcam").explain(keras_adapter, images, targets)
    for result, image, target in zip(ours, images, targets):
        assert result.layer == CAM_LAYER_KERAS
        reference = keras_io_gradcam(keras_model, CAM_LAYER_KERAS, image, target)
        assert relative(result.map, reference) <= 1e-5


@pytest.mark.parametrize("frozen", [False, True])
def test_gradcam_never_takes_input_gradients(frozen, monkeypatch, images):
    model = tiny_torch()
    for p in model.parameters():
        p.requires_grad_(not frozen)
    adapter = TorchAdapter(model, name="tiny", source_format="test", input_size=SIZE)
    called = []
    monkeypatch.setattr(adapter, "input_gradients_on_device", lambda *a, **k: called.append(a) or pytest.fail("input gradients"))
    inputs, input_grads = [], []

    def watch_input(_module, args):
        x = args[0]
        inputs.append(x)
        if x.requires_grad:  # fires only if autograd computes d score / d input
            x.register_hook(lambda g: input_grads.append(g))

    handle = model.register_forward_pre_hook(watch_input)
    try:
        for name in ("gradcam", "gradcam++"):
            explainers.get(name).explain(adapter, images, [0, 1])
    finally:
        handle.remove()
    assert not called and inputs and not input_grads
    assert all(x.grad is None for x in inputs)


def test_keras_gradcam_never_takes_input_gradients(monkeypatch, keras_adapter, images):
    monkeypatch.setattr(keras_adapter, "input_gradients", lambda *a, **k: pytest.fail("input gradients"))
    (result,) = explainers.get("gradcam").explain(keras_adapter, images[:1], [0])
    assert result.evaluations == 2


class InPlaceAfterLayer(torch.nn.Module):
    """torchvision's BasicBlock pattern: ``out = bn(conv(x)); out += identity; out = relu_(out)``."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x.mean(dim=1, keepdim=True)
        out = self.relu(out)
        return self.fc(out.mean(dim=(2, 3)))


def test_gradcam_of_a_layer_followed_by_in_place_ops_matches_captum(images):
    # in-place ops after the layer must not overwrite the captured activations (bn's output would
    # become relu(bn + x)); captum's hook keeps a clone, and so does the adapter's since 76cb816
    torch.manual_seed(5)
    model = InPlaceAfterLayer().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)  # so bn's output has negative values for the ReLU to change
    adapter = TorchAdapter(model, name="inplace", source_format="test", input_size=SIZE)
    ours = explainers.get("gradcam").explain(adapter, images, [0, 1], params={"layer": "bn", "relu": False})
    attr = captum_attr.LayerGradCam(model, model.bn).attribute(nchw(images), target=[0, 1])
    reference = captum_attr.LayerAttribution.interpolate(attr, (16, 16), interpolate_mode="bilinear")[:, 0].detach().numpy()
    for result, ref in zip(ours, reference):
        assert relative(result.map, ref) <= 1e-5  # with scale: a sum for a mean would fail


# ---------------------------------------------------------------- CAM variants (pytorch-grad-cam's formulas)
def layer_pass(model, layer, batch, targets):
    """Activations and gradients of a layer, as pytorch-grad-cam's ActivationsAndGradients takes them."""
    store = {}
    handle = getattr(model, layer).register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            out = model(nchw(batch))
            score = out[torch.arange(len(batch)), torch.tensor(targets)].sum()
            (grads,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    return store["a"].detach(), grads


def upsample(cam: "torch.Tensor", size) -> np.ndarray:
    # pytorch-grad-cam resizes with cv2.resize (bilinear, half-pixel centres) = align_corners=False
    return torch.nn.functional.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def reference_gradcam_plus_plus(model, layer, batch, targets) -> np.ndarray:
    activations, grads = layer_pass(model, layer, batch, targets)
    grads_power_2 = grads**2
    grads_power_3 = grads_power_2 * grads
    sum_activations = activations.sum(dim=(2, 3))
    aij = grads_power_2 / (2 * grads_power_2 + sum_activations[:, :, None, None] * grads_power_3 + 0.000001)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    weights = (torch.clamp(grads, min=0) * aij).sum(dim=(2, 3))
    cam = torch.relu((weights[:, :, None, None] * activations).sum(dim=1))
    return upsample(cam, batch.shape[1:3])


def reference_scorecam(model, layer, batch, targets, batch_size=16) -> np.ndarray:
    with torch.no_grad():
        activations, _ = layer_pass(model, layer, batch, targets)
        x = nchw(batch)
        upsampled = torch.nn.UpsamplingBilinear2d(size=x.shape[-2:])(activations)
        flat = upsampled.view(upsampled.size(0), upsampled.size(1), -1)
        maxs, mins = flat.max(dim=-1)[0][:, :, None, None], flat.min(dim=-1)[0][:, :, None, None]
        upsampled = (upsampled - mins) / (maxs - mins + 1e-8)
        input_tensors = x[:, None] * upsampled[:, :, None]
        scores = []
        for target, tensor in zip(targets, input_tensors):
            for i in range(0, tensor.size(0), batch_size):
                scores.extend(float(o[target]) for o in model(tensor[i : i + batch_size]))
        weights = torch.softmax(torch.tensor(scores).view(activations.shape[0], activations.shape[1]), dim=-1)
        cam = torch.relu((weights[:, :, None, None] * activations).sum(dim=1))
    return upsample(cam, batch.shape[1:3])


@pytest.mark.parametrize("name, reference", [("gradcam++", reference_gradcam_plus_plus), ("scorecam", reference_scorecam)])
def test_cam_variants_match_pytorch_grad_cam(name, reference, torch_model, torch_adapter, images):
    targets = predicted(torch_adapter, images)
    ours = explainers.get(name).explain(torch_adapter, images, targets, params={"batch_size": 4} if name == "scorecam" else {})
    expected = reference(torch_model, CAM_LAYER_TORCH, images, targets)
    for result, ref in zip(ours, expected):
        assert ref.max() > 0
        assert relative(result.map, ref) <= 1e-5  # with scale: a sum for a mean would fail


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_match_captum(method, torch_model, torch_adapter, images):
    steps = 24
    targets = predicted(torch_adapter, images)
    ours = explainers.get("integrated_gradients").explain(
        torch_adapter, images, targets, params={"steps": steps, "method": method}
    )
    ig = captum_attr.IntegratedGradients(torch_model)
    reference = nhwc(ig.attribute(nchw(images), baselines=0.0, target=targets, n_steps=steps, method=method))
    if method == "riemann_trapezoid":
        # captum's trapezoid weights are 1/n (halved at the ends) on n points spaced 1/(n-1): they sum
        # to (n-1)/n, so its attributions are short by a factor (n-1)/n and miss completeness by 1/n.
        # Ours are the trapezoid rule's 1/(n-1): the same points and gradients, rescaled.
        reference = reference * steps / (steps - 1)
    scores = torch_adapter.predict(np.concatenate([images, np.zeros_like(images[:1])]))
    for i, (result, ref) in enumerate(zip(ours, reference)):
        assert relative(result.channels, ref) <= 1e-4
        assert result.signed
        assert result.target_score == pytest.approx(scores[i, targets[i]], abs=1e-5)
        assert result.reference_score == pytest.approx(scores[-1, targets[i]], abs=1e-5)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_quadrature_weights_integrate_exactly(method):
    from explainers.integrated_gradients import quadrature

    points, weights = quadrature(7, method)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert float(weights @ points) == pytest.approx(0.5, abs=1e-12)  # the integral of alpha over [0, 1]
    assert np.all((points >= 0) & (points <= 1))


def test_integrated_gradients_are_exact_for_a_linear_model():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 3, 2))
    adapter = TorchAdapter(model, name="linear", source_format="test", input_size=SIZE, preset="imagenet")
    x = adapter.prepare(np.random.default_rng(0).random((1, *SIZE), dtype=np.float32))
    (result,) = explainers.get("integrated_gradients").explain(adapter, x, [1], params={"steps": 4})
    w = nhwc(model[1].weight[1].detach().reshape(1, 3, 16, 16))[0]
    baseline = adapter.prepare(np.zeros((1, *SIZE), np.float32))[0]  # black in model-input space
    np.testing.assert_allclose(result.channels, w * (x[0] - baseline), rtol=1e-4, atol=1e-6)
    assert result.completeness_ratio < 1e-4


def test_saliency_matches_captum(torch_model, torch_adapter, images):
    targets = predicted(torch_adapter, images)
    ours = explainers.get("saliency").explain(torch_adapter, images, targets)
    reference = nhwc(captum_attr.Saliency(torch_model).attribute(nchw(images), target=targets, abs=True))
    for result, ref in zip(ours, reference):
        assert relative(result.channels, ref) <= 1e-5
        np.testing.assert_allclose(result.map, ref.sum(axis=-1), rtol=1e-5, atol=1e-7)


def test_smoothgrad_is_reproducible_from_its_seed(torch_adapter, images):
    sg = explainers.get("smoothgrad")
    first = sg.explain(torch_adapter, images, [0, 1], params={"samples": 8}, seed=7)
    again = sg.explain(torch_adapter, images, [0, 1], params={"samples": 8}, seed=7)
    other = sg.explain(torch_adapter, images, [0, 1], params={"samples": 8}, seed=8)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a.map, b.map)
        assert a.seed == 7 and c.seed == 8
        assert np.abs(a.map - c.map).max() > 1e-3 * np.abs(a.map).max()
    # an image's map does not depend on the other images in the batch
    (alone,) = sg.explain(torch_adapter, images[1:], [1], params={"samples": 8}, seed=7)
    np.testing.assert_allclose(alone.map, first[1].map, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("window, stride", [(4, 2), (5, 3), (16, 4)])
def test_occlusion_matches_captum(window, stride, torch_model, torch_adapter, images):
    targets = predicted(torch_adapter, images)
    params = {"window": window, "stride": stride, "baseline": 0.0}
    ours = explainers.get("occlusion").explain(torch_adapter, images, targets, params=params)
    reference = captum_attr.Occlusion(torch_model).attribute(
        nchw(images), sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0.0, target=targets
    )
    reference = nhwc(reference)
    for result, ref in zip(ours, reference):
        # captum gives every channel of a pixel the same value; ours is that value per pixel
        assert np.abs(ref - ref[..., :1]).max() == 0
        assert relative(result.map, ref[..., 0]) <= 1e-5


def test_expected_gradients_additivity_improves_with_samples(torch_adapter, images):
    eg = explainers.get("expected_gradients")
    background = torch_adapter.prepare(np.random.default_rng(1).random((8, *SIZE), dtype=np.float32))

    # the class whose score moves most between the background and the image: a clear delta to explain
    target = int(np.argmax(np.abs(torch_adapter.predict(images[:1])[0] - torch_adapter.predict(background).mean(axis=0))))

    def mean_gap(samples):
        gaps = [
            eg.explain(torch_adapter, images[:1], [target], params={"samples": samples}, seed=seed, background=background)[0]
            for seed in range(3)
        ]
        return float(np.mean([r.completeness_ratio for r in gaps]))

    few, some, many = mean_gap(8), mean_gap(80), mean_gap(800)
    assert many < some < few
    assert many < 0.01


# ---------------------------------------------------------------- stochastic methods against their references
SEEDS = 8  # draws of each estimator: their seed-to-seed spread sets the bounds below


def agreement_with_spread(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float]:
    """``ours`` and ``theirs``: [SEEDS, ...] draws of two estimators of the same expectation.

    -> (z, cross, within):
    z = |mean(ours) - mean(theirs)|^2 / E|...|^2 under "same expectation", where the expectation is the sum
        of both estimators' per-pixel variances over SEEDS (from their own seed-to-seed spread): about 1
        when they estimate the same thing, large when one is biased (a wrong noise scale, a wrong baseline);
    cross = mean Pearson correlation of our draws with theirs, within = the lower of each estimator's mean
        correlation between its own draws: an estimator as close to the other as to itself has cross ~ within.
    """
    a = ours.reshape(len(ours), -1).astype(np.float64)
    b = theirs.reshape(len(theirs), -1).astype(np.float64)
    expected = float(np.sum(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b)))
    z = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2) / expected)

    def mean_corr(x, y, same):
        values = [pearson(x[i], y[j]) for i in range(len(x)) for j in range(len(y)) if not (same and i >= j)]
        return float(np.mean(values))

    return z, mean_corr(a, b, False), min(mean_corr(a, a, True), mean_corr(b, b, True))


def test_smoothgrad_agrees_with_captums_noise_tunnel_within_their_spread(torch_model, torch_adapter, images):
    """SmoothGrad = captum's NoiseTunnel(Saliency) ("smoothgrad", absolute gradients) with the same sigma."""
    samples, noise = 16, 0.15
    targets = predicted(torch_adapter, images)
    sg = explainers.get("smoothgrad")
    for i, target in enumerate(targets):
        x = images[i : i + 1]
        sigma = noise * float(x.max() - x.min())
        ours = np.stack([
            sg.explain(torch_adapter, x, [target], params={"samples": samples, "noise": noise}, seed=seed)[0].channels
            for seed in range(SEEDS)
        ])
        tunnel = captum_attr.NoiseTunnel(captum_attr.Saliency(torch_model))
        theirs = []
        for seed in range(SEEDS):
            torch.manual_seed(100 + seed)
            attr = tunnel.attribute(nchw(x), nt_type="smoothgrad", nt_samples=samples, stdevs=sigma, target=target)
            theirs.append(nhwc(attr)[0])
        z, cross, within = agreement_with_spread(ours, np.stack(theirs))
        print(f"\nSmoothGrad image {i}: z {z:.2f}, correlation with captum {cross:.3f}, seed-to-seed {within:.3f}")
        assert z < 2.0, "the two estimators' means differ by more than their own spread allows"
        assert cross > within - 0.05
        # and the test can see a wrong noise scale: sigma tripled is far outside the spread
        wrong = np.stack([
            sg.explain(torch_adapter, x, [target], params={"samples": samples, "noise": 3 * noise}, seed=seed)[0].channels
            for seed in range(SEEDS)
        ])
        assert agreement_with_spread(wrong, np.stack(theirs))[0] > 2.0, "the bound above rejects a wrong sigma"


def test_expected_gradients_agree_with_captums_gradient_shap_within_their_spread(torch_model, torch_adapter, images):
    """Expected gradients = captum's GradientShap (the gradient at a random point between a random background
    image and the image, times their difference; stdevs 0) on the same background set. Ours stratifies the
    draws (lower variance, same expectation)."""
    samples = 32
    background = torch_adapter.prepare(np.random.default_rng(1).random((6, *SIZE), dtype=np.float32))
    targets = predicted(torch_adapter, images)
    eg = explainers.get("expected_gradients")
    gradient_shap = captum_attr.GradientShap(torch_model)
    for i, target in enumerate(targets):
        x = images[i : i + 1]
        ours = np.stack([
            eg.explain(torch_adapter, x, [target], params={"samples": samples}, seed=seed, background=background)[0].channels
            for seed in range(SEEDS)
        ])
        theirs = []
        saved = np.random.get_state()
        try:
            for seed in range(SEEDS):
                # GradientShap picks baselines with torch's generator and its alphas with numpy's global one
                torch.manual_seed(200 + seed)
                np.random.seed(200 + seed)
                attr = gradient_shap.attribute(nchw(x), baselines=nchw(background), n_samples=samples, stdevs=0.0, target=target)
                theirs.append(nhwc(attr)[0])
        finally:
            np.random.set_state(saved)
        theirs = np.stack(theirs)
        z, cross, within = agreement_with_spread(ours, theirs)
        print(f"\nExpected gradients image {i}: z {z:.2f}, correlation with captum {cross:.3f}, seed-to-seed {within:.3f}")
        assert z < 2.0, "the two estimators' means differ by more than their own spread allows"
        assert cross > within - 0.05
        # a different background (the test can fail): black only
        black = np.stack([
            eg.explain(torch_adapter, x, [target], params={"samples": samples}, seed=seed, background=background[:1] * 0)[0].channels
            for seed in range(SEEDS)
        ])
        assert agreement_with_spread(black, theirs)[0] > 2.0, "the bound above rejects a wrong background"


# ---------------------------------------------------------------- shap
@pytest.fixture(scope="module")
def shap_run(torch_adapter, images):
    params = {"max_evals": 120, "batch_size": 20}
    target = predicted(torch_adapter, images[:1])
    return params, target, explainers.get("shap").explain(torch_adapter, images[:1], target, params=params, seed=3)[0]


@pytest.mark.slow
def test_shap_is_additive(shap_run):
    _, _, result = shap_run
    delta = result.target_score - result.reference_score
    assert abs(delta) > 1e-3
    assert abs(float(np.sum(result.channels, dtype=np.float64)) - delta) <= 1e-4 * abs(delta)
    assert result.completeness_ratio <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_shap_equals_calling_shap_directly(framework, torch_adapter, keras_adapter, images):
    """Each twin's SHAP values equal shap's own on that twin (this replaces comparing the twins'
    SHAP maps with each other, which float-level differences can legitimately change)."""
    adapter = {"torch": torch_adapter, "keras": keras_adapter}[framework]
    params = {"max_evals": 120, "batch_size": 20}
    targets = predicted(adapter, images)
    results = explainers.get("shap").explain(adapter, images, targets, params=params, seed=3)
    values, bases = shap_called_directly(adapter, images, targets, seed=3, **params)
    for result, expected, base in zip(results, values, bases):
        np.testing.assert_allclose(result.channels, expected, rtol=1e-5, atol=1e-7)
        assert result.reference_score == pytest.approx(base, rel=1e-6)


@pytest.mark.slow
def test_shap_leaves_numpys_global_generator_alone(torch_adapter, images):
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    explainers.get("shap").explain(torch_adapter, images[:1], [0], params=FAST["shap"], seed=5)
    np.testing.assert_array_equal(np.random.random(3), expected)


# ---------------------------------------------------------------- twins: same map in both frameworks
@pytest.mark.parametrize("name", [n for n in CNN if n != "shap"])  # SHAP: each twin vs shap itself, above
def test_torch_and_keras_twins_give_the_same_map(name, torch_adapter, keras_adapter, images):
    targets = predicted(torch_adapter, images)
    assert targets == predicted(keras_adapter, images)
    ours = explainers.get(name).explain(torch_adapter, images, targets, params=FAST[name], seed=11)
    theirs = explainers.get(name).explain(keras_adapter, images, targets, params=FAST[name], seed=11)
    for a, b in zip(ours, theirs):
        assert pearson(a.map, b.map) >= 0.999, name
        assert a.target_score == pytest.approx(b.target_score, abs=1e-4)


# ---------------------------------------------------------------- nothing left behind
def assert_clean_torch(model):
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
        assert not module._backward_hooks and not getattr(module, "_backward_pre_hooks", {}), name


def assert_clean_keras(model):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        assert "call" not in layer.__dict__, layer.name


@pytest.mark.parametrize("name", [n for n in CNN if n != "shap"])
def test_no_hooks_or_patches_left_and_predictions_unchanged(
    name, torch_model, torch_adapter, keras_model, keras_adapter, images
):
    for adapter, clean, model in (
        (torch_adapter, assert_clean_torch, torch_model),
        (keras_adapter, assert_clean_keras, keras_model),
    ):
        before = adapter.predict(images)
        explainers.get(name).explain(adapter, images, params=FAST[name])
        clean(model)
        np.testing.assert_array_equal(adapter.predict(images), before)


def test_nothing_left_when_the_explainer_raises(images):
    model = tiny_torch(tripwire=True)
    torch_adapter = TorchAdapter(model, name="trip", source_format="test", input_size=SIZE)
    kmodel = keras_twin(model, tripwire=True)
    keras_adapter = KerasAdapter(kmodel, name="trip", source_format="test")
    before = torch_adapter.predict(images), keras_adapter.predict(images)
    for adapter, clean, m in ((torch_adapter, assert_clean_torch, model), (keras_adapter, assert_clean_keras, kmodel)):
        with pytest.raises(LayerError):
            explainers.get("gradcam").explain(adapter, images, params={"layer": "no_such_layer"})
        clean(m)
    try:
        Tripwire.armed = KerasTripwire.armed = True
        for adapter, clean, m in ((torch_adapter, assert_clean_torch, model), (keras_adapter, assert_clean_keras, kmodel)):
            for name in ("gradcam", "scorecam"):
                with pytest.raises(RuntimeError, match="tripwire"):
                    explainers.get(name).explain(adapter, images, [0, 1], params=FAST[name])
                clean(m)
    finally:
        Tripwire.armed = KerasTripwire.armed = False
    np.testing.assert_array_equal(torch_adapter.predict(images), before[0])
    np.testing.assert_array_equal(keras_adapter.predict(images), before[1])
    # and the adapters still explain
    explainers.get("gradcam").explain(torch_adapter, images)
    explainers.get("gradcam").explain(keras_adapter, images)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_repeated_gradcam_keeps_memory_flat(framework, torch_adapter, keras_adapter, images):
    adapter = torch_adapter if framework == "torch" else keras_adapter
    gradcam = explainers.get("gradcam")
    for _ in range(10):  # warm-up: lazy imports, caches, allocator pools
        gradcam.explain(adapter, images, [0, 1])
    gc.collect()
    rss = rss_bytes()
    tracemalloc.start()
    try:
        first = tracemalloc.take_snapshot()
        for _ in range(50):
            gradcam.explain(adapter, images, [0, 1])
        gc.collect()
        growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(first, "filename"))
    finally:
        tracemalloc.stop()
    # A leak of the maps alone would be 50 x 2 KiB. Keras' eager calls keep their own bookkeeping
    # that grows for the first few hundred calls and then stops (~110 KiB for plain model calls here),
    # hence the looser bound there; test_explainer_zoo.py repeats this on 64x64 models.
    assert growth < (64 if framework == "torch" else 256) * 1024, growth
    assert rss_bytes() - rss < 16 * 1024 * 1024


# ---------------------------------------------------------------- out-of-memory back-off
class FakeOutOfMemory(RuntimeError):
    pass


class SmallDeviceAdapter(TorchAdapter):
    """A device that only takes ``limit`` rows at a time (the explainers call the device primitives)."""

    limit = 3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.freed = 0
        self.rows_seen: list[int] = []

    def _guard(self, batch):
        self.rows_seen.append(len(batch))
        if len(batch) > self.limit:
            raise FakeOutOfMemory(f"fake device holds {self.limit} rows, got {len(batch)}")

    def predict_on_device(self, batch):
        self._guard(batch)
        return super().predict_on_device(batch)

    def input_gradients_on_device(self, batch, targets):
        self._guard(batch)
        return super().input_gradients_on_device(batch, targets)

    def layer_gradients_on_device(self, batch, layer, targets):
        self._guard(batch)
        return super().layer_gradients_on_device(batch, layer, targets)

    def layer_activations_on_device(self, batch, layer):
        self._guard(batch)
        return super().layer_activations_on_device(batch, layer)

    def is_out_of_memory(self, error):
        return isinstance(error, FakeOutOfMemory)

    def free_memory(self):
        self.freed += 1


@pytest.mark.parametrize(
    "name", ["integrated_gradients", "scorecam", "occlusion", "gradcam", "expected_gradients", "smoothgrad", "saliency"]
)
def test_out_of_memory_halves_the_chunk_and_gives_the_same_result(name, torch_model, torch_adapter, images):
    small = SmallDeviceAdapter(torch_model, name="tiny", source_format="test", input_size=SIZE)
    batch = np.concatenate([images, images[:, ::-1]])  # 4 rows: over the fake device's limit for every method
    targets = [0, 1, 2, 0]
    expected = explainers.get(name).explain(torch_adapter, batch, targets, params=FAST[name], seed=2)
    got = explainers.get(name).explain(small, batch, targets, params=FAST[name], seed=2)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.map, b.map, rtol=1e-5, atol=1e-6)
        assert a.evaluations == b.evaluations
        assert any("chunk halved to" in note for note in a.notes), a.notes
        assert not any("chunk" in note for note in b.notes)
    # one note and one release per refused call, and the chunk stays small once halved
    failures = [i for i, rows in enumerate(small.rows_seen) if rows > small.limit]
    assert len([n for n in got[0].notes if "chunk" in n]) == len(failures) == small.freed >= 1
    assert all(rows <= small.limit for rows in small.rows_seen[failures[-1] + 1 :])


def test_other_errors_are_not_retried(torch_model, images):
    small = SmallDeviceAdapter(torch_model, name="tiny", source_format="test", input_size=SIZE)
    small.is_out_of_memory = lambda error: False
    small._num_classes, small._output_kind = 3, "logits"
    with pytest.raises(FakeOutOfMemory):
        explainers.get("integrated_gradients").explain(small, images, [0, 1], params={"steps": 8})
    assert small.freed == 0 and len(small.rows_seen) == 1


@pytest.mark.parametrize(
    "shape, size",
    [((1, 7, 7), (224, 224)), ((2, 1, 1), (5, 3)), ((3, 9, 6, 4), (16, 20)), ((1, 50, 60, 3), (33, 97)), ((2, 8, 8), (8, 8))],
)
def test_bilinear_resize_equals_torch_interpolate(shape, size):
    """The CAM upsampling: bilinear with half-pixel centres and no antialiasing, up or down, any channels."""
    from workbench.resize import bilinear_resize

    maps = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    ours = bilinear_resize(maps, size)
    nchw = torch.from_numpy(maps if maps.ndim == 4 else maps[..., None]).permute(0, 3, 1, 2)
    theirs = torch.nn.functional.interpolate(nchw, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    theirs = theirs.numpy()[..., 0] if maps.ndim == 3 else theirs.numpy()
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    # torch computes source positions in float32 (scale = in / out); ours in float64: ~1e-5 apart at most
    np.testing.assert_allclose(ours, theirs, atol=5e-5)
