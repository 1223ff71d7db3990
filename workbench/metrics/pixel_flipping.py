"""Deletion and insertion (RISE, Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421).

Pixels are ranked by the map, most important first, and changed in ``steps`` equal parts: deletion
replaces them with the black baseline (the preset applied to zero pixels), insertion reveals them on
a blurred copy of the image. The curve is the target's probability (softmax of logits, or the model's
own probabilities) at each fraction of pixels changed, 0 to 1 inclusive (``steps + 1`` points, the
unchanged image first); the value is the area under it by the trapezoid rule over the fraction.
A good map makes deletion fall fast (low area) and insertion rise fast (high area).

Ties in the map are broken by position (a stable sort), so a constant map deletes in raster order.
The blur is a separable Gaussian (RISE: 11 x 11, σ = 5) with mirrored borders, so the border does not
darken as RISE's zero padding does.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from explainers.base import Calls, Param
from ..adapters.base import ModelAdapter
from ..settings import get_settings
from ..adapters.base import probabilities
from .base import Case, Metric, Progress, Score, register

STEPS = Param("steps", 20, int, "Equal parts the pixels are changed in; the curve has steps + 1 points.", minimum=2, maximum=1000)


def boundaries(pixels: int, steps: int) -> np.ndarray:
    """Pixels changed after each step: ``steps + 1`` integers from 0 to ``pixels``, as equal as possible."""
    return np.round(np.linspace(0, pixels, steps + 1)).astype(np.int64)


def ranks(attribution: np.ndarray) -> np.ndarray:
    """Each pixel's rank in the map, 0 for the most important (ties: earlier position first)."""
    flat = np.asarray(attribution, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size)
    return rank.reshape(np.shape(attribution))


def gaussian_blur(batch: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """[N, H, W, C] blurred per channel by a normalised separable Gaussian, borders mirrored."""
    if sigma <= 0 or radius <= 0:
        return np.array(batch, dtype=np.float32)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    x = np.asarray(batch, dtype=np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="symmetric")
        n = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(kernel))
    return x.astype(np.float32)


def perturbation_curves(
    adapter: ModelAdapter,
    start: np.ndarray,
    end: np.ndarray,
    maps: np.ndarray,
    targets: tuple[int, ...],
    steps: int,
    progress: Progress,
    label: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """For each image, move the ``steps`` equal parts of its pixels, in the map's order, from ``start`` to
    ``end`` and record the target's probability -> (fractions [steps+1], curves [N, steps+1], evaluations)."""
    n, h, w, _ = start.shape
    bounds = boundaries(h * w, steps)
    calls = Calls(adapter, get_settings())
    curves = np.empty((n, steps + 1), np.float64)
    for i in range(n):
        rank = ranks(maps[i])[..., None]
        for block in calls.blocks(len(bounds)):  # inputs built a chunk at a time: memory bounded by the chunk
            rows = np.stack([np.where(rank < b, end[i], start[i]) for b in bounds[block]]).astype(np.float32)
            scores = adapter.to_host(calls.predict(adapter.device_array(rows)))
            curves[i, block] = probabilities(scores, adapter.output_kind)[:, targets[i]]
        progress((i + 1) / n, f"{label}: image {i + 1} of {n}")
    return bounds / float(h * w), curves, calls.forward


def area(fractions: np.ndarray, curve: np.ndarray) -> float:
    """Trapezoid rule over the fraction of pixels changed (0..1)."""
    y = np.asarray(curve, np.float64)
    x = np.asarray(fractions, np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


class _PixelFlipping(Metric):
    needs_model = True
    has_curve = True
    params = (STEPS,)

    @classmethod
    def cost(cls, adapter, params, method=None, method_params=None):
        return (int(params.get("steps", STEPS.default)) + 1, 0)

    def endpoints(self, adapter: ModelAdapter, batch: np.ndarray, params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def score(self, adapter, case: Case, params, seed, progress) -> list[Score]:
        batch = np.asarray(case.batch, np.float32)
        start, end = self.endpoints(adapter, batch, params)
        fractions, curves, evaluations = perturbation_curves(
            adapter, start, end, np.asarray(case.maps), case.targets, int(params["steps"]), progress, self.title
        )
        per_image = evaluations // max(len(batch), 1)
        return [
            Score(
                value=area(fractions, curve),
                curve=tuple((float(x), float(y)) for x, y in zip(fractions, curve)),
                evaluations=per_image,
            )
            for curve in curves
        ]


@register
class Deletion(_PixelFlipping):
    name = "deletion"
    title = "Deletion AUC"
    summary = "Remove the most important pixels first (black); the target's probability should fall fast. Lower is better."
    paper = "https://arxiv.org/abs/1806.07421"
    higher_is_better = False

    def endpoints(self, adapter, batch, params):
        black = adapter.prepare(np.zeros_like(batch[:1]))
        return batch, np.broadcast_to(black, batch.shape)


@register
class Insertion(_PixelFlipping):
    name = "insertion"
    title = "Insertion AUC"
    summary = "Reveal the most important pixels first on a blurred image; the target's probability should rise fast. Higher is better."
    paper = "https://arxiv.org/abs/1806.07421"
    higher_is_better = True
    params = (
        STEPS,
        Param("blur_sigma", 5.0, float, "σ of the Gaussian blur of the starting image, in model-input pixels (RISE: 5).", minimum=0.0, maximum=100.0),
        Param("blur_radius", 5, int, "Half-width of the blur kernel in pixels (RISE: 11 x 11, radius 5).", minimum=0, maximum=200),
    )

    def endpoints(self, adapter, batch, params):
        # the preset is affine per channel and the kernel sums to 1, so blurring the model input
        # equals blurring the pixels and applying the preset
        return gaussian_blur(batch, float(params["blur_sigma"]), int(params["blur_radius"])), batch
