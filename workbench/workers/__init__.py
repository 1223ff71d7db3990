"""Model worker processes: every loaded model lives in its own spawned process with limits.

The server (Streamlit, or the CLI's parent) never imports torch or tensorflow; it holds a
:class:`RemoteAdapter` per model and runs framework-neutral functions ``fn(adapter, *args)``
in the model's worker with :func:`call`::

    from workbench import workers
    stats = workers.call(record.adapter, layer_statistics, batch, "layer4")

``fn`` must be defined at module level (it is pickled by reference); its arguments and result
must pickle (numpy arrays, frozen dataclasses, dicts). On an in-process adapter (tests, or
``WORKBENCH_MODEL_WORKERS=0``) ``call`` runs ``fn`` directly under the model's lock.
"""

from __future__ import annotations

from typing import Any, Callable

from ..adapters.base import ModelAdapter
from .limits import Cancelled, LimitExceeded, Limits, WorkerCrashed
from .process import ModelWorker, WorkerPool, pool
from .remote import ModelHandle, RemoteAdapter

__all__ = [
    "Cancelled",
    "LimitExceeded",
    "Limits",
    "ModelHandle",
    "ModelWorker",
    "RemoteAdapter",
    "WorkerCrashed",
    "WorkerPool",
    "call",
    "load",
    "pool",
]


def call(
    adapter: ModelAdapter,
    fn: Callable[..., Any],
    *args: Any,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    doing: str | None = None,
) -> Any:
    """``fn(adapter, *args)`` where the model lives: in its worker, or here for an in-process adapter.

    With ``progress``, ``fn`` is called with a ``progress=callable(fraction, message)`` keyword.
    """
    if isinstance(adapter, RemoteAdapter):
        return adapter.run(fn, *args, progress=progress, cancel=cancel, doing=doing)
    kwargs = {"progress": progress} if progress is not None else {}
    with adapter.lock:
        return fn(adapter, *args, **kwargs)


def load(key: Any, data: bytes | None) -> RemoteAdapter:
    """Load a model (a ``session.ModelKey`` and its bytes) into a worker of its own. Raises WorkbenchError."""
    handle = ModelHandle(key, data)
    handle.load()
    return RemoteAdapter(handle)
