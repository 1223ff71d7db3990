"""One typed explain request and the engine that plans and runs it.

An :class:`ExplainRequest` says everything that decides a comparison: the model (where it came
from, how it was loaded, its preprocessing, labels and fingerprint), the images (by content
hash), the methods with their parameters normalised once against the deployment's caps, one
target per image (``None``: the predicted class), the seed and the background images. It is
frozen, hashable and round-trips through JSON, and every :class:`~workbench.result.Comparison`
the engine returns carries it as its provenance, so a saved run can be run again exactly.

:class:`Engine` binds a request to a loaded model and the images' pixels:
``plan(request)`` finds which maps are cached and estimates the cost of the rest;
``run(request, progress, cancel)`` computes them in the model's worker (one call per method,
every model evaluation counted by the explainers) and assembles the comparison.
The app, the CLI, Re-run and the exports all build requests here; nothing else normalises
parameters or calls an explainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .adapters.base import ModelAdapter
from .errors import ParameterError
from .images import LoadedImage
from .result import Attribution, Comparison, ExplainedImage, Stopped
from .settings import Settings, get_settings

log = logging.getLogger("workbench.engine")

Progress = Callable[[float, str], None]
REQUEST_VERSION = 1


def digest(value: Any) -> str:
    """Stable content hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: Any):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _tuple(value) -> tuple | None:
    return tuple(value) if value is not None else None


# ============================================================================ the request
@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """A loaded model: where it came from and every setting its load and its outputs depend on."""

    name: str  # shown to users
    source: str  # "zoo" (a model_zoo name), "upload" (the app) or "file" (the CLI)
    filename: str  # the zoo name, or the uploaded / given file's name
    format: str  # as loaded: keras, h5, onnx, state_dict, safetensors, zoo, ...
    fingerprint: str  # sha256 of the model bytes (zoo: name + weights hash)
    preset: str  # the preprocessing preset in use
    architecture: str | None = None  # the zoo architecture weights-only files were loaded into
    input_size: tuple[int, int, int] | None = None  # given at load time (None: the model's own)
    labels: tuple[str, ...] | None = None  # given labels (None: the model's own)
    device: str = "auto"
    score: str | None = None  # what the methods explain: logits or probabilities (None: the model's own output)
    resize_mode: str = "stretch"  # how an image of another aspect ratio fits the input

    def __post_init__(self):
        object.__setattr__(self, "input_size", _tuple(self.input_size) and tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "labels", _tuple(self.labels) and tuple(str(v) for v in self.labels))

    @property
    def identity(self) -> str:
        """Everything that decides this model's outputs and labels, hashed: part of every result key."""
        return digest(dataclasses.asdict(self) | {"name": None})

    @classmethod
    def of(
        cls,
        adapter: ModelAdapter,
        *,
        source: str,
        filename: str,
        architecture: str | None = None,
        input_size: Sequence[int] | None = None,
        labels: Sequence[str] | None = None,
        name: str | None = None,
        device: str = "auto",
    ) -> "ModelRecord":
        return cls(
            name=name or adapter.name,
            source=source,
            filename=filename,
            format=adapter.source_format,
            fingerprint=adapter.fingerprint,
            preset=adapter.preset.name,
            architecture=architecture or None,
            input_size=tuple(input_size) if input_size else None,
            labels=tuple(labels) if labels is not None else None,
            device=device,
            score=getattr(adapter, "score", None),
            resize_mode=getattr(adapter, "resize_mode", "stretch"),
        )


@dataclasses.dataclass(frozen=True)
class ImageRef:
    name: str
    sha256: str  # of the image's bytes: the key results are cached and stored under


@dataclasses.dataclass(frozen=True)
class MethodRequest:
    """One method and its parameters, normalised (every parameter present, coerced, within caps)."""

    name: str
    params: tuple[tuple[str, Any], ...]

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.params)


def normalise_methods(
    methods: Sequence[str], params: Mapping[str, Mapping] | None = None, settings: Settings | None = None
) -> tuple[MethodRequest, ...]:
    """Every method's parameters checked against its Params and this deployment's caps (ParameterError)."""
    import explainers

    settings = settings or get_settings()
    out = []
    for name in methods:
        if name not in explainers.REGISTRY:
            raise ParameterError(f"Unknown method {name!r}; choose from {', '.join(explainers.REGISTRY)}.")
        values = explainers.REGISTRY[name].normalise_params(dict((params or {}).get(name) or {}), settings)
        out.append(MethodRequest(name, tuple(values.items())))
    return tuple(out)


def check_request(n_images: int, methods: Sequence[str], settings: Settings, *, where: str = "") -> None:
    """Refuse an empty request or one over the deployment's image cap, before any work."""
    if not n_images:
        raise ParameterError(f"Add at least one image{where}.")
    if not methods:
        raise ParameterError("Pick at least one method.")
    if n_images > settings.max_images_per_run:
        raise ParameterError(
            f"{n_images} images is over this deployment's limit of {settings.max_images_per_run} per run "
            "(setting WORKBENCH_MAX_IMAGES_PER_RUN)."
        )


def result_key(model_identity: str, image: str, method: str, params: Mapping, target: int | None, seed: int,
               background: Sequence[str] = ()) -> str:
    """Content hash of everything that decides one attribution (``background``: image ids, where used)."""
    key = {"model": model_identity, "image": image, "method": method, "params": dict(params), "target": target, "seed": seed}
    if background:
        key["background"] = list(background)
    return digest(key)


@dataclasses.dataclass(frozen=True)
class ExplainRequest:
    """Everything that decides a comparison. Build it with :meth:`build` (which normalises)."""

    model: ModelRecord
    images: tuple[ImageRef, ...]
    methods: tuple[MethodRequest, ...]
    targets: tuple[int | None, ...]  # one per image; None: the predicted class
    seed: int = 0
    background: tuple[ImageRef, ...] = ()  # for the methods that use a background set

    @classmethod
    def build(
        cls,
        model: ModelRecord,
        images: Sequence[ImageRef],
        methods: Sequence[str],
        params: Mapping[str, Mapping] | None = None,
        *,
        targets: Sequence[int | None] | None = None,
        seed: int = 0,
        background: Sequence[ImageRef] = (),
        settings: Settings | None = None,
        where: str = "",
    ) -> "ExplainRequest":
        """Check and normalise a request once (ParameterError with one line when it is refused)."""
        settings = settings or get_settings()
        check_request(len(images), methods, settings, where=where)
        normal = normalise_methods(methods, params, settings)
        targets = tuple(None if t is None else int(t) for t in (targets if targets is not None else [None] * len(images)))
        if len(targets) != len(images):
            raise ParameterError(f"Got {len(targets)} targets for {len(images)} images; give one per image.")
        if len(set(t is None for t in targets)) > 1:
            raise ParameterError("Give a target for every image, or for none (each image's predicted class).")
        return cls(model, tuple(images), normal, targets, int(seed), tuple(background))

    # ------------------------------------------------------------------ reading
    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.methods)

    @property
    def params(self) -> dict[str, dict[str, Any]]:
        return {m.name: m.values for m in self.methods}

    def uses_background(self, method: str) -> bool:
        import explainers

        return bool(self.background) and explainers.REGISTRY[method].uses_background

    def background_ids(self, method: str) -> tuple[str, ...]:
        return tuple(b.sha256 for b in self.background) if self.uses_background(method) else ()

    def result_key(self, index: int, method: str) -> str:
        return result_key(
            self.model.identity, self.images[index].sha256, method, self.params[method], self.targets[index], self.seed,
            self.background_ids(method),
        )

    @property
    def key(self) -> str:
        """Content hash of the whole request: one saved run per key and session."""
        return digest(self.to_json() | {"model": self.model.identity})

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "version": REQUEST_VERSION,
            "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.model).items()},
            "images": [dataclasses.asdict(im) for im in self.images],
            "methods": [{"name": m.name, "params": dict(m.params)} for m in self.methods],
            "targets": list(self.targets),
            "seed": self.seed,
            "background": [dataclasses.asdict(im) for im in self.background],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ExplainRequest":
        """The request a saved run recorded (no normalisation: the values were normalised when it ran)."""
        fields = {f.name for f in dataclasses.fields(ModelRecord)}
        model = ModelRecord(**{k: v for k, v in dict(data["model"]).items() if k in fields})
        return cls(
            model=model,
            images=tuple(ImageRef(str(im["name"]), str(im["sha256"])) for im in data["images"]),
            methods=tuple(MethodRequest(str(m["name"]), tuple(dict(m["params"]).items())) for m in data["methods"]),
            targets=tuple(None if t is None else int(t) for t in data["targets"]),
            seed=int(data.get("seed", 0)),
            background=tuple(ImageRef(str(im["name"]), str(im["sha256"])) for im in data.get("background") or ()),
        )


# ============================================================================ what runs in the worker
def explain_in_worker(
    adapter: ModelAdapter,
    method: str,
    params: Mapping[str, Any],
    pixels: np.ndarray,
    targets: Sequence[int] | None,
    seed: int,
    background: np.ndarray | None,
    fingerprints: Sequence[str],
    progress: Progress | None = None,
) -> list[Attribution]:
    """One method on a batch of display pixels ([N, H, W, C] in [0, 1] at the model's size)."""
    import explainers

    from . import warmup

    report = progress or (lambda fraction, message: None)
    explainer = explainers.get(method)
    if method in warmup.NEEDED_BY and not warmup.done.is_set():
        report(0.0, f"{explainer.title}: waiting for shap's one-off kernel compile (once per worker)")
        waited = warmup.wait_if_running()
        if waited:
            log.info("waited %.1f s for the shap warm-up", waited)
    report(0.0, f"{explainer.title}…")
    batch = adapter.prepare(np.asarray(pixels, np.float32))
    return explainer.explain(
        adapter,
        batch,
        list(targets) if targets is not None else None,
        params=dict(params),
        seed=seed,
        background=adapter.prepare(np.asarray(background, np.float32)) if background is not None else None,
        progress=report,
        image_fingerprints=list(fingerprints),
    )


def measure_forward_seconds(adapter: ModelAdapter) -> float:
    from .analysis import measure_forward_seconds as measure

    return measure(adapter)


# ============================================================================ plan and run
@dataclasses.dataclass(frozen=True)
class Plan:
    """What running a request would compute: the (image, method) pairs not cached yet, and their cost."""

    request: ExplainRequest
    missing: Mapping[str, tuple[int, ...]]  # method -> indexes of the images to compute
    estimate: Mapping[str, Mapping[str, float]]  # method -> forward, backward, evaluations, seconds (for the missing)

    @property
    def methods(self) -> tuple[str, ...]:
        return self.request.method_names

    @property
    def params(self) -> dict[str, dict[str, Any]]:
        return self.request.params

    @property
    def targets(self) -> tuple[int | None, ...]:
        return self.request.targets

    @property
    def results_to_compute(self) -> int:
        return sum(len(v) for v in self.missing.values())

    @property
    def cached(self) -> bool:
        return not any(self.missing.values())

    @property
    def seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.estimate.values()))

    @property
    def evaluations(self) -> int:
        return int(sum(e["evaluations"] for e in self.estimate.values()))


class Engine:
    """Plans and runs requests on one loaded model (a worker's :class:`~workbench.workers.RemoteAdapter`,
    or an in-process adapter), with the pixels of the request's images.

    Args:
        adapter: the model, with the request's preset and labels.
        images: image id -> :class:`LoadedImage` for every image and background image of the requests.
        cache: where computed attributions are kept (``get``/``put`` by result key); None keeps none.
        pixels: the image at the model's input size (a cache of it); default :func:`to_model_pixels`.
        forward_seconds: a measured forward time per image, for estimates (None: measured on first plan).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        images: Mapping[str, LoadedImage],
        *,
        cache: Any | None = None,
        pixels: Callable[[LoadedImage], np.ndarray] | None = None,
        forward_seconds: Callable[[], float] | float | None = None,
        settings: Settings | None = None,
    ):
        from .analysis import to_model_pixels

        self.adapter = adapter
        self.images = images
        self.cache = cache if cache is not None else _NoCache()
        self._pixels = pixels or (lambda image: to_model_pixels(adapter, image))
        self._forward = forward_seconds
        self.settings = settings or get_settings()
        self.explainer_calls = 0  # calls into the worker, one per method that had something to compute

    def forward_seconds(self) -> float:
        if callable(self._forward):
            return float(self._forward())
        if self._forward is None:
            from . import workers

            self._forward = float(workers.call(self.adapter, measure_forward_seconds, doing="timing a forward pass"))
        return float(self._forward)

    def _explain(self, method: str, *args, progress: Progress | None, cancel: Callable[[], bool] | None, doing: str) -> list[Attribution]:
        """The one place an explainer is called: :func:`explain_in_worker` in the model's worker."""
        from . import workers

        self.explainer_calls += 1
        return workers.call(self.adapter, explain_in_worker, method, *args, progress=progress, cancel=cancel, doing=doing)

    def _image(self, ref: ImageRef) -> LoadedImage:
        try:
            return self.images[ref.sha256]
        except KeyError:
            raise ParameterError(f"The image {ref.name} is not loaded; add it again.") from None

    def plan(self, request: ExplainRequest) -> Plan:
        """Which maps are missing from the cache, and what computing them would cost."""
        import explainers

        missing = {
            m: tuple(i for i in range(len(request.images)) if self.cache.get(request.result_key(i, m)) is None)
            for m in request.method_names
        }
        estimate = {}
        todo = [m for m in request.method_names if missing[m]]
        if todo:
            forward = self.forward_seconds()
            params = request.params
            for m in todo:
                cost = explainers.REGISTRY[m].cost(self.adapter, params[m], background_size=len(request.background_ids(m)))
                n = len(missing[m])
                estimate[m] = {
                    "forward": cost.forward * n,
                    "backward": cost.backward * n,
                    "evaluations": cost.evaluations * n,
                    "seconds": cost.seconds(forward) * n,
                }
        return Plan(request, missing, estimate)

    def run(
        self,
        request: ExplainRequest,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
        *,
        work: Plan | None = None,
    ) -> Comparison:
        """Compute what is missing (one worker call per method) and assemble the comparison.

        ``cancel`` is polled while a method computes (about every 0.25 s): when it returns True the
        model's worker is stopped at once (the model reloads on a fresh worker for its next call) and
        the comparison of the methods that finished is returned, with ``stopped`` saying which method
        was running and which did not start. Each method's maps are cached as it finishes.
        Raises :class:`~workbench.workers.Cancelled` (one line) when no method had finished.
        """
        from .workers import Cancelled

        work = work if work is not None and work.request == request else self.plan(request)
        todo = [m for m in request.method_names if work.missing.get(m)]
        weights = {m: max(work.estimate.get(m, {}).get("seconds", 0.0), 1e-3) for m in todo}
        total = sum(weights.values()) or 1.0
        done = 0.0
        computed: dict[str, Attribution] = {}
        for method in todo:
            if cancel is not None and cancel():
                return self.stopped(request, computed)
            indexes = work.missing[method]

            def report(fraction: float, message: str, _start=done, _weight=weights[method]) -> None:
                if progress:
                    progress(min(1.0, (_start + fraction * _weight) / total), message)

            started = time.perf_counter()
            pixels = np.stack([self._pixels(self._image(request.images[i])) for i in indexes]).astype(np.float32)
            background = None
            if request.uses_background(method):
                background = np.stack([self._pixels(self._image(b)) for b in request.background]).astype(np.float32)
            targets = [request.targets[i] for i in indexes]
            try:
                results = self._explain(
                    method,
                    request.params[method],
                    pixels,
                    None if targets[0] is None else targets,
                    request.seed,
                    background,
                    [request.images[i].sha256 for i in indexes],
                    progress=report,
                    cancel=cancel,
                    doing=f"computing {method} for {request.model.name}",
                )
            except Cancelled:
                log.info("%s on %s cancelled after %.2f s", method, request.model.name, time.perf_counter() - started)
                return self.stopped(request, computed, running=method)
            log.info("%s on %d image(s) of %s in %.2f s", method, len(indexes), request.model.name, time.perf_counter() - started)
            for i, result in zip(indexes, results):
                key = request.result_key(i, method)
                self.cache.put(key, result)
                computed[key] = result
            done += weights[method]
        if progress:
            progress(1.0, "done")
        found = self.assemble(request, computed)
        assert found is not None, "a computed map left the cache before the comparison was assembled"
        return found

    def stopped(self, request: ExplainRequest, extra: Mapping[str, Attribution] | None = None, *,
                running: str | None = None, reason: str = "cancelled") -> Comparison:
        """The comparison of the request's methods whose maps are all computed (cached or in ``extra``),
        its request narrowed to them and ``stopped`` naming the rest. Calls no explainer.

        Raises :class:`~workbench.workers.Cancelled` with the same one line when none had finished.
        """
        from .workers import Cancelled

        extra = extra or {}
        finished = tuple(
            m for m in request.method_names
            if all(extra.get(request.result_key(i, m)) is not None or self.cache.get(request.result_key(i, m)) is not None
                   for i in range(len(request.images)))
        )
        note = Stopped(reason, request.method_names, finished, running)
        if not finished:
            raise Cancelled(stopped_line(note))
        narrowed = dataclasses.replace(request, methods=tuple(m for m in request.methods if m.name in finished))
        found = self.assemble(narrowed, extra)
        assert found is not None, "a finished map left the cache before the comparison was assembled"
        return dataclasses.replace(found, stopped=note)

    def assemble(self, request: ExplainRequest, extra: Mapping[str, Attribution] | None = None) -> Comparison | None:
        """The comparison from cached results only (None when any is missing). Calls no explainer."""
        rows = []
        for i in range(len(request.images)):
            row = []
            for method in request.method_names:
                key = request.result_key(i, method)
                found = (extra or {}).get(key) or self.cache.get(key)
                if found is None:
                    return None
                row.append(found)
            rows.append(tuple(row))
        from .analysis import original_pixels, placement_for

        labels = self.adapter.labels
        images = tuple(
            ExplainedImage(
                name=ref.name,
                sha256=ref.sha256,
                pixels=self._pixels(self._image(ref)),
                target=row[0].target,
                target_label=labels[row[0].target],
                notes=self._image(ref).notes,
                original=original_pixels(self.adapter, self._image(ref)),
                placement=placement_for(self.adapter, self._image(ref)).as_dict(),
            )
            for ref, row in zip(request.images, rows)
        )
        return Comparison(
            model=model_summary(self.adapter, request),
            images=images,
            methods=request.method_names,
            results=tuple(rows),
            seed=request.seed,
            versions=library_versions(),
            created=time.time(),
            request=request,
        )


def stopped_line(note: Stopped) -> str:
    """The one line that says how far a stopped run got, with the methods' titles."""
    import explainers

    return note.line(lambda name: explainers.REGISTRY[name].title if name in explainers.REGISTRY else name)


class _NoCache:
    def get(self, key: str):
        return None

    def put(self, key: str, value: Any) -> None:
        return None


def model_summary(adapter: ModelAdapter, request: ExplainRequest) -> dict[str, Any]:
    """The model as the store, exports and older readers see it: ModelInfo, how it was loaded, the background."""
    info = adapter.info()
    model = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(info).items()}
    record = request.model
    model["name"] = record.name
    model["loaded_as"] = {
        "source": record.source,
        "filename": record.filename,
        "architecture": record.architecture,
        "input_size": list(record.input_size) if record.input_size else None,
    }
    background = sorted({b for m in request.method_names for b in request.background_ids(m)})
    if background:
        model["background_images"] = background
    return model


_versions: dict[str, str] | None = None


def library_versions() -> dict[str, str]:
    """Installed library versions, read once per process from package metadata (imports nothing)."""
    global _versions
    if _versions is None:
        from .analysis import versions

        _versions = versions()
    return dict(_versions)
