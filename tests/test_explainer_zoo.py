"""Explainers on the zoo's shipped models and samples: completeness, the PyTorch/Keras twins
agreeing map for map, Expected Gradients' additivity, Grad-CAM parity at 224x224.

Skipped until the zoo's weights are built (``python -m model_zoo.train``).
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import torch
import keras  # noqa: F401
import captum.attr as captum_attr

import explainers  # noqa: E402
import model_zoo  # noqa: E402
from conftest import shap_called_directly  # noqa: E402
from workbench.errors import ModelRejected  # noqa: E402

# where each stochastic or slow method is run with fewer evaluations than its default
ZOO_PARAMS = {
    "scorecam": {"batch_size": 64},
    "smoothgrad": {"samples": 16},
    "expected_gradients": {"samples": 64},
    "shap": {"max_evals": 200, "batch_size": 100},
}
# Completeness ratio |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)| of IG on the 12 samples
# (black baseline) must stay within the floor at 64 steps, both rules, both frameworks.
IG_STEPS, IG_TOLERANCE = 64, 0.01
# Expected gradients at 200 samples, default background (black, white, 8 noise images), seed 0:
# the same ratio averages 0.05 over the samples (0.22 with shap's independent draws), worst 0.16.
EG_SAMPLES = 200
EG_MEAN_TOLERANCE, EG_WORST_TOLERANCE = 0.10, 0.25


def zoo_adapter(name: str):
    from workbench.intake import load_zoo_model

    try:
        return load_zoo_model(name, device="cpu")
    except ModelRejected as exc:
        pytest.skip(f"zoo model {name} not available: {exc}")


@pytest.fixture(scope="module")
def shapes_twins():
    return {"torch": zoo_adapter("shapes-cnn-torch"), "keras": zoo_adapter("shapes-cnn-keras")}


@pytest.fixture(scope="module")
def samples(shapes_twins):
    try:
        entries = model_zoo.samples()
    except FileNotFoundError:
        pytest.skip("the zoo's samples are not built")
    pixels = np.stack([model_zoo.load_sample(s)[0] for s in entries])
    return shapes_twins["torch"].prepare(pixels), [s.label for s in entries]


def completeness(adapter, batch, labels, steps, method="gausslegendre") -> list[float]:
    results = explainers.get("integrated_gradients").explain(adapter, batch, labels, params={"steps": steps, "method": method})
    return [r.completeness_ratio for r in results]


@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_complete_at_64_steps(framework, method, shapes_twins, samples):
    batch, labels = samples
    ratios = completeness(shapes_twins[framework], batch, labels, IG_STEPS, method)
    print(f"IG {IG_STEPS} {method} {framework}: completeness ratio median {np.median(ratios):.2e} worst {max(ratios):.2e}")
    assert max(ratios) <= IG_TOLERANCE, ratios


def kinked_cnn():
    """The zoo CNN's layout with ReLU and max-pooling (seeded, untrained): its path integrals have kinks."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 6),
    ).eval()


def test_integrated_gradients_gap_on_a_kinked_net_is_captums_and_is_pointed_out(samples):
    """On a ReLU/max-pool net a fixed quadrature leaves a gap: ours equals captum's convergence delta computed
    in float64 (so it is the quadrature's, not precision or this code), and the result says so."""
    from workbench.adapters.torch_adapter import TorchAdapter

    batch, _ = samples
    model = kinked_cnn()
    adapter = TorchAdapter(model, name="kinked", source_format="test", input_size=(64, 64, 3))
    targets = [int(t) for t in adapter.predict(batch).argmax(axis=1)]
    results = explainers.get("integrated_gradients").explain(adapter, batch, targets, params={"steps": 16})
    ours = np.array([r.completeness_ratio for r in results])
    double = kinked_cnn().double()
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).double()
    _, delta = captum_attr.IntegratedGradients(double).attribute(
        x, baselines=0.0, target=targets, n_steps=16, return_convergence_delta=True
    )
    with torch.no_grad():
        change = (double(x) - double(torch.zeros_like(x)))[torch.arange(len(targets)), torch.tensor(targets)]
    print(f"kinked net, IG 16 steps: completeness ratio median {np.median(ours):.4f} worst {ours.max():.4f}")
    np.testing.assert_allclose(ours, (delta.abs() / change.abs()).numpy(), rtol=0.02, atol=2e-4)
    assert ours.max() > IG_TOLERANCE, "the kinked net should leave a visible gap at 16 steps"
    for r in results:
        flagged = any("miss completeness" in note for note in r.notes)
        assert flagged == (r.completeness_ratio > IG_TOLERANCE), (r.completeness_ratio, r.notes)


@pytest.mark.slow
def test_expected_gradients_additivity_at_200_samples(shapes_twins, samples):
    batch, labels = samples
    for framework, adapter in shapes_twins.items():
        results = explainers.get("expected_gradients").explain(adapter, batch, labels, params={"samples": EG_SAMPLES}, seed=0)
        ratios = [r.completeness_ratio for r in results]
        print(f"expected gradients {framework} at {EG_SAMPLES} samples: mean {np.mean(ratios):.4f} worst {max(ratios):.4f}")
        assert np.mean(ratios) <= EG_MEAN_TOLERANCE and max(ratios) <= EG_WORST_TOLERANCE, ratios


@pytest.mark.slow
def test_expected_gradients_additivity_shrinks_with_samples(shapes_twins, samples):
    batch, labels = samples
    eg = explainers.get("expected_gradients")
    picks, targets = batch[[0, 9]], [labels[0], labels[9]]
    means = [
        float(np.mean([r.completeness_ratio for r in eg.explain(shapes_twins["torch"], picks, targets, params={"samples": n}, seed=1)]))
        for n in (16, 160, 1600)
    ]
    print(f"expected gradients mean completeness ratio at 16/160/1600 samples: {means}")
    assert means[0] > means[1] > means[2]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n == "shap" else n
        for n in explainers.names()
        if not getattr(explainers.REGISTRY[n], "needs_attention", False)  # transformers only
    ],
)
def test_twins_give_the_same_map(name, shapes_twins, samples):
    batch, labels = samples
    picks = [0, 5, 10] if name not in ("shap", "occlusion") else [0, 7]
    params = ZOO_PARAMS.get(name, {})
    targets = [labels[i] for i in picks]
    ours = explainers.get(name).explain(shapes_twins["torch"], batch[picks], targets, params=params, seed=4)
    theirs = explainers.get(name).explain(shapes_twins["keras"], batch[picks], targets, params=params, seed=4)
    if name == "shap":
        # Partition SHAP may expand other regions on float-level differences between the twins
        # (seen: Pearson 0.994); each twin must equal shap itself on that twin instead.
        for framework, results in (("torch", ours), ("keras", theirs)):
            values, bases = shap_called_directly(shapes_twins[framework], batch[picks], targets, seed=4, **params)
            for result, expected, base in zip(results, values, bases):
                np.testing.assert_allclose(result.channels, expected, rtol=1e-5, atol=1e-6)
                assert result.reference_score == pytest.approx(base, rel=1e-5)
        for a, b in zip(ours, theirs):
            assert a.target_score == pytest.approx(b.target_score, abs=1e-4)
        return
    for a, b in zip(ours, theirs):
        r = float(np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1])
        assert r >= 0.999, (name, r)
        assert a.layer == b.layer  # the twins name their layers alike (act4 for a CAM)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_gradcam_memory_stays_flat_on_the_zoo_model(framework, shapes_twins, samples):
    adapter = shapes_twins[framework]
    batch, labels = samples
    gradcam = explainers.get("gradcam")
    for _ in range(10):
        gradcam.explain(adapter, batch[:2], labels[:2])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(50):
            gradcam.explain(adapter, batch[:2], labels[:2])
        gc.collect()
        growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    # keeping one pair of 64x64 maps per call would be 50 x 32 KiB = 1.6 MiB
    assert growth < 256 * 1024, growth


@pytest.fixture(scope="module")
def resnet_torch():
    return zoo_adapter("resnet-mini-torch")


def test_gradcam_matches_captum_on_resnet_mini(resnet_torch):
    pixels = model_zoo.shapes.generate(1, seed=11, size=224)[0].astype(np.float32) / 255.0
    x = resnet_torch.prepare(pixels)
    target = int(resnet_torch.predict(x).argmax())
    layer = resnet_torch.default_cam_layer()
    (ours,) = explainers.get("gradcam").explain(resnet_torch, x, [target])
    module = dict(resnet_torch.module.named_modules())[layer]
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    attr = captum_attr.LayerGradCam(resnet_torch.module, module).attribute(xt, target=target, relu_attributions=True)
    ref = captum_attr.LayerAttribution.interpolate(attr, (224, 224), interpolate_mode="bilinear")[0, 0].detach().numpy()
    assert ours.layer == layer and ref.max() > 0
    assert np.abs(ours.map - ref).max() <= 1e-5 * ref.max(), "the same map at the same scale"


def test_keras_gradcam_matches_the_keras_io_recipe_on_resnet_mini():
    import keras
    import tensorflow as tf

    adapter = zoo_adapter("resnet-mini-keras")
    pixels = model_zoo.shapes.generate(1, seed=11, size=224)[0].astype(np.float32) / 255.0
    x = adapter.prepare(pixels)
    target = int(adapter.predict(x).argmax())
    layer = adapter.default_cam_layer()
    (ours,) = explainers.get("gradcam").explain(adapter, x, [target])
    model = adapter.model
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(x)
        class_channel = preds[:, target]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = tf.squeeze(last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis])
    heatmap = tf.maximum(heatmap, 0)  # the recipe's final division by the maximum is for display only
    ref = tf.image.resize(heatmap[..., None], (224, 224), method="bilinear")[..., 0].numpy()
    assert ours.layer == layer == "layer4_1_out"
    assert np.abs(ours.map - ref).max() <= 1e-5 * ref.max(), "the same map at the same scale"
