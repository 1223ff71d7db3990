"""SmoothGrad — Smilkov et al. 2017, https://arxiv.org/abs/1706.03825

The input gradient averaged over noisy copies of the input, noise sigma a fraction of the
input's range (x_max - x_min, as in the paper). Absolute gradients by default, as captum's
``NoiseTunnel(Saliency)``. The noise comes from the passed seed only.
"""

from __future__ import annotations

import math

from array_api_compat import device as device_of

from . import arrays
from .base import Cost, Explainer, Param, Partial, register

# noise shared by the images of one request is kept whole up to this size
SHARED_NOISE_BYTES = 256 * 2**20


@register
class SmoothGrad(Explainer):
    name = "smoothgrad"
    title = "SmoothGrad"
    summary = "Input gradients averaged over noisy copies of the image."
    paper = "https://arxiv.org/abs/1706.03825"
    stochastic = True
    params = (
        Param("samples", 25, int, "Noisy copies per image.", minimum=1, cap="max_smoothgrad_samples"),
        Param("noise", 0.15, float, "Noise sigma as a fraction of the input range.", minimum=0.0, maximum=1.0),
        Param("abs", True, bool, "Average absolute gradients (unsigned map)."),
    )

    @classmethod
    def is_signed(cls, params):
        return not params.get("abs", True)

    @classmethod
    def cost(cls, adapter, params=None, background_size=0):
        samples = cls.normalise_params(params)["samples"]
        # + 1: the score of the image itself (the noisy copies do not give it)
        return Cost(forward=samples + 1, backward=samples)

    def _attribute(self, calls, x, targets, params, seed, background, progress):
        xp = calls.xp
        n, samples = len(targets), params["samples"]
        shape = tuple(x.shape[1:])
        size = math.prod(shape)
        flat = xp.reshape(x, (n, size))
        sigma = params["noise"] * (xp.max(flat, axis=1) - xp.min(flat, axis=1))
        total = xp.zeros(x.shape, dtype=xp.float32, device=device_of(x))
        # every image draws the same noise: made once per request where it fits, else per block
        shared = None
        if samples * size * 4 <= SHARED_NOISE_BYTES and n > 1:
            shared = arrays.normal(xp, (samples, *shape), seed, 0, device_of(x))
        # rows are (image, sample), image by image; blocks span images. Sample s of every image draws the
        # noise at counters [s * size, (s + 1) * size) of the seed: the map depends on neither the chunk
        # size nor the other images of the request.
        for block in calls.blocks(n * samples):
            parts, images = [], []
            for i, first, stop, _ in arrays.segments(block, samples):
                if shared is not None:
                    parts.append(x[i : i + 1] + sigma[i] * shared[first:stop])
                else:  # a draw of its own: scaled and shifted in place (the same numbers, no temporaries)
                    noise = arrays.normal(xp, (stop - first, *shape), seed, first * size, device_of(x))
                    noise *= sigma[i]
                    noise += x[i : i + 1]
                    parts.append(noise)
                images += [i] * (stop - first)
            noisy = arrays.joined(xp, parts)
            _, grads = calls.input_gradients(noisy, [targets[i] for i in images])
            if params["abs"]:
                grads = xp.abs(grads)
            for i, first, stop, offset in arrays.segments(block, samples):
                total[i, ...] = total[i, ...] + arrays.row_sum(xp, grads[offset : offset + stop - first])
            progress(block.stop / (n * samples), f"{self.title}: {block.stop} of {n * samples} noisy copies")
        mean = total / samples
        maps = xp.sum(mean, axis=-1)
        return [Partial(map=maps[i], channels=mean[i]) for i in range(n)]
