"""The server's view of a model that lives in a worker: :class:`ModelHandle` and :class:`RemoteAdapter`.

A :class:`ModelHandle` owns the model's bytes and load settings and its current worker; when
that worker died (a limit, a crash, a kill) the next call loads the model again on a fresh
worker. A :class:`RemoteAdapter` is a :class:`~workbench.adapters.base.ModelAdapter` whose
metadata (input size, classes, labels, layers, device) is answered locally and whose model
calls go to the worker; views of it (``view(preset=..., labels=...)``) share the handle and
send their preset and labels with each call.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from ..adapters.base import LayerInfo, LayerPass, ModelAdapter
from ..settings import Settings, get_settings
from . import protocol
from .limits import Limits, check_input_side
from .process import ModelWorker, Progress, pool

log = logging.getLogger("workbench.workers")


def _close(box: list) -> None:
    if box and box[0] is not None:
        box[0].close()


class ModelHandle:
    """One model, loaded in a worker; reloaded on a fresh worker after its worker stopped."""

    def __init__(self, key: Any, data: bytes | None):
        self.key = key
        self.data = data
        self.description: protocol.Loaded | None = None
        self.last_used = time.monotonic()
        self.loads = 0
        self._lock = threading.Lock()
        self._box: list[ModelWorker | None] = [None]
        weakref.finalize(self, _close, self._box)

    @property
    def worker(self) -> ModelWorker | None:
        return self._box[0]

    @property
    def loaded(self) -> bool:
        worker = self._box[0]
        return worker is not None and worker.alive

    def load(self, settings: Settings | None = None) -> protocol.Loaded:
        settings = settings or get_settings()
        self._ensure(settings)
        assert self.description is not None
        return self.description

    def _ensure(self, settings: Settings) -> ModelWorker:
        with self._lock:
            worker = self._box[0]
            if worker is not None and worker.alive:
                return worker
            if worker is not None:
                worker.close()
                self._box[0] = None
            limits = Limits.from_settings(settings)
            check_input_side(getattr(self.key, "input_size", None), limits, "The input size")
            workers = pool()
            worker = workers.take(limits)
            name = getattr(self.key, "filename", "the model")
            try:
                loaded = worker.request(
                    protocol.Load(self.key, self.data, settings),
                    doing=f"loading and testing {name}",
                    seconds=limits.load_seconds,
                    setting="WORKBENCH_LOAD_TIMEOUT_S",
                )
                check_input_side(loaded.info.input_size, limits, f"{name}'s input")
            except BaseException:
                worker.close()
                raise
            finally:
                workers.replenish(limits)  # the next load finds a warm worker again
            self.loads += 1
            if self.description is not None and loaded.info.fingerprint != self.description.info.fingerprint:
                log.warning("model %s reloaded with another fingerprint", name)
            self.description = loaded
            self._box[0] = worker
            self.last_used = time.monotonic()
        workers.register(self, settings.max_model_workers)
        return worker

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple,
        *,
        state: dict,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
        doing: str | None = None,
        settings: Settings | None = None,
    ) -> Any:
        settings = settings or get_settings()
        message = protocol.Call(fn, tuple(args), dict(state), settings, progress is not None)
        for attempt in (1, 2):
            worker = self._ensure(settings)
            self.last_used = time.monotonic()
            if not worker.alive and attempt == 1:  # stopped by another thread's request in between
                continue
            reply = worker.request(
                message,
                doing=doing or f"running {getattr(fn, '__name__', 'a call')}",
                seconds=worker.limits.explain_seconds,
                setting="WORKBENCH_EXPLAIN_TIMEOUT_S",
                progress=progress,
                cancel=cancel,
            )
            return reply.value
        raise AssertionError("unreachable")

    def unload(self, reason: str = "") -> None:
        """Stop the worker (an idle one only when ``reason`` is not shutdown); the next call reloads."""
        with self._lock:
            worker = self._box[0]
            if worker is None or (worker.busy and reason != "shutdown"):
                return
            self._box[0] = None
        log.info("unloading model %s from worker %d (%s)", getattr(self.key, "filename", "?"), worker.pid, reason)
        worker.close()


# ---------------------------------------------------------------------------- framework-neutral calls
def _predict(adapter: ModelAdapter, batch: np.ndarray) -> np.ndarray:
    return np.asarray(adapter.predict(batch))


def _input_gradients(adapter: ModelAdapter, batch: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
    return adapter.input_gradients(batch, targets)


def _layer_gradients(adapter: ModelAdapter, batch: np.ndarray, layer: str, targets) -> LayerPass:
    return adapter.layer_gradients(batch, layer, targets)


def _layer_activations(adapter: ModelAdapter, batch: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
    return adapter.layer_activations(batch, layer)


def _method(adapter: ModelAdapter, name: str, args: tuple, kwargs: dict) -> Any:
    """Any other adapter method whose arguments and result are plain values."""
    return getattr(adapter, name)(*args, **kwargs)


class RemoteAdapter(ModelAdapter):
    """A model in a worker, seen from the server. Metadata is local; model calls go to the worker."""

    def __init__(self, handle: ModelHandle):
        loaded = handle.description
        if loaded is None:
            loaded = handle.load()
        info = loaded.info
        super().__init__(
            name=info.name,
            source_format=info.source_format,
            input_size=info.input_size,
            labels=loaded.own_labels,
            preset="unit",  # replaced below by the loaded adapter's own Preset (a model's own, e.g. from its config)
            fingerprint=info.fingerprint,
            layout=info.layout,
        )
        self.framework = info.framework
        self.handle = handle
        self._num_classes = info.num_classes
        self._output_kind = info.output_kind
        self._layers = tuple(loaded.layers)
        self._device = info.device
        self._parameters = info.parameters
        for name, value in loaded.state.items():
            setattr(self, name, value)

    def run(self, fn: Callable[..., Any], *args, progress: Progress | None = None,
            cancel: Callable[[], bool] | None = None, doing: str | None = None) -> Any:
        """``fn(adapter, *args)`` in the model's worker, with this view's preset and labels."""
        state = {name: getattr(self, name) for name in protocol.VIEW_STATE if hasattr(self, name)}
        return self.handle.call(fn, args, state=state, progress=progress, cancel=cancel, doing=doing)

    def _remote(self, name: str, *args, **kwargs) -> Any:
        return self.run(_method, name, args, kwargs, doing=name.replace("_", " "))

    def layer_statistics(self, batch, targets=None, *, gradients: bool = True):
        return self._remote("layer_statistics", np.asarray(batch, np.float32), None if targets is None else list(targets), gradients=gradients)

    def layer_weights(self, layer: str):
        return self._remote("layer_weights", layer)

    def layer_graph(self):
        return self._remote("layer_graph")

    def attention_maps(self, batch):
        return self._remote("attention_maps", np.asarray(batch, np.float32))

    def randomisable_layers(self) -> tuple[str, ...]:
        return tuple(self._remote("randomisable_layers"))

    @property
    def worker_pid(self) -> int | None:
        worker = self.handle.worker
        return worker.pid if worker is not None and worker.alive else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.run(_predict, np.asarray(batch, np.float32), doing="predicting")

    def input_gradients(self, batch: np.ndarray, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.run(_input_gradients, np.asarray(batch, np.float32), list(targets), doing="computing gradients")

    def layer_gradients(self, batch: np.ndarray, layer: str, targets: Sequence[int]) -> LayerPass:
        return self.run(_layer_gradients, np.asarray(batch, np.float32), layer, list(targets), doing="computing gradients")

    def layer_activations(self, batch: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
        return self.run(_layer_activations, np.asarray(batch, np.float32), layer, doing="computing activations")

    def _trace_layers(self) -> list[LayerInfo]:
        return list(self._layers or ())

    def parameter_count(self) -> int:
        return self._parameters

    @property
    def device(self) -> str:
        return self._device

    def validate(self) -> None:  # validated in the worker when it loaded
        return None
