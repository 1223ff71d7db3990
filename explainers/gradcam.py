"""Grad-CAM — Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391

Channel weights are the spatially averaged gradients of the target score. Only the
layer's gradients are computed, never the input's.
"""

from __future__ import annotations

from .base import register
from .cam import CAMExplainer


@register
class GradCAM(CAMExplainer):
    name = "gradcam"
    title = "Grad-CAM"
    summary = "Layer activations weighted by their average gradient."
    paper = "https://arxiv.org/abs/1610.02391"

    def weights(self, calls, x, targets, activations, gradients, params):
        return calls.xp.mean(gradients, axis=(1, 2))
