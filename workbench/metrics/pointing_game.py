"""Pointing game (Zhang et al. 2018, https://arxiv.org/abs/1608.00507): a hit when the map's maximum
lies in the ground-truth mask, or within ``tolerance`` pixels of it (the paper uses 15 px; the
default here is 0, the strict game). Ties at the maximum count as a hit when any of them does, as in
Quantus. The value is 1 (hit) or 0 (miss); an empty mask gives no value."""

from __future__ import annotations

import numpy as np

from explainers.base import Param
from .base import Case, Metric, Score, register


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """The mask grown by a disk of ``radius`` pixels (Euclidean)."""
    if radius <= 0:
        return mask
    h, w = mask.shape
    grown = np.zeros_like(mask)
    padded = np.pad(mask, radius)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                grown |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return grown


def pointing_hit(attribution: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> float | None:
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    a = np.asarray(attribution, np.float64)
    peak = a == a.max()
    return float(np.any(peak & dilate(mask, int(tolerance))))


@register
class PointingGame(Metric):
    name = "pointing_game"
    title = "Pointing game"
    summary = "Does the map's maximum fall in the object's mask? 1 hit, 0 miss. Higher is better."
    paper = "https://arxiv.org/abs/1608.00507"
    needs_mask = True
    params = (Param("tolerance", 0, int, "A hit within this many pixels of the mask still counts (the paper: 15).", minimum=0, maximum=64),)

    def score(self, adapter, case: Case, params, seed, progress) -> list[Score]:
        out = []
        for attribution, mask in zip(case.maps, case.masks):
            if mask is None:
                out.append(Score(None, notes=("no mask for this image",)))
                continue
            value = pointing_hit(attribution, mask, params["tolerance"])
            out.append(Score(value, notes=() if value is not None else ("the mask is empty",)))
        return out
