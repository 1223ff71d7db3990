"""Mask energy: relevance mass accuracy (Arras et al. 2022, https://doi.org/10.1016/j.inffus.2021.11.008),
the fraction of the map's positive attribution that lies inside the ground-truth mask:
``sum(max(a, 0) * mask) / sum(max(a, 0))``. 1: all positive evidence on the object; an empty mask, or a
map with no positive value, gives no value."""

from __future__ import annotations

import numpy as np

from .base import Case, Metric, Score, register


def mass_accuracy(attribution: np.ndarray, mask: np.ndarray) -> float | None:
    mask = np.asarray(mask, bool)
    positive = np.maximum(np.asarray(attribution, np.float64), 0.0)
    total = positive.sum()
    if not mask.any() or total <= 0:
        return None
    return float(positive[mask].sum() / total)


@register
class MaskEnergy(Metric):
    name = "mask_energy"
    title = "Mask energy"
    summary = "Fraction of the positive attribution inside the object's mask (relevance mass accuracy). Higher is better."
    paper = "https://doi.org/10.1016/j.inffus.2021.11.008"
    needs_mask = True

    def score(self, adapter, case: Case, params, seed, progress) -> list[Score]:
        out = []
        for attribution, mask in zip(case.maps, case.masks):
            if mask is None:
                out.append(Score(None, notes=("no mask for this image",)))
                continue
            value = mass_accuracy(attribution, mask)
            out.append(Score(value, notes=() if value is not None else ("empty mask or no positive attribution",)))
        return out
