"""Model inputs, forward timing, cost estimates and library versions; comparisons run through :mod:`workbench.engine`."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from .adapters.base import ModelAdapter
from .errors import ParameterError
from .images import LoadedImage, resize_for_model
from .result import Comparison
from .settings import Settings

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


from .engine import check_request  # noqa: E402  (kept importable from here)


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
    """Every method on every image, one target per image (``None`` = the predicted class), through the engine.

    A convenience for scripts holding an adapter; the app and the CLI build their
    :class:`~workbench.engine.ExplainRequest` with how the model was loaded.
    """
    from .engine import Engine, ExplainRequest, ImageRef, ModelRecord

    background = list(background or ())
    request = ExplainRequest.build(
        ModelRecord.of(adapter, source="adapter", filename=adapter.name),
        [ImageRef(im.name, im.sha256) for im in images],
        methods,
        params,
        targets=targets,
        seed=seed,
        background=[ImageRef(im.name, im.sha256) for im in background],
        settings=settings,
    )
    lookup = {im.sha256: im for im in [*images, *background]}
    return Engine(adapter, lookup, settings=settings).run(request, progress)
