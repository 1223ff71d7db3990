"""Attribution methods, one file each, registered by name.

    >>> import explainers
    >>> explainers.names()
    ['gradcam', 'gradcam++', 'scorecam', 'saliency', 'smoothgrad', 'integrated_gradients', ...]
    >>> results = explainers.get("gradcam").explain(adapter, batch, targets)
"""

from . import (  # noqa: F401  (importing registers)
    gradcam,
    gradcam_plus_plus,
    scorecam,
    saliency,
    smoothgrad,
    integrated_gradients,
    expected_gradients,
    shap_partition,
    occlusion,
    attention_rollout,
)
from .base import REGISTRY, Calls, Cost, Explainer, Param, get, names, register

__all__ = ["REGISTRY", "Calls", "Cost", "Explainer", "Param", "get", "names", "register"]
