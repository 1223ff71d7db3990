"""Looking inside a model on the loaded images: per-layer statistics, dead channels, gradient norms,
the first non-finite layer, weight statistics and feature maps.

Every function takes a :class:`~workbench.adapters.base.ModelAdapter` and numpy model inputs and returns
frozen dataclasses of numpy arrays and plain values, so it runs as well inside a model's worker process
as here. The work is one adapter call: :meth:`ModelAdapter.layer_statistics` reduces every layer's output
inside the framework in one forward and one backward pass; nothing per layer comes back larger than
[images, channels].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from .adapters.base import LayerMoments, ModelAdapter, StatisticsPass
from .errors import LayerError, NonFiniteOutput, ParameterError

HISTOGRAM_BINS = 30


# ---------------------------------------------------------------------------- per-layer statistics
@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One row of the layers table: the layer's output over every loaded image."""

    name: str
    kind: str
    output_shape: tuple[int, ...]  # channels-last, without the batch dimension
    parameters: int  # weights and buffers, nested layers included
    mean: float | None  # over the finite values
    std: float | None
    min: float | None
    max: float | None
    fraction_zero: float  # of all values, over all images
    dead_channels: int  # channels (last axis) that are exactly 0 everywhere on every image
    nan_count: int
    inf_count: int
    grad_norm: float | None  # mean over images of || d score(target) / d output ||_2 (None: not computed)
    order: int  # 1-based forward order (when the layer finished)

    def as_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["output_shape"] = list(self.output_shape)
        row.pop("order")
        return row


@dataclasses.dataclass(frozen=True)
class NonFinite:
    """The first layer, in forward order, whose output holds a NaN or an Inf, and the first image where it does."""

    layer: str | None  # None: every layer's output is finite; the op after the last layer makes the output non-finite
    kind: str
    image: int  # index into the batch
    nan: int  # NaN values of that layer's output on that image
    inf: int

    def describe(self, image_names: Sequence[str] | None = None) -> str:
        image = image_names[self.image] if image_names and self.image < len(image_names) else f"image {self.image + 1}"
        what = " and ".join(w for w, n in (("NaN", self.nan), ("Inf", self.inf)) if n) or "NaN or Inf"
        if self.layer is None:
            return f"The model's output is not finite for {image}: every layer's output is, so an operation after the last layer ({self.kind}) makes it {what}."
        return f"The model's output is not finite for {image}: layer {self.layer!r} ({self.kind}) is the first, in forward order, to output {what}."

    def as_dict(self, image_names: Sequence[str] | None = None) -> dict[str, Any]:
        image = image_names[self.image] if image_names and self.image < len(image_names) else self.image
        return {"layer": self.layer, "image": image}


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Every layer's statistics over a batch, in forward order."""

    rows: tuple[LayerRow, ...]
    first_nonfinite: NonFinite | None
    outputs: np.ndarray  # [N, K] model outputs
    targets: tuple[int, ...]  # the classes whose score the gradient norms are of
    channel_means: Mapping[str, np.ndarray]  # layer -> [N, C] mean of each channel per image
    gradients: bool

    def row(self, name: str) -> LayerRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise LayerError(f"No layer named {name!r}; pick one from the layers table.")

    def as_dict(self, image_names: Sequence[str] | None = None) -> dict[str, Any]:
        """The CLI's JSON: ``{"layers": [...], "first_nonfinite": {"layer", "image"} or null}``."""
        return {
            "layers": [row.as_dict() for row in self.rows],
            "first_nonfinite": self.first_nonfinite.as_dict(image_names) if self.first_nonfinite else None,
        }


def first_nonfinite_in(passed: StatisticsPass, kinds: Mapping[str, str]) -> NonFinite | None:
    """The first layer of a statistics pass with a non-finite output; else, when the model's outputs are not
    finite, the op after the last layer; else None."""
    for layer in passed.layers:
        bad = layer.nan + layer.inf
        if bad.any():
            image = int(np.argmax(bad > 0))
            return NonFinite(layer.name, kinds.get(layer.name, ""), image, int(layer.nan[image]), int(layer.inf[image]))
    outputs = np.asarray(passed.outputs)
    if outputs.size and not np.all(np.isfinite(outputs)):
        rows = ~np.isfinite(outputs)
        image = int(np.argmax(rows.any(axis=1)))
        last = passed.layers[-1].name if passed.layers else "input"
        return NonFinite(None, f"after {last}", image, int(np.isnan(outputs[image]).sum()), int(np.isinf(outputs[image]).sum()))
    return None


def parameter_counts(adapter: ModelAdapter) -> dict[str, int]:
    """Weights and buffers per layer, nested layers included (a residual block counts its convolutions)."""
    names = [layer.name for layer in adapter.layers()]
    own = {}
    for name in names:
        try:
            own[name] = int(sum(np.asarray(w).size for w in adapter.layer_weights(name).values()))
        except LayerError:
            own[name] = 0
    totals = {}
    for name in names:
        prefixes = (f"{name}.", f"{name}/")
        totals[name] = own[name] + sum(n for other, n in own.items() if other.startswith(prefixes))
    return totals


def layer_report(adapter: ModelAdapter, batch: np.ndarray, targets: Sequence[int] | None = None, *, gradients: bool = True) -> LayerReport:
    """Statistics of every layer's output over ``batch`` ([N, H, W, C] model input) in one adapter call.

    ``targets`` (one class per image, default each image's predicted class) are the scores whose gradient
    norm with respect to each layer's output is reported: a layer where it vanishes is where a CAM goes blank.
    """
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim != 4 or len(batch) == 0:
        raise ParameterError("Give at least one image to inspect.")
    if targets is not None:
        from explainers.base import checked_targets

        targets = checked_targets(targets, len(batch), adapter.num_classes)
    passed = adapter.layer_statistics(batch, targets, gradients=gradients)
    infos = {layer.name: layer for layer in adapter.layers()}
    kinds = {name: info.kind for name, info in infos.items()}
    params = parameter_counts(adapter)
    rows = []
    for order, layer in enumerate(passed.layers, start=1):
        rows.append(_row(layer, kinds.get(layer.name, ""), params.get(layer.name, 0), order, len(batch)))
    return LayerReport(
        rows=tuple(rows),
        first_nonfinite=first_nonfinite_in(passed, kinds),
        outputs=passed.outputs,
        targets=tuple(int(t) for t in passed.targets),
        channel_means={layer.name: layer.channel_mean for layer in passed.layers},
        gradients=gradients,
    )


def _row(layer: LayerMoments, kind: str, parameters: int, order: int, n: int) -> LayerRow:
    total = n * int(np.prod(layer.shape)) if layer.shape else n
    return LayerRow(
        name=layer.name,
        kind=kind,
        output_shape=layer.shape,
        parameters=parameters,
        mean=layer.mean,
        std=layer.std,
        min=layer.minimum,
        max=layer.maximum,
        fraction_zero=layer.zeros / total if total else 0.0,
        dead_channels=int(np.count_nonzero(layer.channel_max_abs == 0)),
        nan_count=int(layer.nan.sum()),
        inf_count=int(layer.inf.sum()),
        grad_norm=float(np.mean(layer.grad_norm)) if layer.grad_norm is not None else None,
        order=order,
    )


def find_first_nonfinite(adapter: ModelAdapter, batch: np.ndarray) -> NonFinite | None:
    """One forward pass with every layer checked: the first non-finite layer output, or None."""
    passed = adapter.layer_statistics(np.asarray(batch, dtype=np.float32), gradients=False)
    return first_nonfinite_in(passed, {layer.name: layer.kind for layer in adapter.layers()})


def refuse_non_finite(adapter: ModelAdapter, batch: np.ndarray, outputs: np.ndarray | None = None, image_names: Sequence[str] | None = None) -> None:
    """Raise :class:`NonFiniteOutput`, naming the first non-finite layer and image, when ``outputs`` (the
    model's scores for ``batch``) are not all finite. Finite outputs cost nothing more than this check;
    ``outputs=None`` always traces."""
    if outputs is not None and np.all(np.isfinite(outputs)):
        return
    found = find_first_nonfinite(adapter, batch)
    if found is None:
        return
    raise NonFiniteOutput(
        f"{found.describe(image_names)} Explaining it would draw an empty map; see the Layers page.",
        layer=found.layer,
        image=found.image,
    )


# ---------------------------------------------------------------------------- weights
@dataclasses.dataclass(frozen=True)
class WeightRow:
    name: str
    kind: str
    tensors: tuple[str, ...]
    count: int
    norm: float  # L2 norm of all the layer's own weights together
    mean: float
    std: float
    min: float
    max: float
    histogram: np.ndarray  # [HISTOGRAM_BINS] counts
    edges: np.ndarray  # [HISTOGRAM_BINS + 1]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("histogram", "edges", "tensors")}


def weight_statistics(adapter: ModelAdapter, bins: int = HISTOGRAM_BINS) -> tuple[WeightRow, ...]:
    """Norm, moments and a histogram of each layer's own weights and buffers, for layers that have any."""
    rows = []
    for layer in adapter.layers():
        try:
            weights = adapter.layer_weights(layer.name)
        except LayerError:
            continue
        if not weights:
            continue
        values = np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights.values()])
        if values.size == 0:
            continue
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        counts, edges = np.histogram(finite, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
        rows.append(
            WeightRow(
                name=layer.name,
                kind=layer.kind,
                tensors=tuple(weights),
                count=int(values.size),
                norm=float(np.sqrt(np.sum(finite**2))),
                mean=float(finite.mean()) if finite.size else float("nan"),
                std=float(finite.std()) if finite.size else float("nan"),
                min=lo,
                max=hi,
                histogram=counts,
                edges=edges,
            )
        )
    return tuple(rows)


# ---------------------------------------------------------------------------- feature maps
@dataclasses.dataclass(frozen=True)
class FeatureMaps:
    """A spatial layer's strongest channels per image, on one colour scale."""

    layer: str
    channels: np.ndarray  # [N, k] channel indices, strongest first (by mean activation on that image)
    means: np.ndarray  # [N, k]
    maps: np.ndarray  # [N, k, h, w]
    vmin: float
    vmax: float


def feature_maps(adapter: ModelAdapter, batch: np.ndarray, layer: str, k: int = 16) -> FeatureMaps:
    """The top-``k`` channels of ``layer`` by mean activation, per image, with one shared colour scale."""
    if not adapter.layer(layer).spatial:
        raise LayerError(f"Layer {layer!r} has no spatial (H x W x C) output; pick a convolutional layer for feature maps.")
    _, acts = adapter.layer_activations(np.asarray(batch, dtype=np.float32), layer)
    acts = np.asarray(acts, dtype=np.float32)  # [N, h, w, c]
    k = max(1, min(int(k), acts.shape[-1]))
    means = np.nan_to_num(acts.mean(axis=(1, 2)), nan=-np.inf)
    channels = np.argsort(-means, axis=1, kind="stable")[:, :k]
    maps = np.stack([acts[i][..., channels[i]].transpose(2, 0, 1) for i in range(len(acts))])
    finite = maps[np.isfinite(maps)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return FeatureMaps(layer, channels, np.take_along_axis(acts.mean(axis=(1, 2)), channels, axis=1), maps, vmin, vmax)


def feature_tile(fm: FeatureMaps, image: int, index: int, cmap: str = "viridis", size: int = 96) -> np.ndarray:
    """uint8 RGB of one channel on the shared scale, enlarged (nearest neighbour) to about ``size`` px."""
    from .render import colormap

    values = fm.maps[image, index]
    span = fm.vmax - fm.vmin
    scaled = np.clip((np.nan_to_num(values, nan=fm.vmin) - fm.vmin) / (span if span > 0 else 1.0), 0.0, 1.0)
    rgb = (colormap(scaled, cmap, False) * 255).round().astype(np.uint8)
    factor = max(1, size // max(values.shape))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def colour_bar(vmin: float, vmax: float, cmap: str = "viridis", width: int = 256, height: int = 12) -> np.ndarray:
    """uint8 RGB strip from vmin (left) to vmax (right): the feature maps' colour scale."""
    from .render import colormap

    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return (colormap(ramp, cmap, False) * 255).round().astype(np.uint8)
