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
import functools
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
    # The layer only resamples the grid (an adaptive pool, an upsampling or resizing layer, or a block
    # that ends in one): its output is not the feature grid, so it is never the automatic CAM layer.
    resamples: bool = False
    # Token layers ([N, tokens, C] seen as the patch grid): how many leading tokens (class,
    # distillation, register) are dropped; None for ordinary layers.
    prefix_tokens: int | None = None

    @property
    def spatial(self) -> bool:
        return len(self.output_shape) == 3 and (self.output_shape[0] > 1 or self.output_shape[1] > 1)

    @property
    def parent(self) -> str:
        """The enclosing module's name ('' at the top); names are dotted (torch) or slashed (Keras)."""
        cut = max(self.name.rfind("."), self.name.rfind("/"))
        return self.name[:cut] if cut > 0 else ""


# Layer kinds whose output is the grid resampled, not new features (torch and Keras class names).
RESAMPLING_KINDS = frozenset(
    {
        "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AdaptiveAvgPool1d", "AdaptiveMaxPool1d",
        "Upsample", "UpsamplingBilinear2d", "UpsamplingNearest2d", "PixelShuffle", "PixelUnshuffle",
        "AdaptiveAveragePooling2D", "AdaptiveMaxPooling2D", "Resizing", "UpSampling2D",
        "OnnxResize", "OnnxUpsample",
    }
)


def only_resamples(kind: str) -> bool:
    return kind in RESAMPLING_KINDS or kind.startswith("Adaptive") and "Pool" in kind


def token_grid(shape: Sequence[int], input_size: Sequence[int], max_prefix: int = 8) -> tuple[int, int, int] | None:
    """(prefix tokens, grid h, grid w) when a [tokens, C] layer output is a patch grid of the input.

    The patch tokens come last (class, distillation and register tokens first, as ViT, DeiT and
    DINOv2 order them); the fewest prefix tokens that leave a grid with the input's aspect ratio
    and an integer patch size win. None when the shape is no such grid.
    """
    if len(shape) != 2 or shape[1] < 2:
        return None
    tokens = int(shape[0])
    height, width = int(input_size[0]), int(input_size[1])
    for prefix in range(0, min(max_prefix, tokens - 4) + 1):
        patches = tokens - prefix
        for gh in range(2, patches + 1):
            if patches % gh:
                continue
            gw = patches // gh
            if gw < 2 or height % gh or width % gw or height // gh != width // gw:
                continue
            return prefix, gh, gw
    return None


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
    score: str = "logits"  # what the methods explain: "logits" (pre-softmax) or "probabilities"
    softmax_head: bool = False  # the model ends in a softmax the workbench can peel off
    resize_mode: str = "stretch"  # how an image of another aspect ratio fits the input: stretch | center-crop | letterbox


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


@functools.lru_cache(maxsize=16)
def default_labels(num_classes: int) -> tuple[str, ...]:
    return tuple(f"class {k}" for k in range(num_classes))


def choose_cam_layer(layers: Sequence[LayerInfo]) -> str:
    """The last layer (in forward order) whose output is still the feature grid, i.e. before pooling.

    Several layers can end at the same tensor (a residual block and its last ReLU);
    the one that finishes last — the outermost block — wins, as pytorch-grad-cam advises.
    Layers that only resample the grid (adaptive pools, upsampling) are skipped: a VGG head's
    ``AdaptiveAvgPool2d((7, 7))`` makes a 7x7 grid out of any input, not features.

    Vision transformers (token layers) take the first norm of the last block, as pytorch-grad-cam
    advises: the class token alone reaches the classifier, so the last block's output has no
    gradient on the patch tokens.
    """
    spatial = [layer for layer in layers if layer.spatial and not layer.resamples]
    if not spatial:
        raise LayerError("This model has no layer with a spatial (H x W x C) output, so CAM methods cannot run.")
    last = max(spatial, key=lambda layer: layer.order)
    if last.prefix_tokens is not None:
        block = _last_block_first_norm(spatial)
        if block is not None:
            return block
    return last.name


def _last_block_first_norm(layers: Sequence[LayerInfo]) -> str | None:
    """The first norm of the last transformer block: a module holding two or more token norms (pre-norm blocks)."""
    norms: dict[str, list[LayerInfo]] = {}
    for layer in layers:
        if layer.prefix_tokens is not None and "norm" in layer.kind.lower():
            norms.setdefault(layer.parent, []).append(layer)
    blocks = [sorted(found, key=lambda layer: layer.order) for found in norms.values() if len(found) >= 2]
    if not blocks:
        return None
    last_block = max(blocks, key=lambda found: found[-1].order)
    # A pre-norm block has two norms (before attention, before the MLP). Blocks nested as modules
    # give one group per block; a flat model gives one group of all blocks' norms, where an odd
    # last one is the final norm after the blocks.
    if len(last_block) % 2 and len(last_block) >= 3:
        return last_block[-3].name
    return last_block[-2].name


SCORES = ("logits", "probabilities")


def probabilities(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """The model's probabilities: the softmax of logits, or the outputs when they already are probabilities."""
    x = np.asarray(outputs, dtype=np.float64)
    if output_kind == "probabilities":
        return x
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


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
        self.own_preset: Preset | None = None  # a model's own preprocessing (a Hugging Face preprocessor config)
        self.resize_mode = "stretch"  # see workbench.resize.place; a preprocessor config may ask for center-crop
        self.crop_fraction = 1.0  # centre-crop: share of the short side kept (a preprocessor config's crop_pct)
        self.resample = "bilinear"  # resizing filter (a preprocessor config's resample)
        self.fingerprint = fingerprint
        self.layout = layout
        self._labels = tuple(labels) if labels else None
        # One lock per loaded model: every call that attaches hooks or patches layers holds it.
        self.lock = threading.RLock()
        self._num_classes: int | None = None
        self._output_kind: str | None = None
        self._layers: tuple[LayerInfo, ...] | None = None
        # What predict() and the gradients return: None while validating (the model's own output),
        # then "logits" or "probabilities" (see set_score).
        self.score: str | None = None
        self._softmax_head = False
        # bytes this adapter has handed to the host from device arrays (see to_host)
        self.host_bytes = 0

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

    # ------------------------------------------------------------------ device arrays
    # Explainers compute where the model's arrays live: the adapter names their array namespace (the
    # Python array API standard through array-api-compat) and the primitives below take and return
    # arrays of that namespace on the model's device, NHWC. Only ``to_host`` moves data to the host.
    # The default is numpy on the host (the Keras adapter); the torch adapter keeps tensors on its device.
    @property
    def xp(self):
        import array_api_compat.numpy as xp

        return xp

    def device_array(self, host: np.ndarray):
        """Host float32 model input (or any host numbers) -> an array on the model's device."""
        return np.asarray(host, dtype=np.float32)

    def to_host(self, array) -> np.ndarray:
        """A device array -> numpy; the bytes are counted in ``host_bytes``."""
        out = np.asarray(array)
        self.host_bytes += out.nbytes
        return out

    def rows_to_host(self, rows: list) -> list[np.ndarray]:
        """Device arrays of one shape (one per image) -> numpy arrays, in one transfer."""
        xp = self.xp
        return list(self.to_host(xp.stack([xp.astype(r, xp.float32) for r in rows])))

    def predict_on_device(self, x):
        """:meth:`predict` on a device array, the outputs left on the device."""
        return self.predict(x)

    def input_gradients_on_device(self, x, targets: Sequence[int]):
        """:meth:`input_gradients` on a device array; outputs and gradients left on the device."""
        return self.input_gradients(x, targets)

    def layer_gradients_on_device(self, x, layer: str, targets: Sequence[int]) -> LayerPass:
        """:meth:`layer_gradients` on a device array; its arrays left on the device."""
        return self.layer_gradients(x, layer, targets)

    def layer_activations_on_device(self, x, layer: str):
        """:meth:`layer_activations` on a device array; outputs and activations left on the device."""
        return self.layer_activations(x, layer)

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

    def attention_maps(self, batch: np.ndarray) -> list[np.ndarray]:
        """Per-layer attention weights [N, heads, tokens, tokens] (softmax rows), first layer first.

        Only models that expose their attention (Hugging Face transformers loaded by the workbench)
        have them; the others raise LayerError.
        """
        raise LayerError("This model does not expose attention weights; attention rollout needs a vision transformer.")

    def token_patch_size(self) -> int | None:
        """The patch side in pixels of a vision transformer (from its config, else its token layers); None for others."""
        explicit = getattr(self, "patch_size", None)
        if explicit:
            return int(explicit)
        for layer in self.layers():
            if layer.prefix_tokens is not None and layer.spatial:
                return self.input_size[0] // layer.output_shape[0]
        return None

    def free_memory(self) -> None:
        """Release cached device memory after an out-of-memory error."""

    # ------------------------------------------------------------------ derived
    def test_input(self, n: int = 1, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        unit = rng.random((n, *self.input_size), dtype=np.float32)
        return self.preset.apply(unit)

    _validating = False

    def validate(self) -> None:
        """Raise ModelRejected unless a test input gives finite [batch, classes] outputs."""
        self._validating = True
        try:
            self._validate()
        finally:
            self._validating = False

    def _validate(self) -> None:
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
        self._softmax_head = bool(self._find_softmax_head()) if self._output_kind == "probabilities" else False
        # Explain the pre-softmax score where the softmax can be peeled off (the keras.io and
        # pytorch-grad-cam convention); a model without one is explained as it outputs.
        self.score = "logits" if self._softmax_head else self._output_kind
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
        """What predict() returns now: the score mode (the model's own output kind before validation)."""
        self._ensure_validated()
        return self.score or self._output_kind  # type: ignore[return-value]

    @property
    def softmax_head(self) -> bool:
        self._ensure_validated()
        return self._softmax_head

    def _find_softmax_head(self) -> bool:
        """True when the model's output is a final softmax whose input the adapter can return instead."""
        return False

    def set_score(self, score: str) -> None:
        """Explain "logits" (pre-softmax) or "probabilities".

        Logits of a probability model need a final softmax to peel off; probabilities of a logit
        model are the softmax of its outputs.
        """
        from ..errors import ParameterError

        self._ensure_validated()
        if score not in SCORES:
            raise ParameterError(f"Unknown score {score!r}; use logits or probabilities.")
        if score == "logits" and self._output_kind == "probabilities" and not self._softmax_head:
            raise ParameterError(
                "This model outputs probabilities from a softmax the workbench cannot separate (not a final "
                "Softmax layer / softmax activation); explain probabilities, or export the model without its softmax."
            )
        self.score = score

    def _score_transform(self) -> str:
        """How outputs become the score: "peel" (return the softmax's input), "softmax" (add one) or ""."""
        if self.score is None and not self._validating:
            self._ensure_validated()  # the first model call decides the score, whatever call it is
        if self.score is None:
            return ""
        if self.score == "logits" and self._output_kind == "probabilities":
            return "peel"
        if self.score == "probabilities" and self._output_kind == "logits":
            return "softmax"
        return ""

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels or default_labels(self.num_classes)

    def with_labels(self, labels: Sequence[str] | None) -> None:
        if labels is not None and len(labels) != self.num_classes:
            raise ModelRejected(f"The labels file has {len(labels)} labels but the model has {self.num_classes} classes.")
        self._labels = tuple(labels) if labels else None

    def set_preset(self, preset: "str | Preset") -> None:
        """A preset by name, or a model's own :class:`Preset` (kept as ``own_preset`` and chosen again by its name)."""
        if isinstance(preset, Preset):
            self.own_preset = preset
            self.preset = preset
        elif getattr(self, "own_preset", None) is not None and preset == self.own_preset.name:
            self.preset = self.own_preset
        else:
            self.preset = get_preset(preset)

    def set_resize_mode(self, mode: str) -> None:
        from ..resize import RESIZE_MODES
        from ..errors import ParameterError

        if mode not in RESIZE_MODES:
            raise ParameterError(f"Unknown resize mode {mode!r}; use {', '.join(RESIZE_MODES)}.")
        self.resize_mode = mode

    def view(
        self,
        *,
        preset: str | None = None,
        labels: Sequence[str] | None = None,
        score: str | None = None,
        resize: str | None = None,
    ) -> "ModelAdapter":
        """The same loaded model with another preset, labels and/or score (None: keep this one's).

        The framework model, its lock and its layer table are shared with this adapter; only
        preset, labels and score are the view's own, so one session's choices never change another's.
        """
        self._ensure_validated()
        view = copy.copy(self)
        if preset is not None:
            view.set_preset(preset)
        if labels is not None:
            view.with_labels(labels)
        if score is not None:
            view.set_score(score)
        if resize is not None:
            view.set_resize_mode(resize)
        return view

    def layers(self) -> tuple[LayerInfo, ...]:
        if self._layers is None:
            with self.lock:
                self._layers = tuple(self._trace_layers())
        return self._layers

    def activation_bytes(self) -> int | None:
        """float32 bytes of every traced layer's output for one input row (None where layers cannot be traced)."""
        if getattr(self, "_activation_bytes", False) is False:
            try:
                self._activation_bytes = 4 * sum(int(np.prod(info.output_shape)) for info in self.layers())
            except Exception:  # noqa: BLE001 - a model without traceable layers keeps the input-size rule
                self._activation_bytes = None
        return self._activation_bytes

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
            score=self.output_kind,
            softmax_head=self.softmax_head,
            resize_mode=self.resize_mode,
        )

    def prepare(self, unit_images: np.ndarray) -> np.ndarray:
        """[N, H, W, C] pixels in [0, 1] at the model's input size -> model input."""
        return self.preset.apply(unit_images)
