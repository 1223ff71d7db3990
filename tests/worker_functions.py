"""Framework-neutral functions the worker tests run in a model's worker (a light module: the worker imports it)."""

import time

import numpy as np

MB = 2**20


def allocate(adapter, megabytes: int) -> int:
    """Touch ``megabytes`` of memory."""
    block = np.ones(megabytes * MB, dtype=np.uint8)
    return int(block.sum())


def slow(adapter, seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def input_shape(adapter) -> tuple:
    return tuple(adapter.input_size)


def explain_stalling_on(adapter, stall: str, method: str, *args, progress=None):
    """``workbench.engine.explain_in_worker``, except that method ``stall`` never finishes on its own: it
    reports progress every 0.1 s for up to a minute (a long SHAP or IG run, made slow on purpose)."""
    from workbench.engine import explain_in_worker

    if method != stall:
        return explain_in_worker(adapter, method, *args, progress=progress)
    for step in range(600):
        if progress is not None:
            progress(step / 600, f"{method}: stalling")
        time.sleep(0.1)
    raise AssertionError("the stalled method was never cancelled")
