"""Safe model intake: uploaded bytes -> a validated :class:`~workbench.adapters.base.ModelAdapter`.

The format is sniffed from the bytes, never the file name. Formats that load without
running code are accepted:

* Keras ``.keras`` archives and legacy ``.h5`` files, after the archive and the model
  config are checked (no ``Lambda`` layers, no classes from outside Keras, no zip entries
  that escape the archive, no HDF5 data stored in other files);
* ONNX graphs using the standard operator set, with every weight inside the file;
* PyTorch ``state_dict`` files (read with ``weights_only=True``) and ``.safetensors``
  weights, loaded into an architecture from the model zoo.

Formats that carry code (a pickled ``nn.Module``, TorchScript, a TensorFlow SavedModel)
are refused with :class:`~workbench.errors.TrustedFormatRequired` unless the operator
sets ``WORKBENCH_TRUSTED_FORMATS=1``.

The checks here are pure Python (zipfile, json, h5py, onnx); the framework readers live
in :mod:`workbench.adapters.loading_torch` and :mod:`workbench.adapters.loading_keras`
and are imported inside the functions that need them, so importing this module never
imports torch or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
import tempfile
import zipfile
from pathlib import PurePosixPath
from typing import Any, Sequence

from . import size_checks
from .errors import (
    ArchitectureRequired,
    ModelRejected,
    TrustedFormatRequired,
    UnsafeModel,
    UnsupportedFormat,
    WorkbenchError,
)
from .settings import Settings, check_environment, get_settings

MODEL_FORMATS: dict[str, str] = {
    "keras": "Keras 3 model (.keras)",
    "h5": "Keras legacy HDF5 model (.h5)",
    "onnx": "ONNX model (.onnx)",
    "safetensors": "weights in safetensors format (.safetensors), with a zoo architecture",
    "state_dict": "PyTorch state_dict (.pt / .pth), with a zoo architecture",
    "torchscript": "TorchScript archive (trusted formats only)",
    "pickled_module": "pickled PyTorch nn.Module (trusted formats only)",
    "savedmodel": "TensorFlow SavedModel (not supported)",
    "huggingface": "Hugging Face image classifier (zip of config.json + model.safetensors)",
    "torch_export": "torch.export program (.pt2) with standard operators and no pickled objects",
}

REEXPORT = (
    "re-export it with torch.onnx.export(model, x, 'model.onnx'), torch.save(model.state_dict(), 'model.pt') "
    "with a zoo architecture, or in Keras model.save('model.keras')"
)
TRUSTED_HINT = "(an operator can allow this format with WORKBENCH_TRUSTED_FORMATS=1)"

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ONNX_DOMAINS = ("", "ai.onnx")
_MAX_LABELS_BYTES = 16 * 1024 * 1024
_MAX_CONFIG_BYTES = 64 * 1024 * 1024
# Archive entries are read this much at a time, never whole: an entry of zeros deflates ~1000:1.
_CHUNK_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class _Sniffed:
    format: str
    detail: Any = None  # the parsed ONNX ModelProto, or the zip member names


def fingerprint(data: bytes) -> str:
    """SHA-256 of the model bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ====================================================================== sniffing
def sniff_model(data: bytes, *, filename: str = "model", settings: Settings | None = None) -> str:
    """Which model format the bytes hold: one of the keys of :data:`MODEL_FORMATS`.

    ``state_dict`` covers every PyTorch pickle (zip or legacy); whether it is a plain
    state_dict or a pickled module is decided when it is read with ``weights_only=True``.

    Raises:
        UnsupportedFormat: empty, truncated, or not a model format.
        UnsafeModel: an archive whose entries escape it, are links, or are too many or too large.
    """
    return _sniff(bytes(data), filename, settings or get_settings()).format


def _sniff(data: bytes, filename: str, settings: Settings) -> _Sniffed:
    if not data:
        raise UnsupportedFormat(f"{filename} is empty; upload the model file again.")
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _sniff_zip(data, filename, settings)
    if _hdf5_offset(data) is not None:
        return _Sniffed("h5")
    if _looks_like_safetensors(data):
        return _Sniffed("safetensors")
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return _Sniffed("state_dict")  # a pickle: torch's legacy format, or something worse
    if data.startswith(b"\x1f\x8b") or data[257:262] == b"ustar":
        return _sniff_tar(data, filename, settings)
    if data[4:8] == b"TFL3":
        raise UnsupportedFormat(f"{filename} is a TensorFlow Lite model, which the workbench does not read; {REEXPORT}.")
    proto = _parse_onnx(data)
    if proto is not None:
        return _Sniffed("onnx", proto)
    raise UnsupportedFormat(
        f"{filename} is not a model format the workbench reads (.keras, .h5, .onnx, .pt state_dict, "
        f".safetensors); {REEXPORT}."
    )


def _hdf5_offset(data: bytes) -> int | None:
    """HDF5 puts its signature at 0, 512, 1024, 2048, ... (after an optional user block)."""
    offset = 0
    while offset + len(_HDF5_MAGIC) <= len(data) and offset <= 1 << 20:
        if data[offset : offset + len(_HDF5_MAGIC)] == _HDF5_MAGIC:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    if not 2 <= size <= min(len(data) - 8, 100 * 1024 * 1024) or data[8:9] != b"{":
        return False
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict) and all(
        key == "__metadata__" or (isinstance(value, dict) and "dtype" in value and "data_offsets" in value)
        for key, value in header.items()
    )


def _parse_onnx(data: bytes):
    """The ONNX ModelProto, or None when the bytes do not parse as a model with a graph."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError):
        return None
    # Protobuf accepts many byte strings; a real model has an IR version, an opset and a graph.
    if proto.ir_version <= 0 or not proto.opset_import or not (proto.graph.node or proto.graph.output):
        return None
    return proto


def _check_zip_entries(archive: zipfile.ZipFile, filename: str, settings: Settings) -> list[str]:
    infos = archive.infolist()
    if len(infos) > settings.max_zip_entries:
        raise UnsafeModel(
            f"{filename} is an archive of {len(infos)} entries, over the limit of {settings.max_zip_entries}; "
            f"{REEXPORT}."
        )
    total = sum(info.file_size for info in infos)
    if total > settings.max_zip_uncompressed:
        raise UnsafeModel(
            f"{filename} unpacks to {total / 2**20:.0f} MiB, over the limit of "
            f"{settings.max_zip_uncompressed / 2**20:.0f} MiB; {REEXPORT}."
        )
    for info in infos:
        name = info.filename
        parts = re.split(r"[/\\]", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\x00" in name:
            raise UnsafeModel(
                f"{filename} contains the entry {name!r}, which points outside the archive; "
                f"this is not a file a framework writes, {REEXPORT}."
            )
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise UnsafeModel(f"{filename} contains the symbolic link {name!r}; {REEXPORT}.")
    return [info.filename for info in infos]


def _sniff_zip(data: bytes, filename: str, settings: Settings) -> _Sniffed:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = _check_zip_entries(archive, filename, settings)
    except WorkbenchError:
        raise
    except Exception as exc:  # BadZipFile, truncated central directory, bad offsets
        raise UnsupportedFormat(
            f"{filename} is a damaged or truncated zip archive ({_first_line(exc)}); upload the file again."
        ) from None
    basenames = {PurePosixPath(name).name for name in names}
    if basenames & {"saved_model.pb", "saved_model.pbtxt"}:
        return _Sniffed("savedmodel", names)
    if "config.json" in names and ({"model.weights.h5", "model.weights.npz", "metadata.json"} & set(names)):
        return _Sniffed("keras", names)
    if any(re.search(r"(^|/)data\.pkl$", name) for name in names):
        # TorchScript archives carry their code next to the pickled constants.
        if any(re.search(r"(^|/)code/", name) for name in names) or any(
            re.search(r"(^|/)constants\.pkl$", name) for name in names
        ):
            return _Sniffed("torchscript", names)
        return _Sniffed("state_dict", names)
    if _hf_folder(names) is not None:
        return _Sniffed("huggingface", names)
    if any(re.search(r"(^|/)archive_format$", name) for name in names) and any(
        re.search(r"(^|/)models/[^/]+\.json$", name) for name in names
    ):
        return _Sniffed("torch_export", names)
    if "config.json" in basenames and basenames & set(_HF_PICKLED):
        raise UnsupportedFormat(
            f"{filename} looks like a Hugging Face folder without model.safetensors (its weights are pickled, "
            "framework-specific or sharded); save it with model.save_pretrained(folder, safe_serialization=True, "
            "max_shard_size='10GB') and zip the folder."
        )
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise UnsupportedFormat(
        f"{filename} is a zip archive ({shown or 'empty'}) but not a Keras, PyTorch or TensorFlow model; {REEXPORT}."
    )


def _sniff_tar(data: bytes, filename: str, settings: Settings) -> _Sniffed:
    import tarfile

    names: list[str] = []
    total = 0
    try:
        # Stream mode: members are read one by one and the walk stops at the limits.
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as archive:
            for member in archive:
                names.append(member.name)
                total += max(member.size, 0)
                if len(names) > settings.max_zip_entries or total > settings.max_zip_uncompressed:
                    raise UnsafeModel(f"{filename} is an archive over the entry or size limits; {REEXPORT}.")
                if PurePosixPath(member.name).name in ("saved_model.pb", "saved_model.pbtxt"):
                    return _Sniffed("savedmodel", names)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise UnsupportedFormat(
            f"{filename} is a compressed file or archive that is not a model ({_first_line(exc)}); {REEXPORT}."
        ) from None
    raise UnsupportedFormat(f"{filename} is a tar archive without a model in it; {REEXPORT}.")


# ====================================================================== Keras checks
def _check_keras_config(config: Any, filename: str) -> None:
    """Refuse Lambda layers and any class from outside Keras, anywhere in a model config."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            class_name = node.get("class_name")
            if isinstance(class_name, str):
                inner = node.get("config")
                layer = node.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
                named = f" ({layer})" if isinstance(layer, str) and layer else ""
                if "lambda" in class_name.lower():
                    raise UnsafeModel(
                        f"{filename} contains a {class_name} layer{named}, which holds Python code; replace it with "
                        "built-in Keras layers and save again with model.save('model.keras')."
                    )
                module = node.get("module")
                registered = node.get("registered_name")
                custom_module = isinstance(module, str) and not (module == "keras" or module.startswith("keras."))
                custom_name = ">" in class_name or (
                    isinstance(registered, str) and ">" in registered and not registered.startswith("keras")
                )
                if custom_module or custom_name:
                    where = f"{module}.{class_name}" if isinstance(module, str) else class_name
                    raise UnsafeModel(
                        f"{filename} uses the custom class {where}{named}, which is code outside Keras; "
                        "rebuild the model from built-in Keras layers and save it with model.save('model.keras'), "
                        "or export it to ONNX."
                    )
            for key, value in node.items():
                if key == "compile_config":  # never deserialized: models load with compile=False
                    continue
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)


def _parse_config(raw: bytes | str, filename: str, where: str) -> Any:
    if isinstance(raw, bytes):
        if len(raw) > _MAX_CONFIG_BYTES:
            raise UnsafeModel(f"{filename} has a {where} of {len(raw) / 2**20:.0f} MiB, too large to be a model config.")
        raw = raw.decode("utf-8", errors="strict")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UnsupportedFormat(f"{filename} has an unreadable {where} ({_first_line(exc)}); save the model again.") from None


def _check_hdf5(source, filename: str, *, want_model_config: bool) -> Any:
    """Refuse HDF5 data stored outside the file; return the parsed model config when asked.

    ``source`` is the file's bytes or a seekable binary file; h5py reads only the metadata it visits.
    """
    import h5py

    try:
        handle = h5py.File(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, "r")
    except Exception as exc:
        raise UnsupportedFormat(f"{filename} is a damaged or truncated HDF5 file ({_first_line(exc)}); upload it again.") from None
    with handle:
        # h5py mangles exceptions raised inside visit callbacks: collect the first problem, stop, raise after.
        problems: list[str] = []

        def check_link(name: str, link):
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"links {name!r} to the external file {link.filename!r}")
                return True
            return None

        def check_object(name: str, obj):
            if isinstance(obj, h5py.Dataset):
                if obj.external:
                    problems.append(f"stores the dataset {name!r} in an external file")
                elif obj.is_virtual:
                    problems.append(f"has the virtual dataset {name!r}, which reads other files")
            return True if problems else None

        try:
            handle.visititems_links(check_link)
            if not problems:
                handle.visititems(check_object)
        except Exception as exc:
            raise UnsupportedFormat(f"{filename} is a damaged HDF5 file ({_first_line(exc)}); upload it again.") from None
        if problems:
            raise UnsafeModel(
                f"{filename} {problems[0]}; a model file must hold all its own data, save the model again with "
                "model.save('model.keras')."
            )
        if not want_model_config:
            return None
        if "model_config" in handle.attrs:
            # an attribute's size is in its header: refuse an oversized one before reading it
            size = h5py.h5a.open(handle.id, b"model_config").get_storage_size()
            if size > _MAX_CONFIG_BYTES:
                raise UnsafeModel(f"{filename} has a model config of {size / 2**20:.0f} MiB, too large to be a model config.")
        raw = handle.attrs.get("model_config")
        if raw is None:
            raise UnsupportedFormat(
                f"{filename} is an HDF5 file without a model config (weights only?); save the whole model with "
                "model.save('model.keras')."
            )
        if not isinstance(raw, (bytes, str)):
            raw = bytes(raw)
        return _parse_config(raw, filename, "model config")


def check_keras_archive(data: bytes, filename: str, settings: Settings | None = None) -> None:
    """All the checks a ``.keras`` archive passes before Keras sees it."""
    settings = settings or get_settings()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = _check_zip_entries(archive, filename, settings)
            if "config.json" not in names:
                raise UnsupportedFormat(f"{filename} is a zip without config.json, not a Keras model; {REEXPORT}.")
            config = _parse_config(_read_entry(archive, "config.json", filename, _MAX_CONFIG_BYTES), filename, "config.json")
            _check_keras_config(config, filename)
            for name in names:
                if name.endswith(".h5"):
                    _check_hdf5_entry(archive, name, filename)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise UnsupportedFormat(f"{filename} is a damaged Keras archive ({_first_line(exc)}); upload it again.") from None


def _read_entry(archive: zipfile.ZipFile, name: str, filename: str, limit: int) -> bytes:
    """A small entry's bytes, read in chunks and refused as soon as it passes ``limit`` (whatever its header says)."""
    info = archive.getinfo(name)
    too_large = UnsafeModel(
        f"{filename} has a {name} of {max(info.file_size, limit + 1) / 2**20:.0f} MiB, too large to be a model config."
    )
    if info.file_size > limit:
        raise too_large
    parts, total = [], 0
    with archive.open(info) as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            total += len(chunk)
            if total > limit:
                raise too_large
            parts.append(chunk)
    return b"".join(parts)


def _check_hdf5_entry(archive: zipfile.ZipFile, name: str, filename: str) -> None:
    """The HDF5 checks on an archive entry, streamed: its signature from the first MiB, then h5py on a
    spooled copy on disk, so memory stays at one chunk whatever size the entry unpacks to."""
    with archive.open(name) as stream:
        head = stream.read(_CHUNK_BYTES + len(_HDF5_MAGIC))
        if _hdf5_offset(head) is None:
            raise UnsupportedFormat(
                f"{filename} holds {name!r}, which is not an HDF5 file; save the model again with "
                "model.save('model.keras')."
            )
        with tempfile.TemporaryFile(prefix="workbench-h5-") as spool:
            spool.write(head)
            shutil.copyfileobj(stream, spool, _CHUNK_BYTES)
            spool.seek(0)
            _check_hdf5(spool, filename, want_model_config=False)


def check_keras_h5(data: bytes, filename: str) -> None:
    """All the checks a legacy ``.h5`` model passes before Keras sees it."""
    config = _check_hdf5(data, filename, want_model_config=True)
    _check_keras_config(config, filename)


# ====================================================================== ONNX checks
def _onnx_tensors(graph):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices


def check_onnx(proto, filename: str) -> None:
    """Refuse external weights and operators outside the standard ONNX domain."""
    import onnx

    for opset in proto.opset_import:
        if opset.domain not in _ONNX_DOMAINS:
            raise UnsupportedFormat(
                f"{filename} imports the operator set {opset.domain!r}, outside standard ONNX; export the model "
                "with the standard opset only (torch.onnx.export(model, x, 'model.onnx'))."
            )
    if len(proto.functions):
        raise UnsupportedFormat(
            f"{filename} defines its own ONNX functions ({proto.functions[0].name}); export the model with the "
            "standard opset only (torch.onnx.export(model, x, 'model.onnx', dynamo=False))."
        )
    for graph in size_checks.onnx_graphs(proto.graph):
        for node in graph.node:
            if node.domain not in _ONNX_DOMAINS:
                raise UnsupportedFormat(
                    f"{filename} uses the custom operator {node.domain}.{node.op_type}; export the model with "
                    "standard ONNX operators only."
                )
        for tensor in _onnx_tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                location = next((e.value for e in tensor.external_data if e.key == "location"), "another file")
                raise UnsafeModel(
                    f"{filename} keeps the weight {tensor.name!r} in the external file {location!r}; the workbench "
                    "reads single-file models only, save it with onnx.save_model(model, 'model.onnx', "
                    "save_as_external_data=False)."
                )
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise UnsupportedFormat(f"{filename} is not a valid ONNX model ({_first_line(exc)}); export it again.") from None


def onnx_input_layout(proto, filename: str, input_size: Sequence[int] | None) -> tuple[str, tuple[int, int, int]]:
    """(layout, (H, W, C)) from the graph's one image input; dynamic sides come from ``input_size`` or 224."""
    import onnx

    weights = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in weights]
    if len(inputs) != 1:
        raise ModelRejected(f"{filename} takes {len(inputs)} inputs; an image classifier takes one image batch.")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise ModelRejected(f"{filename} takes {kind} input; export it with a float32 image input.")
    dims = [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelRejected(
            f"{filename} takes a {len(dims)}-D input; an image classifier takes a 4-D batch (N, C, H, W or N, H, W, C)."
        )
    _, a, b, c = dims
    channel_like = (1, 3, 4)
    layout = "NHWC" if c in channel_like and a not in channel_like else "NCHW"
    h, w, ch = (a, b, c) if layout == "NHWC" else (b, c, a)
    default = tuple(input_size) if input_size else (224, 224, 3)
    return layout, (h or int(default[0]), w or int(default[1]), ch or int(default[2]))


# ====================================================================== labels
def read_labels(data: bytes, filename: str) -> list[str]:
    """Class labels from a text file (one per line) or JSON (a list, {"0": "cat"}, or {"cat": 0}).

    JSON is recognised by its content. Blank lines in text files are skipped.
    """
    if len(data) > _MAX_LABELS_BYTES:
        raise UnsupportedFormat(f"{filename} is {len(data) / 2**20:.0f} MiB, too large for a labels file.")
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsupportedFormat(f"{filename} is not UTF-8 text; save the labels as UTF-8, one per line.") from None
    stripped = text.strip()
    if not stripped:
        raise UnsupportedFormat(f"{filename} is empty; put one label per line, in class-index order.")
    if stripped[0] in "[{":
        try:
            parsed = json.loads(stripped)
        except ValueError as exc:
            if filename.lower().endswith(".json"):
                raise UnsupportedFormat(
                    f"{filename} is not valid JSON ({_first_line(exc)}); fix it or use one label per line."
                ) from None
        else:
            return _labels_from_json(parsed, filename)
    labels = [line.strip() for line in text.splitlines()]
    return [label for label in labels if label]


def _label_text(value: Any, filename: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and value and isinstance(value[-1], str):
        return value[-1]  # ImageNet's {"0": ["n01440764", "tench"]}
    raise UnsupportedFormat(f"{filename} has a label that is not text ({json.dumps(value)[:40]}); use strings.")


def _labels_from_json(parsed: Any, filename: str) -> list[str]:
    if isinstance(parsed, dict):
        for key in ("labels", "classes", "class_names"):
            if isinstance(parsed.get(key), list):
                parsed = parsed[key]
                break
    if isinstance(parsed, list):
        return [_label_text(item, filename) for item in parsed]
    if not isinstance(parsed, dict) or not parsed:
        raise UnsupportedFormat(f"{filename} must hold a JSON list of labels or a dict of index to label.")
    if all(re.fullmatch(r"\d+", str(key)) for key in parsed):
        by_index = {int(key): _label_text(value, filename) for key, value in parsed.items()}
    elif all(isinstance(value, int) and not isinstance(value, bool) for value in parsed.values()):
        by_index = {}
        for label, index in parsed.items():
            if index in by_index:
                raise UnsupportedFormat(f"{filename} gives index {index} to two labels; each class needs its own index.")
            by_index[index] = str(label)
    else:
        raise UnsupportedFormat(
            f'{filename} must map indices to labels ({{"0": "cat"}}) or labels to indices ({{"cat": 0}}).'
        )
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise UnsupportedFormat(
            f"{filename} has no label for index {missing[0]}; indices must run from 0 to {len(by_index) - 1}."
        )
    return [by_index[index] for index in range(len(by_index))]


# ====================================================================== loading
def load_model(
    data: bytes,
    *,
    filename: str = "model",
    architecture: str | None = None,
    labels: Sequence[str] | None = None,
    preset: str = "unit",
    device: str = "auto",
    input_size: Sequence[int] | None = None,
    settings: Settings | None = None,
):
    """Load uploaded model bytes into a validated adapter.

    Args:
        data: the uploaded bytes (the format is sniffed from them).
        filename: the upload's name, for messages and the adapter's name.
        architecture: a zoo architecture for state_dict / safetensors weights; ignored otherwise.
        labels: class labels (see :func:`read_labels`), or None for "class k".
        preset: preprocessing preset name (see :mod:`workbench.preprocess`).
        device: "auto", "cpu", "cuda", "cuda:1", ...
        input_size: (H, W, C) for models whose graph does not fix it.
        settings: operator settings; :func:`workbench.settings.get_settings` when None.

    Returns:
        A ``ModelAdapter`` on which ``validate()`` has passed.
    """
    check_environment()
    settings = settings or get_settings()
    data = bytes(data)
    if len(data) > settings.max_model_bytes:
        raise ModelRejected(
            f"{filename} is {len(data) / 2**20:.0f} MiB, over the {settings.max_model_bytes / 2**20:.0f} MiB "
            "limit for uploaded models."
        )
    sniffed = _sniff(data, filename, settings)
    return _load(
        data,
        sniffed,
        filename=filename,
        name=filename,
        source_format=None,
        model_fingerprint=fingerprint(data),
        architecture=architecture,
        labels=labels,
        preset=preset,
        device=device,
        input_size=input_size,
        settings=settings,
    )


def load_zoo_model(name: str, *, device: str = "auto"):
    """A model from :mod:`model_zoo`, loaded through the same checks as an upload.

    PyTorch entries are safetensors weights for ``model_zoo.build_torch(entry.architecture)``;
    Keras entries are ``.keras`` files.
    """
    check_environment()
    import model_zoo

    try:
        entry = model_zoo.get(name)
    except KeyError as exc:
        raise ModelRejected(str(exc.args[0]) if exc.args else f"No zoo model {name!r}.") from None
    try:
        data = entry.weights.read_bytes()
    except FileNotFoundError:
        raise ModelRejected(
            f"The zoo model {name!r} has no weights file ({entry.weights.name}); build the zoo with "
            "python -m model_zoo.train."
        ) from None
    settings = get_settings()
    sniffed = _sniff(data, entry.weights.name, settings)
    expected = "safetensors" if entry.framework == "pytorch" else "keras"
    if sniffed.format != expected:
        raise ModelRejected(
            f"The zoo weights {entry.weights.name} are {MODEL_FORMATS.get(sniffed.format, sniffed.format)}, "
            f"not {MODEL_FORMATS[expected]}; rebuild the zoo with python -m model_zoo.train."
        )
    return _load(
        data,
        sniffed,
        filename=entry.weights.name,
        name=entry.name,
        source_format="zoo",
        model_fingerprint=f"zoo:{entry.name}:{fingerprint(data)}",
        architecture=entry.architecture,
        labels=list(entry.labels),
        preset=entry.preset,
        device=device,
        input_size=entry.input_size,
        settings=settings,
    )


def _load(
    data: bytes,
    sniffed: _Sniffed,
    *,
    filename: str,
    name: str,
    source_format: str | None,
    model_fingerprint: str,
    architecture: str | None,
    labels: Sequence[str] | None,
    preset: str,
    device: str,
    input_size: Sequence[int] | None,
    settings: Settings,
):
    fmt = sniffed.format
    if input_size:
        size_checks.check_input_size(input_size, filename, settings)
        size_checks.check_tensor_sizes([size_checks.input_tensor(input_size)], filename, settings)
    common = dict(name=name, labels=list(labels) if labels else None, preset=preset, device=device, fingerprint=model_fingerprint)

    if fmt in ("keras", "h5"):
        if fmt == "keras":
            check_keras_archive(data, filename, settings)
        else:
            check_keras_h5(data, filename)
        from .adapters.loading_keras import layer_output_sizes, load_keras_model

        model = load_keras_model(data, suffix=".keras" if fmt == "keras" else ".h5", filename=filename)
        from .adapters.keras_adapter import KerasAdapter

        adapter = KerasAdapter(
            model, source_format=source_format or fmt, input_size=tuple(input_size) if input_size else None, **common
        )
        size_checks.check_input_size(adapter.input_size, filename, settings)
        size_checks.check_tensor_sizes(
            [size_checks.input_tensor(adapter.input_size), *layer_output_sizes(model, adapter.input_size, adapter.layout)],
            filename,
            settings,
        )

    elif fmt == "onnx":
        proto = sniffed.detail
        check_onnx(proto, filename)
        layout, size = onnx_input_layout(proto, filename, input_size)
        size_checks.check_onnx_sizes(proto, filename, layout=layout, size=size, settings=settings)
        from .adapters import loading_torch

        module = loading_torch.onnx_to_torch(proto, filename)
        adapter = _torch_adapter(module, source_format or fmt, size, layout, common)

    elif fmt in ("state_dict", "safetensors"):
        from .adapters import loading_torch

        if fmt == "safetensors":
            obj = loading_torch.load_safetensors(data, filename)
        else:
            try:
                obj = loading_torch.load_weights_only(data, filename)
            except TrustedFormatRequired:
                if not settings.trusted_formats:
                    raise
                obj = loading_torch.load_pickle_trusted(data, filename)
        if loading_torch.is_module(obj):
            adapter = _torch_adapter(obj, source_format or "pickled_module", input_size, "NCHW", common)
        else:
            state = loading_torch.as_state_dict(obj, filename)
            arch = _zoo_architecture(architecture, filename)
            import model_zoo

            module = loading_torch.build_with_weights(
                lambda classes: model_zoo.build_torch(arch.name, classes),
                state,
                architecture=arch.name,
                filename=filename,
            )
            adapter = _torch_adapter(module, source_format or fmt, arch.input_size, "NCHW", common)

    elif fmt == "torchscript":
        if not settings.trusted_formats:
            raise TrustedFormatRequired(
                f"{filename} is a TorchScript archive, which carries code that would run on the server; "
                f"re-export it with torch.onnx.export(model, x, 'model.onnx') or torch.save(model.state_dict(), "
                f"'model.pt') with a zoo architecture {TRUSTED_HINT}."
            )
        from .adapters import loading_torch

        module = loading_torch.load_torchscript_trusted(data, filename)
        adapter = _torch_adapter(module, source_format or fmt, input_size, "NCHW", common)

    elif fmt == "torch_export":
        check_torch_export(data, filename)
        from .adapters import loading_torch

        module = loading_torch.load_exported_program(data, filename)
        size = tuple(input_size) if input_size else module.input_size
        adapter = _torch_adapter(module, source_format or fmt, size, "NCHW", common)

    elif fmt == "huggingface":
        adapter = _load_huggingface(data, sniffed.detail, filename, source_format or fmt, device, common)

    elif fmt == "savedmodel":
        how = (
            "in TensorFlow, load it and save it with model.save('model.keras'), or convert it to ONNX with "
            "tf2onnx"
        )
        if not settings.trusted_formats:
            raise TrustedFormatRequired(
                f"{filename} is a TensorFlow SavedModel, which carries TensorFlow graph code; {how}."
            )
        raise UnsupportedFormat(
            f"{filename} is a TensorFlow SavedModel, which the workbench does not load even for trusted uploads; {how}."
        )

    else:  # pragma: no cover - _sniff returns only the formats above
        raise UnsupportedFormat(f"{filename}: unknown model format {fmt!r}.")

    # the checks above see each format's declared sizes; this one every adapter's input, before it runs
    size_checks.check_input_size(adapter.input_size, filename, settings)
    size_checks.check_tensor_sizes([size_checks.input_tensor(adapter.input_size)], filename, settings)
    adapter.validate()
    check_input_channels(adapter, filename)
    return adapter


# ====================================================================== torch.export programs
# torch.export.load (torch 2.13, torch/export/pt2_archive/_package.py and torch/_export/serde/serialize.py)
# runs code from the file on these paths, so a program is accepted only when it takes none of them:
# * weights / constants with ``use_pickle`` -> torch.load(weights_only=False); custom objects -> pickle.loads;
# * sample inputs that fail torch.load(weights_only=True) -> a retry with weights_only=False;
# * data/aotinductor/ -> a compiled shared library is loaded;
# * guards_code -> exec() when the module is built;
# * symbolic expressions -> sympy.sympify(), which evaluates the string;
# * operator names resolved by getattr from ``torch`` (``torch.os.system`` resolves too).
_PT2_OPERATORS = ("torch.ops.aten.", "torch.ops.prims.", "_operator.")
_PT2_SYMPY_TOKENS = re.compile(
    r"Symbol\('s\d+'(?:, (?:positive|integer|nonnegative)=True)*\)|Integer\(-?\d+\)"
    r"|(?:Add|Mul|Max|Min|FloorDiv|PythonMod|Mod|CleanDiv|CeilToInt|IntTrueDiv)\(|[(), ]|-?\d+"
)
PT2_HOW = "export it again with torch.export.export(model, (x,)) and torch.export.save(program, 'model.pt2') using standard layers"


def check_torch_export(data: bytes, filename: str) -> None:
    """Refuse a .pt2 archive unless torch.export.load would read it without unpickling objects or running its code."""

    def refuse(why: str):
        return TrustedFormatRequired(
            f"{filename} is a torch.export program that {why}, which torch.export.load would run on the server; "
            f"{PT2_HOW}, or upload it as ONNX (torch.onnx.export) {TRUSTED_HINT}."
        )

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        if any("/data/aotinductor/" in f"/{name}" for name in names):
            raise refuse("holds AOTInductor compiled code (a shared library)")
        programs = [name for name in names if re.search(r"(^|/)models/[^/]+\.json$", name)]
        if not programs:
            raise UnsupportedFormat(f"{filename} is a .pt2 archive without a program (models/*.json); {PT2_HOW}.")
        for name in names:
            if re.search(r"(^|/)data/(weights|constants)/[^/]+_config\.json$", name):
                config = _parse_config(archive.read(name), filename, name)
                for key, entry in (config.get("config") or {}).items() if isinstance(config, dict) else ():
                    if not isinstance(entry, dict) or entry.get("use_pickle") or "tensor_meta" not in entry:
                        raise refuse(f"stores {key!r} as a pickled Python object")
        for name in programs:
            program = _parse_config(archive.read(name), filename, name)
            if program.get("guards_code"):
                raise refuse("carries guard code (Python source)")
            _check_pt2_node(program, filename, refuse)


def _check_pt2_node(node: Any, filename: str, refuse) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("target", "as_operator") and isinstance(value, str) and not value.startswith(_PT2_OPERATORS):
                raise refuse(f"calls {value[:80]!r}, outside the standard ATen operators")
            if key in ("custom_obj_values", "as_custom_obj") and value:
                raise refuse("holds custom objects (pickled)")
            if key == "expr_str" and isinstance(value, str) and _PT2_SYMPY_TOKENS.sub("", value):
                raise refuse("has a shape expression that is not plain arithmetic on sizes")
            if key == "range_constraints" and isinstance(value, dict) and any(not re.fullmatch(r"s\d+", k) for k in value):
                raise refuse("has a shape expression that is not plain arithmetic on sizes")
            if key != "metadata":  # stack traces and module paths are text torch never evaluates
                _check_pt2_node(value, filename, refuse)
    elif isinstance(node, list):
        for item in node:
            _check_pt2_node(item, filename, refuse)


# ====================================================================== Hugging Face folders
_HF_REQUIRED = ("config.json", "model.safetensors")
_HF_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
_HF_PICKLED = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.safetensors.index.json")


def _hf_folder(names: Sequence[str]) -> str | None:
    """The folder ('' at the top) holding config.json and model.safetensors side by side, or None."""
    folders = {}
    for name in names:
        path = PurePosixPath(name)
        folders.setdefault(str(path.parent) if str(path.parent) != "." else "", set()).add(path.name)
    found = [folder for folder, files in folders.items() if set(_HF_REQUIRED) <= files]
    if len(found) != 1:
        return None
    return found[0]


def _load_huggingface(data: bytes, names: Sequence[str], filename: str, source_format: str, device: str, common: dict):
    """A zipped save_pretrained folder -> a TorchAdapter on the logits (see :mod:`workbench.adapters.loading_hf`)."""
    from .adapters import loading_hf

    folder = _hf_folder(names)
    if folder is None:
        raise UnsupportedFormat(f"{filename} holds no single folder with config.json and model.safetensors.")
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for wanted in loading_hf.FILES:
            member = f"{folder}/{wanted}" if folder else wanted
            if member in archive.namelist():
                files[wanted] = archive.read(member)
    module, config, pre = loading_hf.load_hf_classifier(files, filename)
    labels = common.get("labels") or loading_hf.labels_of(config)
    channels = int(config.get("num_channels", 3) or 3)
    from .adapters.torch_adapter import TorchAdapter

    settings = dict(common, labels=labels)
    adapter = TorchAdapter(
        module, source_format=source_format, input_size=(*pre.size, channels), layout="NCHW", **settings
    )
    if pre.preset is not None and common.get("preset") in (None, "unit"):
        adapter.set_preset(pre.preset)
    adapter.resize_mode = pre.resize_mode
    adapter.resample = pre.resample
    adapter.crop_fraction = pre.crop_fraction
    patch = config.get("patch_size")
    if isinstance(patch, int) and patch > 1:
        adapter.patch_size = patch
    return adapter


def folder_zip(path) -> bytes:
    """A save_pretrained folder (the known files only) as zip bytes, for :func:`load_model`: one path for both."""
    from pathlib import Path

    folder = Path(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in _HF_FILES:
            if (folder / name).is_file():
                archive.writestr(name, (folder / name).read_bytes())
    return buffer.getvalue()



IMAGE_CHANNELS = (1, 3)  # greyscale and RGB: what images decode to, and what every page draws


def check_input_channels(adapter, filename: str) -> None:
    """Refuse a model whose input is not 1- or 3-channel images: the images, the test prediction, the maps
    and their overlays exist only for those, so such a model would load and then fail on every page."""
    channels = int(adapter.input_size[2])
    if channels not in IMAGE_CHANNELS:
        raise ModelRejected(
            f"{filename} takes {channels}-channel input; the workbench explains greyscale (1-channel) and RGB "
            "(3-channel) image classifiers. Export the model for 1- or 3-channel input."
        )


def _zoo_architecture(architecture: str | None, filename: str):
    import model_zoo

    names = ", ".join(model_zoo.ARCHITECTURES)
    if not architecture:
        raise ArchitectureRequired(
            f"{filename} holds weights only; choose the architecture they belong to ({names}), or upload a "
            "full model (.onnx, .keras)."
        )
    try:
        return model_zoo.ARCHITECTURES[architecture]
    except KeyError:
        raise ArchitectureRequired(f"Unknown architecture {architecture!r} for {filename}; choose one of {names}.") from None


def _torch_adapter(module, source_format: str, input_size, layout: str, common: dict):
    from .adapters.torch_adapter import TorchAdapter

    return TorchAdapter(
        module,
        source_format=source_format,
        input_size=tuple(int(v) for v in input_size) if input_size else None,
        layout=layout,
        **common,
    )
