"""Model worker processes: one per loaded model, spawned, the only processes that import a framework.

:func:`serve` is the worker's main loop. :class:`ModelWorker` is the server's end: it sends one
request at a time (calls to one model are serialised here), waits for the answer within a
deadline, and watches the worker's resident memory from a thread, killing it when it goes over
the limit. A worker that dies turns the request into one typed line (:class:`LimitExceeded` or
:class:`WorkerCrashed`); the server and every other worker go on.

:class:`WorkerPool` keeps one warm spare worker (torch imported, then shap's kernels compiled and
Keras imported in the background) so that loading a model does not pay start-up costs, and bounds how many
models stay loaded in workers at once.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable

from ..errors import WorkbenchError
from . import protocol
from .limits import (
    Cancelled,
    Limits,
    WorkerCrashed,
    memory_exceeded,
    rss_bytes,
    signal_name,
    time_exceeded,
    worker_env,
)

log = logging.getLogger("workbench.workers")

START_TIMEOUT_S = 180.0  # importing the frameworks on a busy machine; not a user-facing limit
MONITOR_INTERVAL_S = 0.05
SPARE_AFTER_IDLE_S = 10.0  # the next spare worker starts once no model call has been in flight this long (a user reading the maps)
SPARE_WAIT_MAX_S = 300.0  # ... or after this long regardless
Progress = Callable[[float, str], None]


# ============================================================================ the worker's side
_given_a_model = threading.Event()  # set at the first Load: this worker is no longer the spare


def _warm_up_in_background() -> None:
    """shap's kernels first (every comparison's SHAP needs them), then Keras: a PyTorch model (Quick start's)
    loads meanwhile, and a Keras model's own ``import keras`` waits for this one instead of starting another.
    Keras only while this worker is still the spare: a worker that got a PyTorch model never needs it, and
    importing it would compete with that model's first run for the CPU."""
    from .. import warmup

    warmup.start_background_warm_up().join()
    if _given_a_model.is_set():
        return
    try:
        import keras  # noqa: F401
    except Exception:  # noqa: BLE001 - a deployment without TensorFlow still serves PyTorch models
        log.warning("keras did not import in the model worker", exc_info=True)


def serve(conn, warm: bool) -> None:
    """The worker's main loop: answer requests until Shutdown or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a CLI reaches the parent, which ends us
    os.environ.update(worker_env())
    started = time.perf_counter()
    if warm:
        import torch  # noqa: F401

        threading.Thread(target=_warm_up_in_background, name="workbench-worker-warm-up", daemon=True).start()
    from ..settings import use_settings

    conn.send(protocol.Ready(os.getpid(), time.perf_counter() - started))
    adapter = None

    def send_progress(fraction: float, message: str) -> None:
        conn.send(protocol.Progress(float(fraction), str(message)))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        except Exception as error:  # noqa: BLE001 - e.g. a function the worker cannot import: refuse it, keep serving
            conn.send(protocol.Failed("", f"the request could not be read in the model's worker: {type(error).__name__}: {error}"))
            continue
        if isinstance(message, protocol.Shutdown):
            break
        begun = time.perf_counter()
        try:
            use_settings(message.settings)
            if isinstance(message, protocol.Load):
                from ..session import load_base

                _given_a_model.set()

                adapter = load_base(message.key, message.data)
                reply: Any = protocol.Loaded(
                    info=adapter.info(),
                    own_labels=adapter._labels,
                    layers=adapter.layers(),
                    seconds=time.perf_counter() - begun,
                    state={k: getattr(adapter, k) for k in protocol.LOADED_STATE if hasattr(adapter, k)},
                )
            elif isinstance(message, protocol.Call):
                if adapter is None:
                    raise WorkbenchError("No model is loaded in this worker.")
                view = copy.copy(adapter)  # this call's view: the caller's preset, labels, score, resize mode
                for name, value in message.state.items():
                    setattr(view, name, value)
                kwargs = {"progress": send_progress} if message.progress else {}
                with adapter.lock:
                    value = message.fn(view, *message.args, **kwargs)
                reply = protocol.Done(value, time.perf_counter() - begun)
            else:
                raise WorkbenchError(f"Unknown request {type(message).__name__}.")
        except WorkbenchError as error:
            reply = protocol.Failed(type(error).__name__, str(error))
        except RecursionError:
            reply = protocol.Failed(
                "ModelRejected", "The input is nested too deeply to read (a model config thousands of levels deep?); it is refused."
            )
        except Exception as error:  # noqa: BLE001 - reported to the server in one line, traceback kept
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            reply = protocol.Failed("", f"{type(error).__name__}: {first}", traceback.format_exc())
        finally:
            use_settings(None)
        try:
            conn.send(reply)
        except Exception as error:  # noqa: BLE001 - e.g. a result that does not pickle
            conn.send(protocol.Failed("", f"the answer could not be sent back: {type(error).__name__}: {error}"))


# ============================================================================ the server's side
def _error_types() -> dict[str, type[WorkbenchError]]:
    found: dict[str, type[WorkbenchError]] = {}
    todo = [WorkbenchError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


def raise_failure(failed: protocol.Failed, doing: str) -> None:
    if failed.kind:
        cls = _error_types().get(failed.kind, WorkbenchError)
        try:
            error = cls(failed.message)
        except TypeError:  # an error type with another constructor
            error = WorkbenchError(failed.message)
        raise error
    log.error("the model's worker failed while %s:\n%s", doing, failed.traceback)
    raise WorkbenchError(f"The model failed while {doing}: {failed.message}")


def main(argv: list[str] | None = None) -> None:
    """``python -m workbench.workers FD WARM``: the worker's entry point."""
    from multiprocessing.connection import Connection

    args = sys.argv[1:] if argv is None else argv
    serve(Connection(int(args[0])), warm=args[1] == "1")


class _Process:
    """A spawned interpreter running :func:`main` (a fresh ``python -m``, so no parent module is re-run)."""

    def __init__(self, warm: bool):
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = {**os.environ, **worker_env()}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "workbench.workers", str(theirs.fileno()), "1" if warm else "0"],
            pass_fds=(theirs.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,  # framework chatter and crash reports go to the server's log, not its terminal
            start_new_session=True,  # a terminal's Ctrl-C goes to the server, which ends its workers
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.pid = self.popen.pid
        threading.Thread(target=self._log_stderr, name=f"workbench-worker-{self.pid}-stderr", daemon=True).start()

    def _log_stderr(self) -> None:
        worker_log = logging.getLogger(f"workbench.workers.{self.pid}")
        stream = self.popen.stderr
        assert stream is not None
        for line in iter(stream.readline, b""):
            worker_log.info("%s", line.decode(errors="replace").rstrip())
        stream.close()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def join(self, timeout: float) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


_live: "weakref.WeakSet[ModelWorker]" = weakref.WeakSet()


def _stop_all() -> None:
    for worker in list(_live):
        worker.kill()


class ModelWorker:
    """The server's end of one worker process."""

    def __init__(self, limits: Limits, *, warm: bool = True):
        self.limits = limits
        self.process = _Process(warm)
        self._conn = self.process.conn
        self.pid = self.process.pid
        _live.add(self)
        self.ready = False
        self.busy = False
        self.peak_rss = 0
        self._lock = threading.Lock()
        self._stopped_for: WorkbenchError | None = None
        self._doing = "starting"
        self._closed = False
        self._monitor = threading.Thread(target=self._watch, name=f"workbench-worker-{self.pid}-memory", daemon=True)
        self._monitor.start()

    # ------------------------------------------------------------------ memory
    def _watch(self) -> None:
        limit = self.limits.memory_bytes
        while not self._closed and self.process.is_alive():
            used = rss_bytes(self.pid)
            if used is None:
                break
            self.peak_rss = max(self.peak_rss, used)
            if used > limit and self._stopped_for is None:
                self._stopped_for = memory_exceeded(used, self.limits, self._doing)
                log.warning("model worker %d over the memory limit (%d MiB) while %s; killed", self.pid, used >> 20, self._doing)
                self.kill()
                break
            time.sleep(MONITOR_INTERVAL_S)

    # ------------------------------------------------------------------ life
    @property
    def alive(self) -> bool:
        return not self._closed and self.process.is_alive()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        """Ask the worker to stop, then make sure it does (never blocks long)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.process.is_alive() and not self.busy:
                self._conn.send(protocol.Shutdown())
                self.process.join(2.0)
        except (OSError, ValueError, BrokenPipeError):
            pass
        if self.process.is_alive():
            self.kill()
            self.process.join(2.0)
        try:
            self._conn.close()
        except OSError:
            pass

    # ------------------------------------------------------------------ requests
    def _died(self, doing: str) -> WorkbenchError:
        self.process.join(2.0)
        self._closed = True
        if self._stopped_for is not None:
            return self._stopped_for
        how = signal_name(self.process.exitcode)
        log.warning("model worker %d stopped (%s) while %s", self.pid, how, doing)
        return WorkerCrashed(
            f"The model's worker stopped ({how}) while {doing}; nothing was saved. Run it again: the model reloads."
        )

    def _receive(self, deadline: float | None, doing: str, *, setting: str, seconds: float,
                 progress: Progress | None, cancel: Callable[[], bool] | None):
        while True:
            if cancel is not None and cancel():
                self._stopped_for = Cancelled(f"Cancelled while {doing}.")
                self.kill()
                raise self._died(doing)
            wait = 0.25
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._stopped_for = time_exceeded(seconds, setting, doing)
                    log.warning("model worker %d over the time limit (%g s) while %s; killed", self.pid, seconds, doing)
                    self.kill()
                    raise self._died(doing)
                wait = min(wait, left)
            try:
                if not self._conn.poll(wait):
                    if not self.process.is_alive() and not self._conn.poll(0):
                        raise self._died(doing)
                    continue
                message = self._conn.recv()
            except (EOFError, OSError, ConnectionResetError):
                raise self._died(doing) from None
            if isinstance(message, protocol.Progress):
                if progress is not None and not (cancel is not None and cancel()):
                    progress(message.fraction, message.message)
                continue  # a cancel is acted on at the top of the loop
            return message

    def _wait_ready(self) -> None:
        if self.ready:
            return
        message = self._receive(time.monotonic() + START_TIMEOUT_S, "starting the model worker",
                                setting="(none)", seconds=START_TIMEOUT_S, progress=None, cancel=None)
        if not isinstance(message, protocol.Ready):
            raise WorkbenchError(f"The model worker did not start properly ({type(message).__name__}).")
        self.ready = True

    def request(self, message, *, doing: str, seconds: float, setting: str,
                progress: Progress | None = None, cancel: Callable[[], bool] | None = None):
        """Send one request and wait for its answer (one request at a time per worker)."""
        with self._lock:
            if self._closed:
                raise WorkerCrashed(f"The model's worker has stopped; {doing} needs the model loaded again.")
            self._wait_ready()
            self._doing = doing
            self.busy = True
            try:
                try:
                    self._conn.send(message)
                except (OSError, BrokenPipeError):
                    raise self._died(doing) from None
                deadline = time.monotonic() + seconds
                try:
                    reply = self._receive(deadline, doing, setting=setting, seconds=seconds, progress=progress, cancel=cancel)
                except WorkbenchError:
                    raise
                except BaseException:
                    # a progress or cancel callback raised (e.g. Streamlit interrupting the script for a rerun):
                    # the worker is still computing the request and would answer it later, to whoever asks next,
                    # so its pipe is never used again; the next call reloads the model on a fresh worker
                    self._stopped_for = Cancelled(f"Interrupted while {doing}.")
                    self.kill()
                    self._died(doing)
                    raise
            finally:
                self.busy = False
                self._doing = "idle"
        if isinstance(reply, protocol.Failed):
            raise_failure(reply, doing)
        return reply


class WorkerPool:
    """One warm spare worker, handed out to the next model load; a cap on the live model workers."""

    def __init__(self):
        self._lock = threading.Lock()
        self._spare: ModelWorker | None = None
        self._handles: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.started = 0
        self.keep_spare = False  # a server keeps a warm spare; a one-shot CLI does not
        self._replenishing = False
        self._replacing = False  # a spare was handed out: replenish() starts the next one, not ensure_spare()

    def _new(self, limits: Limits) -> ModelWorker:
        self.started += 1
        return ModelWorker(limits)

    def ensure_spare(self, limits: Limits | None = None) -> None:
        """Start the spare worker if there is none (cheap: the imports happen in the new process).

        Every page run of the app calls this. Right after a load took the spare it does nothing: the
        next spare is :meth:`replenish`'s to start, once the machine is idle (a spare started at the
        next page run, importing the frameworks and compiling shap's kernels on the same cores, made a
        fresh server's first Quick start 3-4 s slower)."""
        limits = limits or Limits.from_settings()
        with self._lock:
            self.keep_spare = True
            if not self._replacing:
                self._start_spare(limits)

    def _start_spare(self, limits: Limits) -> None:
        """(Under the lock.) A live spare with these limits, started if needed."""
        if self._spare is None or not self._spare.alive or self._spare.limits != limits:
            if self._spare is not None:
                self._spare.close()
            self._spare = self._new(limits)

    def replenish(self, limits: Limits) -> None:
        """After a spare was taken: start the next one, where this process keeps spares, once no model call has
        been in flight for :data:`SPARE_AFTER_IDLE_S` (its start-up, seconds of CPU for the framework imports
        and shap's kernels, would otherwise compete with the run that took the spare; on two cores it doubled
        a fresh server's first Quick start)."""
        with self._lock:
            if not self.keep_spare:
                self._replacing = False
                return
            if self._replenishing:
                return
            self._replenishing = True

        def when_idle() -> None:
            try:
                quiet_since = time.monotonic()
                deadline = quiet_since + SPARE_WAIT_MAX_S
                while time.monotonic() < deadline:
                    if self._any_busy():
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since >= SPARE_AFTER_IDLE_S:
                        break
                    time.sleep(0.25)
                with self._lock:
                    self._start_spare(limits)
            except Exception:  # noqa: BLE001 - the next load starts a worker of its own instead
                log.exception("starting the spare model worker failed")
            finally:
                with self._lock:
                    self._replenishing = self._replacing = False

        threading.Thread(target=when_idle, name="workbench-spare-worker", daemon=True).start()

    def _any_busy(self) -> bool:
        with self._lock:
            handles = list(self._handles)
        return any(h.worker is not None and h.worker.busy for h in handles)

    def take(self, limits: Limits) -> ModelWorker:
        """A worker for a new model: the spare when it fits these limits, else a new one."""
        with self._lock:
            spare, self._spare = self._spare, None
            self._replacing = self.keep_spare  # until replenish() has started the next one
        if spare is not None and spare.alive and spare.limits == limits:
            return spare
        if spare is not None:
            spare.close()
        return self._new(limits)

    def register(self, handle: Any, max_live: int) -> None:
        """Track a model's handle; unload the least recently used others beyond ``max_live``."""
        with self._lock:
            self._handles.add(handle)
            live = sorted((h for h in self._handles if h.loaded and h is not handle), key=lambda h: h.last_used)
        for old in live[: max(0, len(live) + 1 - max_live)]:
            old.unload(reason="too many models loaded")

    def worker_models(self) -> list[tuple[ModelWorker, str | None]]:
        """Every live worker and the file name of the model it holds (None: the spare)."""
        with self._lock:
            found = [(h.worker, getattr(h.key, "filename", "?")) for h in self._handles if h.loaded]
            if self._spare is not None and self._spare.alive:
                found.append((self._spare, None))
        return found

    def shutdown(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
            handles = list(self._handles)
        if spare is not None:
            spare.close()
        for handle in handles:
            handle.unload(reason="shutdown")


atexit.register(_stop_all)  # workers never outlive their server
_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def pool() -> WorkerPool:
    """The process's worker pool."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool()
        return _pool
