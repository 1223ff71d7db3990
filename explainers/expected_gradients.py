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

from .base import Cost, Explainer, Param, Partial, register, weighted_sum


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

    def _attribute(self, calls, batch, targets, params, seed, background, progress):
        samples = params["samples"]
        if background is None or len(background) == 0:
            background = default_background(batch.shape[1:], calls.adapter.preset, seed)
        background = np.asarray(background, dtype=np.float32)
        background_scores = calls.predict(background)
        partials = []
        for i, x in enumerate(batch):
            rng = np.random.default_rng(seed)
            picks, alphas, weights = stratified_samples(samples, len(background), rng)
            total = np.zeros(x.shape, dtype=np.float64)
            for block in calls.blocks(samples):
                refs = background[picks[block]]
                deltas = x[None] - refs
                points = refs + alphas[block].astype(np.float32)[:, None, None, None] * deltas
                _, grads = calls.input_gradients(points, [targets[i]] * len(points))
                total += weighted_sum(weights[block], grads * deltas)
            attr = total.astype(np.float32)
            partials.append(
                Partial(
                    map=attr.sum(axis=-1),
                    channels=attr,
                    reference_score=float(background_scores[:, targets[i]].mean(dtype=np.float64)),
                )
            )
            progress((i + 1) / len(batch), f"{self.title}: image {i + 1}/{len(batch)}")
        return partials
