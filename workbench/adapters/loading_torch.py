"""PyTorch-side loading: bytes -> state dicts, modules and ONNX conversions.

Only the safe readers run on uploads by default: ``torch.load(weights_only=True)``,
``safetensors`` and ``onnx2torch`` (which builds modules from a checked ONNX graph).
The readers that can run code (``torch.load(weights_only=False)``, ``torch.jit.load``)
are called by :mod:`workbench.intake` only when the operator trusts uploads.

torch is imported at module level: :mod:`workbench.intake` imports this module inside
its functions, never at import time.
"""

from __future__ import annotations

import importlib.machinery
import io
import pickle
import re
import sys
import threading
import types
from typing import Any, Callable

import torch

from ..errors import TrustedFormatRequired, UnsupportedFormat, WeightsMismatch

REEXPORT_TORCH = (
    "re-export it with torch.onnx.export(model, x, 'model.onnx'), or with "
    "torch.save(model.state_dict(), 'model.pt') and a zoo architecture"
)
TRUSTED_HINT = "(an operator can allow this format with WORKBENCH_TRUSTED_FORMATS=1)"

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------- state dicts
def load_weights_only(data: bytes, filename: str) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, no code.

    Raises TrustedFormatRequired when the pickle names a Python global (a pickled
    module, or anything else that would run code when unpickled).
    """
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        text = str(exc)
        match = re.search(r"GLOBAL ([\w.]+)", text)
        if match or "global" in text.lower():
            what = f"refers to the Python object {match.group(1)}" if match else "refers to Python objects"
            raise TrustedFormatRequired(
                f"{filename} is a pickled Python object, not a plain state_dict: it {what}, and unpickling it "
                f"could run code; {REEXPORT_TORCH} {TRUSTED_HINT}."
            ) from None
        raise UnsupportedFormat(f"{filename} is not a readable PyTorch file ({_first_line(exc)}); {REEXPORT_TORCH}.") from None
    except Exception as exc:  # corrupt zip members, bad magic number, truncated storage, ...
        raise UnsupportedFormat(
            f"{filename} could not be read as a PyTorch file ({type(exc).__name__}: {_first_line(exc)}); "
            f"{REEXPORT_TORCH}."
        ) from None


def load_pickle_trusted(data: bytes, filename: str) -> Any:
    """Full unpickling. Runs whatever code the file names: call only in trusted mode."""
    try:
        return torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
    except Exception as exc:  # e.g. the pickle names a class this server does not have
        raise UnsupportedFormat(
            f"{filename} could not be unpickled ({type(exc).__name__}: {_first_line(exc)}); {REEXPORT_TORCH}."
        ) from None


def load_torchscript_trusted(data: bytes, filename: str) -> "torch.nn.Module":
    """``torch.jit.load``. Runs TorchScript code from the file: call only in trusted mode."""
    try:
        return torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:
        raise UnsupportedFormat(
            f"{filename} could not be loaded as TorchScript ({_first_line(exc)}); {REEXPORT_TORCH}."
        ) from None


def load_safetensors(data: bytes, filename: str) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load

    try:
        return load(bytes(data))
    except Exception as exc:
        raise UnsupportedFormat(
            f"{filename} is not a readable safetensors file ({_first_line(exc)}); save it again with "
            "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')."
        ) from None


def is_module(obj: Any) -> bool:
    return isinstance(obj, torch.nn.Module)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def as_state_dict(obj: Any, filename: str) -> dict[str, "torch.Tensor"]:
    """A dict of tensors from what ``torch.load`` returned.

    Training checkpoints ({"state_dict": ...} / {"model": ...}) are unwrapped, and the
    ``module.`` prefix that DataParallel adds is dropped when every key has it.
    """
    state = obj
    if isinstance(obj, dict) and not _is_tensor_dict(obj):
        for key in _CHECKPOINT_KEYS:
            if _is_tensor_dict(obj.get(key)):
                state = obj[key]
                break
    if not _is_tensor_dict(state):
        raise UnsupportedFormat(
            f"{filename} holds a {type(obj).__name__}, not a state_dict (a dict of named tensors); "
            "save it with torch.save(model.state_dict(), 'model.pt')."
        )
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _key_list(kind: str, keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
    return f"{kind} {len(keys)} key{'s' if len(keys) != 1 else ''}: {shown}"


def _last_linear(model: "torch.nn.Module") -> tuple[str, "torch.nn.Linear"] | None:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            last = (name, module)
    return last


def classes_in_file(model: "torch.nn.Module", state: dict[str, "torch.Tensor"]) -> int | None:
    """The file's number of classes: rows of its weight for the model's last Linear layer.

    None when the model has no Linear layer or the file's weight does not fit its input width.
    """
    last = _last_linear(model)
    if last is None:
        return None
    name, module = last
    weight = state.get(f"{name}.weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != module.in_features:
        return None
    return int(weight.shape[0])


def build_with_weights(
    build: Callable[[int | None], "torch.nn.Module"],
    state: dict[str, "torch.Tensor"],
    *,
    architecture: str,
    filename: str,
) -> "torch.nn.Module":
    """Build the architecture (with the file's number of classes) and load the weights strictly."""
    model = build(None)
    classes = classes_in_file(model, state)
    if classes is not None and classes != _last_linear(model)[1].out_features:
        model = build(classes)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} is {tuple(state[key].shape)} in the file but {tuple(expected[key].shape)} in the model"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(_key_list("missing", missing))
        if unexpected:
            parts.append(_key_list("unexpected", unexpected))
        if shapes:
            shown = "; ".join(shapes[:3]) + ("; ..." if len(shapes) > 3 else "")
            parts.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) != 1 else ''}: {shown}")
        raise WeightsMismatch(
            f"{filename} does not fit the {architecture} architecture ({'; '.join(parts)}); "
            "pick the architecture the weights were trained with."
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---------------------------------------------------------------- ONNX
_stub_lock = threading.Lock()
_stub_checked = False

_DETECTION_OPS = "this ONNX model uses detection ops (NMS/RoiAlign) that the workbench does not support"


def _torchvision_stub() -> dict[str, types.ModuleType]:
    def unsupported(*args, **kwargs):
        raise UnsupportedFormat(_DETECTION_OPS)

    package = types.ModuleType("torchvision", "Stand-in for torchvision: detection ops are not supported here.")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.box_convert = ops.roi_align = unsupported
    # A spec keeps importlib.util.find_spec() from raising on the stand-in.
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    package.__path__ = []
    ops.__spec__ = importlib.machinery.ModuleSpec("torchvision.ops", None)
    package.ops = ops
    return {"torchvision": package, "torchvision.ops": ops}


def ensure_torchvision() -> None:
    """onnx2torch imports torchvision for two detection converters; stand in for a missing or broken one.

    Runs once per process, under a lock, and only when an ONNX model is converted.
    """
    global _stub_checked
    with _stub_lock:
        if _stub_checked:
            return
        try:
            import torchvision  # noqa: F401
        except Exception:  # ImportError when absent; RuntimeError/OSError when built for another torch
            for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                del sys.modules[key]
            sys.modules.update(_torchvision_stub())
        _stub_checked = True


def onnx_to_torch(model_proto: Any, filename: str) -> "torch.nn.Module":
    """Convert a checked ONNX ModelProto to an ``nn.Module`` (a torch.fx GraphModule)."""
    ensure_torchvision()
    from onnx2torch import convert

    try:
        return convert(model_proto).eval()
    except UnsupportedFormat:
        raise
    except NotImplementedError as exc:
        match = re.search(r"operation_type='([^']+)', version=(\d+)", str(exc))
        op = f"operator {match.group(1)} (opset {match.group(2)})" if match else "an operator"
        raise UnsupportedFormat(
            f"{filename} uses {op} that the ONNX converter does not support; export the model with "
            "standard layers (torch.onnx.export(model, x, 'model.onnx', opset_version=17))."
        ) from None
    except Exception as exc:
        raise UnsupportedFormat(
            f"{filename} could not be converted from ONNX ({type(exc).__name__}: {_first_line(exc)}); "
            "re-export it with torch.onnx.export(model, x, 'model.onnx')."
        ) from None


# ---------------------------------------------------------------- torch.export programs
class ExportedClassifier(torch.nn.Module):
    """A torch.export program as ``nn.Module``; a program exported for a fixed batch runs that batch at a time."""

    def __init__(self, program_module: "torch.nn.Module", batch: int | None, input_size: tuple[int, int, int]):
        super().__init__()
        self.program = program_module
        self.batch = batch
        self.input_size = input_size

    def train(self, mode: bool = True) -> "ExportedClassifier":
        # an exported program is always in the mode it was exported in (torch refuses train() on it)
        self.training = mode
        return self

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        if not self.batch or x.shape[0] == self.batch:
            return self.program(x)
        if x.shape[0] % self.batch:
            pad = self.batch - x.shape[0] % self.batch
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
            return self.forward(x)[:-pad]
        return torch.cat([self.program(part) for part in x.split(self.batch)])


def load_exported_program(data: bytes, filename: str) -> ExportedClassifier:
    """``torch.export.load`` on an archive :func:`workbench.intake.check_torch_export` passed.

    The sample inputs are read here with ``weights_only=True`` first: torch's loader would retry a
    failure with ``weights_only=False``, so a file whose sample inputs need that is refused instead.
    """
    import zipfile

    from ..errors import TrustedFormatRequired

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        samples = [n for n in archive.namelist() if re.search(r"(^|/)data/sample_inputs/[^/]+\.pt$", n)]
        for name in samples:
            raw = archive.read(name)
            if not raw:
                continue
            try:
                torch.load(io.BytesIO(raw), weights_only=True)
            except Exception:
                raise TrustedFormatRequired(
                    f"{filename} is a torch.export program whose sample inputs are pickled Python objects, which "
                    f"torch.export.load would unpickle on the server; export it again with plain tensor inputs "
                    f"{TRUSTED_HINT}."
                ) from None
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise UnsupportedFormat(
            f"{filename} could not be loaded as a torch.export program ({type(exc).__name__}: {_first_line(exc)}); "
            "export it again with torch.export.save(torch.export.export(model, (x,)), 'model.pt2')."
        ) from None
    inputs = [spec for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    if len(inputs) != 1:
        raise UnsupportedFormat(f"{filename} takes {len(inputs)} inputs; an image classifier takes one image batch.")
    placeholder = next(node for node in program.graph.nodes if node.op == "placeholder" and node.name == inputs[0].arg.name)
    shape = tuple(placeholder.meta["val"].shape)
    if len(shape) != 4:
        raise UnsupportedFormat(f"{filename} takes a {len(shape)}-D input; an image classifier takes [N, C, H, W].")
    static = [int(s) if isinstance(s, int) else None for s in shape]
    if None in static[1:]:
        raise UnsupportedFormat(f"{filename} has a dynamic image size; export it with a fixed C x H x W (only the batch dynamic).")
    return ExportedClassifier(program.module(), static[0], (static[2], static[3], static[1]))
