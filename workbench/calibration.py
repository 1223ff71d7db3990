"""Cost estimates calibrated from the times measured on this model, per method, as runs finish.

The first estimate of a method is its model-call count times one forward pass measured on a batch
(:func:`workbench.analysis.estimate`): on a CPU this misses each method's own overheads (SHAP's
partition tree, gradient passes, small last blocks) by several times either way. Once a method has
run on a model, its measured seconds per model evaluation replace that guess for the same model
and device; a method not run yet there gets the guess times the model's measured/guessed ratio
over the methods that did run.

Plain data and functions: a :class:`Timings` is picklable and lives wherever its caller keeps it
(the app keeps one per process, :data:`PROCESS_TIMINGS`, so every session on a model shares it).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Iterable, Mapping

from .result import Attribution

SMOOTHING = 0.5  # weight of the newest run in the running per-method rate


@dataclasses.dataclass
class Timings:
    """Seconds per model evaluation by (model key, method), and the measured/guessed ratio per model key."""

    per_evaluation: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    ratio: dict[str, float] = dataclasses.field(default_factory=dict)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.lock = threading.Lock()


PROCESS_TIMINGS = Timings()


def model_key(adapter) -> str:
    """What a timing is valid for: the model's weights and the device it runs on."""
    return f"{adapter.fingerprint}|{adapter.device}"


def record(
    timings: Timings,
    key: str,
    results: Mapping[str, Iterable[Attribution]],
    guessed: Mapping[str, float] | None = None,
    wall_seconds: float | None = None,
) -> None:
    """Fold a finished run into ``timings``: ``results`` are the newly computed maps per method, ``guessed``
    the uncalibrated seconds :func:`workbench.analysis.estimate` gave for them (for the model's ratio).

    ``wall_seconds``: what the whole run took as the user waited; the explainers' own times leave out the
    run's overhead (preparing inputs, assembling results), so they are scaled up to it, in proportion.
    """
    results = {method: list(items) for method, items in results.items()}
    explained = sum(r.seconds for items in results.values() for r in items)
    stretch = wall_seconds / explained if wall_seconds and explained > 0 and wall_seconds > explained else 1.0
    measured_total = guessed_total = 0.0
    with timings.lock:
        for method, items in results.items():
            seconds = stretch * float(sum(r.seconds for r in items))  # each Attribution holds its share of the batch time
            evaluations = float(sum(r.evaluations for r in items))
            if not items or seconds <= 0 or evaluations <= 0:
                continue
            rate = seconds / evaluations
            old = timings.per_evaluation.get((key, method))
            timings.per_evaluation[(key, method)] = rate if old is None else SMOOTHING * rate + (1 - SMOOTHING) * old
            if guessed and guessed.get(method, 0) > 0:
                measured_total += seconds
                guessed_total += float(guessed[method])
        if guessed_total > 0:
            timings.ratio[key] = measured_total / guessed_total


def seconds(timings: Timings, key: str, estimate: Mapping[str, Mapping[str, float]]) -> tuple[float, bool]:
    """-> (estimated seconds for a plan's ``estimate`` {method: {evaluations, seconds}}, whether any of it
    comes from measured timings on this model)."""
    total, measured = 0.0, False
    with timings.lock:
        ratio = timings.ratio.get(key)
        for method, cost in estimate.items():
            rate = timings.per_evaluation.get((key, method))
            if rate is not None:
                total += rate * float(cost["evaluations"])
                measured = True
            elif ratio is not None:
                total += ratio * float(cost["seconds"])
                measured = True
            else:
                total += float(cost["seconds"])
    return total, measured


def record_run(timings: Timings, adapter, work, comparison, wall_seconds: float | None = None) -> None:
    """After ``session.run(..., work, ...)`` returned ``comparison`` (in ``wall_seconds``): record what
    ``work`` had to compute."""
    results = {
        method: [comparison.results[i][comparison.methods.index(method)] for i in indexes]
        for method, indexes in work.missing.items()
        if indexes and method in comparison.methods
    }
    guessed = {method: float(cost["seconds"]) for method, cost in work.estimate.items()}
    record(timings, model_key(adapter), results, guessed, wall_seconds)
