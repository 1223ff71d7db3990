"""Model parameter randomisation test (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292).

The model's layers with parameters are randomised cascading from the top (the classifier first, then
one more layer at each step, seeded), each time on a fresh copy of the model
(:meth:`~workbench.adapters.base.ModelAdapter.randomised_copy`: the loaded model is never changed);
the method runs again on each copy, and the Spearman rank correlation of its |map| with the original
|map| is recorded per step. A map that explains the model must change when the model does: the value
is the correlation with every randomised layer (the last step, near 0 is good), the curve the
correlation per layer, and a method whose correlation stays above ``flag_above`` (0.5) with only the
top layer randomised is flagged. Same correlation and layer order as Quantus's MPRT (top_down).
"""

from __future__ import annotations

import numpy as np

from explainers.base import Param
from ..agreement import spearman
from .base import Case, Metric, Score, register


@register
class Randomisation(Metric):
    name = "randomisation"
    title = "Randomisation (ρ, all layers random)"
    summary = (
        "Spearman ρ of |map| with the original after randomising the model's layers from the top; "
        "near 0 passes the sanity check. Lower is better."
    )
    paper = "https://arxiv.org/abs/1810.03292"
    higher_is_better = False
    needs_model = True
    reruns_method = True
    has_curve = True
    random_baseline = False
    params = (
        Param("layers", 0, int, "Randomise only this many layers from the top (0: every layer with parameters).", minimum=0, maximum=1000),
        Param("flag_above", 0.5, float, "Flag the method when ρ with the top layer randomised is above this.", minimum=-1.0, maximum=1.0),
    )

    @staticmethod
    def steps(adapter, params) -> int:
        available = len(adapter.randomisable_layers()) if adapter is not None else 0
        wanted = int(params.get("layers") or 0)
        return min(wanted, available) if wanted else available

    @classmethod
    def cost(cls, adapter, params, method=None, method_params=None):
        import explainers

        if adapter is None or method not in explainers.REGISTRY:
            return (0, 0)
        cls_method = explainers.REGISTRY[method]
        one = cls_method.cost(adapter, cls_method.normalise_params(dict(method_params or {})))
        steps = cls.steps(adapter, params)
        return (one.forward * steps, one.backward * steps)

    def score(self, adapter, case: Case, params, seed, progress) -> list[Score]:
        import explainers

        n = len(case.maps)
        if case.method not in explainers.REGISTRY:
            return [Score(None, notes=(f"{case.method!r} is not a method of this workbench, so it cannot be rerun",))] * n
        layers = adapter.randomisable_layers()[: self.steps(adapter, params)]
        if not layers:
            return [Score(None, notes=("the model exposes no layers with parameters to randomise",))] * n
        explainer = explainers.get(case.method)
        original = [np.abs(np.asarray(m, np.float64)) for m in case.maps]
        rho = np.empty((n, len(layers)))
        evaluations = 0
        for k in range(1, len(layers) + 1):
            progress((k - 1) / len(layers), f"Randomisation: {k} of {len(layers)} layers random ({layers[k - 1]})")
            twin = adapter.randomised_copy(k, seed)
            results = explainer.explain(twin, case.batch, case.targets, params=dict(case.method_params), seed=seed)
            for i, result in enumerate(results):
                rho[i, k - 1] = spearman(original[i], np.abs(result.map))
            evaluations += sum(r.evaluations for r in results)
        progress(1.0, "Randomisation: done")
        threshold = float(params["flag_above"])
        scores = []
        for i in range(n):
            flagged = bool(rho[i, 0] > threshold)
            notes = (
                (f"ρ = {rho[i, 0]:.2f} with only the top layer ({layers[0]}) randomised: the map hardly depends on "
                 "what the model learned (fails the sanity check)",) if flagged else ()
            )
            scores.append(
                Score(
                    value=float(rho[i, -1]),
                    curve=tuple((float(k), float(rho[i, k - 1])) for k in range(1, len(layers) + 1)),
                    curve_labels=tuple(layers),
                    evaluations=evaluations // n,
                    notes=notes,
                    flagged=flagged,
                )
            )
        return scores
