"""Hugging Face image classifiers: ``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json``).

Only architectures that ``transformers`` itself ships for ``AutoModelForImageClassification``
load; a config that names its own code (``auto_map``) is refused before anything is built, and
``trust_remote_code`` is never passed. Weights are read from safetensors only (no pickle): the
three files, and nothing else, are written to a private temporary directory and handed to
``from_pretrained(local_files_only=True, use_safetensors=True)``.

The model is wrapped in :class:`HFClassifier`, an ``nn.Module`` whose forward takes the
pixel batch and returns the logits, so :class:`~workbench.adapters.torch_adapter.TorchAdapter`
and every method work on it unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Mapping

import torch

from ..errors import ModelRejected, UnsafeModel, UnsupportedFormat, WorkbenchError
from ..preprocess import Preset, mean_std_preset

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PREPROCESSOR = "preprocessor_config.json"
FILES = (CONFIG, WEIGHTS, PREPROCESSOR)
SAVE_HINT = "save it with model.save_pretrained(folder) (safetensors, the default) and zip the folder"
# Architectures in the mapping that need another package's code (timm) or are not plain image classifiers.
REFUSED_TYPES = {"timm_wrapper": "it runs timm's code, which the workbench does not load"}
# PIL resampling codes as preprocessor configs write them
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclasses.dataclass(frozen=True)
class HFPreprocessing:
    """What ``preprocessor_config.json`` asks for (defaults where it is absent)."""

    preset: Preset | None
    size: tuple[int, int]  # H, W the model takes
    resample: str
    resize_mode: str  # "stretch" (resize to H x W) or "center-crop" (shortest edge, then crop)
    notes: tuple[str, ...] = ()
    crop_fraction: float = 1.0  # centre-crop: the crop's share of the resized short side


class HFClassifier(torch.nn.Module):
    """A ``transformers`` image classifier as ``pixels -> logits``."""

    def __init__(self, model: "torch.nn.Module"):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: "torch.Tensor") -> "torch.Tensor":
        return self.model(pixel_values=pixel_values).logits

    def attentions(self, pixel_values: "torch.Tensor") -> tuple["torch.Tensor", ...] | None:
        """Per-layer attention weights [N, heads, tokens, tokens], or None when the architecture has none."""
        try:
            out = self.model(pixel_values=pixel_values, output_attentions=True)
        except (TypeError, ValueError):
            return None
        found = getattr(out, "attentions", None)
        return tuple(found) if found else None


def classifier_types() -> dict[str, str]:
    """model_type -> class name of every image classifier ``transformers`` ships."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    return {k: v for k, v in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items() if k not in REFUSED_TYPES}


def read_json(data: bytes, filename: str, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnsupportedFormat(f"{filename}: {what} is not valid JSON ({str(exc).splitlines()[0][:120]}); {SAVE_HINT}.") from None
    if not isinstance(parsed, dict):
        raise UnsupportedFormat(f"{filename}: {what} must be a JSON object; {SAVE_HINT}.")
    return parsed


def check_config(config: Mapping[str, Any], filename: str) -> str:
    """Refuse custom code and architectures transformers does not ship; -> the model_type."""
    if "auto_map" in config or config.get("trust_remote_code"):
        named = config.get("auto_map")
        shown = ", ".join(f"{k}: {v}" for k, v in named.items())[:160] if isinstance(named, dict) else "custom code"
        raise UnsafeModel(
            f"{filename}: config.json names custom code ({shown}), which would run on the server; the workbench "
            "loads only the architectures transformers ships (ViT, DeiT, Swin, ConvNeXt, ResNet, ...)."
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UnsupportedFormat(f"{filename}: config.json has no model_type; {SAVE_HINT}.")
    if model_type in REFUSED_TYPES:
        raise UnsupportedFormat(f"{filename}: the {model_type} architecture is not supported: {REFUSED_TYPES[model_type]}.")
    known = classifier_types()
    if model_type not in known:
        raise UnsupportedFormat(
            f"{filename}: {model_type!r} is not an image classifier transformers ships "
            f"(AutoModelForImageClassification takes {', '.join(sorted(known))})."
        )
    return model_type


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            return (int(value["shortest_edge"]),) * 2
    return None


def read_preprocessing(pre: Mapping[str, Any] | None, config: Mapping[str, Any]) -> HFPreprocessing:
    """Preset, input size, resampling and resize mode from a preprocessor config (or the model config)."""
    image_size = _size(config.get("image_size")) or (224, 224)
    if not pre:
        return HFPreprocessing(None, image_size, "bilinear", "stretch", ("no preprocessor_config.json: pixels in [0, 1]",))
    notes = []
    preset = None
    if pre.get("do_normalize", True) and pre.get("image_mean") is not None and pre.get("image_std") is not None:
        rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else None
        preset = mean_std_preset(tuple(pre["image_mean"]), tuple(pre["image_std"]), rescale=rescale, name="model")
    elif pre.get("do_rescale", True) is False:
        preset = mean_std_preset((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), rescale=None, name="model")
    crop = _size(pre.get("crop_size")) if pre.get("do_center_crop") else None
    size_entry = pre.get("size")
    shortest = isinstance(size_entry, dict) and "shortest_edge" in size_entry and "height" not in size_entry
    resized = _size(size_entry)
    size = crop or resized or image_size
    fraction = 1.0
    if crop and shortest and resized and resized[0] > crop[0]:
        fraction = crop[0] / resized[0]  # DeiT: short side to 256, centre crop 224
    elif shortest and not crop and pre.get("crop_pct") and size[0] < 384:
        fraction = float(pre["crop_pct"])  # ConvNeXt: short side to 224 / crop_pct, centre crop 224
    mode = "center-crop" if crop or shortest else "stretch"
    if shortest and not crop and pre.get("crop_pct") and size[0] >= 384:
        mode = "stretch"  # ConvNeXt's processor resizes straight to size x size from 384 px on
    resample = RESAMPLE.get(pre.get("resample", 2), "bilinear") if isinstance(pre.get("resample", 2), int) else "bilinear"
    return HFPreprocessing(preset, size, resample, mode, tuple(notes), fraction)


def labels_of(config: Mapping[str, Any]) -> list[str] | None:
    raw = config.get("id2label")
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    return [by_index[i] for i in range(len(by_index))]


@contextlib.contextmanager
def _without_torchvision_stand_in():
    """transformers decides at import whether torchvision is there (importlib.util.find_spec) and then imports
    torchvision.transforms; the stand-in that ONNX conversion puts in sys.modules (see loading_torch) would
    answer yes. It is taken out while transformers imports a model's modules, and put back."""
    from . import loading_torch

    with loading_torch._stub_lock:
        module = sys.modules.get("torchvision")
        stand_in = module is not None and getattr(module, "__file__", None) is None and "Stand-in" in (module.__doc__ or "")
        saved = {}
        if stand_in:
            saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "torchvision" or k.startswith("torchvision.")}
        if stand_in:
            # transformers caches its answer (lru_cache): asked once while the stand-in was there, it stays yes
            from transformers.utils import import_utils

            for check in ("is_torchvision_available", "is_torchvision_v2_available"):
                cached = getattr(import_utils, check, None)
                if hasattr(cached, "cache_clear"):
                    cached.cache_clear()
        try:
            yield
        finally:
            sys.modules.update(saved)


def load_hf_classifier(files: Mapping[str, bytes], filename: str) -> tuple[HFClassifier, dict[str, Any], HFPreprocessing]:
    """-> (the wrapped model in eval mode, its config dict, its preprocessing).

    ``files`` maps the three known names to their bytes; anything else is ignored (never written).
    """
    if CONFIG not in files or WEIGHTS not in files:
        missing = [name for name in (CONFIG, WEIGHTS) if name not in files]
        raise UnsupportedFormat(f"{filename} has no {' or '.join(missing)}; {SAVE_HINT}.")
    config = read_json(files[CONFIG], filename, CONFIG)
    check_config(config, filename)
    pre = read_json(files[PREPROCESSOR], filename, PREPROCESSOR) if PREPROCESSOR in files else None
    if pre is not None and "auto_map" in pre:
        raise UnsafeModel(f"{filename}: preprocessor_config.json names custom code; {SAVE_HINT} with a built-in processor.")
    preprocessing = read_preprocessing(pre, config)

    directory = tempfile.mkdtemp(prefix="workbench-hf-")  # mode 0700
    try:
        for name in (CONFIG, WEIGHTS):  # fixed names: the archive's own paths never reach the file system
            with open(os.path.join(directory, name), "xb") as fh:
                fh.write(files[name])
        with _without_torchvision_stand_in():
            import transformers
            from transformers import AutoModelForImageClassification

            transformers.utils.logging.disable_progress_bar()
            try:
                model, info = AutoModelForImageClassification.from_pretrained(
                    directory,
                    local_files_only=True,
                    use_safetensors=True,
                    trust_remote_code=False,
                    attn_implementation="eager",  # attention weights for rollout; same maths as the fused kernels
                    output_loading_info=True,
                )
            except WorkbenchError:
                raise
            except Exception as exc:
                text = str(exc).strip()
                line = text.splitlines()[0][:200] if text else type(exc).__name__
                raise UnsupportedFormat(
                    f"transformers could not load {filename} ({type(exc).__name__}: {line}); {SAVE_HINT}."
                ) from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if not isinstance(model, torch.nn.Module):
        raise ModelRejected(f"{filename} did not load as a PyTorch model.")
    # from_pretrained fills missing weights with random values and only warns: here that is a refusal
    problems = []
    for kind in ("missing_keys", "mismatched_keys"):
        found = sorted(str(k) for k in (info or {}).get(kind) or ())
        if found:
            problems.append(f"{len(found)} {kind.replace('_', ' ')} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})")
    if problems:
        raise UnsupportedFormat(
            f"{filename}: model.safetensors does not fit config.json ({'; '.join(problems)}); save the model and its "
            "config together with save_pretrained."
        )
    return HFClassifier(model.float().eval()).eval(), config, preprocessing
