"""Run several explainers on several images of one model: the comparison the grid, store, export and CLI share."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from .adapters.base import ModelAdapter
from .errors import ParameterError
from .images import LoadedImage, resize_for_model
from .result import Comparison, ExplainedImage
from .settings import Settings, get_settings

LIBRARIES = ("workbench", "numpy", "torch", "tensorflow", "keras", "captum", "shap", "streamlit", "onnx", "onnx2torch")


def versions() -> dict[str, str]:
    """Installed library versions, read from package metadata (imports nothing)."""
    found = {}
    for name in LIBRARIES:
        if name == "workbench":
            from . import __version__

            found[name] = __version__
            continue
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def placement_for(adapter: ModelAdapter, image: LoadedImage):
    """Where the image lands in the model's input under the adapter's resize mode (a :class:`~workbench.resize.Placement`)."""
    from .resize import place

    return place(
        image.pixels.shape[:2], adapter.input_size[:2], getattr(adapter, "resize_mode", "stretch"),
        crop_fraction=getattr(adapter, "crop_fraction", 1.0),
    )


def to_model_pixels(adapter: ModelAdapter, image: LoadedImage) -> np.ndarray:
    """The image as the model sees it, before the preset: [0, 1], the model's H x W and channels."""
    h, w, c = adapter.input_size
    pixels = _with_channels(image.pixels, c)
    mode = getattr(adapter, "resize_mode", "stretch")
    resample = getattr(adapter, "resample", "bilinear")  # a preprocessor config's (bicubic for many)
    if mode == "stretch":
        return resize_for_model(pixels, (h, w), resample)
    from .resize import apply_placement

    return apply_placement(pixels, placement_for(adapter, image), lambda p, size: resize_for_model(p, size, resample))


def original_pixels(adapter: ModelAdapter, image: LoadedImage) -> np.ndarray:
    """The image at its own size with the model's channels: what overlays are drawn on."""
    return _with_channels(image.pixels, adapter.input_size[2]).astype(np.float32)


def _with_channels(pixels: np.ndarray, c: int) -> np.ndarray:
    if pixels.shape[-1] != c:
        if c == 1:
            pixels = pixels @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        elif c == 3 and pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        else:
            raise ParameterError(f"The model takes {c} channels; images have {pixels.shape[-1]}.")
    return pixels


def model_inputs(adapter: ModelAdapter, images: Sequence[LoadedImage]) -> tuple[np.ndarray, np.ndarray]:
    """-> (display pixels [N, H, W, C] in [0, 1], model input [N, H, W, C])."""
    pixels = np.stack([to_model_pixels(adapter, im) for im in images]).astype(np.float32)
    return pixels, adapter.prepare(pixels)


def measure_forward_seconds(adapter: ModelAdapter, batch: int = 8, repeats: int = 3) -> float:
    """Forward seconds per image, timed on a batch (median of ``repeats``, after a warm-up).

    Timed on a batch because the methods that cost (IG, SHAP, SmoothGrad, Score-CAM) call the
    model in batches; one image alone costs several times more per image on a CPU.
    """
    x = adapter.test_input(batch)
    with adapter.lock:
        adapter.predict(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            adapter.predict(x)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) / batch


def estimate(
    adapter: ModelAdapter,
    methods: Sequence[str],
    params: Mapping[str, Mapping] | None,
    n_images: int,
    forward_seconds: float,
    background_size: int = 0,
) -> dict[str, dict[str, float]]:
    """Per method: model evaluations and estimated seconds for ``n_images`` images."""
    import explainers

    out = {}
    for name in methods:
        cls = explainers.REGISTRY[name]
        cost = cls.cost(adapter, (params or {}).get(name), background_size=background_size)
        out[name] = {
            "forward": cost.forward * n_images,
            "backward": cost.backward * n_images,
            "evaluations": cost.evaluations * n_images,
            "seconds": cost.seconds(forward_seconds) * n_images,
        }
    return out


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


def run_comparison(
    adapter: ModelAdapter,
    images: Sequence[LoadedImage],
    methods: Sequence[str],
    *,
    params: Mapping[str, Mapping] | None = None,
    targets: Sequence[int | None] | None = None,
    seed: int = 0,
    background: Sequence[LoadedImage] | None = None,
    progress: Callable[[float, str], None] | None = None,
    settings: Settings | None = None,
) -> Comparison:
    """Every method on every image, one target per image (``None`` = the predicted class)."""
    import explainers

    settings = settings or get_settings()
    check_request(len(images), methods, settings)
    params = {m: dict((params or {}).get(m) or {}) for m in methods}
    # validate every method's parameters before running any
    normalised = {m: explainers.REGISTRY[m].normalise_params(params[m], settings) if m in explainers.REGISTRY else None for m in methods}
    for m in methods:
        explainers.get(m)
    pixels, batch = model_inputs(adapter, images)
    predicted = adapter.predict(batch).argmax(axis=1)
    chosen = [int(predicted[i]) if targets is None or targets[i] is None else int(targets[i]) for i in range(len(images))]
    background_batch = model_inputs(adapter, background)[1] if background else None
    fingerprints = [im.sha256 for im in images]
    columns = []
    for j, name in enumerate(methods):
        explainer = explainers.get(name)

        def report(fraction, message, _j=j):
            if progress:
                progress((_j + fraction) / len(methods), message)

        report(0.0, f"{explainer.title}…")
        columns.append(
            explainer.explain(
                adapter,
                batch,
                chosen,
                params=normalised[name],
                seed=seed,
                background=background_batch,
                progress=report,
                settings=settings,
                image_fingerprints=fingerprints,
            )
        )
    if progress:
        progress(1.0, "done")
    labels = adapter.labels
    explained = tuple(
        ExplainedImage(
            name=im.name, sha256=im.sha256, pixels=pixels[i], target=chosen[i], target_label=labels[chosen[i]], notes=im.notes,
            original=original_pixels(adapter, im), placement=placement_for(adapter, im).as_dict(),
        )
        for i, im in enumerate(images)
    )
    info = adapter.info()
    model = {k: (list(v) if isinstance(v, tuple) else v) for k, v in info.__dict__.items()}
    return Comparison(
        model=model,
        images=explained,
        methods=tuple(methods),
        results=tuple(tuple(col[i] for col in columns) for i in range(len(images))),
        seed=seed,
        versions=versions(),
        created=time.time(),
    )
