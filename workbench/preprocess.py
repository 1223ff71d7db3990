"""Preprocessing presets: pixel values in [0, 1] (NHWC, RGB) -> the model's input values.

All presets are per-channel affine maps (plus a channel flip for ``caffe``), so
spatial operations such as blurring commute with them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    scale: tuple[float, ...]  # per channel, applied after the optional flip
    offset: tuple[float, ...]
    flip_rgb: bool = False

    @property
    def is_identity(self) -> bool:
        """Model input = the pixels in [0, 1] (``apply`` only copies)."""
        return not self.flip_rgb and all(v == 1.0 for v in self.scale) and all(v == 0.0 for v in self.offset)

    def apply(self, unit: np.ndarray) -> np.ndarray:
        """[0,1] RGB NHWC (or HWC) -> model input, float32."""
        x = np.asarray(unit, dtype=np.float32)
        channels = x.shape[-1]
        if self.flip_rgb and channels == 3:
            x = x[..., ::-1]
        scale = np.asarray(self.scale[:channels] if len(self.scale) >= channels else self.scale[:1] * channels, np.float32)
        offset = np.asarray(self.offset[:channels] if len(self.offset) >= channels else self.offset[:1] * channels, np.float32)
        return (x * scale + offset).astype(np.float32)

    def invert(self, model_input: np.ndarray) -> np.ndarray:
        """Model input -> [0,1] RGB (for display)."""
        x = np.asarray(model_input, dtype=np.float32)
        channels = x.shape[-1]
        scale = np.asarray(self.scale[:channels] if len(self.scale) >= channels else self.scale[:1] * channels, np.float32)
        offset = np.asarray(self.offset[:channels] if len(self.offset) >= channels else self.offset[:1] * channels, np.float32)
        x = (x - offset) / scale
        if self.flip_rgb and channels == 3:
            x = x[..., ::-1]
        return x.astype(np.float32)


PRESETS: dict[str, Preset] = {
    "unit": Preset("unit", "pixels scaled to [0, 1]", (1.0,), (0.0,)),
    "raw255": Preset("raw255", "pixels in [0, 255]", (255.0,), (0.0,)),
    "imagenet": Preset(
        "imagenet",
        "[0, 1] then (x - mean) / std with ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)",
        tuple(1.0 / s for s in IMAGENET_STD),
        tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)),
    ),
    "caffe": Preset(
        "caffe",
        "RGB->BGR, [0, 255] minus the ImageNet BGR mean (103.939, 116.779, 123.68)",
        (255.0, 255.0, 255.0),
        tuple(-m for m in CAFFE_MEAN_BGR),
        flip_rgb=True,
    ),
    "tf": Preset("tf", "pixels scaled to [-1, 1]", (2.0,), (-1.0,)),
}


def get_preset(name: str) -> Preset:
    from .errors import ParameterError

    try:
        return PRESETS[name]
    except KeyError:
        raise ParameterError(f"Unknown preprocessing preset {name!r}; choose one of {', '.join(PRESETS)}.") from None


def mean_std_preset(
    mean: tuple[float, ...], std: tuple[float, ...], *, rescale: float | None = 1 / 255, name: str = "model"
) -> Preset:
    """A model's own preset from its preprocessing config: pixels (times 255 * ``rescale``) then (x - mean) / std.

    ``rescale=None`` leaves pixels in [0, 255] (a config with ``do_rescale: false``).
    """
    factor = 255.0 * rescale if rescale is not None else 255.0
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    fmt = lambda values: ", ".join(f"{v:g}" for v in values)  # noqa: E731
    return Preset(
        name,
        f"the model's own: [0, {factor:g}] then (x - mean) / std with mean ({fmt(mean)}) and std ({fmt(std)})",
        tuple(factor / s for s in std),
        tuple(-m / s for m, s in zip(mean, std)),
    )
