"""Complexity: the entropy (natural log) of |map| normalised to sum 1 (Bhatt et al. 2020,
https://arxiv.org/abs/2005.00631). 0 for a map with one non-zero pixel, log(n) for a constant map;
lower means a simpler map. Free: computed from the map alone."""

from __future__ import annotations

import numpy as np

from .base import Case, Metric, Score, register


def entropy(attribution: np.ndarray) -> float | None:
    a = np.abs(np.asarray(attribution, np.float64)).ravel()
    total = a.sum()
    if total <= 0:
        return None
    p = a[a > 0] / total
    return float(-(p * np.log(p)).sum())


@register
class Complexity(Metric):
    name = "complexity"
    title = "Complexity (entropy)"
    summary = "Entropy of the normalised |map|: 0 one pixel, log(pixels) uniform. Lower is simpler."
    paper = "https://arxiv.org/abs/2005.00631"
    higher_is_better = False

    def score(self, adapter, case: Case, params, seed, progress) -> list[Score]:
        return [Score(entropy(m)) for m in case.maps]
