"""Occlusion — Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901

Slide a window of a baseline value over the image; each pixel gets the mean drop of the
target score over the windows that cover it (as captum's ``Occlusion``).
"""

from __future__ import annotations

import numpy as np

from workbench.errors import ParameterError

from .base import Cost, Explainer, Param, Partial, register


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window positions along one side, as captum's: the last window is cut at the border when the
    stride does not divide (size - window), so every pixel is covered."""
    if window > size:
        raise ParameterError(f"The occlusion window ({window} px) is larger than the image side ({size} px).")
    if stride > window and window < size:
        raise ParameterError(
            f"The stride ({stride} px) is larger than the window ({window} px); "
            "pixels between windows would get no attribution."
        )
    return [k * stride for k in range(-(-(size - window) // stride) + 1)]


@register
class Occlusion(Explainer):
    name = "occlusion"
    title = "Occlusion"
    summary = "Score drop when a sliding window hides part of the image."
    paper = "https://arxiv.org/abs/1311.2901"
    signed = True
    params = (
        Param("window", 16, int, "Window side in pixels (left at 16 with stride 8: a vision transformer's patch size).", minimum=1),
        Param("stride", 8, int, "Step between windows in pixels (left at 8 with window 16: a vision transformer's patch size).", minimum=1),
        Param("baseline", 0.0, float, "Pixel value in [0, 1] that fills the window (0 = black).", minimum=0.0, maximum=1.0),
    )

    DEFAULT_WINDOW, DEFAULT_STRIDE = 16, 8

    @classmethod
    def with_patch_defaults(cls, adapter, params):
        """On a vision transformer, window and stride left at their defaults become the patch size (one
        window per patch token); the result records the values used."""
        given = dict(params or {})
        window, stride = given.get("window"), given.get("stride")
        if window not in (None, cls.DEFAULT_WINDOW) or stride not in (None, cls.DEFAULT_STRIDE):
            return given
        patch = adapter.token_patch_size()
        if patch:
            given["window"] = given["stride"] = patch
        return given

    def explain(self, adapter, batch, targets=None, *, params=None, **kwargs):
        return super().explain(adapter, batch, targets, params=self.with_patch_defaults(adapter, params), **kwargs)

    @classmethod
    def cost(cls, adapter, params=None, background_size=0):
        p = cls.normalise_params(cls.with_patch_defaults(adapter, params))
        h, w = adapter.input_size[:2]
        windows = len(window_starts(h, p["window"], p["stride"])) * len(window_starts(w, p["window"], p["stride"]))
        return Cost(forward=windows + 1, backward=0)

    def _attribute(self, calls, batch, targets, params, seed, background, progress):
        h, w = batch.shape[1:3]
        win, stride = params["window"], params["stride"]
        positions = [(y, x) for y in window_starts(h, win, stride) for x in window_starts(w, win, stride)]
        fill = calls.adapter.preset.apply(np.full(batch.shape[1:], params["baseline"], dtype=np.float32))
        partials = []
        for i, image in enumerate(batch):
            scores = calls.predict(image[None])[0, targets[i]]
            drops = np.empty(len(positions), dtype=np.float64)
            # occluded copies are made one chunk at a time: all windows of a large image would not fit
            for block in calls.blocks(len(positions)):
                occluded = np.repeat(image[None], block.stop - block.start, axis=0)
                for k, (y, x) in enumerate(positions[block]):
                    occluded[k, y : y + win, x : x + win] = fill[y : y + win, x : x + win]
                drops[block] = scores - calls.predict(occluded)[:, targets[i]]
            total = np.zeros((h, w), np.float64)
            count = np.zeros((h, w), np.float64)
            for drop, (y, x) in zip(drops, positions):
                total[y : y + win, x : x + win] += drop
                count[y : y + win, x : x + win] += 1
            covered = np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
            partials.append(Partial(map=covered, target_score=float(scores)))
            progress((i + 1) / len(batch), f"{self.title}: image {i + 1}/{len(batch)}")
        return partials
