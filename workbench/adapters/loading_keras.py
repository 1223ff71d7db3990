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
