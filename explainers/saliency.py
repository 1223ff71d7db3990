"""Saliency — Simonyan et al. 2013, https://arxiv.org/abs/1312.6034

The gradient of the target score with respect to the input; absolute by default, as captum's ``Saliency``.
"""

from __future__ import annotations

from .base import Cost, Explainer, Param, Partial, register


@register
class Saliency(Explainer):
    name = "saliency"
    title = "Saliency"
    summary = "Input gradient of the target score."
    paper = "https://arxiv.org/abs/1312.6034"
    signed = False
    params = (Param("abs", True, bool, "Absolute value of the gradient (unsigned map)."),)

    @classmethod
    def is_signed(cls, params):
        return not params.get("abs", True)

    @classmethod
    def cost(cls, adapter, params=None, background_size=0):
        return Cost(forward=1, backward=1)

    def _attribute(self, calls, x, targets, params, seed, background, progress):
        xp = calls.xp
        outputs, grads = calls.input_gradients(x, targets)
        if params["abs"]:
            grads = xp.abs(grads)
        maps = xp.sum(grads, axis=-1)
        scores = calls.target_scores(outputs, targets)
        return [Partial(map=maps[i], channels=grads[i], target_score=scores[i]) for i in range(len(targets))]
