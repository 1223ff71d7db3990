"""Grad-CAM++ — Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063

Pixel-wise weighting of positive gradients with the closed-form alphas of the paper
(second and third derivatives approximated by powers of the first, as for an
exponential of the score), as pytorch-grad-cam computes them.
"""

from __future__ import annotations

from . import arrays
from .base import register
from .cam import CAMExplainer


@register
class GradCAMPlusPlus(CAMExplainer):
    name = "gradcam++"
    title = "Grad-CAM++"
    summary = "Grad-CAM with pixel-wise weights that favour several object instances."
    paper = "https://arxiv.org/abs/1710.11063"

    def weights(self, calls, x, targets, activations, gradients, params):
        xp = calls.xp
        g2 = gradients**2
        g3 = g2 * gradients
        sum_activations = xp.sum(activations, axis=(1, 2))
        alpha = g2 / (2 * g2 + sum_activations[:, None, None, :] * g3 + 1e-6)
        alpha = xp.where(gradients != 0, alpha, xp.zeros_like(alpha))
        return xp.sum(arrays.relu(xp, gradients) * alpha, axis=(1, 2))
