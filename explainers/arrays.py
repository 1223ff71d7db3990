"""Array operations the explainers share, written against the Python array API standard.

``xp`` is the adapter's array namespace (``adapter.xp``: torch tensors on the model's device for
PyTorch, numpy for Keras), so every step here runs where the model's arrays live; nothing in this
module moves data to the host.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import device as device_of

_MASK = 0xFFFFFFFF


def _mix(xp, x):
    """murmur3's 32-bit finaliser on int64 holding 32-bit values: the same bits in every namespace."""
    x = ((x ^ (x >> 16)) * 0x85EBCA6B) & _MASK
    x = ((x ^ (x >> 13)) * 0xC2B2AE35) & _MASK
    return x ^ (x >> 16)


def uniform(xp, counters, seed: int):
    """Uniform floats in (0, 1), float32, one per int64 counter: a counter-based generator (a hash of
    seed and counter), so a value depends on its counter only, never on how the draws are chunked, and
    torch on any device and numpy give the same numbers for the same seed."""
    key = (int(seed) * 0x9E3779B9 + 0x7F4A7C15) & _MASK
    x = _mix(xp, (counters * 0x9E3779B1 + key) & _MASK)
    x = _mix(xp, (x + key) & _MASK)
    return (xp.astype(x >> 8, xp.float32) + 0.5) * (1.0 / 2**24)


def normal(xp, shape: tuple[int, ...], seed: int, first: int, device) -> "object":
    """Standard normal float32 draws of ``shape`` from counters ``first, first + 1, ...`` (Box-Muller on
    pairs of counters: the draw at counter c uses uniforms 2c and 2c + 1)."""
    n = math.prod(shape)
    counters = xp.arange(int(first), int(first) + n, dtype=xp.int64, device=device)
    u1 = uniform(xp, 2 * counters, seed)
    u2 = uniform(xp, 2 * counters + 1, seed)
    z = xp.sqrt(-2.0 * xp.log(u1)) * xp.cos(np.float32(2 * math.pi) * u2)
    return xp.reshape(z, shape)


def weighted_sum(xp, weights, stack):
    """``sum_k weights[k] * stack[k]`` over the first axis, on the stack's device, in float32."""
    w = xp.reshape(xp.astype(weights, stack.dtype), (stack.shape[0],) + (1,) * (stack.ndim - 1))
    return xp.sum(w * stack, axis=0)


def as_weights(xp, values, like):
    """Host numbers (quadrature weights, alphas) as a float32 array on ``like``'s device."""
    return xp.asarray(np.asarray(values, dtype=np.float32), device=device_of(like))


def _axis(src: int, dst: int, aligned: bool):
    if aligned:  # output pixel k samples source position k * (src - 1) / (dst - 1)
        pos = np.arange(dst, dtype=np.float64) * ((src - 1) / (dst - 1) if dst > 1 else 0.0)
    else:  # half-pixel centres (torch align_corners=False, tf.image.resize, cv2.resize)
        pos = np.maximum((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def bilinear(xp, maps, size: tuple[int, int], aligned: bool = False):
    """[N, h, w] -> [N, H, W] bilinear resize (half-pixel centres, or aligned corners), on ``maps``' device."""
    dev = device_of(maps)
    out = maps
    for axis, (src, dst) in ((1, (maps.shape[1], size[0])), (2, (maps.shape[2], size[1]))):
        if src == dst and not aligned:
            continue
        lo, hi, frac = _axis(src, dst, aligned)
        shape = [1, 1, 1]
        shape[axis] = dst
        f = xp.reshape(xp.asarray(frac, device=dev), tuple(shape))
        a = xp.take(out, xp.asarray(lo, device=dev), axis=axis)
        b = xp.take(out, xp.asarray(hi, device=dev), axis=axis)
        out = a + (b - a) * f
    return out


def relu(xp, a):
    return xp.where(a > 0, a, xp.zeros_like(a))


def segments(block: slice, per_image: int):
    """The rows of ``block`` (rows numbered image by image, ``per_image`` each) split by image:
    -> (image, first row within the image, stop row within the image, offset of the segment in the block)."""
    row = block.start
    while row < block.stop:
        image, within = divmod(row, per_image)
        stop = min(block.stop, (image + 1) * per_image)
        yield image, within, within + (stop - row), row - block.start
        row = stop
