"""Model zoo: small classifiers trained here, shipped with weights and ground-truth samples.

Two architectures, each defined twice with identical math (PyTorch and Keras 3):

* ``shapes-cnn``: a plain CNN trained on the synthetic shapes set (:mod:`model_zoo.shapes`),
  whose samples come with exact object masks.
* ``resnet-mini``: a ResNet-18-shaped network for 224x224 input with seeded random
  weights, for exercising residual blocks, BatchNorm and layer hooks.

Importing this package never imports torch, tensorflow or keras; ``build_torch`` and
``build_keras`` do, when called. Weights and samples are produced by
``python -m model_zoo.train``.

Example::

    import model_zoo
    entry = model_zoo.get("shapes-cnn-torch")
    model = model_zoo.build_torch(entry.architecture)
    image, mask = model_zoo.load_sample(model_zoo.samples()[0])
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from .shapes import CLASSES

ROOT = pathlib.Path(__file__).resolve().parent
WEIGHTS_DIR = ROOT / "weights"
SAMPLES_DIR = ROOT / "samples"


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    input_size: tuple[int, int, int]  # H, W, C
    num_classes: int
    labels: tuple[str, ...]
    description: str


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    framework: str  # "pytorch" | "keras"
    architecture: str
    weights: pathlib.Path  # .safetensors for pytorch, .keras for keras
    input_size: tuple[int, int, int]
    labels: tuple[str, ...]
    preset: str  # preprocessing preset, see workbench.preprocess
    description: str


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str
    label: int
    image: pathlib.Path
    mask: pathlib.Path


ARCHITECTURES: dict[str, Architecture] = {
    "shapes-cnn": Architecture(
        "shapes-cnn",
        (64, 64, 3),
        len(CLASSES),
        CLASSES,
        "Plain CNN (conv-SiLU-avgpool x3, conv-SiLU, global average pool, linear) trained on "
        "synthetic shapes; samples ship with exact object masks.",
    ),
    "resnet-mini": Architecture(
        "resnet-mini",
        (224, 224, 3),
        len(CLASSES),
        CLASSES,
        "ResNet-18 layout at widths 16/32/64/128 (BatchNorm, projection shortcuts); seeded "
        "random weights with BatchNorm statistics calibrated on shapes images. Not trained.",
    ),
}

_FILES = {"shapes-cnn": "shapes_cnn", "resnet-mini": "resnet_mini"}
_FRAMEWORKS = {"torch": ("pytorch", ".safetensors"), "keras": ("keras", ".keras")}


def entries() -> list[ZooEntry]:
    """Every shipped model: each architecture in PyTorch and in Keras."""
    result = []
    for arch in ARCHITECTURES.values():
        for suffix, (framework, extension) in _FRAMEWORKS.items():
            result.append(
                ZooEntry(
                    name=f"{arch.name}-{suffix}",
                    framework=framework,
                    architecture=arch.name,
                    weights=WEIGHTS_DIR / f"{_FILES[arch.name]}{extension}",
                    input_size=arch.input_size,
                    labels=arch.labels,
                    preset="unit",
                    description=arch.description,
                )
            )
    return result


def get(name: str) -> ZooEntry:
    """The zoo entry called ``name``; ``KeyError`` naming the choices if there is none."""
    for entry in entries():
        if entry.name == name:
            return entry
    raise KeyError(f"No zoo model {name!r}; choose one of {', '.join(e.name for e in entries())}.")


def _architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"No zoo architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}.") from None


def build_torch(architecture: str, num_classes: int | None = None):
    """A randomly initialised PyTorch model (``nn.Module`` in eval mode, NCHW input)."""
    arch = _architecture(architecture)
    from .torch_models import BUILDERS

    return BUILDERS[arch.name](num_classes=num_classes or arch.num_classes).eval()


def build_keras(architecture: str, num_classes: int | None = None):
    """A randomly initialised Keras 3 functional model (NHWC input)."""
    arch = _architecture(architecture)
    from .keras_models import BUILDERS

    return BUILDERS[arch.name](num_classes=num_classes or arch.num_classes)


def samples() -> list[Sample]:
    """The shipped shapes samples (64x64, two per class), in ``samples/index.json`` order."""
    index = json.loads((SAMPLES_DIR / "index.json").read_text())
    return [
        Sample(item["name"], int(item["label"]), SAMPLES_DIR / item["image"], SAMPLES_DIR / item["mask"])
        for item in index
    ]


def load_sample(sample: Sample | str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: float32 HxWx3 RGB in [0, 1] and bool HxW object mask.

    ``sample`` is a :class:`Sample` or its name.
    """
    from PIL import Image

    if isinstance(sample, str):
        by_name = {s.name: s for s in samples()}
        if sample not in by_name:
            raise KeyError(f"No zoo sample {sample!r}; choose one of {', '.join(by_name)}.")
        sample = by_name[sample]
    with Image.open(sample.image) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    with Image.open(sample.mask) as mask:
        region = np.asarray(mask.convert("L")) > 127
    return pixels, region


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "CLASSES",
    "Sample",
    "ZooEntry",
    "build_keras",
    "build_torch",
    "entries",
    "get",
    "load_sample",
    "samples",
]
