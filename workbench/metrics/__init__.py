"""Evaluation metrics for attribution maps, one file each, registered by name.

Faithfulness (``deletion``, ``insertion``), localisation against ground-truth masks
(``pointing_game``, ``mask_energy``), the sanity check (``randomisation``) and complexity
(``sparseness``, ``complexity``). Each class states its paper, defaults, direction and cost::

    >>> from workbench import metrics
    >>> metrics.names()
    ['deletion', 'insertion', 'pointing_game', 'mask_energy', 'randomisation', 'sparseness', 'complexity']
    >>> evaluation = metrics.evaluate(adapter, batch, targets, {"gradcam": maps}, ["deletion", "sparseness"])
"""

from . import (  # noqa: F401  (importing registers)
    pixel_flipping,
    pointing_game,
    mask_energy,
    randomisation,
    sparseness,
    complexity,
)
from .base import REGISTRY, Case, Metric, Score, get, names, register
from .evaluation import RANDOM, Evaluation, MetricResult, estimate, evaluate, evaluate_comparison, normalise_params

__all__ = [
    "RANDOM",
    "REGISTRY",
    "Case",
    "Evaluation",
    "Metric",
    "MetricResult",
    "Score",
    "estimate",
    "evaluate",
    "evaluate_comparison",
    "get",
    "names",
    "normalise_params",
    "register",
]
