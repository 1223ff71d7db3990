"""Integrated Gradients — Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365

(x - x') times the path integral of the gradient from a baseline x' to x, approximated by
Gauss-Legendre quadrature (captum's default) or the Riemann trapezoid rule. Completeness:
sum of attributions = f(x) - f(x'); the gap is reported on every result.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import device as device_of

from workbench.errors import ParameterError
from workbench.resize import gaussian_blur

from . import arrays
from .base import Cost, Explainer, Param, Partial, register

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

    def _attribute(self, calls, x, targets, params, seed, background, progress):
        xp = calls.xp
        alphas, weights = quadrature(params["steps"], params["method"])
        alphas, weights = arrays.as_weights(xp, alphas, x), arrays.as_weights(xp, weights, x)
        has_ends = self._path_has_ends(params["method"])
        preset = calls.adapter.preset
        n, steps = len(targets), len(alphas)
        # baselines are made on the host (one image each) and cross to the device once
        bases = calls.adapter.device_array(
            np.stack(
                [
                    make_baseline(params["baseline"], image, preset, np.random.default_rng(seed), background, params["blur_sigma"])
                    for image in calls.host_batch
                ]
            )
        )
        deltas = x - bases
        total = xp.zeros(x.shape, dtype=xp.float32, device=device_of(x))
        score = [None] * n
        reference = [None] * n
        # rows are (image, step), image by image; blocks of the path span images
        for block in calls.blocks(n * steps):
            parts, images = [], []
            for i, first, stop, _ in arrays.segments(block, steps):
                path = alphas[first:stop, None, None, None] * deltas[i : i + 1]
                path += bases[i : i + 1]  # in place: the same numbers as base + alpha * delta, one temporary fewer
                # the trapezoid's ends are exactly the baseline and the image, not base + 1.0 * (x - base)
                if has_ends and (first == 0 or stop == steps):
                    ends = [bases[i : i + 1]] if first == 0 else []
                    middle = path[(1 if first == 0 else 0) : (len(path) - 1 if stop == steps else len(path))]
                    path = xp.concat(ends + [middle] + ([x[i : i + 1]] if stop == steps else []))
                parts.append(path)
                images += [i] * (stop - first)
            outputs, grads = calls.input_gradients(arrays.joined(xp, parts), [targets[i] for i in images])
            for i, first, stop, offset in arrays.segments(block, steps):
                total[i, ...] = total[i, ...] + arrays.weighted_sum(xp, weights[first:stop], grads[offset : offset + stop - first])
                if has_ends and first == 0:
                    reference[i] = outputs[offset, targets[i]]
                if has_ends and stop == steps:
                    score[i] = outputs[offset + stop - first - 1, targets[i]]
            progress(block.stop / (n * steps), f"{self.title}: {block.stop} of {n * steps} path points")
        attr = total * deltas
        if not has_ends:
            ends = calls.target_scores(calls.predict(xp.concat([x, bases])), list(targets) * 2)
            score, reference = [ends[i] for i in range(n)], [ends[n + i] for i in range(n)]
        maps = xp.sum(attr, axis=-1)
        return [
            Partial(map=maps[i], channels=attr[i], target_score=score[i], reference_score=reference[i]) for i in range(n)
        ]
