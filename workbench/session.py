"""What the app's pages do, without the widgets: one user's workspace and the shared model cache.

A :class:`Workspace` lives in ``st.session_state`` (one per browser session). It holds the
models and images this user loaded, the target chosen per image, and a bounded cache of
computed :class:`~workbench.result.Attribution` s keyed by the content hash of everything
that decides them (model bytes and settings, image bytes, method, parameters, target, seed).
Pages call the functions here and only lay out their answers, so changing a display
option never recomputes anything.

Models are shared between sessions: the bytes are parsed once per process and kept in
``st.cache_resource`` (bounded, keyed by the sha256 of the bytes and the load settings).
A session never mutates the shared adapter: preset and labels are applied to a shallow
view of it (:func:`configured`), and every model call holds the adapter's lock.

Saving a comparison, reopening a share link and re-running a saved run are in
:mod:`workbench.sharing`; the workspace only remembers which runs this session saved or read.

Every model lives in a worker process of its own (:mod:`workbench.workers`): loading it, its
test forward pass, layer tracing, predictions and explainers all run there, within the
deployment's limits. Explaining goes through :mod:`workbench.engine`: one typed
:class:`~workbench.engine.ExplainRequest` per model, planned and run by its engine.

Nothing here imports torch or tensorflow.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import pathlib
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import engine
from .adapters.base import ModelAdapter
from .errors import ParameterError, WorkbenchError
from .images import LoadedImage, load_image
from .result import Attribution, Comparison
from .settings import Settings, get_settings

log = logging.getLogger("workbench.app")

MAX_SHARED_MODELS = 8  # parsed models kept per process (st.cache_resource max_entries)
MAX_SESSION_MODELS = 6  # models one session keeps loaded
MAX_SESSION_RESULTS = 512  # attributions one session keeps ...
MAX_SESSION_RESULT_BYTES = 128 * 1024 * 1024  # ... and their arrays' bytes
MAX_SESSION_PREDICTIONS = 1024
MAX_SESSION_RUNS = 16  # saved runs one session keeps read (share links opened, runs saved) ...
MAX_SESSION_RUN_BYTES = 256 * 1024 * 1024  # ... and their arrays' bytes
MAX_SESSION_EVALUATIONS = 64  # evaluations of comparisons one session keeps
DEFAULT_METHODS = ("gradcam", "integrated_gradients", "shap")
TOP_K = 5

Progress = Callable[[float, str], None]


# ---------------------------------------------------------------------------- keys
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


digest = engine.digest


@dataclasses.dataclass(frozen=True)
class ModelKey:
    """What makes two loads the same model: the bytes and every setting the load depends on."""

    sha256: str  # of the uploaded bytes; "zoo:<name>" for zoo models
    filename: str
    architecture: str | None = None
    input_size: tuple[int, int, int] | None = None
    device: str = "auto"
    trusted_formats: bool = False

    @property
    def text(self) -> str:
        """The key as one string: what st.cache_resource hashes."""
        return digest(dataclasses.asdict(self))


# ---------------------------------------------------------------------------- shared models
def load_base(key: ModelKey, data: bytes | None) -> ModelAdapter:
    """Parse and validate a model in this process (what a model worker does). Raises WorkbenchError subclasses."""
    from . import intake
    from .workers.limits import Limits, check_input_side

    check_input_side(key.input_size, Limits.from_settings(), "The input size")

    if key.sha256.startswith("zoo:"):
        adapter = intake.load_zoo_model(key.sha256[4:])
    else:
        adapter = intake.load_model(
            data,
            filename=key.filename,
            architecture=key.architecture,
            input_size=key.input_size,
            device=key.device,
        )
    with adapter.lock:
        adapter.layers()  # traced once here, so every view shares the table
    return adapter


def load_in_worker(key: ModelKey, data: bytes | None) -> ModelAdapter:
    """Load a model into a worker process of its own (a RemoteAdapter); in this process when the
    operator turned workers off (WORKBENCH_MODEL_WORKERS=0). Raises WorkbenchError subclasses."""
    if not get_settings().model_workers:
        return load_base(key, data)
    from . import workers

    return workers.load(key, data)


def start_workers() -> None:
    """Have a warm spare model worker ready (frameworks imported, shap compiled) for the first load."""
    if get_settings().model_workers:
        from . import workers

        workers.pool().ensure_spare()


@functools.cache
def _process_cache():
    import streamlit as st

    @st.cache_resource(max_entries=MAX_SHARED_MODELS, show_spinner=False)
    def shared_model(key_text: str, _key: ModelKey, _data: bytes | None) -> ModelAdapter:
        return load_in_worker(_key, _data)

    return shared_model


def shared_loader() -> Callable[[ModelKey, bytes | None], ModelAdapter]:
    """Loads through the process-wide ``st.cache_resource``: two users with the same bytes share one model."""
    cached = _process_cache()
    return lambda key, data: cached(key.text, key, data)


def configured(
    base: ModelAdapter, *, preset: str | None = None, labels: Sequence[str] | None = None, score: str | None = None
) -> ModelAdapter:
    """A view of a shared adapter with this session's preset, labels and score (None: the base's own).

    Raises ModelRejected when the labels do not fit the model's classes.
    """
    return base.view(preset=preset, labels=labels, score=score)


# ---------------------------------------------------------------------------- workspace records
@dataclasses.dataclass
class LoadedModel:
    id: str  # unique in the session
    name: str  # shown in the UI
    source: str  # "upload" | "zoo"
    key: ModelKey
    base: ModelAdapter  # shared; never mutated
    adapter: ModelAdapter  # this session's view (preset, labels)
    size_bytes: int = 0
    preset: str | None = None  # None: the base adapter's preset
    labels: tuple[str, ...] | None = None  # None: the base adapter's labels
    labels_file: str | None = None
    score: str | None = None  # None: the base adapter's (logits where a softmax can be peeled off)
    resize: str | None = None  # None: the base adapter's resize mode (a preprocessor config's, else stretch)
    forward_seconds: float | None = None
    data: bytes | None = dataclasses.field(default=None, repr=False)  # the uploaded file, saved with each run for re-running

    def reconfigure(self) -> None:
        self.adapter = configured(self.base, preset=self.preset, labels=self.labels, score=self.score)
        if self.resize is not None:
            self.adapter.set_resize_mode(self.resize)
        self.forward_seconds = None

    def model_record(self) -> engine.ModelRecord:
        """The model as an explain request records it: where it came from and how it was loaded."""
        return engine.ModelRecord.of(
            self.adapter,
            source="zoo" if self.source == "zoo" else "file",
            filename=self.key.filename,
            architecture=self.key.architecture,
            input_size=self.key.input_size,
            labels=self.labels,
            name=self.name,
            device=self.key.device,
        )

    @property
    def identity(self) -> str:
        """Everything that decides this model's outputs and labels, hashed: part of every result key."""
        return digest([self.key.text, self.model_record().identity])


@dataclasses.dataclass
class ImageEntry:
    image: LoadedImage
    source: str  # "upload" | "zoo"
    mask: np.ndarray | None = None  # ground-truth object mask (zoo samples)
    label: str | None = None  # ground-truth class name (zoo samples)

    @property
    def id(self) -> str:
        return self.image.sha256

    @property
    def name(self) -> str:
        return self.image.name


class BoundedCache:
    """A least-recently-used dict bounded in entries and, optionally, in bytes (thread-safe)."""

    def __init__(self, max_entries: int, max_bytes: int | None = None, size: Callable[[Any], int] | None = None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size = size or (lambda value: 0)
        self._items: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key not in self._items:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key][0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            size = int(self._size(value))
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > 1 and (
                len(self._items) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes)
            ):
                self._bytes -= self._items.popitem(last=False)[1][1]

    def discard(self, key: str) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def attribution_bytes(result: Attribution) -> int:
    return result.map.nbytes + (result.channels.nbytes if result.channels is not None else 0)


def comparison_bytes(comparison: Comparison) -> int:
    return sum(attribution_bytes(r) for row in comparison.results for r in row) + sum(im.pixels.nbytes for im in comparison.images)


@dataclasses.dataclass
class Workspace:
    """One user's state: kept in ``st.session_state['workspace']``."""

    models: dict[str, LoadedModel] = dataclasses.field(default_factory=dict)
    active: str | None = None
    images: dict[str, ImageEntry] = dataclasses.field(default_factory=dict)
    targets: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (model identity, image id)
    left_out: set[str] = dataclasses.field(default_factory=set)  # image ids the user took out of comparisons
    results: BoundedCache = dataclasses.field(
        default_factory=lambda: BoundedCache(MAX_SESSION_RESULTS, MAX_SESSION_RESULT_BYTES, attribution_bytes)
    )
    predictions: BoundedCache = dataclasses.field(default_factory=lambda: BoundedCache(MAX_SESSION_PREDICTIONS))
    pixels: BoundedCache = dataclasses.field(default_factory=lambda: BoundedCache(256, 64 * 1024 * 1024, lambda a: a.nbytes))
    handled_uploads: set = dataclasses.field(default_factory=set)
    explainer_runs: int = 0  # explainer calls made for this session (shown on About)
    saved: dict[str, str] = dataclasses.field(default_factory=dict)  # comparison_key -> run id saved from this session
    evaluations: BoundedCache = dataclasses.field(  # evaluation key -> metrics.Evaluation (workbench.evaluations)
        default_factory=lambda: BoundedCache(MAX_SESSION_EVALUATIONS)
    )
    opened: BoundedCache = dataclasses.field(  # run id -> sharing.OpenedRun
        default_factory=lambda: BoundedCache(MAX_SESSION_RUNS, MAX_SESSION_RUN_BYTES, lambda run: comparison_bytes(run.comparison))
    )

    @property
    def model(self) -> LoadedModel | None:
        return self.models.get(self.active) if self.active else None


# ---------------------------------------------------------------------------- models
def _activate_existing(ws: Workspace, key: ModelKey) -> LoadedModel | None:
    for existing in ws.models.values():
        if existing.key == key:
            ws.active = existing.id
            return existing
    return None


def _add_model(ws: Workspace, record: LoadedModel) -> LoadedModel:
    if len(ws.models) >= MAX_SESSION_MODELS:
        oldest = next(m for m in ws.models if m != ws.active)
        del ws.models[oldest]
    ws.models[record.id] = record
    ws.active = record.id
    return record


def _unique_id(ws: Workspace, stem: str) -> str:
    candidate, n = stem, 2
    while candidate in ws.models:
        candidate, n = f"{stem} ({n})", n + 1
    return candidate


def load_upload(
    ws: Workspace,
    data: bytes,
    filename: str,
    *,
    architecture: str | None = None,
    input_size: tuple[int, int, int] | None = None,
    loader: Callable[[ModelKey, bytes | None], ModelAdapter] | None = None,
    settings: Settings | None = None,
) -> LoadedModel:
    """An uploaded model file -> the session's active model. Raises WorkbenchError with a one-line message."""
    settings = settings or get_settings()
    key = ModelKey(
        sha256=sha256(data),
        filename=filename,
        architecture=architecture or None,
        input_size=tuple(input_size) if input_size else None,
        trusted_formats=settings.trusted_formats,
    )
    if (existing := _activate_existing(ws, key)) is not None:
        return existing
    base = (loader or shared_loader())(key, data)
    record = LoadedModel(
        id=_unique_id(ws, filename),
        name=filename,
        source="upload",
        key=key,
        base=base,
        adapter=configured(base),
        size_bytes=len(data),
        data=bytes(data),
    )
    return _add_model(ws, record)


def load_zoo(ws: Workspace, name: str, *, loader: Callable[[ModelKey, bytes | None], ModelAdapter] | None = None) -> LoadedModel:
    key = ModelKey(sha256=f"zoo:{name}", filename=name)
    if (existing := _activate_existing(ws, key)) is not None:
        return existing
    base = (loader or shared_loader())(key, None)
    record = LoadedModel(id=_unique_id(ws, name), name=name, source="zoo", key=key, base=base, adapter=configured(base))
    return _add_model(ws, record)


QUICK_START_MODEL = "shapes-cnn-torch"


def quick_start(ws: Workspace, *, loader: Callable[[ModelKey, bytes | None], ModelAdapter] | None = None) -> LoadedModel:
    """A new user's first step: the zoo's shapes CNN and its first sample (with its mask)."""
    import model_zoo

    try:
        sample = model_zoo.samples()[0]
    except (OSError, IndexError):
        raise WorkbenchError("The model zoo has no samples; build it with python -m model_zoo.train.") from None
    record = load_zoo(ws, QUICK_START_MODEL, loader=loader)
    add_sample(ws, sample)
    return record


def set_preset(record: LoadedModel, preset: str) -> None:
    if preset != record.adapter.preset.name:
        record.preset = preset
        record.reconfigure()


def set_score(record: LoadedModel, score: str) -> None:
    """Explain "logits" or "probabilities" with this model (raises ParameterError where it cannot)."""
    if score != record.adapter.output_kind:
        record.adapter.view(score=score)  # refuses before anything changes
        record.score = score
        record.reconfigure()


def set_resize(record: LoadedModel, mode: str) -> None:
    """How images of another aspect ratio fit this model: stretch, center-crop or letterbox."""
    if mode != record.adapter.resize_mode:
        record.adapter.view(resize=mode)  # refuses an unknown mode before anything changes
        record.resize = mode
        record.reconfigure()


def set_labels(record: LoadedModel, data: bytes | None, filename: str | None) -> None:
    """Apply a labels file, or go back to the model's own labels with ``data=None``.

    Raises WorkbenchError (and keeps the current labels) when the file does not fit the model.
    """
    if data is None:
        record.labels, record.labels_file = None, None
        record.reconfigure()
        return
    from . import intake

    labels = tuple(intake.read_labels(data, filename))
    configured(record.base, labels=labels)  # raises before anything changes
    record.labels, record.labels_file = labels, filename
    record.reconfigure()


def set_label_names(record: LoadedModel, labels: Sequence[str], source: str) -> None:
    """Class names from elsewhere than a file (a saved run's model); back to the model's own when they are those.

    Raises WorkbenchError (and keeps the current labels) when they do not fit the model.
    """
    labels = tuple(labels)
    if labels == tuple(record.base.labels):
        record.labels, record.labels_file = None, None
    else:
        configured(record.base, labels=labels)  # raises before anything changes
        record.labels, record.labels_file = labels, source
    record.reconfigure()


def remove_model(ws: Workspace, model_id: str) -> None:
    ws.models.pop(model_id, None)
    if ws.active == model_id:
        ws.active = next(iter(ws.models), None)


def forward_seconds(record: LoadedModel) -> float:
    """Seconds of forward pass per image, measured once per model and preset: the base of every estimate."""
    if record.forward_seconds is None:
        from . import workers

        record.forward_seconds = float(workers.call(record.adapter, engine.measure_forward_seconds, doing="timing a forward pass"))
    return record.forward_seconds


def summary_rows(record: LoadedModel) -> list[tuple[str, str]]:
    info = record.adapter.info()
    h, w, c = info.input_size
    return [
        ("Framework", info.framework),
        ("Format", info.source_format),
        ("Parameters", f"{info.parameters:,}"),
        ("Input", f"{h} x {w} x {c} ({info.layout})"),
        ("Classes", f"{info.num_classes}" + (f" (labels from {record.labels_file})" if record.labels_file else "")),
        ("Outputs", info.output_kind + (" (the model's softmax peeled off)" if info.softmax_head and info.output_kind == "logits" else "")),
        ("Preprocessing", info.preset),
        ("Device", info.device),
        ("CAM layer", _default_layer(record.adapter) or "none (no spatial layer)"),
        ("Fingerprint", info.fingerprint.rsplit(":", 1)[-1][:16]),
    ]


def _default_layer(adapter: ModelAdapter) -> str | None:
    try:
        return adapter.default_cam_layer()
    except WorkbenchError:
        return None


def layer_rows(record: LoadedModel) -> list[dict[str, Any]]:
    adapter = record.adapter
    default = _default_layer(adapter)
    return [
        {
            "#": layer.order,
            "layer": layer.name,
            "kind": layer.kind,
            "output shape": " x ".join(map(str, layer.output_shape)),
            "CAM default": "✓" if layer.name == default else "",
        }
        for layer in sorted(adapter.layers(), key=lambda layer: layer.order)
    ]


def spatial_layers(record: LoadedModel) -> list[str]:
    return [layer.name for layer in sorted(record.adapter.layers(), key=lambda layer: layer.order) if layer.spatial]


# ---------------------------------------------------------------------------- images
def add_image(ws: Workspace, data: bytes, name: str, *, settings: Settings | None = None) -> ImageEntry:
    """An uploaded image -> the workspace (the same bytes twice are one image). Raises ImageRejected."""
    image = load_image(data, name, settings=settings)
    if image.sha256 not in ws.images:
        ws.images[image.sha256] = ImageEntry(image=image, source="upload")
    return ws.images[image.sha256]


def add_sample(ws: Workspace, sample) -> ImageEntry:
    """A zoo sample (a :class:`model_zoo.Sample`) with its ground-truth mask and label."""
    import model_zoo

    data = pathlib.Path(sample.image).read_bytes()
    image = load_image(data, f"{sample.name}.png")
    if image.sha256 not in ws.images:
        _, mask = model_zoo.load_sample(sample)
        label = model_zoo.CLASSES[sample.label] if 0 <= sample.label < len(model_zoo.CLASSES) else str(sample.label)
        ws.images[image.sha256] = ImageEntry(image=image, source="zoo", mask=mask, label=label)
    return ws.images[image.sha256]


def remove_image(ws: Workspace, image_id: str) -> None:
    ws.images.pop(image_id, None)


def new_uploads(ws: Workspace, scope: str, files: Iterable[Any]) -> list[Any]:
    """Uploaded files this session has not handled yet (by the uploader's file id), marked handled.

    The uploader hands the same files back on every rerun; each is processed once.
    """
    fresh = []
    for f in files or ():
        token = (scope, getattr(f, "file_id", None) or id(f))
        if token not in ws.handled_uploads:
            ws.handled_uploads.add(token)
            fresh.append(f)
    return fresh


# ---------------------------------------------------------------------------- predictions
def predictions(ws: Workspace, record: LoadedModel, entries: Sequence[ImageEntry]) -> np.ndarray:
    """Model outputs [N, K] for the entries, as the model gives them (cached per model and image)."""
    from .analysis import model_inputs

    missing = [e for e in entries if f"{record.identity}/{e.id}" not in ws.predictions]
    if missing:
        adapter = record.adapter
        with adapter.lock:
            outputs = adapter.predict(model_inputs(adapter, [e.image for e in missing])[1])
        for entry, row in zip(missing, np.asarray(outputs, dtype=np.float32)):
            ws.predictions.put(f"{record.identity}/{entry.id}", row)
    rows = [ws.predictions.get(f"{record.identity}/{e.id}") for e in entries]
    return np.stack(rows) if rows else np.zeros((0, record.adapter.num_classes), np.float32)


def display_probabilities(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """Probabilities for display: softmax of logits; probabilities as given."""
    from .adapters.base import probabilities

    return probabilities(outputs, output_kind)


def top_predictions(ws: Workspace, record: LoadedModel, entry: ImageEntry, k: int = TOP_K) -> list[dict[str, Any]]:
    """The k best classes: rank, label, probability (softmax for display when the model gives logits), raw score."""
    outputs = predictions(ws, record, [entry])[0]
    probs = display_probabilities(outputs[None], record.adapter.output_kind)[0]
    labels = record.adapter.labels
    order = np.argsort(-outputs, kind="stable")[:k]
    return [
        {"rank": r + 1, "class": labels[i], "index": int(i), "probability": float(probs[i]), "score": float(outputs[i])}
        for r, i in enumerate(order)
    ]


def test_prediction(ws: Workspace, record: LoadedModel, k: int = TOP_K) -> tuple[ImageEntry, list[dict[str, Any]]]:
    """Top-k on the user's first loaded image; with none, a zoo model's own first sample, and for an uploaded
    model a neutral mid-grey image (a zoo sample says nothing about someone else's model)."""
    entry = next(iter(ws.images.values()), None) or (_first_sample() if record.source == "zoo" else _neutral_image())
    return entry, top_predictions(ws, record, entry, k)


@functools.cache
def _neutral_image() -> ImageEntry:
    pixels = np.full((64, 64, 3), 0.5, np.float32)
    image = LoadedImage(name="a neutral grey image", pixels=pixels, sha256="neutral-grey-image", format="", original_size=(64, 64), notes=())
    return ImageEntry(image=image, source="neutral")


@functools.cache
def _first_sample() -> ImageEntry:
    import model_zoo

    try:
        sample = model_zoo.samples()[0]
        return ImageEntry(image=load_image(pathlib.Path(sample.image).read_bytes(), f"{sample.name}.png"), source="zoo")
    except (OSError, IndexError, WorkbenchError):
        pixels = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
        image = LoadedImage(name="a random image", pixels=pixels, sha256="random-test-image", format="", original_size=(64, 64), notes=())
        return ImageEntry(image=image, source="random")


def predicted_class(ws: Workspace, record: LoadedModel, entry: ImageEntry) -> int:
    return int(np.argmax(predictions(ws, record, [entry])[0]))


def target(ws: Workspace, record: LoadedModel, entry: ImageEntry) -> int:
    """The class explained for this image: the user's choice, else the predicted class."""
    chosen = ws.targets.get((record.identity, entry.id))
    return chosen if chosen is not None else predicted_class(ws, record, entry)


def set_target(ws: Workspace, record: LoadedModel, entry: ImageEntry, klass: int | None) -> None:
    if klass is None or klass == predicted_class(ws, record, entry):
        ws.targets.pop((record.identity, entry.id), None)
    else:
        ws.targets[(record.identity, entry.id)] = int(klass)


# ---------------------------------------------------------------------------- explaining
def normalised_params(methods: Sequence[str], params: Mapping[str, Mapping] | None, settings: Settings | None = None) -> dict[str, dict]:
    """Every method's parameters checked against its Params and this deployment's caps (ParameterError)."""
    return {m.name: m.values for m in engine.normalise_methods(methods, params, settings)}


def params_for(record: LoadedModel, params: Mapping[str, Mapping]) -> dict[str, dict]:
    """The parameters with a layer this model lacks put back to automatic (comparing models with other layer names)."""
    layers = set(spatial_layers(record))
    return {
        method: {**values, "layer": None} if values.get("layer") and values["layer"] not in layers else dict(values)
        for method, values in params.items()
    }


def result_key(
    record: LoadedModel,
    entry: ImageEntry,
    method: str,
    params: Mapping,
    klass: int,
    seed: int,
    background: Sequence[str] = (),
) -> str:
    """Content hash of everything that decides one attribution (``background``: image ids, for methods that use one)."""
    return engine.result_key(record.identity, entry.id, method, params, klass, seed, background)


Plan = engine.Plan


def request(
    ws: Workspace,
    record: LoadedModel,
    entries: Sequence[ImageEntry],
    methods: Sequence[str],
    params: Mapping[str, Mapping] | None,
    seed: int,
    *,
    background: Sequence[ImageEntry] | None = None,
    settings: Settings | None = None,
) -> engine.ExplainRequest:
    """The typed request for these images and methods on this model, with this session's targets (ParameterError)."""
    return engine.ExplainRequest.build(
        record.model_record(),
        [engine.ImageRef(e.name, e.id) for e in entries],
        methods,
        params,
        targets=[target(ws, record, e) for e in entries],
        seed=seed,
        background=[engine.ImageRef(e.name, e.id) for e in background or ()],
        settings=settings,
        where=" on the Images page",
    )


def model_engine(ws: Workspace, record: LoadedModel, settings: Settings | None = None) -> engine.Engine:
    """The engine for this session's view of a model: its cache of maps, images and forward time."""
    return engine.Engine(
        record.adapter,
        {entry.id: entry.image for entry in ws.images.values()},
        cache=ws.results,
        pixels=lambda image: model_pixels_of(ws, record, image),
        forward_seconds=lambda: forward_seconds(record),
        settings=settings,
    )


def plan(
    ws: Workspace,
    record: LoadedModel,
    entries: Sequence[ImageEntry],
    methods: Sequence[str],
    params: Mapping[str, Mapping] | None,
    seed: int,
    *,
    background: Sequence[ImageEntry] | None = None,
    settings: Settings | None = None,
) -> Plan:
    """Check the request (caps included) and find what is not computed yet; estimate its cost.

    ``background``: images for the methods that use a background set (None: each method's default).
    """
    work = request(ws, record, entries, methods, params, seed, background=background, settings=settings)
    return model_engine(ws, record, settings).plan(work)


def run(
    ws: Workspace,
    record: LoadedModel,
    entries: Sequence[ImageEntry],
    work: Plan,
    seed: int,
    *,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    settings: Settings | None = None,
) -> Comparison:
    """Compute what ``work`` found missing (in the model's worker), cache it, and assemble the comparison."""
    runner = model_engine(ws, record, settings)
    try:
        return runner.run(work.request, progress, cancel, work=work)
    finally:
        ws.explainer_runs += runner.explainer_calls


def stopped_comparison(ws: Workspace, record: LoadedModel, work: Plan, *, running: str | None = None) -> Comparison:
    """After a run was interrupted mid-way: the comparison of the methods whose maps are all computed,
    flagged as stopped. ``running`` defaults to the first method ``work`` had to compute that did not finish
    (the engine computes them in the request's order). Raises Cancelled (one line) when none finished."""
    runner = model_engine(ws, record)
    request = work.request
    if running is None:
        running = next(
            (m for m in request.method_names
             if work.missing.get(m) and any(runner.cache.get(request.result_key(i, m)) is None for i in work.missing[m])),
            None,
        )
    return runner.stopped(request, running=running)


def comparison_key(record: LoadedModel, entries: Sequence[ImageEntry], work: Plan, seed: int) -> str:
    """Content hash of everything that decides a whole comparison: one saved run per key and session."""
    return work.request.key


def model_pixels_of(ws: Workspace, record: LoadedModel, image: LoadedImage) -> np.ndarray:
    """The image resized to the model's input (for display under the maps), cached per size."""
    from .analysis import to_model_pixels

    key = f"{record.adapter.input_size}/{record.adapter.resize_mode}/{image.sha256}"
    found = ws.pixels.get(key)
    if found is None:
        found = to_model_pixels(record.adapter, image)
        ws.pixels.put(key, found)
    return found


def model_pixels(ws: Workspace, record: LoadedModel, entry: ImageEntry) -> np.ndarray:
    return model_pixels_of(ws, record, entry.image)


def cached_comparison(ws: Workspace, record: LoadedModel, entries: Sequence[ImageEntry], work: Plan, seed: int) -> Comparison | None:
    """The comparison from cached results only; None when any pair is missing. Calls no explainer."""
    return model_engine(ws, record).assemble(work.request)


# ---------------------------------------------------------------------------- what the charts show
def agreement_rows(results: Sequence[Attribution], names: Sequence[str], percent: float) -> list[dict[str, Any]]:
    """Long-form pairwise agreement: one row per (a, b, metric)."""
    from .agreement import agreement_matrix

    matrices = agreement_matrix(results, percent)
    rows = []
    for metric, label in (("spearman", "Spearman ρ"), ("iou", f"top-{percent:g}% IoU")):
        m = matrices[metric]
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                rows.append({"a": a, "b": b, "metric": label, "value": float(m[i, j])})
    return rows


def timing_rows(results: Sequence[Attribution], names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"method": n, "seconds": float(r.seconds), "evaluations": int(r.evaluations)} for r, n in zip(results, names)]


def completeness_rows(results: Sequence[Attribution], names: Sequence[str]) -> list[dict[str, Any]]:
    """Where a method claims completeness (sum of the map = f(x) - reference), how far it is off."""
    rows = []
    for r, n in zip(results, names):
        total = float(np.sum(r.channels if r.channels is not None else r.map, dtype=np.float64))
        rows.append(
            {
                "method": n,
                "f(x)": r.target_score,
                "reference": r.reference_score,
                "sum of attributions": total if r.reference_score is not None else None,
                "gap": r.completeness_gap,
                "gap / |f(x) - reference|": r.completeness_ratio,
            }
        )
    return rows


def cross_model_agreement(a: Attribution, b: Attribution, percent: float) -> dict[str, float]:
    """Spearman and top-k IoU between one method's maps from two models (resized to the first's size)."""
    from .agreement import spearman, top_k_iou
    from .resize import bilinear_resize

    mb = b.map
    if mb.shape != a.map.shape:
        mb = bilinear_resize(mb[None], a.map.shape)[0]
    return {"spearman": spearman(a.map, mb), "iou": top_k_iou(a.map, mb, percent)}


def npz_bytes(comparison: Comparison, image_index: int) -> bytes:
    """Every raw map of one image as an .npz (one array per method, plus the model-size pixels)."""
    import io

    buffer = io.BytesIO()
    arrays = {m: comparison.results[image_index][j].map for j, m in enumerate(comparison.methods)}
    arrays["pixels"] = comparison.images[image_index].pixels
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- environment
def library_versions() -> dict[str, str]:
    """analysis.versions(), read once per process (package metadata does not change under a running app)."""
    return engine.library_versions()


def device_description(ws: Workspace | None = None) -> str:
    """The active model's device, else what the machine has, found without importing a framework."""
    if ws is not None and ws.model is not None:
        return ws.model.adapter.device
    gpus = []
    for info in sorted(pathlib.Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    gpus.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return f"GPU: {', '.join(gpus)}" if gpus else "CPU"


def settings_rows(settings: Settings | None = None) -> list[dict[str, Any]]:
    from .workers.limits import Limits

    settings = settings or get_settings()
    shown = {f.name: str(getattr(settings, f.name)) for f in dataclasses.fields(settings)}
    if not settings.worker_memory_mb:
        shown["worker_memory_mb"] = f"automatic: {Limits.from_settings(settings).memory_mb} MiB"
    return [
        {"setting": name, "value": value, "environment variable": f"WORKBENCH_{name.upper()}"}
        for name, value in shown.items()
        if name not in ("database_url",)
    ]


def worker_rows() -> list[dict[str, Any]]:
    """The model worker processes of this server: pid, memory now and at most, what each holds."""
    if not get_settings().model_workers:
        return []
    from .workers import pool
    from .workers.limits import rss_bytes

    rows = []
    for worker, model in pool().worker_models():
        used = rss_bytes(worker.pid)
        rows.append(
            {
                "pid": worker.pid,
                "model": model or "(warm spare)",
                "memory (MiB)": round((used or 0) / 2**20),
                "peak (MiB)": round(worker.peak_rss / 2**20),
                "limit (MiB)": worker.limits.memory_mb,
                "busy": worker.busy,
            }
        )
    return rows
