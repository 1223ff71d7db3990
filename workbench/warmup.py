"""Pay one-off start-up costs in the background, before a user's first run needs them.

The shap library compiles its partition-tree kernels with numba on first use (tens of seconds
on two cores); explaining a tiny image once, in a daemon thread, moves that cost off the
first SHAP run. Results are unaffected: only compiled code is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
_lock = threading.Lock()
_thread: threading.Thread | None = None
done = threading.Event()


# shap's numba kernels whose compiled code is kept on disk (in NUMBA_CACHE_DIR, which a model worker sets to
# the data directory's numba-cache): shap does not ask numba to cache them, so enable_caching() does what
# @njit(cache=True) would. The other two (_build_fixed_multi_output, lower_credit) cannot be cached as shap
# writes them; workbench.shap_kernels has cacheable equivalents, bit for bit.
CACHED_KERNELS = (
    ("shap.maskers._image", "_jit_build_partition_tree"),
    ("shap.utils._masked_model", "_init_masks"),
    ("shap.utils._masked_model", "_rec_fill_masks"),
)


def cache_shap_kernels() -> int:
    """Keep the compiled code of :data:`CACHED_KERNELS` on disk where NUMBA_CACHE_DIR is set -> how many.
    Call before their first use; a kernel that cannot be cached compiles as before."""
    import importlib

    if not os.environ.get("NUMBA_CACHE_DIR"):
        return 0
    cached = 0
    try:
        from . import shap_kernels

        cached += 2 * shap_kernels.install()
    except Exception:  # noqa: BLE001 - another shap or numba version: shap's own kernels compile as before
        log.warning("shap's kernels were not replaced by cacheable ones", exc_info=True)
    for module, name in CACHED_KERNELS:
        try:
            kernel = getattr(importlib.import_module(module), name)
            if getattr(kernel, "_cache", None) is not None and type(kernel._cache).__name__ == "NullCache":
                kernel.enable_caching()
                cached += 1
        except Exception:  # noqa: BLE001 - another shap or numba version: that kernel compiles as before
            log.warning("shap kernel %s.%s is not cached", module, name, exc_info=True)
    return cached


@contextlib.contextmanager
def _compile_lock():
    """One process at a time compiles into NUMBA_CACHE_DIR; the others then load what it kept (two workers
    warming up at once on a new data directory would each compile, competing for the same cores)."""
    cache = os.environ.get("NUMBA_CACHE_DIR")
    try:
        import fcntl
    except ImportError:  # not a POSIX system: each process compiles for itself
        fcntl = None
    handle = None
    if cache and fcntl is not None:
        try:
            Path(cache).mkdir(parents=True, exist_ok=True)
            handle = open(Path(cache) / ".compile.lock", "a+")  # noqa: SIM115 - closed below
        except OSError:  # a read-only data directory: numba compiles without keeping the code, unlocked
            handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def warm_up_shap() -> None:
    import shap

    with _compile_lock():
        cache_shap_kernels()
        masker = shap.maskers.Image("blur(8,8)", (16, 16, 3))
        explainer = shap.PartitionExplainer(lambda z: z.reshape(len(z), -1)[:, :2].astype(np.float32), masker)
        explainer(np.random.default_rng(0).random((1, 16, 16, 3)) * 255, max_evals=40, batch_size=20, outputs=np.array([0]), silent=True)


def _run() -> None:
    started = time.perf_counter()
    try:
        warm_up_shap()
        log.info("shap warm-up done in %.1f s", time.perf_counter() - started)
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first run compiles instead
        log.warning("shap warm-up failed", exc_info=True)
    finally:
        done.set()


# methods whose first run needs what the warm-up compiles
NEEDED_BY = frozenset({"shap"})


def wait_if_running(timeout: float = 300.0) -> float:
    """Block until a started warm-up has finished (or ``timeout``); -> the seconds waited.

    A run that needs shap's kernels while they compile would wait for numba's compile lock
    anyway; waiting here instead lets the caller say why, and keeps the wait out of the
    method's own timing.
    """
    thread = _thread
    if thread is None or done.is_set():
        return 0.0
    started = time.perf_counter()
    done.wait(timeout)
    return time.perf_counter() - started


def start_background_warm_up() -> threading.Thread:
    """Start the warm-up once per process; later calls return the same thread."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_run, name="workbench-warm-up", daemon=True)
            _thread.start()
        return _thread
