"""Keras-side loading: checked ``.keras`` / ``.h5`` bytes -> a ``keras.Model``.

:mod:`workbench.intake` inspects the archive and its config first (no Lambda layers,
no custom classes, no external HDF5 storage); this module only hands the bytes to
``keras.saving.load_model(..., safe_mode=True, compile=False)``. Keras needs a path, so
the bytes go to a private temporary directory that is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ..errors import UnsupportedFormat, WorkbenchError

REEXPORT_KERAS = "save it again with model.save('model.keras') using built-in Keras layers only"


def load_keras_model(data: bytes, *, suffix: str, filename: str):
    """Load a Keras model from bytes. ``suffix`` is ``.keras`` or ``.h5`` (Keras picks its reader by it)."""
    if suffix not in (".keras", ".h5"):
        raise ValueError(f"suffix must be .keras or .h5, not {suffix!r}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    directory = tempfile.mkdtemp(prefix="workbench-model-")  # mode 0700, a name no one else knows
    try:
        # A fixed name inside the private directory: the user's file name never reaches the file system.
        path = os.path.join(directory, f"model{suffix}")
        with open(path, "xb") as fh:
            fh.write(data)
        try:
            return keras.saving.load_model(path, safe_mode=True, compile=False)
        except WorkbenchError:
            raise
        except Exception as exc:
            text = str(exc).strip()
            line = text.splitlines()[0][:200] if text else ""
            raise UnsupportedFormat(
                f"Keras could not load {filename} ({type(exc).__name__}: {line}); {REEXPORT_KERAS}."
            ) from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def layer_output_sizes(model, input_size, layout: str) -> list:
    """Every layer's output size for one image of ``input_size`` (H, W, C), from Keras's own shape
    rules (``compute_output_spec``, symbolic: nothing is computed or allocated).

    Layers whose shape Keras cannot tell without running are left out (the worker's memory
    limit covers those); a model Keras cannot trace gives what was recorded before the failure.
    """
    import keras
    import numpy as np

    from ..size_checks import TensorSize

    layers = []

    def walk(container, prefix: str = "") -> None:
        for layer in container.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            layers.append((f"{prefix}{layer.name}", layer))
            if isinstance(layer, keras.Model):
                walk(layer, prefix=f"{prefix}{layer.name}/")

    sizes: list = []

    def recorder(path: str, layer, original):
        def compute_output_spec(*args, **kwargs):
            spec = original(*args, **kwargs)
            for out in keras.tree.flatten(spec):
                shape = getattr(out, "shape", None)
                if shape is not None and all(isinstance(d, int) and d >= 0 for d in shape):
                    try:
                        itemsize = np.dtype(str(out.dtype)).itemsize
                    except TypeError:
                        itemsize = 4
                    sizes.append(TensorSize(path, type(layer).__name__, tuple(shape), itemsize))
            return spec

        return compute_output_spec

    walk(model)
    h, w, c = (int(v) for v in input_size)
    image = keras.KerasTensor((1, c, h, w) if layout == "NCHW" else (1, h, w, c))
    # Instance attributes shadow the method for this one pass (the model is not shared yet).
    for path, layer in layers:
        layer.compute_output_spec = recorder(path, layer, layer.compute_output_spec)
    try:
        model.compute_output_spec(image)
    except Exception:  # noqa: BLE001 - the test forward pass reports a model that does not trace
        pass
    finally:
        for _path, layer in layers:
            layer.__dict__.pop("compute_output_spec", None)
    return sizes
