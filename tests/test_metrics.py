"""Evaluation metrics: known outcomes on maps and models built to have them, and parity with Quantus 0.6.

Where Quantus's conventions differ from ours, it is configured to ours, and each test says how:
- all: ``normalise=False`` (Quantus divides maps by their maximum by default), ``disable_warnings``.
- sparseness / complexity: ``abs=True`` (Quantus's default); Quantus adds 1e-7 to every value before the
  Gini index, so the maps are scaled to a maximum of 1e4 (both metrics are scale-invariant) to make that
  shift negligible at 1e-6.
- pointing game: ``abs=False``; Quantus has no tolerance, so the tolerance is checked against the
  paper's definition written here (distance from the maximum to the mask).
- mask energy: relevance mass accuracy of the positive part of the map (``np.clip(a, 0, None)``, abs=False).
- deletion: PixelFlipping with a perturbation that writes the black image (Quantus's "black" baseline is the
  image's minimum, ours the preset applied to zero pixels) and ``features_in_step`` = channels x pixels
  per step (Quantus broadcasts the map over channels); its curve lacks the unchanged image and its AUC is
  the trapezoid over step indices, so ours is compared point for point and its AUC converted:
  ``(auc_quantus + (p0 + p1) / 2) / steps``.
- insertion: the same PixelFlipping started from the blurred image (scipy's gaussian_filter, σ 5, radius 5,
  mirrored borders) with a perturbation that puts back the original pixels.
- randomisation: MPRT with ``layer_order="top_down"``, Spearman similarity, ``abs=True``, same seed, on the
  PyTorch model (Quantus re-initialises torch layers with ``reset_parameters`` after ``manual_seed(seed+1)``,
  as our torch adapter does); explain_func runs our Grad-CAM on the copy Quantus hands it. Where a randomised
  model's map is constant Quantus's correlation is NaN and ours 0.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

import explainers
import model_zoo
from workbench import metrics
from workbench.adapters.torch_adapter import TorchAdapter
from workbench.errors import ParameterError
from workbench.intake import load_zoo_model
from workbench.metrics.base import Case, fit_mask
from workbench.metrics.pixel_flipping import gaussian_blur
from workbench.metrics.pointing_game import pointing_hit

import quantus  # noqa: E402  (a test-only dependency, pinned in requirements.txt)

MAP_ONLY_TOLERANCE = 1e-6
MODEL_TOLERANCE = 1e-4


def _score(name: str, maps, masks=None, params=None, adapter=None, batch=None, targets=None, method=None):
    maps = np.asarray(maps, np.float32)
    n = len(maps)
    metric = metrics.get(name)
    p = type(metric).normalise_params(params)
    batch = batch if batch is not None else np.zeros((n, *maps.shape[1:], 3), np.float32)
    case = Case(batch, tuple(targets or [0] * n), maps, tuple(masks) if masks is not None else (None,) * n, method)
    return metric.score(adapter, case, p, 0, lambda f, m: None)


# ---------------------------------------------------------------------------- known outcomes
@pytest.fixture(scope="module")
def zoo():
    adapter = load_zoo_model("shapes-cnn-torch", device="cpu")
    samples = model_zoo.samples()
    loaded = [model_zoo.load_sample(s) for s in samples]
    pixels = np.stack([p for p, _ in loaded])
    masks = [m for _, m in loaded]
    batch = adapter.prepare(pixels)
    targets = tuple(int(t) for t in adapter.predict(batch).argmax(axis=1))
    return adapter, batch, targets, masks


def test_registry_states_paper_defaults_and_cost():
    assert metrics.names() == ["deletion", "insertion", "pointing_game", "mask_energy", "randomisation", "sparseness", "complexity"]
    for name, cls in metrics.REGISTRY.items():
        assert cls.paper.startswith("https://") and cls.title and cls.summary, name
        assert cls.normalise_params() == cls.defaults()
    assert metrics.REGISTRY["deletion"].cost(None, {"steps": 20}) == (21, 0)
    assert metrics.REGISTRY["sparseness"].cost(None, {}) == (0, 0)
    with pytest.raises(ParameterError, match="no parameter"):
        metrics.REGISTRY["deletion"].normalise_params({"step": 3})
    with pytest.raises(ParameterError, match="Unknown metric"):
        metrics.get("faithfulness")


def test_map_equal_to_the_mask_scores_one_and_its_complement_zero():
    mask = np.zeros((16, 16), bool)
    mask[4:9, 5:12] = True
    inside, outside = mask.astype(np.float32), 1.0 - mask.astype(np.float32)
    pg = _score("pointing_game", [inside, outside], masks=[mask, mask])
    me = _score("mask_energy", [inside, outside], masks=[mask, mask])
    assert [s.value for s in pg] == [1.0, 0.0]
    assert [s.value for s in me] == [1.0, 0.0]
    # no mask: no value, said why
    none = _score("pointing_game", [inside], masks=[None])[0]
    assert none.value is None and "no mask" in none.notes[0]


def test_pointing_game_tolerance_is_the_distance_to_the_mask():
    mask = np.zeros((20, 20), bool)
    mask[10:12, 10:12] = True
    a = np.zeros((20, 20), np.float32)
    a[10, 15] = 1.0  # 4 px right of the mask's column 11
    assert pointing_hit(a, mask, 0) == 0.0
    assert pointing_hit(a, mask, 3) == 0.0
    assert pointing_hit(a, mask, 4) == 1.0
    a = np.zeros((20, 20), np.float32)
    a[14, 14] = 1.0  # from (11, 11): sqrt(18) = 4.24 px
    assert pointing_hit(a, mask, 4) == 0.0 and pointing_hit(a, mask, 5) == 1.0


def test_gini_and_entropy_of_constant_and_one_hot_maps():
    n = 32 * 32
    constant = np.full((1, 32, 32), 0.3, np.float32)
    one_hot = np.zeros((1, 32, 32), np.float32)
    one_hot[0, 7, 9] = -2.0  # |map|: the sign does not matter
    assert _score("sparseness", constant)[0].value == pytest.approx(0.0, abs=1e-12)
    assert _score("sparseness", one_hot)[0].value == pytest.approx((n - 1) / n, abs=1e-12)
    assert _score("complexity", one_hot)[0].value == pytest.approx(0.0, abs=1e-12)
    assert _score("complexity", constant)[0].value == pytest.approx(np.log(n), abs=1e-9)
    # nothing sparser than one pixel: any other map has a lower Gini
    rng = np.random.default_rng(0)
    assert _score("sparseness", rng.random((1, 32, 32)))[0].value < (n - 1) / n


class OnlySomePixels(torch.nn.Module):
    """Two classes; the logit of class 0 is 0.5 x the sum of the pixels in ``used`` (NCHW), class 1 is 0:
    only those pixels matter, so deleting them first must drop the probability fastest."""

    def __init__(self, used: np.ndarray):
        super().__init__()
        self.register_buffer("used", torch.as_tensor(used, dtype=torch.float32))

    def forward(self, x):
        logit = 0.5 * (x * self.used).sum(dim=(1, 2, 3))
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def test_deletion_of_the_used_pixels_falls_faster_than_a_random_map():
    h = w = 16
    used = np.zeros((h, w), np.float32)
    used[3:7, 2:10] = 1.0
    adapter = TorchAdapter(OnlySomePixels(used), name="only some pixels", source_format="test", input_size=(h, w, 3), device="cpu")
    batch = np.ones((1, h, w, 3), np.float32)
    good = used + 0.01 * np.random.default_rng(1).random((h, w)).astype(np.float32)
    random = metrics.base.random_map((h, w), 0)
    scores = _score("deletion", [good, random], adapter=adapter, batch=np.repeat(batch, 2, axis=0), params={"steps": 16})
    good_curve = np.array(scores[0].curve)
    random_curve = np.array(scores[1].curve)
    assert good_curve[0, 1] == pytest.approx(random_curve[0, 1])  # both start at the unchanged image
    assert good_curve[-1, 1] == pytest.approx(0.5, abs=1e-6)  # all black: logit 0 = the other class's
    assert scores[0].value < scores[1].value - 0.2
    # the 32 used pixels are 1/8 of the image: two of 16 steps remove them all
    assert good_curve[2, 1] == pytest.approx(0.5, abs=1e-6) and random_curve[2, 1] > 0.9
    assert scores[0].evaluations == 17


def test_insertion_starts_blurred_and_ends_at_the_image():
    h = w = 16
    used = np.zeros((h, w), np.float32)
    used[3:7, 2:10] = 1.0
    adapter = TorchAdapter(OnlySomePixels(used), name="only some pixels", source_format="test", input_size=(h, w, 3), device="cpu")
    rng = np.random.default_rng(2)
    batch = rng.random((1, h, w, 3)).astype(np.float32)
    full = float(torch.softmax(adapter.module(torch.as_tensor(batch).permute(0, 3, 1, 2)), 1)[0, 0])
    score = _score("insertion", [used + 0.01 * rng.random((h, w))], adapter=adapter, batch=batch, params={"steps": 8})[0]
    curve = np.array(score.curve)
    assert curve[-1, 1] == pytest.approx(full, abs=1e-6)
    assert np.allclose(curve[:, 0], np.linspace(0, 1, 9))


def test_randomising_every_layer_decorrelates_gradcam(zoo):
    adapter, batch, targets, _ = zoo
    maps = np.stack([r.map for r in explainers.get("gradcam").explain(adapter, batch, targets)])
    scores = _score("randomisation", maps, adapter=adapter, batch=batch, targets=targets, method="gradcam")
    last = np.array([s.value for s in scores])
    assert len(scores[0].curve) == len(adapter.randomisable_layers()) == len(scores[0].curve_labels)
    assert abs(last.mean()) < 0.15, last
    # and the original map compared with itself would be 1: the test can fail
    same = _score("randomisation", maps, adapter=adapter, batch=batch, targets=targets, method="gradcam", params={"layers": 1})
    assert all(s.curve[0][1] < 0.99 for s in same)


def test_randomisation_leaves_the_loaded_model_unchanged(zoo):
    adapter, batch, targets, _ = zoo
    before = adapter.predict(batch)
    state = {k: v.clone() for k, v in adapter.module.state_dict().items()}
    twin = adapter.randomised_copy(len(adapter.randomisable_layers()), seed=3)
    assert not np.allclose(twin.predict(batch), before)
    np.testing.assert_array_equal(adapter.predict(batch), before)
    for key, value in adapter.module.state_dict().items():
        assert torch.equal(value, state[key]), key


# ---------------------------------------------------------------------------- the runner
def test_evaluate_gives_every_row_with_a_random_baseline(zoo):
    adapter, batch, targets, masks = zoo
    batch, targets, masks = batch[:2], targets[:2], masks[:2]
    maps = {m: np.stack([r.map for r in explainers.get(m).explain(adapter, batch, targets)]) for m in ("gradcam", "saliency")}
    seen = []
    evaluation = metrics.evaluate(
        adapter, batch, targets, maps, ["deletion", "pointing_game", "sparseness"], masks=masks,
        params={"deletion": {"steps": 10}}, image_names=["a", "b"], progress=lambda f, m: seen.append(f),
    )
    assert len(evaluation.results) == 2 * 2 * 3
    assert seen == sorted(seen) and seen[-1] == 1.0
    row = evaluation.find(1, "saliency", "deletion")
    assert row.image == "b" and len(row.curve) == 11 and len(row.random_curve) == 11 and row.evaluations == 11
    assert row.random_baseline is not None and row.random_baseline != row.value
    # the random baseline is one map per image, the same beside every method
    assert evaluation.find(1, "gradcam", "deletion").random_baseline == row.random_baseline
    table = evaluation.table()
    assert [r["method"] for r in table] == ["gradcam", "saliency", "random"]
    again = metrics.Evaluation.from_dict(evaluation.to_dict())
    assert again.to_dict() == evaluation.to_dict()
    estimate = metrics.estimate(adapter, 2, ["gradcam", "saliency"], ["deletion"], {"deletion": {"steps": 10}})
    assert estimate["deletion"]["evaluations"] == 2 * 3 * 11  # two methods and the random map, per image
    assert sum(r.evaluations for r in evaluation.results if r.metric == "deletion") == 2 * 2 * 11
    # the randomisation's cost, known before running, is what it spends: one Grad-CAM pass per layer and image
    layers = len(adapter.randomisable_layers())
    before = metrics.estimate(adapter, 2, ["gradcam"], ["randomisation"], {"randomisation": {"layers": 0, "flag_above": 0.5}})
    spent = metrics.evaluate(adapter, batch, targets, {"gradcam": maps["gradcam"]}, ["randomisation"], method_params={"gradcam": {}})
    assert before["randomisation"]["evaluations"] == sum(r.evaluations for r in spent.results) == 2 * layers * 2


def test_masks_and_maps_are_fitted_to_the_model_input():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    big = fit_mask(mask, (16, 16))
    assert big.dtype == bool and big.sum() == 16 and big[4:8, 4:8].all()
    assert fit_mask(np.dstack([mask] * 3), (8, 8)).sum() == 4


# ---------------------------------------------------------------------------- parity with Quantus
@pytest.fixture(scope="module")
def maps_to_check(zoo):
    """Saliency and IG maps of four zoo samples: continuous values, so the pixel order has no ties."""
    adapter, batch, targets, masks = zoo
    pick = [0, 3, 6, 9]
    b, t = batch[pick], tuple(targets[i] for i in pick)
    out = {m: np.stack([r.map for r in explainers.get(m).explain(adapter, b, t)]) for m in ("saliency", "integrated_gradients")}
    return adapter, b, t, [masks[i] for i in pick], out


def tie_free(maps: np.ndarray) -> np.ndarray:
    """Each map replaced by its pixels' order (float32, exact): the same ranking without ties, which Quantus
    (an unstable argsort) and we (stable: earlier pixel first) would break differently."""
    out = np.empty_like(maps, dtype=np.float32)
    for i, a in enumerate(maps):
        order = np.argsort(a.ravel(), kind="stable")
        flat = np.empty(a.size, np.float32)
        flat[order] = np.arange(a.size, dtype=np.float32)
        out[i] = flat.reshape(a.shape)
    return out


class PixelFlippingOverChannels(quantus.PixelFlipping):
    """Quantus checks ``features_in_step`` against H x W, but flips the C x H x W features of the map broadcast
    over channels: with 16 steps of 3 x 256 features the 12288 features are covered exactly, so the check is
    skipped here and nothing else changes."""

    def custom_preprocess(self, *args, **kwargs):
        return None


def _nchw(batch):
    return np.ascontiguousarray(np.transpose(batch, (0, 3, 1, 2)))


def test_map_only_metrics_match_quantus(maps_to_check):
    _, batch, targets, masks, maps = maps_to_check
    x, y = _nchw(batch), np.asarray(targets)
    s = np.stack([m[None] for m in masks]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a in maps.values():
            scaled = (a / np.abs(a).max(axis=(1, 2), keepdims=True) * 1e4)[:, None].astype(np.float64)
            common = dict(normalise=False, disable_warnings=True)
            q_gini = quantus.Sparseness(abs=True, **common)(model=None, x_batch=x, y_batch=y, a_batch=scaled.copy())
            q_entropy = quantus.Complexity(abs=True, **common)(model=None, x_batch=x, y_batch=y, a_batch=scaled.copy())
            q_pg = quantus.PointingGame(abs=False, **common)(model=None, x_batch=x, y_batch=y, a_batch=a[:, None].copy(), s_batch=s)
            positive = np.clip(a, 0, None)[:, None].astype(np.float64)
            q_rma = quantus.RelevanceMassAccuracy(abs=False, **common)(model=None, x_batch=x, y_batch=y, a_batch=positive, s_batch=s)
            np.testing.assert_allclose([v.value for v in _score("sparseness", a)], q_gini, atol=MAP_ONLY_TOLERANCE, rtol=0)
            np.testing.assert_allclose([v.value for v in _score("complexity", a)], q_entropy, atol=MAP_ONLY_TOLERANCE, rtol=0)
            assert [v.value for v in _score("pointing_game", a, masks=masks)] == [float(h) for h in q_pg]
            np.testing.assert_allclose([v.value for v in _score("mask_energy", a, masks=masks)], q_rma, atol=MAP_ONLY_TOLERANCE, rtol=0)


def _probabilities(adapter, batch):
    return torch.softmax(adapter.module(torch.as_tensor(_nchw(batch))), dim=1).detach().numpy().astype(np.float64)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_deletion_matches_quantus_pixel_flipping(maps_to_check, method):
    adapter, batch, targets, _, maps = maps_to_check
    steps = 16
    h, w, c = adapter.input_size
    a = tie_free(maps[method])
    ours = _score("deletion", a, adapter=adapter, batch=batch, targets=targets, params={"steps": steps})
    black = _nchw(adapter.prepare(np.zeros_like(batch)))  # Quantus's "black" is the image's minimum, ours 0 pixels
    metric = PixelFlippingOverChannels(
        features_in_step=c * h * w // steps, normalise=False, abs=False, disable_warnings=True,
        perturb_func=functools.partial(_put_back, source=black),
    )
    curves = np.array(metric(model=adapter.module, x_batch=_nchw(batch), y_batch=np.asarray(targets),
                             a_batch=a[:, None].copy(), channel_first=True, softmax=True, device="cpu"))
    p0 = _probabilities(adapter, batch)[np.arange(len(batch)), targets]
    for i, score in enumerate(ours):
        ys = np.array([pt[1] for pt in score.curve])
        assert ys[0] == pytest.approx(p0[i], abs=MODEL_TOLERANCE)
        np.testing.assert_allclose(ys[1:], curves[i], atol=MODEL_TOLERANCE, rtol=0)
        quantus_auc = np.trapezoid(curves[i], dx=1)  # quantus.helpers.utils.calculate_auc
        assert score.value == pytest.approx((quantus_auc + (p0[i] + curves[i][0]) / 2) / steps, abs=MODEL_TOLERANCE)


def _put_back(arr, indices, source, **kwargs):
    """Quantus perturb_func: the values of ``source`` at ``indices`` (flattened, per row): the black image for
    deletion, the original image for insertion."""
    out = arr.copy()
    rows = np.arange(arr.shape[0])[:, None]
    out[rows, indices] = source.reshape(arr.shape[0], -1)[rows, indices]
    return out


def test_insertion_matches_quantus_pixel_flipping_from_a_blurred_image(maps_to_check):
    from scipy.ndimage import gaussian_filter

    adapter, batch, targets, _, maps = maps_to_check
    steps = 16
    h, w, c = adapter.input_size
    blurred = np.stack([gaussian_filter(im.astype(np.float64), sigma=(5, 5, 0), truncate=1.0, mode="reflect") for im in batch])
    np.testing.assert_allclose(gaussian_blur(batch, 5.0, 5), blurred, atol=1e-5)  # scipy's 'reflect' mirrors as ours
    a = tie_free(maps["integrated_gradients"])
    ours = _score("insertion", a, adapter=adapter, batch=batch, targets=targets, params={"steps": steps})
    metric = PixelFlippingOverChannels(
        features_in_step=c * h * w // steps, normalise=False, abs=False, disable_warnings=True,
        perturb_func=functools.partial(_put_back, source=_nchw(batch)),
    )
    curves = np.array(metric(model=adapter.module, x_batch=_nchw(blurred.astype(np.float32)), y_batch=np.asarray(targets),
                             a_batch=a[:, None].copy(), channel_first=True, softmax=True, device="cpu"))
    p0 = _probabilities(adapter, blurred.astype(np.float32))[np.arange(len(batch)), targets]
    for i, score in enumerate(ours):
        ys = np.array([pt[1] for pt in score.curve])
        assert ys[0] == pytest.approx(p0[i], abs=MODEL_TOLERANCE)
        np.testing.assert_allclose(ys[1:], curves[i], atol=MODEL_TOLERANCE, rtol=0)
        quantus_auc = np.trapezoid(curves[i], dx=1)
        assert score.value == pytest.approx((quantus_auc + (p0[i] + curves[i][0]) / 2) / steps, abs=MODEL_TOLERANCE)


def test_randomisation_matches_quantus_mprt(zoo):
    adapter, batch, targets, _ = zoo
    pick = [1, 4, 7]
    b, t = batch[pick], tuple(targets[i] for i in pick)
    gradcam = explainers.get("gradcam")
    maps = np.stack([r.map for r in gradcam.explain(adapter, b, t)])
    seed = 7

    def explain(model, inputs, targets, **kwargs):
        view = TorchAdapter(model, name="quantus copy", source_format="test", input_size=adapter.input_size, device="cpu")
        nhwc = np.transpose(np.asarray(inputs), (0, 2, 3, 1))
        return np.stack([r.map for r in gradcam.explain(view, nhwc, [int(k) for k in targets])])[:, None]

    mprt = quantus.MPRT(layer_order="top_down", seed=seed, similarity_func=quantus.similarity_func.correlation_spearman,
                        abs=True, normalise=True, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = mprt(model=adapter.module, x_batch=_nchw(b), y_batch=np.asarray(t), a_batch=maps[:, None].copy(),
                      explain_func=explain, channel_first=True, device="cpu")
    layers = [k for k in scores if k != "original"]
    metric = metrics.get("randomisation")
    ours = metric.score(adapter, Case(b, t, maps, (None,) * 3, "gradcam"), type(metric).normalise_params(), seed, lambda f, m: None)
    assert list(ours[0].curve_labels) == layers == list(adapter.randomisable_layers())
    constant = 0
    for i, score in enumerate(ours):
        theirs = np.array([scores[k][i] for k in layers], np.float64)
        # a map that became constant (Grad-CAM all zero after its ReLU) has no rank correlation: Quantus says NaN,
        # we say 0 (nothing of the original order is left), the workbench's Spearman convention
        undefined = np.isnan(theirs)
        constant += int(undefined.sum())
        np.testing.assert_allclose(np.array([y for _, y in score.curve])[~undefined], theirs[~undefined], atol=MODEL_TOLERANCE, rtol=0)
        assert all(y == 0.0 for (_, y), u in zip(score.curve, undefined) if u)
    assert constant < len(layers) * len(ours) // 2  # most steps are compared with a number
