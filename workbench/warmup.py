"""Pay one-off start-up costs in the background, before a user's first run needs them.

The shap library compiles its partition-tree kernels with numba on first use (tens of seconds
on two cores); explaining a tiny image once, in a daemon thread, moves that cost off the
first SHAP run. Results are unaffected: only compiled code is kept.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

log = logging.getLogger(__name__)
_lock = threading.Lock()
_thread: threading.Thread | None = None
done = threading.Event()


def warm_up_shap() -> None:
    import shap

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
