"""The class-activation-map pipeline; a CAM variant overrides only :meth:`CAMExplainer.weights`.

activations and gradients of one layer -> per-channel weights -> weighted sum -> ReLU
-> bilinear upsampling (half-pixel centres) to the model's input size.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from workbench.adapters.base import ModelAdapter
from workbench.resize import bilinear_resize

from .base import Calls, Cost, Explainer, Param, Partial

LAYER_PARAM = Param("layer", None, str, "Layer to explain; empty = the adapter's automatic choice (last spatial layer).")
RELU_PARAM = Param("relu", True, bool, "Keep only positive evidence (the paper's ReLU).")


class CAMExplainer(Explainer):
    signed = False
    needs_gradients: ClassVar[bool] = True
    params = (LAYER_PARAM, RELU_PARAM)

    @classmethod
    def layer_for(cls, adapter: ModelAdapter, params) -> str:
        return (params or {}).get("layer") or adapter.default_cam_layer()

    @classmethod
    def cost(cls, adapter, params=None, background_size=0) -> Cost:
        return Cost(forward=1, backward=1 if cls.needs_gradients else 0)

    def weights(self, calls: Calls, batch, targets, activations, gradients, params) -> np.ndarray:
        """[N, h, w, c] activations (and gradients) -> [N, c] channel weights."""
        raise NotImplementedError

    def _attribute(self, calls, batch, targets, params, seed, background, progress):
        layer = self.layer_for(calls.adapter, params)
        progress(0.0, f"{self.title}: layer {layer}")
        if self.needs_gradients:
            passed = calls.layer_gradients(batch, layer, targets)
            outputs, activations, gradients = passed.outputs, passed.activations, passed.gradients
        else:
            outputs, activations = calls.layer_activations(batch, layer)
            gradients = None
        w = self.weights(calls, batch, targets, activations, gradients, params)
        cams = np.einsum("nhwc,nc->nhw", activations, w, dtype=np.float32)
        if params.get("relu", True):
            cams = np.maximum(cams, 0)
        cams = bilinear_resize(cams, calls.adapter.input_size[:2])
        progress(1.0, f"{self.title}: done")
        return [
            Partial(map=cams[i], layer=layer, target_score=float(outputs[i, targets[i]])) for i in range(len(batch))
        ]
