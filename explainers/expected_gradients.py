"""Expected Gradients (gradient SHAP) — Erion et al. 2021, https://arxiv.org/abs/1906.10670

The expectation over background images x' and alpha ~ U(0, 1) of the gradient at
x' + alpha (x - x') times (x - x'), which sums to f(x) - mean f(x') (shap.GradientExplainer's
quantity). Sampled with less variance than independent draws: each background image gets an
equal share of the samples (in random order; a random subset when there are fewer samples than
images), and its alphas are stratified, one uniform draw in each of [k/m, (k+1)/m). The
estimate stays unbiased; the additivity error falls much faster with the number of samples.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import device as device_of

from . import arrays
from .base import Cost, Explainer, Param, Partial, register


def default_background(x_shape, preset, seed: int) -> np.ndarray:
    """Used when no background set is given: black, white and 8 uniform-noise images."""
    rng = np.random.default_rng(seed)
    unit = np.concatenate(
        [np.zeros((1, *x_shape), np.float32), np.ones((1, *x_shape), np.float32), rng.random((8, *x_shape), np.float32)]
    )
    return preset.apply(unit)


def stratified_samples(samples: int, backgrounds: int, rng: np.random.Generator):
    """-> (background index, alpha, weight) per sample; the weights sum to 1 and give every
    background image the same total weight, so the expectation is the mean over the background."""
    if samples < backgrounds:
        picks = rng.choice(backgrounds, size=samples, replace=False)
        return picks, rng.random(samples), np.full(samples, 1.0 / samples)
    picks = rng.permutation(np.arange(samples) % backgrounds)
    alphas = np.empty(samples)
    weights = np.empty(samples)
    for j in range(backgrounds):
        rows = np.flatnonzero(picks == j)
        m = len(rows)
        alphas[rows] = (rng.permutation(m) + rng.random(m)) / m
        weights[rows] = 1.0 / (backgrounds * m)
    return picks, alphas, weights


@register
class ExpectedGradients(Explainer):
    name = "expected_gradients"
    title = "Expected Gradients"
    summary = "Gradients at random points between background images and the image (gradient SHAP)."
    paper = "https://arxiv.org/abs/1906.10670"
    signed = True
    stochastic = True
    has_completeness = True
    uses_background = True
    params = (Param("samples", 200, int, "Background/alpha samples per image.", minimum=1, cap="max_expected_gradients_samples"),)

    @classmethod
    def cost(cls, adapter, params=None, background_size=0):
        """Per image, for one image per call: the background is scored once per call."""
        samples = cls.normalise_params(params)["samples"]
        return Cost(forward=samples + (background_size or 10) + 1, backward=samples)

    def _attribute(self, calls, x, targets, params, seed, background, progress):
        xp = calls.xp
        n, samples = len(targets), params["samples"]
        if background is None or len(background) == 0:
            background = default_background(tuple(x.shape[1:]), calls.adapter.preset, seed)
        background = calls.adapter.device_array(np.asarray(background, dtype=np.float32))
        background_scores = calls.predict(background)
        # the same draws for every image (each image's stream starts at the seed, as for one image alone)
        picks, alphas, weights = stratified_samples(samples, len(background), np.random.default_rng(seed))
        alphas, weights = arrays.as_weights(xp, alphas, x), arrays.as_weights(xp, weights, x)
        total = xp.zeros(x.shape, dtype=xp.float32, device=device_of(x))
        # rows are (image, sample), image by image; blocks span images
        for block in calls.blocks(n * samples):
            points, deltas, images = [], [], []
            for i, first, stop, _ in arrays.segments(block, samples):
                refs = calls.rows(background, picks[first:stop])
                delta = x[i : i + 1] - refs
                points.append(refs + alphas[first:stop, None, None, None] * delta)
                deltas.append(delta)
                images += [i] * (stop - first)
            _, grads = calls.input_gradients(arrays.joined(xp, points), [targets[i] for i in images])
            grads = grads * arrays.joined(xp, deltas)
            for i, first, stop, offset in arrays.segments(block, samples):
                total[i, ...] = total[i, ...] + arrays.weighted_sum(xp, weights[first:stop], grads[offset : offset + stop - first])
            progress(block.stop / (n * samples), f"{self.title}: {block.stop} of {n * samples} samples")
        references = xp.mean(xp.take(background_scores, xp.asarray(np.asarray(targets), device=device_of(x)), axis=1), axis=0)
        maps = xp.sum(total, axis=-1)
        return [Partial(map=maps[i], channels=total[i], reference_score=references[i]) for i in range(n)]
