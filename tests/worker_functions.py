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
