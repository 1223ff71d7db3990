"""Score-CAM — Wang et al. 2020, https://arxiv.org/abs/1910.01279

Each activation channel, upsampled and scaled to [0, 1], masks the input; the softmax over
channels of the target scores of these masked inputs weights the channels. No gradients.
"""

from __future__ import annotations

import numpy as np

from workbench.resize import bilinear_resize

from .base import Cost, Param, register
from .cam import LAYER_PARAM, RELU_PARAM, CAMExplainer


@register
class ScoreCAM(CAMExplainer):
    name = "scorecam"
    title = "Score-CAM"
    summary = "Channels weighted by the score of the input masked with each channel."
    paper = "https://arxiv.org/abs/1910.01279"
    needs_gradients = False
    params = (LAYER_PARAM, RELU_PARAM, Param("batch_size", 16, int, "Masked inputs per forward pass.", minimum=1, maximum=4096))

    @classmethod
    def cost(cls, adapter, params=None, background_size=0) -> Cost:
        channels = adapter.layer(cls.layer_for(adapter, params)).output_shape[-1]
        return Cost(forward=1 + channels, backward=0)

    def max_rows(self, params):
        return params["batch_size"]

    def weights(self, calls, batch, targets, activations, gradients, params):
        n, _, _, channels = activations.shape
        size = calls.adapter.input_size[:2]
        weights = np.zeros((n, channels), dtype=np.float32)
        for i in range(n):
            masks = bilinear_resize(np.moveaxis(activations[i], -1, 0), size)  # [c, H, W]
            lo = masks.min(axis=(1, 2), keepdims=True)
            hi = masks.max(axis=(1, 2), keepdims=True)
            span = np.where(hi - lo > 0, hi - lo, 1.0)
            masks = (masks - lo) / span
            step = params["batch_size"]
            scores = np.concatenate(
                [
                    calls.predict(batch[i][None] * masks[k : k + step, :, :, None])[:, targets[i]]
                    for k in range(0, channels, step)
                ]
            )
            scores = scores - scores.max()
            weights[i] = np.exp(scores) / np.exp(scores).sum()
        return weights
