"""Integrated Gradients — Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365

(x - x') times the path integral of the gradient from a baseline x' to x, approximated by
Gauss-Legendre quadrature (captum's default) or the Riemann trapezoid rule. Completeness:
sum of attributions = f(x) - f(x'); the gap is reported on every result.
"""

from __future__ import annotations

import numpy as np

from workbench.errors import ParameterError
from workbench.resize import gaussian_blur

from .base import Cost, Explainer, Param, Partial, register, weighted_sum

BASELINES = ("black", "white", "blur", "noise", "background")


def quadrature(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Points in [0, 1] and their weights, as captum's approximation_methods."""
    if method == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (points + 1), 0.5 * weights
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ParameterError("The trapezoid rule needs at least 2 steps.")
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[0] *= 0.5
        weights[-1] *= 0.5
        return np.linspace(0.0, 1.0, steps), weights
    raise ParameterError(f"Unknown integration method {method!r}; use gausslegendre or riemann_trapezoid.")


def make_baseline(kind: str, x: np.ndarray, preset, rng: np.random.Generator, background, blur_sigma: float):
    """Baseline in model-input space for one image x [H, W, C]."""
    if kind == "black":
        return preset.apply(np.zeros_like(x))
    if kind == "white":
        return preset.apply(np.ones_like(x))
    if kind == "blur":
        return gaussian_blur(x[None], blur_sigma)[0]
    if kind == "noise":
        return preset.apply(rng.random(x.shape, dtype=np.float32))
    if kind == "background":
        if background is None or len(background) == 0:
            raise ParameterError("The 'background' baseline needs a background set of images.")
        return np.asarray(background, dtype=np.float32).mean(axis=0)
    raise ParameterError(f"Unknown baseline {kind!r}; use one of {', '.join(BASELINES)}.")


@register
class IntegratedGradients(Explainer):
    name = "integrated_gradients"
    title = "Integrated Gradients"
    summary = "Gradients integrated along the straight path from a baseline to the image."
    paper = "https://arxiv.org/abs/1703.01365"
    signed = True
    has_completeness = True
    uses_background = True
    params = (
        Param("steps", 50, int, "Integration steps.", minimum=1, cap="max_ig_steps"),
        Param("method", "gausslegendre", str, "Quadrature rule.", choices=("gausslegendre", "riemann_trapezoid")),
        Param("baseline", "black", str, "Starting point of the path.", choices=BASELINES),
        Param("blur_sigma", 8.0, float, "Gaussian sigma in pixels for the 'blur' baseline.", minimum=0.0),
    )

    @staticmethod
    def _path_has_ends(method: str) -> bool:
        # the trapezoid rule evaluates the baseline and the image themselves: their scores come free
        return method == "riemann_trapezoid"

    @classmethod
    def cost(cls, adapter, params=None, background_size=0):
        p = cls.normalise_params(params)
        return Cost(forward=p["steps"] + (0 if cls._path_has_ends(p["method"]) else 2), backward=p["steps"])

    def _attribute(self, calls, batch, targets, params, seed, background, progress):
        alphas, weights = quadrature(params["steps"], params["method"])
        has_ends = self._path_has_ends(params["method"])
        preset = calls.adapter.preset
        partials = []
        steps = len(alphas)
        for i, x in enumerate(batch):
            rng = np.random.default_rng(seed)
            base = make_baseline(params["baseline"], x, preset, rng, background, params["blur_sigma"])
            delta = x - base
            total = np.zeros(x.shape, dtype=np.float64)
            for block in calls.blocks(steps):
                path = alphas[block].astype(np.float32)[:, None, None, None] * delta[None]
                path += base[None]
                # the trapezoid's ends are exactly the baseline and the image, not base + 1.0 * (x - base)
                if has_ends and block.start == 0:
                    path[0] = base
                if has_ends and block.stop == steps:
                    path[-1] = x
                outputs, grads = calls.input_gradients(path, [targets[i]] * len(path))
                total += weighted_sum(weights[block], grads)
                if has_ends and block.start == 0:
                    reference = outputs[0, targets[i]]
                if has_ends and block.stop == steps:
                    score = outputs[-1, targets[i]]
            attr = (total * delta).astype(np.float32)
            if not has_ends:
                score, reference = calls.predict(np.stack([x, base]))[:, targets[i]]
            partials.append(
                Partial(
                    map=attr.sum(axis=-1),
                    channels=attr,
                    target_score=float(score),
                    reference_score=float(reference),
                )
            )
            progress((i + 1) / len(batch), f"{self.title}: image {i + 1}/{len(batch)}")
        return partials
