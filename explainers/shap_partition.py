"""SHAP Partition explainer with an image masker — Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874

A thin, batched wrapper around the shap library's ``PartitionExplainer`` and
``shap.maskers.Image``: Owen values over a hierarchy of pixel regions. The masker works on
pixels in [0, 255] (inpainting needs 8-bit values), and the model function maps masked
pixels through the adapter's preset. Additivity is exact: sum = f(x) - f(fully masked).
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from .base import Cost, Explainer, Param, Partial, register

MASKERS = {"blur": "blur(128,128)", "inpaint": "inpaint_telea", "inpaint_ns": "inpaint_ns"}


def pixel_model(calls, preset):
    """The function shap calls: masked pixels in [0, 255] -> model outputs, chunked by our batching.

    Set ``f.watch`` to the pixels being explained: the outputs of shap's own evaluation of the unmasked
    image (a one-row call with exactly those pixels) are kept in ``f.unmasked``, so the image's score
    needs no forward pass of its own."""

    adapter = calls.adapter

    def f(pixels: np.ndarray) -> np.ndarray:
        # shap ranks regions by the change of every output, on the host: the scores cross, the images do not
        unit = np.asarray(pixels, dtype=np.float32) / 255.0
        if not preset.is_identity:  # (a copy of 50 images per call otherwise: 13 % of a resnet-mini run)
            unit = preset.apply(unit)
        out = adapter.to_host(calls.predict(adapter.device_array(unit)))
        if f.watch is not None and f.unmasked is None and len(pixels) == 1 and np.array_equal(pixels[0], f.watch):
            f.unmasked = out[0]
        return out

    f.watch = f.unmasked = None
    return f


# shap breaks ties between equally promising regions with numpy's global generator
# (np.random.randn in PartitionExplainer.owen); its own ``seed`` argument is not used there.
_GLOBAL_RNG = threading.Lock()


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """numpy's global generator seeded for one call and put back afterwards, one call at a time."""
    with _GLOBAL_RNG:
        saved = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(saved)


def partition_evaluations(max_evals: int) -> int:
    """Model rows shap's partition explainer evaluates: the empty and full masks, then masks in
    pairs until ``max_evals - 2`` is reached (so an odd budget is rounded up)."""
    return max_evals + max_evals % 2


@register
class ShapPartition(Explainer):
    name = "shap"
    title = "SHAP (Partition)"
    summary = "Owen values of image regions, masked by blurring (or inpainting)."
    paper = "https://arxiv.org/abs/1705.07874"
    signed = True
    stochastic = True
    has_completeness = True
    params = (
        Param("max_evals", 500, int, "Masked images evaluated per image.", minimum=10, cap="max_shap_evals"),
        Param("masker", "blur", str, "How masked regions are filled.", choices=tuple(MASKERS)),
        Param("batch_size", 50, int, "Masked images per model call.", minimum=1, maximum=4096),
    )

    @classmethod
    def cost(cls, adapter, params=None, background_size=0):
        # the image's own score comes from shap's evaluation of the unmasked image: no forward of its own
        return Cost(forward=partition_evaluations(cls.normalise_params(params)["max_evals"]), backward=0)

    def max_rows(self, params):
        return params["batch_size"]

    def _attribute(self, calls, x, targets, params, seed, background, progress):
        import shap  # the library is the reference; imported only when this method runs

        preset = calls.adapter.preset
        pixels = np.clip(preset.invert(calls.host_batch), 0.0, 1.0) * 255.0
        masker = shap.maskers.Image(MASKERS[params["masker"]], pixels.shape[1:])
        model = pixel_model(calls, preset)
        explainer = shap.PartitionExplainer(model, masker)
        partials = []
        for i in range(len(targets)):
            model.watch, model.unmasked = pixels[i], None
            with seeded_global_rng(seed):
                explanation = explainer(
                    pixels[i : i + 1],
                    max_evals=params["max_evals"],
                    batch_size=params["batch_size"],
                    outputs=np.array([targets[i]]),
                    silent=True,
                )
            values = np.asarray(explanation.values[0, ..., 0], dtype=np.float32)
            base = float(np.asarray(explanation.base_values).reshape(-1)[0])
            score = float(model.unmasked[targets[i]]) if model.unmasked is not None else None  # None: the base scores it
            partials.append(Partial(map=values.sum(axis=-1), channels=values, reference_score=base, target_score=score))
            progress((i + 1) / len(targets), f"{self.title}: image {i + 1}/{len(targets)}")
        return partials
