"""Explainers on the zoo's shipped models and samples: completeness, the PyTorch/Keras twins
agreeing map for map, Expected Gradients' additivity, Grad-CAM parity at 224x224.

Skipped until the zoo's weights are built (``python -m model_zoo.train``).
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("keras")
captum_attr = pytest.importorskip("captum.attr")

import explainers  # noqa: E402
import model_zoo  # noqa: E402
from workbench.errors import ModelRejected  # noqa: E402

# where each stochastic or slow method is run with fewer evaluations than its default
ZOO_PARAMS = {
    "scorecam": {"batch_size": 64},
    "smoothgrad": {"samples": 16},
    "expected_gradients": {"samples": 64},
    "shap": {"max_evals": 200, "batch_size": 100},
}
IG_STEPS = 64
IG_COMPLETENESS = 0.01  # |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)| at 64 steps
EG_SAMPLES = 200
EG_TOLERANCE = 0.05  # the same ratio for expected gradients at 200 samples (worst sample and framework)


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


@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_completeness_at_64_steps(framework, method, shapes_twins, samples):
    batch, labels = samples
    results = explainers.get("integrated_gradients").explain(
        shapes_twins[framework], batch, labels, params={"steps": IG_STEPS, "method": method}
    )
    ratios = [r.completeness_ratio for r in results]
    print(f"IG {method} {framework}: completeness gap ratio max {max(ratios):.5f} median {np.median(ratios):.5f}")
    assert max(ratios) <= IG_COMPLETENESS, ratios


def test_expected_gradients_additivity_at_200_samples(shapes_twins, samples):
    batch, labels = samples
    worst = {}
    for framework, adapter in shapes_twins.items():
        results = explainers.get("expected_gradients").explain(adapter, batch, labels, params={"samples": EG_SAMPLES}, seed=0)
        worst[framework] = max(r.completeness_ratio for r in results)
    print(f"expected gradients at {EG_SAMPLES} samples: worst completeness ratio {worst}")
    assert max(worst.values()) <= EG_TOLERANCE, worst


def test_expected_gradients_additivity_shrinks_with_samples(shapes_twins, samples):
    batch, labels = samples
    eg = explainers.get("expected_gradients")
    means = [
        float(np.mean([r.completeness_ratio for r in eg.explain(shapes_twins["torch"], batch[:4], labels[:4], params={"samples": n}, seed=1)]))
        for n in (20, 200, 2000)
    ]
    print(f"expected gradients mean completeness ratio at 20/200/2000 samples: {means}")
    assert means[0] > means[1] > means[2]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "shap" else n for n in explainers.names()]
)
def test_twins_give_the_same_map(name, shapes_twins, samples):
    batch, labels = samples
    picks = [0, 5, 10] if name not in ("shap", "occlusion") else [0, 7]
    params = ZOO_PARAMS.get(name, {})
    ours = explainers.get(name).explain(shapes_twins["torch"], batch[picks], [labels[i] for i in picks], params=params, seed=4)
    theirs = explainers.get(name).explain(shapes_twins["keras"], batch[picks], [labels[i] for i in picks], params=params, seed=4)
    for a, b in zip(ours, theirs):
        r = float(np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1])
        assert r >= 0.999, (name, r)
        assert a.layer == b.layer  # the twins name their layers alike (relu4 for a CAM)


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
    assert np.abs(ours.map / ours.map.max() - ref / ref.max()).max() <= 1e-5
