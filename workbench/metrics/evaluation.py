"""Evaluate computed maps with several metrics: the one call pages and the CLI make.

:func:`evaluate` takes the adapter, the model input, the targets and each method's maps (numpy,
picklable) and returns an :class:`Evaluation` (frozen, JSON round-trip) with one
:class:`MetricResult` per image x method x metric and, beside each, the same metric on a seeded
random map. :func:`estimate` gives the cost in model evaluations and seconds before running.
"""

from __future__ import annotations

import dataclasses
import time
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from ..adapters.base import ModelAdapter
from ..errors import ParameterError
from ..settings import Settings, get_settings
from .base import REGISTRY, Case, Progress, Score, fit_mask, random_map

RANDOM = "random"  # the method name of the random-map baseline rows in tables


def _points(curve) -> tuple[tuple[float, float], ...] | None:
    return None if curve is None else tuple((float(x), float(y)) for x, y in curve)


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One metric for one method's map of one image, with the seeded random map's value beside it."""

    image: str
    image_index: int
    method: str
    metric: str
    value: float | None
    params: Mapping[str, Any]
    curve: tuple[tuple[float, float], ...] | None = None
    curve_labels: tuple[str, ...] | None = None
    random_baseline: float | None = None
    random_curve: tuple[tuple[float, float], ...] | None = None
    seconds: float = 0.0
    evaluations: int = 0
    notes: tuple[str, ...] = ()
    flagged: bool = False

    def __post_init__(self):
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __reduce__(self):
        # params is a read-only mapping proxy, which does not pickle; scores cross from a model's worker
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["params"] = dict(self.params)
        return (_rebuild, (type(self), values))

    def row(self) -> dict[str, Any]:
        """The ``metrics.json`` row: image, method, metric, value, params, curve, random_baseline, seconds, evaluations."""
        return {
            "image": self.image,
            "method": self.method,
            "metric": self.metric,
            "value": self.value,
            "params": dict(self.params),
            "curve": [list(p) for p in self.curve] if self.curve is not None else None,
            "random_baseline": self.random_baseline,
            "seconds": self.seconds,
            "evaluations": self.evaluations,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.row(),
            "image_index": self.image_index,
            "curve_labels": list(self.curve_labels) if self.curve_labels is not None else None,
            "random_curve": [list(p) for p in self.random_curve] if self.random_curve is not None else None,
            "notes": list(self.notes),
            "flagged": self.flagged,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MetricResult":
        return cls(
            image=d["image"],
            image_index=int(d.get("image_index", 0)),
            method=d["method"],
            metric=d["metric"],
            value=d.get("value"),
            params=d.get("params") or {},
            curve=_points(d.get("curve")),
            curve_labels=tuple(d["curve_labels"]) if d.get("curve_labels") is not None else None,
            random_baseline=d.get("random_baseline"),
            random_curve=_points(d.get("random_curve")),
            seconds=float(d.get("seconds", 0.0)),
            evaluations=int(d.get("evaluations", 0)),
            notes=tuple(d.get("notes", ())),
            flagged=bool(d.get("flagged", False)),
        )


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Every metric for every method and image of one comparison."""

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    images: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    seed: int
    results: tuple[MetricResult, ...]
    masks: tuple[bool, ...] = ()  # which images had a mask
    seconds: float = 0.0

    def find(self, image_index: int, method: str, metric: str) -> MetricResult | None:
        for r in self.results:
            if r.image_index == image_index and r.method == method and r.metric == metric:
                return r
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "metrics": list(self.metrics),
            "images": list(self.images),
            "params": {k: dict(v) for k, v in self.params.items()},
            "seed": self.seed,
            "masks": list(self.masks),
            "seconds": self.seconds,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Evaluation":
        return cls(
            methods=tuple(d["methods"]),
            metrics=tuple(d["metrics"]),
            images=tuple(d["images"]),
            params={k: dict(v) for k, v in d.get("params", {}).items()},
            seed=int(d.get("seed", 0)),
            results=tuple(MetricResult.from_dict(r) for r in d.get("results", ())),
            masks=tuple(bool(m) for m in d.get("masks", ())),
            seconds=float(d.get("seconds", 0.0)),
        )

    def table(self) -> list[dict[str, Any]]:
        """Methods x metrics, each the mean over the images that have a value, with the random-map row last."""
        rows = []
        for method in (*self.methods, RANDOM):
            row: dict[str, Any] = {"method": method}
            for metric in self.metrics:
                if method == RANDOM:
                    values = [r.random_baseline for r in self.results if r.metric == metric and r.method == self.methods[0]]
                else:
                    values = [r.value for r in self.results if r.metric == metric and r.method == method]
                values = [v for v in values if v is not None]
                row[metric] = float(np.mean(values)) if values else None
            rows.append(row)
        return rows

    def flagged(self) -> list[MetricResult]:
        return [r for r in self.results if r.flagged]


# ---------------------------------------------------------------------------- before running
def normalise_params(metrics: Sequence[str], params: Mapping[str, Mapping] | None = None, settings: Settings | None = None) -> dict[str, dict]:
    settings = settings or get_settings()
    if not metrics:
        raise ParameterError("Choose at least one metric.")
    out = {}
    for name in metrics:
        if name not in REGISTRY:
            raise ParameterError(f"Unknown metric {name!r}; choose from {', '.join(REGISTRY)}.")
        out[name] = REGISTRY[name].normalise_params(dict((params or {}).get(name) or {}), settings)
    extra = sorted(set(params or {}) - set(metrics))
    if extra:
        raise ParameterError(f"Parameters were given for metric {extra[0]!r}, which is not among the metrics chosen.")
    return out


def estimate(
    adapter: ModelAdapter | None,
    n_images: int,
    methods: Sequence[str],
    metrics: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    forward_seconds: float = 0.0,
) -> dict[str, dict[str, float]]:
    """metric -> {"evaluations", "seconds"} for all images and methods, the random baseline included
    (a backward pass counted as two forwards)."""
    out = {}
    for name in metrics:
        cls = REGISTRY[name]
        p = params[name]
        fwd, bwd = cls.baseline_cost(adapter, p)
        for method in methods:
            f, b = cls.cost(adapter, p, method, (method_params or {}).get(method))
            fwd, bwd = fwd + f, bwd + b
        out[name] = {"evaluations": float((fwd + bwd) * n_images), "seconds": forward_seconds * (fwd + 2 * bwd) * n_images}
    return out


# ---------------------------------------------------------------------------- running
def _fit_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3:
        raise ParameterError(f"Maps must be [images, H, W]; got shape {maps.shape}.")
    if maps.shape[1:] != shape:
        from ..resize import bilinear_resize

        maps = bilinear_resize(maps, shape)
    return maps


def evaluate(
    adapter: ModelAdapter,
    batch: np.ndarray,
    targets: Sequence[int],
    maps: Mapping[str, np.ndarray],
    metrics: Sequence[str],
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    image_names: Sequence[str] | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> Evaluation:
    """Score each method's maps (``maps[method]``: [N, H, W], any size: resized to the model input's)
    on ``batch`` ([N, H, W, C] model input) for ``targets`` with every metric in ``metrics``.

    ``masks``: one ground-truth mask per image or None (localisation metrics give no value without);
    ``method_params``: each method's parameters, for metrics that rerun the method (randomisation).
    """
    settings = settings or get_settings()
    report = progress or (lambda f, m: None)
    p = normalise_params(metrics, params, settings)
    batch = np.asarray(batch, np.float32)
    n, h, w = batch.shape[0], batch.shape[1], batch.shape[2]
    targets = tuple(int(t) for t in targets)
    if len(targets) != n:
        raise ParameterError(f"Got {len(targets)} targets for {n} images; give one per image.")
    masks = tuple(masks) if masks is not None else (None,) * n
    if len(masks) != n:
        raise ParameterError(f"Got {len(masks)} masks for {n} images; give one per image (or None).")
    masks = tuple(None if m is None else fit_mask(m, (h, w)) for m in masks)
    names = tuple(image_names) if image_names is not None else tuple(f"image {i}" for i in range(n))
    methods = tuple(maps)
    fitted = {m: _fit_maps(maps[m], (h, w)) for m in methods}
    for method, array in fitted.items():
        if len(array) != n:
            raise ParameterError(f"{method} has {len(array)} maps for {n} images.")
    randoms = np.stack([random_map((h, w), seed * 100003 + i) for i in range(n)])

    weights = estimate(adapter, n, methods, metrics, p, method_params)
    total = sum(max(v["evaluations"], n) for v in weights.values()) or 1.0
    done = 0.0
    started = time.perf_counter()
    results = []
    for metric_name in metrics:
        metric = REGISTRY[metric_name]()
        share = max(weights[metric_name]["evaluations"], n)
        parts = len(methods) + (1 if metric.random_baseline else 0)

        state = {"part": 0}  # the random map first, then each method: equal parts of this metric's share

        def sub(fraction: float, message: str) -> None:
            report(min(1.0, (done + share * (state["part"] + fraction) / parts) / total), message)

        baseline: list[Score] | None = None
        if metric.random_baseline:
            baseline = metric.score(adapter, Case(batch, targets, randoms, masks), p[metric_name], seed, sub)
            state["part"] += 1
        for method in methods:
            t0 = time.perf_counter()
            case = Case(batch, targets, fitted[method], masks, method, dict((method_params or {}).get(method) or {}))
            scores = metric.score(adapter, case, p[metric_name], seed, sub)
            state["part"] += 1
            seconds = (time.perf_counter() - t0) / n
            for i, score in enumerate(scores):
                base = baseline[i] if baseline is not None else None
                results.append(
                    MetricResult(
                        image=names[i],
                        image_index=i,
                        method=method,
                        metric=metric_name,
                        value=score.value,
                        params=p[metric_name],
                        curve=score.curve,
                        curve_labels=score.curve_labels,
                        random_baseline=base.value if base is not None else None,
                        random_curve=base.curve if base is not None else None,
                        seconds=seconds,
                        evaluations=score.evaluations,
                        notes=score.notes,
                        flagged=score.flagged,
                    )
                )
        done += share
    report(1.0, "done")
    return Evaluation(
        methods=methods,
        metrics=tuple(metrics),
        images=names,
        params=p,
        seed=seed,
        results=tuple(results),
        masks=tuple(m is not None for m in masks),
        seconds=time.perf_counter() - started,
    )


def evaluate_comparison(
    adapter: ModelAdapter,
    comparison,
    metrics: Sequence[str],
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> Evaluation:
    """:func:`evaluate` on a :class:`~workbench.result.Comparison` computed with ``adapter``: its images (as
    the model saw them), targets, maps, the methods' parameters and the comparison's seed."""
    pixels = np.stack([im.pixels for im in comparison.images]).astype(np.float32)
    maps = {m: np.stack([row[j].map for row in comparison.results]) for j, m in enumerate(comparison.methods)}
    method_params = {m: dict(comparison.results[0][j].params) for j, m in enumerate(comparison.methods)} if comparison.results else {}
    return evaluate(
        adapter,
        adapter.prepare(pixels),
        [im.target for im in comparison.images],
        maps,
        metrics,
        params=params,
        masks=masks,
        image_names=[im.name for im in comparison.images],
        method_params=method_params,
        seed=int(comparison.seed),
        progress=progress,
        settings=settings,
    )


def _rebuild(cls, values):
    return cls(**values)
