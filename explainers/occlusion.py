"""Occlusion — Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901

Slide a window of a baseline value over the image; each pixel gets the mean drop of the
target score over the windows that cover it (as captum's ``Occlusion``).
"""

from __future__ import annotations

import numpy as np
from array_api_compat import device as device_of

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

    def _attribute(self, calls, x, targets, params, seed, background, progress):
        xp = calls.xp
        dev = device_of(x)
        n, h, w = len(targets), x.shape[1], x.shape[2]
        win, stride = params["window"], params["stride"]
        ys, xs = window_starts(h, win, stride), window_starts(w, win, stride)
        positions = np.array([(y, x0) for y in ys for x0 in xs], dtype=np.int64)
        fill = calls.adapter.device_array(calls.adapter.preset.apply(np.full(tuple(x.shape[1:]), params["baseline"], np.float32)))
        scores = calls.target_scores(calls.predict(x), targets)
        rows_y = xp.arange(h, device=dev)[None, :, None]
        rows_x = xp.arange(w, device=dev)[None, None, :]
        drops = []
        # rows are (image, window), image by image; occluded copies are made one block at a time
        for block in calls.blocks(n * len(positions)):
            rows = np.arange(block.start, block.stop)
            images, windows = rows // len(positions), rows % len(positions)
            y0 = xp.asarray(positions[windows, 0], device=dev)[:, None, None]
            x0 = xp.asarray(positions[windows, 1], device=dev)[:, None, None]
            inside = (rows_y >= y0) & (rows_y < y0 + win) & (rows_x >= x0) & (rows_x < x0 + win)
            occluded = xp.where(inside[..., None], fill[None], calls.rows(x, images))
            after = calls.target_scores(calls.predict(occluded), [targets[i] for i in images])
            drops.append(calls.rows(scores, images) - after)
            progress(block.stop / (n * len(positions)), f"{self.title}: {block.stop} of {n * len(positions)} occluded copies")
        drops = xp.reshape(xp.concat(drops), (n, len(ys), len(xs)))
        # each pixel: the mean drop over the windows covering it, as (rows covered) D (columns covered)
        cover_y = xp.asarray(_coverage(ys, win, h), device=dev)
        cover_x = xp.asarray(_coverage(xs, win, w), device=dev)
        total = xp.matmul(xp.matmul(xp.permute_dims(cover_y, (1, 0))[None], drops), cover_x[None])
        count = xp.sum(cover_y, axis=0)[:, None] * xp.sum(cover_x, axis=0)[None, :]
        maps = xp.where(count > 0, total / xp.where(count > 0, count, xp.ones_like(count)), xp.zeros_like(total))
        return [Partial(map=maps[i], target_score=scores[i]) for i in range(n)]


def _coverage(starts: list[int], window: int, size: int) -> np.ndarray:
    """[windows, size] float32: 1 where a window covers a pixel along one side."""
    cover = np.zeros((len(starts), size), np.float32)
    for k, start in enumerate(starts):
        cover[k, start : start + window] = 1.0
    return cover
