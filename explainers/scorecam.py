"""Score-CAM — Wang et al. 2020, https://arxiv.org/abs/1910.01279

Each activation channel, upsampled and scaled to [0, 1], masks the input; the softmax over
channels of the target scores of these masked inputs weights the channels. No gradients.

The masks follow pytorch-grad-cam's ``ScoreCAM`` exactly: bilinear upsampling with aligned
corners (its ``UpsamplingBilinear2d``) and ``(a - min) / (max - min + 1e-8)``; the final map,
like every CAM here, is upsampled with half-pixel centres.
"""

from __future__ import annotations

import numpy as np

from . import arrays
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

    def weights(self, calls, x, targets, activations, gradients, params):
        xp = calls.xp
        n, _, _, channels = activations.shape
        size = calls.adapter.input_size[:2]
        # one row per (image, channel), images one after another: blocks of masked inputs span images
        per_channel = xp.reshape(xp.permute_dims(activations, (0, 3, 1, 2)), (n * channels, *activations.shape[1:3]))
        scores = []
        # masks are made a block at a time: all channels at input size would not fit for wide layers
        for block in calls.blocks(n * channels):
            masks = arrays.bilinear(xp, per_channel[block], size, aligned=True)
            lo = xp.min(masks, axis=(1, 2), keepdims=True)
            hi = xp.max(masks, axis=(1, 2), keepdims=True)
            masks = (masks - lo) / (hi - lo + 1e-8)
            images = np.arange(block.start, block.stop) // channels
            masked = calls.rows(x, images) * masks[..., None]
            scores.append(calls.target_scores(calls.predict(masked), [targets[i] for i in images]))
        scores = xp.reshape(xp.concat(scores), (n, channels))
        scores = xp.exp(scores - xp.max(scores, axis=1, keepdims=True))
        return scores / xp.sum(scores, axis=1, keepdims=True)
