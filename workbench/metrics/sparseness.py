"""Sparseness: the Gini index of |map| (Chalasani et al. 2020, https://arxiv.org/abs/1810.06583).
0 for a constant map, (n - 1) / n for a map with one non-zero pixel; higher means fewer pixels carry
the attribution. Free: computed from the map alone."""

from __future__ import annotations

import numpy as np

from .base import Case, Metric, Score, register


def gini(attribution: np.ndarray) -> float | None:
    a = np.sort(np.abs(np.asarray(attribution, np.float64)).ravel())
    n, total = a.size, a.sum()
    if n == 0 or total <= 0:
        return None if n == 0 else 0.0
    k = np.arange(1, n + 1)
    return float(((2 * k - n - 1) * a).sum() / (n * total))


@register
class Sparseness(Metric):
    name = "sparseness"
    title = "Sparseness (Gini)"
    summary = "Gini index of |map|: 0 spread evenly, near 1 concentrated on few pixels. Higher is sparser."
    paper = "https://arxiv.org/abs/1810.06583"

    def score(self, adapter, case: Case, params, seed, progress) -> list[Score]:
        return [Score(gini(m)) for m in case.maps]
