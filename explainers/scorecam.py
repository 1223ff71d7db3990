"""Score-CAM — Wang et al. 2020, https://arxiv.org/abs/1910.01279

Each activation channel, upsampled and scaled to [0, 1], masks the input; the softmax over
channels of the target scores of these masked inputs weights the channels. No gradients.

The masks follow pytorch-grad-cam's ``ScoreCAM`` exactly: bilinear upsampling with aligned
corners (its ``UpsamplingBilinear2d``) and ``(a - min) / (max - min + 1e-8)``; the final map,
like every CAM here, is upsampled with half-pixel centres.
"""

from __future__ import annotations

import numpy as np

from .base import Cost, Param, register
from .cam import LAYER_PARAM, RELU_PARAM, CAMExplainer


def _corner_axis(src: int, dst: int):
    # aligned corners: output pixel k samples source position k * (src - 1) / (dst - 1)
    pos = np.arange(dst, dtype=np.float64) * ((src - 1) / (dst - 1) if dst > 1 else 0.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def upsample_aligned(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[k, h, w] -> [k, H, W], bilinear with aligned corners (torch ``align_corners=True``)."""
    y0, y1, fy = _corner_axis(maps.shape[1], size[0])
    x0, x1, fx = _corner_axis(maps.shape[2], size[1])
    rows = maps[:, y0] * (1 - fy)[None, :, None] + maps[:, y1] * fy[None, :, None]
    return (rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx).astype(np.float32)


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
        step = params["batch_size"]
        weights = np.zeros((n, channels), dtype=np.float32)
        for i in range(n):
            scores = np.empty(channels, dtype=np.float64)
            # masks are made a batch at a time: all channels at input size would not fit for wide layers
            for k in range(0, channels, step):
                masks = upsample_aligned(np.moveaxis(activations[i, :, :, k : k + step], -1, 0), size)
                lo = masks.min(axis=(1, 2), keepdims=True)
                hi = masks.max(axis=(1, 2), keepdims=True)
                masks = (masks - lo) / (hi - lo + 1e-8)
                scores[k : k + step] = calls.predict(batch[i][None] * masks[:, :, :, None])[:, targets[i]]
            scores -= scores.max()
            weights[i] = np.exp(scores) / np.exp(scores).sum()
        return weights
