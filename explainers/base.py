"""What every explainer shares: parameters, cost, chunked and counted model calls, result formatting.

Each method follows the same steps (as captum's): normalise parameters -> validate ->
compute (``_attribute``) -> format one :class:`~workbench.result.Attribution` per image.
Explainers never import a framework: they compute with the adapter's array namespace
(``adapter.xp``, the Python array API) on the model's device, and the base moves the finished
maps to the host once per request.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from array_api_compat import device as device_of

from workbench.adapters.base import LayerPass, ModelAdapter
from workbench.errors import ParameterError
from workbench.inspection import refuse_non_finite
from workbench.result import Attribution
from workbench.settings import Settings, get_settings

Progress = Callable[[float, str], None]


@dataclasses.dataclass(frozen=True)
class Param:
    """One tunable parameter, with what the UI and the CLI need to offer it."""

    name: str
    default: Any
    kind: type
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    cap: str | None = None  # name of the Settings field that caps it for a deployment

    def coerce(self, value: Any, settings: Settings) -> Any:
        if value is None:
            if self.default is None:
                return None
            value = self.default
        try:
            if self.kind is bool and isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(value)
                value = lowered in {"1", "true", "yes", "on"}
            elif self.kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            else:
                value = self.kind(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{self.name} must be {self.kind.__name__}, got {value!r}.") from None
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"{self.name} must be one of {', '.join(map(str, self.choices))}; got {value!r}.")
        if self.minimum is not None and value < self.minimum:
            raise ParameterError(f"{self.name} must be at least {self.minimum}; got {value}.")
        if self.maximum is not None and value > self.maximum:
            raise ParameterError(f"{self.name} must be at most {self.maximum}; got {value}.")
        if self.cap is not None:
            limit = getattr(settings, self.cap)
            if value > limit:
                raise ParameterError(
                    f"{self.name}={value} is over this deployment's cap of {limit} (setting WORKBENCH_{self.cap.upper()})."
                )
        return value


@dataclasses.dataclass(frozen=True)
class Cost:
    """Model passes per image for given parameters."""

    forward: int
    backward: int

    @property
    def evaluations(self) -> int:
        return self.forward + self.backward

    def seconds(self, forward_seconds: float, backward_factor: float = 2.0) -> float:
        """Estimate from one measured forward time per image (a backward costs ~2 forwards)."""
        return forward_seconds * (self.forward + backward_factor * self.backward)


# On a CPU a bigger batch adds no parallelism and pushes activations out of cache: chunks of at most
# 16 MiB of input are faster (resnet-mini at 224x224: 25 rows ~15% faster per row than 50).
CPU_CHUNK_BYTES = 16 * 2**20
# ... and a big model's activations bound it too: a ResNet-50 (155 MiB of layer outputs per 224x224 row)
# runs fastest in chunks of 8-10 rows on this CPU (captum's best internal batch size there was 10, not 16)
CPU_ACTIVATION_BYTES = 1536 * 2**20
# a completeness gap over this fraction of f(x) - f(reference) is pointed out on the result (IG, Expected Gradients)
COMPLETENESS_NOTE_ABOVE = 0.01


def checked_targets(targets: Sequence[int], n_images: int, num_classes: int) -> list[int]:
    """One class index per image, each a class of the model (ParameterError otherwise)."""
    targets = [int(t) for t in targets]
    if len(targets) != n_images:
        raise ParameterError(f"Got {len(targets)} targets for {n_images} images; give one per image.")
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad:
        raise ParameterError(f"Target {bad[0]} is not a class of this model (0..{num_classes - 1}).")
    return targets


class Calls:
    """The adapter's device primitives, chunked within a memory budget, counted, with back-off on out-of-memory.

    Arrays in and out are the adapter's device arrays (``adapter.xp``), NHWC; nothing here moves data
    to the host. On a device out-of-memory error the chunk is halved, memory freed and the chunk
    retried; the event is recorded in ``notes`` and ends up in the result.
    """

    def __init__(self, adapter: ModelAdapter, settings: Settings, max_rows: int | None = None):
        self.adapter = adapter
        self.xp = adapter.xp
        row_bytes = int(np.prod(adapter.input_size)) * 4
        budget_bytes = settings.chunk_budget_mb * 1024 * 1024 // 8
        budget_rows = None
        if adapter.device == "cpu" and max_rows is None:  # a batch size the method was given is kept
            budget_bytes = min(budget_bytes, CPU_CHUNK_BYTES)
            activations = adapter.activation_bytes()
            if activations:
                budget_rows = CPU_ACTIVATION_BYTES // activations
        budget_rows = max(1, min(budget_bytes // max(row_bytes, 1), budget_rows or 2**31))
        self.chunk = max(1, min(budget_rows, max_rows or 64))
        self.forward = 0
        self.backward = 0
        self.notes: list[str] = []
        self.host_batch: np.ndarray | None = None  # the request's images on the host, for host-side baselines

    def _chunked(self, fn, n: int, *args):
        """fn(slice) -> tuple of arrays or array; concatenated over chunks along axis 0."""
        if n == 0:
            raise ParameterError("Nothing to evaluate: the batch is empty.")
        parts = []
        start = 0
        while start < n:
            stop = min(n, start + self.chunk)
            try:
                parts.append(fn(slice(start, stop), *args))
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if not self.adapter.is_out_of_memory(exc) or self.chunk == 1:
                    raise
                self.adapter.free_memory()
                self.chunk = max(1, self.chunk // 2)
                self.notes.append(f"out of device memory; chunk halved to {self.chunk} and retried")
                continue
            start = stop
        if len(parts) == 1:  # the usual case: no copy of what may be a large gradient array
            return parts[0]
        if isinstance(parts[0], tuple):
            return tuple(self.xp.concat([p[i] for p in parts]) for i in range(len(parts[0])))
        return self.xp.concat(parts)

    def blocks(self, n: int):
        """Consecutive slices of ``range(n)`` of at most one chunk, as even as possible (50 rows in
        chunks of 27 go as 25 + 25), for methods that build their inputs and reduce their outputs
        block by block: memory is bounded by the chunk, not by the number of samples. The chunk is
        read at every step, so a halving after an out-of-memory error carries on."""
        start = 0
        while start < n:
            left = n - start
            size = -(-left // -(-left // self.chunk))
            yield slice(start, start + size)
            start += size

    def predict(self, x):
        self.forward += len(x)
        return self._chunked(lambda s: self.adapter.predict_on_device(x[s]), len(x))

    def input_gradients(self, x, targets: Sequence[int]):
        targets = np.asarray(targets, dtype=np.int64)
        self.forward += len(x)
        self.backward += len(x)
        return self._chunked(lambda s: self.adapter.input_gradients_on_device(x[s], targets[s]), len(x))

    def layer_gradients(self, x, layer: str, targets: Sequence[int]) -> LayerPass:
        targets = np.asarray(targets, dtype=np.int64)
        self.forward += len(x)
        self.backward += len(x)

        def call(s):
            p = self.adapter.layer_gradients_on_device(x[s], layer, targets[s])
            return p.outputs, p.activations, p.gradients

        outputs, activations, gradients = self._chunked(call, len(x))
        return LayerPass(outputs=outputs, activations=activations, gradients=gradients)

    def layer_activations(self, x, layer: str):
        self.forward += len(x)
        return self._chunked(lambda s: self.adapter.layer_activations_on_device(x[s], layer), len(x))

    def target_scores(self, outputs, targets: Sequence[int]):
        """outputs[n, targets[n]] as a device vector."""
        xp = self.xp
        index = xp.asarray(np.asarray(targets, dtype=np.int64), device=device_of(outputs))
        return xp.take_along_axis(outputs, index[:, None], axis=1)[:, 0]

    def rows(self, x, index):
        """x[index] for host row indices, on x's device."""
        return self.xp.take(x, self.xp.asarray(np.asarray(index, dtype=np.int64), device=device_of(x)), axis=0)


@dataclasses.dataclass
class Partial:
    """What ``_attribute`` returns for one image; the base turns it into an Attribution.

    ``map``, ``channels`` and the scores may be device arrays (``adapter.xp``); the base moves them
    to the host for the whole request at once (:func:`to_host`).
    """

    map: np.ndarray
    channels: np.ndarray | None = None
    reference_score: float | None = None
    layer: str | None = None
    target_score: float | None = None
    notes: tuple[str, ...] = ()


def _stacked_to_host(adapter: ModelAdapter, values: list) -> list:
    """Device arrays of one shape -> host arrays, in one transfer; host values pass through."""
    on_device = [i for i, v in enumerate(values) if v is not None and not isinstance(v, (np.ndarray, float, int, np.generic))]
    if not on_device:
        return values
    stacked = adapter.rows_to_host([values[i] for i in on_device])
    out = list(values)
    for k, i in enumerate(on_device):
        out[i] = stacked[k]
    return out


def to_host(adapter: ModelAdapter, partials: list[Partial]) -> None:
    """The request's maps, channel arrays and scores to the host: one transfer each, not one per image."""
    for field in ("map", "channels", "target_score", "reference_score"):
        values = _stacked_to_host(adapter, [getattr(part, field) for part in partials])
        for part, value in zip(partials, values):
            if field in ("target_score", "reference_score") and value is not None:
                value = float(value)
            elif value is not None:
                value = np.asarray(value, dtype=np.float32)
            setattr(part, field, value)


class Explainer:
    """Base of every method. Subclasses set the class attributes and implement ``_attribute``."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    signed: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    uses_background: ClassVar[bool] = False
    params: ClassVar[tuple[Param, ...]] = ()

    # ------------------------------------------------------------------ parameters
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {p.name: p.default for p in cls.params}

    @classmethod
    def normalise_params(cls, params: Mapping[str, Any] | None = None, settings: Settings | None = None) -> dict[str, Any]:
        settings = settings or get_settings()
        given = dict(params or {})
        known = {p.name for p in cls.params}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ParameterError(
                f"{cls.name} has no parameter {', '.join(unknown)}; it takes {', '.join(sorted(known)) or 'none'}."
            )
        return {p.name: p.coerce(given.get(p.name), settings) for p in cls.params}

    @classmethod
    def is_signed(cls, params: Mapping[str, Any]) -> bool:
        return cls.signed

    # ------------------------------------------------------------------ cost
    @classmethod
    def cost(cls, adapter: ModelAdapter, params: Mapping[str, Any] | None = None, background_size: int = 0) -> Cost:
        """Forward and backward passes per image for these parameters, before running anything."""
        raise NotImplementedError

    # ------------------------------------------------------------------ run
    def explain(
        self,
        adapter: ModelAdapter,
        batch: np.ndarray,
        targets: Sequence[int] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
        background: np.ndarray | None = None,
        progress: Progress | None = None,
        settings: Settings | None = None,
        image_fingerprints: Sequence[str] | None = None,
    ) -> list[Attribution]:
        """Attribute ``batch`` ([N, H, W, C] model input) to one target per image (default: predicted class)."""
        settings = settings or get_settings()
        p = self.normalise_params(params, settings)
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(adapter.input_size):
            raise ParameterError(
                f"Images must be [N, {', '.join(map(str, adapter.input_size))}] model input; got {tuple(batch.shape)}."
            )
        if len(batch) == 0:
            raise ParameterError("Give at least one image to explain.")
        calls = Calls(adapter, settings, max_rows=self.max_rows(p))
        calls.host_batch = batch
        started = time.perf_counter()
        xp = adapter.xp
        x = adapter.device_array(batch)  # the images cross to the device once; the maps come back once
        if targets is None:
            predictions = calls.predict(x)
            if not bool(adapter.to_host(xp.all(xp.isfinite(predictions)))):
                refuse_non_finite(adapter, batch, adapter.to_host(predictions))  # traces the layers
            targets = adapter.to_host(xp.argmax(predictions, axis=1))
        targets = checked_targets(targets, len(batch), adapter.num_classes)
        partials = self._attribute(calls, x, targets, p, seed, background, progress or (lambda f, m: None))
        # scores of the explained targets, in one extra forward unless the method already has them
        missing = [i for i, part in enumerate(partials) if part.target_score is None]
        if missing:
            scores = calls.target_scores(calls.predict(calls.rows(x, missing)), [targets[i] for i in missing])
            for k, i in enumerate(missing):
                partials[i].target_score = scores[k]
        to_host(adapter, partials)
        if not all(np.isfinite(part.target_score) for part in partials):
            refuse_non_finite(adapter, batch)  # given targets: their scores are the first we see
        elapsed = time.perf_counter() - started
        n = len(batch)
        labels = adapter.labels
        results = []
        for i, part in enumerate(partials):
            gap = ratio = None
            if part.reference_score is not None and self.has_completeness:
                total = float(np.sum(part.channels if part.channels is not None else part.map, dtype=np.float64))
                delta = part.target_score - part.reference_score
                gap = abs(total - delta)
                ratio = gap / abs(delta) if abs(delta) > 0 else None
            notes = tuple(calls.notes) + part.notes
            if ratio is not None and ratio > COMPLETENESS_NOTE_ABOVE:
                more = "steps" if "steps" in p else "samples"
                notes += (f"the attributions miss completeness by {ratio:.1%} of the score change; more {more} narrow the gap",)
            results.append(
                Attribution(
                    method=self.name,
                    map=part.map,
                    channels=part.channels,
                    target=targets[i],
                    target_label=labels[targets[i]],
                    target_score=float(part.target_score),
                    reference_score=part.reference_score,
                    completeness_gap=gap,
                    completeness_ratio=ratio,
                    signed=self.is_signed(p),
                    params=p,
                    seconds=elapsed / n,
                    evaluations=(calls.forward + calls.backward) // n,
                    device=adapter.device,
                    layer=part.layer,
                    seed=seed if self.stochastic else None,
                    notes=notes,
                    model_fingerprint=adapter.fingerprint,
                    image_fingerprint=image_fingerprints[i] if image_fingerprints else "",
                    score=adapter.output_kind,
                )
            )
        return results

    has_completeness: ClassVar[bool] = False

    def max_rows(self, params: Mapping[str, Any]) -> int | None:
        """Largest chunk of rows per model call, where a method fixes one (Score-CAM's batch size)."""
        return None

    def _attribute(
        self,
        calls: Calls,
        x,
        targets: list[int],
        params: dict[str, Any],
        seed: int,
        background: np.ndarray | None,
        progress: Progress,
    ) -> list[Partial]:
        """``x``: the images [N, H, W, C] as a device array (``calls.xp``; on the host: ``calls.host_batch``)."""
        raise NotImplementedError


REGISTRY: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"explainer name {cls.name!r} missing or registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> Explainer:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ParameterError(f"Unknown method {name!r}; choose from {', '.join(REGISTRY)}.") from None


def names() -> list[str]:
    return list(REGISTRY)
