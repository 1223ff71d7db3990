"""The class-activation-map pipeline; a CAM variant overrides only :meth:`CAMExplainer.weights`.

activations and gradients of one layer -> per-channel weights -> weighted sum -> ReLU
-> bilinear upsampling (half-pixel centres) to the model's input size. All on the model's
device, for the whole batch at once.
"""

from __future__ import annotations

from typing import ClassVar

from workbench.adapters.base import ModelAdapter

from . import arrays
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

    def weights(self, calls: Calls, x, targets, activations, gradients, params):
        """[N, h, w, c] activations (and gradients) -> [N, c] channel weights, device arrays."""
        raise NotImplementedError

    def _attribute(self, calls, x, targets, params, seed, background, progress):
        xp = calls.xp
        layer = self.layer_for(calls.adapter, params)
        progress(0.0, f"{self.title}: layer {layer}")
        if self.needs_gradients:
            passed = calls.layer_gradients(x, layer, targets)
            outputs, activations, gradients = passed.outputs, passed.activations, passed.gradients
        else:
            outputs, activations = calls.layer_activations(x, layer)
            gradients = None
        w = self.weights(calls, x, targets, activations, gradients, params)
        cams = xp.sum(activations * w[:, None, None, :], axis=-1)
        if params.get("relu", True):
            cams = arrays.relu(xp, cams)
        cams = arrays.bilinear(xp, cams, calls.adapter.input_size[:2])
        scores = calls.target_scores(outputs, targets)
        progress(1.0, f"{self.title}: done")
        return [Partial(map=cams[i], layer=layer, target_score=scores[i]) for i in range(len(targets))]
