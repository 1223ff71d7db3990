"""SmoothGrad — Smilkov et al. 2017, https://arxiv.org/abs/1706.03825

The input gradient averaged over noisy copies of the input, noise sigma a fraction of the
input's range (x_max - x_min, as in the paper). Absolute gradients by default, as captum's
``NoiseTunnel(Saliency)``. The noise comes from the passed seed only.
"""

from __future__ import annotations

import numpy as np

from .base import Cost, Explainer, Param, Partial, register, weighted_sum


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

    def _attribute(self, calls, batch, targets, params, seed, background, progress):
        partials = []
        samples = params["samples"]
        for i, x in enumerate(batch):
            rng = np.random.default_rng(seed)
            sigma = params["noise"] * float(x.max() - x.min())
            total = np.zeros(x.shape, dtype=np.float64)
            # noise drawn block by block continues one stream: the map does not depend on the chunk size
            for block in calls.blocks(samples):
                size = block.stop - block.start
                noisy = x[None] + rng.normal(0.0, sigma, size=(size, *x.shape)).astype(np.float32)
                _, grads = calls.input_gradients(noisy, [targets[i]] * size)
                if params["abs"]:
                    grads = np.abs(grads)
                total += weighted_sum(np.full(size, 1.0 / samples), grads)
            mean = total.astype(np.float32)
            partials.append(Partial(map=mean.sum(axis=-1), channels=mean))
            progress((i + 1) / len(batch), f"{self.title}: image {i + 1}/{len(batch)}")
        return partials
