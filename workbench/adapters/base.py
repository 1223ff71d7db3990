"""The one seam: a framework-neutral view of an image classifier.

Everything outside ``workbench.adapters`` talks to models through :class:`ModelAdapter`
with numpy arrays in NHWC float32 *model-input space* (already resized and
preprocessed with the adapter's preset). Framework code lives in the subclasses,
which import torch / tensorflow when they are constructed, never at import time.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import threading
from typing import Sequence

import numpy as np

from ..errors import LayerError, ModelRejected, ParameterError
from ..preprocess import Preset, get_preset


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    name: str  # as the adapter names it; pass it back to layer_gradients()
    kind: str  # class name, e.g. Conv2d / Conv2D
    output_shape: tuple[int, ...]  # channels-last, without the batch dimension
    order: int  # position in the forward pass (last call)

    @property
    def spatial(self) -> bool:
        return len(self.output_shape) == 3 and (self.output_shape[0] > 1 or self.output_shape[1] > 1)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    framework: str  # "pytorch" | "keras"
    source_format: str  # "keras", "h5", "onnx", "safetensors", "state_dict", "zoo", ...
    input_size: tuple[int, int, int]  # H, W, C
    num_classes: int
    labels: tuple[str, ...]
    output_kind: str  # "logits" | "probabilities"
    device: str
    parameters: int
    layout: str  # the model's own tensor layout: NCHW or NHWC
    preset: str
    fingerprint: str  # sha256 of the model bytes (or zoo name + weights hash)


@dataclasses.dataclass(frozen=True)
class LayerPass:
    """Result of :meth:`ModelAdapter.layer_gradients` (channels-last arrays)."""

    outputs: np.ndarray  # [N, K] model outputs
    activations: np.ndarray  # [N, h, w, c]
    gradients: np.ndarray  # [N, h, w, c]  d outputs[n, target[n]] / d activations


@dataclasses.dataclass(frozen=True)
class LayerMoments:
    """One layer's output over a batch, reduced inside the framework by :meth:`ModelAdapter.layer_statistics`.

    ``mean``/``std``/``minimum``/``maximum`` are over the finite elements (None when there are none);
    per-channel arrays use the channel axis (last, channels-last) of 4-D outputs and the last axis otherwise.
    """

    name: str
    shape: tuple[int, ...]  # channels-last, without the batch dimension
    finite: int  # finite elements over the batch
    mean: float | None
    std: float | None  # population standard deviation
    minimum: float | None
    maximum: float | None
    zeros: int  # elements exactly 0
    nan: np.ndarray  # [N] NaN elements per image
    inf: np.ndarray  # [N] infinite elements per image
    channel_mean: np.ndarray  # [N, C] mean of each channel per image (over the finite elements)
    channel_max_abs: np.ndarray  # [C] largest |value| of each channel over every image (0: dead)
    grad_norm: np.ndarray | None  # [N] L2 norm of d outputs[n, target[n]] / d this output, per image


@dataclasses.dataclass(frozen=True)
class StatisticsPass:
    """Result of :meth:`ModelAdapter.layer_statistics`: every layer that output one tensor, in forward order."""

    outputs: np.ndarray  # [N, K]
    targets: np.ndarray  # [N] the classes whose score was differentiated (the predicted ones unless given)
    layers: tuple[LayerMoments, ...]


@dataclasses.dataclass(frozen=True)
class GraphNode:
    name: str  # a layer of layers(), or an operation between layers ("add", "flatten"), or "input"/"output"
    kind: str  # class or function name
    layer: bool  # True: a layer of layers(); False: an operation or the model's input/output
    parameters: int  # weights and buffers of this node itself (nested layers not counted twice)


@dataclasses.dataclass(frozen=True)
class LayerGraph:
    """The model's dataflow between its leaf layers: residual branches are edges that skip nodes."""

    nodes: tuple[GraphNode, ...]  # forward order
    edges: tuple[tuple[str, str], ...]  # (from, to) node names
    traced: bool  # False: built from the order of the layers, without the real branches


# above this ratio of mean square to variance, variance from sums loses digits: it is recomputed exactly
CANCELLATION = 1e3


def finish_moments(
    shape: Sequence[int],
    *,
    zeros: int,
    nan,
    inf,
    cmin,
    cmax,
    sums=None,
    exact=None,
    finite: int | None = None,
    mean: float | None = None,
    std: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    channel_mean=None,
) -> dict:
    """The keyword arguments of :func:`moments` from what an adapter reduced on the device.

    ``sums`` = (per-channel sums [N, C], per-channel sums of squares [N, C], positions per channel)
    for an all-finite output; ``exact()`` -> (std, mean) recomputes in float64 on the device when the
    variance from sums would cancel. Otherwise finite, mean, std, minimum, maximum and channel_mean are
    given directly (over the finite elements), and cmin/cmax are 0 for channels without a finite value.
    """
    cmin = np.asarray(cmin, dtype=np.float64)
    cmax = np.asarray(cmax, dtype=np.float64)
    if sums is not None:
        total, squares, positions = sums
        finite = int(total.size * positions)
        mean = float(total.sum() / finite)
        mean_square = float(squares.sum() / finite)
        variance = max(mean_square - mean * mean, 0.0)
        if exact is not None and mean_square > CANCELLATION * variance:
            std_t, mean_t = exact()
            std, mean = float(std_t), float(mean_t)
        else:
            std = variance**0.5
        channel_mean = total / positions
    has = finite and finite > 0
    return dict(
        shape=tuple(int(s) for s in shape),
        finite=int(finite or 0),
        mean=mean if has else None,
        std=std if has else None,
        minimum=(float(cmin.min()) if minimum is None else minimum) if has else None,
        maximum=(float(cmax.max()) if maximum is None else maximum) if has else None,
        zeros=int(zeros),
        nan=nan,
        inf=inf,
        channel_mean=channel_mean,
        channel_max_abs=np.maximum(np.abs(cmin), np.abs(cmax)).max(axis=0),
    )


def moments(
    name: str,
    shape: tuple[int, ...],
    *,
    finite: int,
    mean: float | None,
    std: float | None,
    minimum: float | None,
    maximum: float | None,
    zeros: int,
    nan,
    inf,
    channel_mean,
    channel_max_abs,
    grad_norm=None,
) -> LayerMoments:
    """A LayerMoments from values already moved to the host."""

    def number(value):
        return None if value is None else float(value)

    return LayerMoments(
        name=name,
        shape=tuple(int(s) for s in shape),
        finite=int(finite),
        mean=number(mean),
        std=number(std),
        minimum=number(minimum),
        maximum=number(maximum),
        zeros=int(zeros),
        nan=np.asarray(nan, dtype=np.int64),
        inf=np.asarray(inf, dtype=np.int64),
        channel_mean=np.asarray(channel_mean, dtype=np.float32),
        channel_max_abs=np.asarray(channel_max_abs, dtype=np.float32),
        grad_norm=None if grad_norm is None else np.asarray(grad_norm, dtype=np.float64),
    )


def default_labels(num_classes: int) -> tuple[str, ...]:
    return tuple(f"class {k}" for k in range(num_classes))


def choose_cam_layer(layers: Sequence[LayerInfo]) -> str:
    """The last layer (in forward order) with a spatial 4-D output, i.e. before global pooling.

    Several layers can end at the same tensor (a residual block and its last ReLU);
    the one that finishes last — the outermost block — wins, as pytorch-grad-cam advises.
    """
    spatial = [layer for layer in layers if layer.spatial]
    if not spatial:
        raise LayerError("This model has no layer with a spatial (H x W x C) output, so CAM methods cannot run.")
    return max(spatial, key=lambda layer: layer.order).name


def detect_output_kind(outputs: np.ndarray) -> str:
    rows = np.asarray(outputs, dtype=np.float64)
    if rows.size and np.all(rows >= -1e-6) and np.all(rows <= 1 + 1e-6) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


class ModelAdapter(abc.ABC):
    """Framework-neutral classifier. Subclasses implement the ``_``-free primitives below."""

    framework: str = ""

    def __init__(
        self,
        *,
        name: str,
        source_format: str,
        input_size: tuple[int, int, int],
        labels: Sequence[str] | None,
        preset: str,
        fingerprint: str,
        layout: str,
    ):
        self.name = name
        self.source_format = source_format
        self.input_size = tuple(int(v) for v in input_size)
        self.preset: Preset = get_preset(preset)
        self.fingerprint = fingerprint
        self.layout = layout
        self._labels = tuple(labels) if labels else None
        # One lock per loaded model: every call that attaches hooks or patches layers holds it.
        self.lock = threading.RLock()
        self._num_classes: int | None = None
        self._output_kind: str | None = None
        self._layers: tuple[LayerInfo, ...] | None = None

    # ------------------------------------------------------------------ primitives
    @abc.abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """[N, H, W, C] model input -> [N, K] outputs as the model gives them (logits or probabilities)."""

    @abc.abstractmethod
    def input_gradients(self, batch: np.ndarray, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """-> (outputs [N, K], d outputs[n, targets[n]] / d input [N, H, W, C])."""

    @abc.abstractmethod
    def layer_gradients(self, batch: np.ndarray, layer: str, targets: Sequence[int]) -> LayerPass:
        """Activations and gradients of a named layer; input gradients are not computed."""

    @abc.abstractmethod
    def layer_activations(self, batch: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """-> (outputs [N, K], activations [N, h, w, c]) without any gradient."""

    @abc.abstractmethod
    def _trace_layers(self) -> list[LayerInfo]:
        """Run one test input and record every layer's output shape in forward order."""

    @abc.abstractmethod
    def parameter_count(self) -> int: ...

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Human-readable device, e.g. 'cpu' or 'cuda:0 (NVIDIA H100)'."""

    def randomisable_layers(self) -> tuple[str, ...]:
        """Names of the layers with parameters, top (output) first: the order of a cascading randomisation."""
        return ()

    def randomised_copy(self, layers_from_top: int, seed: int) -> "ModelAdapter":
        """A new adapter over a copy of the model whose top ``layers_from_top`` layers (of
        :meth:`randomisable_layers`) have fresh random parameters, seeded by ``seed``.

        The loaded model, its lock and this adapter are left as they were (the model parameter
        randomisation test of Adebayo et al. 2018 runs on such copies).
        """
        raise LayerError(f"{type(self).__name__} models cannot be copied with randomised layers.")

    def _check_randomised_count(self, layers_from_top: int) -> tuple[str, ...]:
        names = self.randomisable_layers()
        if not 0 <= int(layers_from_top) <= len(names):
            raise ParameterError(f"layers_from_top must be between 0 and {len(names)} (the layers with parameters); got {layers_from_top}.")
        return names[: int(layers_from_top)]

    def layer_statistics(
        self, batch: np.ndarray, targets: Sequence[int] | None = None, *, gradients: bool = True
    ) -> StatisticsPass:
        """Every layer's output reduced to :class:`LayerMoments` in one forward pass (and, with
        ``gradients``, one backward pass from the target scores, default the predicted classes)."""
        raise LayerError(f"{type(self).__name__} does not give per-layer statistics.")

    def layer_weights(self, layer: str) -> dict[str, np.ndarray]:
        """The layer's own weights and buffers by name (nested layers' not included)."""
        raise LayerError(f"{type(self).__name__} does not give layer weights.")

    def layer_graph(self) -> LayerGraph:
        """The dataflow graph between leaf layers (residual branches included where the framework shows them)."""
        layers = [layer for layer in self.layers()]
        nodes = (GraphNode("input", "Input", False, 0),) + tuple(GraphNode(l.name, l.kind, True, 0) for l in layers)
        names = [n.name for n in nodes]
        return LayerGraph(nodes, tuple(zip(names, names[1:])), traced=False)

    def is_out_of_memory(self, error: BaseException) -> bool:
        """True for the framework's device out-of-memory error."""
        return False

    def free_memory(self) -> None:
        """Release cached device memory after an out-of-memory error."""

    # ------------------------------------------------------------------ derived
    def test_input(self, n: int = 1, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        unit = rng.random((n, *self.input_size), dtype=np.float32)
        return self.preset.apply(unit)

    def validate(self) -> None:
        """Raise ModelRejected unless a test input gives finite [batch, classes] outputs."""
        try:
            out = self.predict(self.test_input(2))
        except ModelRejected:
            raise
        except Exception as exc:  # the model's own failure, reported in one line
            raise ModelRejected(
                f"The model failed on a {self.input_size[0]}x{self.input_size[1]}x{self.input_size[2]} test input "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); check the input size."
            ) from exc
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != 2:
            raise ModelRejected(
                f"The model outputs shape {tuple(out.shape)} for a batch of 2; an image classifier must output "
                "[batch, classes]."
            )
        if not np.all(np.isfinite(out)):
            raise ModelRejected("The model outputs NaN or infinite scores on a test input.")
        self._num_classes = int(out.shape[1])
        self._output_kind = detect_output_kind(out)
        if self._labels is not None and len(self._labels) != self._num_classes:
            raise ModelRejected(
                f"The labels file has {len(self._labels)} labels but the model has {self._num_classes} classes."
            )

    def _ensure_validated(self) -> None:
        if self._num_classes is None:
            self.validate()

    @property
    def num_classes(self) -> int:
        self._ensure_validated()
        return self._num_classes  # type: ignore[return-value]

    @property
    def output_kind(self) -> str:
        self._ensure_validated()
        return self._output_kind  # type: ignore[return-value]

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels or default_labels(self.num_classes)

    def with_labels(self, labels: Sequence[str] | None) -> None:
        if labels is not None and len(labels) != self.num_classes:
            raise ModelRejected(f"The labels file has {len(labels)} labels but the model has {self.num_classes} classes.")
        self._labels = tuple(labels) if labels else None

    def set_preset(self, preset: str) -> None:
        self.preset = get_preset(preset)

    def view(self, *, preset: str | None = None, labels: Sequence[str] | None = None) -> "ModelAdapter":
        """The same loaded model with another preset and/or labels (None: keep this one's).

        The framework model, its lock and its layer table are shared with this adapter; only
        preset and labels are the view's own, so one session's choices never change another's.
        """
        view = copy.copy(self)
        if preset is not None:
            view.set_preset(preset)
        if labels is not None:
            view.with_labels(labels)
        return view

    def layers(self) -> tuple[LayerInfo, ...]:
        if self._layers is None:
            with self.lock:
                self._layers = tuple(self._trace_layers())
        return self._layers

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers():
            if info.name == name:
                return info
        raise LayerError(f"No layer named {name!r}; pick one from the layers table.")

    def default_cam_layer(self) -> str:
        layers = self.layers()
        cached = getattr(self, "_cam_layer", None)  # (the layer table it was chosen from, the choice)
        if cached is None or cached[0] is not layers:
            cached = self._cam_layer = (layers, choose_cam_layer(layers))
        return cached[1]

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            framework=self.framework,
            source_format=self.source_format,
            input_size=self.input_size,  # type: ignore[arg-type]
            num_classes=self.num_classes,
            labels=self.labels,
            output_kind=self.output_kind,
            device=self.device,
            parameters=self.parameter_count(),
            layout=self.layout,
            preset=self.preset.name,
            fingerprint=self.fingerprint,
        )

    def prepare(self, unit_images: np.ndarray) -> np.ndarray:
        """[N, H, W, C] pixels in [0, 1] at the model's input size -> model input."""
        return self.preset.apply(unit_images)
