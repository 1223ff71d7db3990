"""Expected Gradients (gradient SHAP) — Erion et al. 2021, https://arxiv.org/abs/1906.10670

shap.GradientExplainer's algorithm: for each sample draw a background image x' and
alpha ~ U(0, 1), take the gradient at x' + alpha (x - x') times (x - x'), and average.
In expectation the attributions sum to f(x) - E[f(x')].
"""

from __future__ import annotations

import numpy as np

from .base import Cost, Explainer, Param, Partial, register


def default_background(x_shape, preset, seed: int) -> np.ndarray:
    """Used when no background set is given: black, white and 8 uniform-noise images."""
    rng = np.random.default_rng(seed)
    unit = np.concatenate(
        [np.zeros((1, *x_shape), np.float32), np.ones((1, *x_shape), np.float32), rng.random((8, *x_shape), np.float32)]
    )
    return preset.apply(unit)


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
            picks = rng.integers(0, len(background), size=samples)
            alphas = rng.random(samples).astype(np.float32)[:, None, None, None]
            refs = background[picks]
            points = refs + alphas * (x[None] - refs)
            _, grads = calls.input_gradients(points, [targets[i]] * samples)
            attr = (grads * (x[None] - refs)).mean(axis=0, dtype=np.float64).astype(np.float32)
            partials.append(
                Partial(
                    map=attr.sum(axis=-1),
                    channels=attr,
                    reference_score=float(background_scores[:, targets[i]].mean()),
                )
            )
            progress((i + 1) / len(batch), f"{self.title}: image {i + 1}/{len(batch)}")
        return partials
