"""Kernels for 128-bit fixed-point words ``(n, 2)`` of ``uint64`` (low, high): see :mod:`better.engine.fixedpoint`.

Each is one pass over the words, in place where it can be: masking a station's release touches every
word once per peer, and the releases run to millions of words.
"""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit

_TWO63 = 9223372036854775808.0
_TWO64 = 18446744073709551616.0
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


@jit
def encode_into(x: np.ndarray, scale: float, infinity: float, out: np.ndarray) -> None:
    """``out[i] = round(x[i] * scale)`` modulo 2^128, infinities as ``±infinity * scale``.

    ``x`` is finite or infinite (no NaN) with ``|x| * scale < 2^127``; the caller checks.
    """
    for i in range(x.shape[0]):
        v = x[i]
        if np.isinf(v):
            v = infinity if v > 0 else -infinity
        s = np.rint(v * scale)
        if abs(s) < _TWO63:
            iv = np.int64(s)
            out[i, 0] = np.uint64(iv)
            out[i, 1] = _ALL_ONES if iv < 0 else np.uint64(0)
        else:  # a multiple of 2^11 at least: both halves are exact
            high = np.floor(s / _TWO64)
            out[i, 0] = np.uint64(s - high * _TWO64)
            out[i, 1] = np.uint64(np.int64(high))


@jit
def decode_into(words: np.ndarray, scale: float, out: np.ndarray) -> None:
    """``out[i]`` = the signed 128-bit integer ``words[i]`` divided by ``scale``."""
    for i in range(words.shape[0]):
        low = words[i, 0]
        high = np.int64(words[i, 1])
        signed_low = np.int64(low)
        if (high == 0 and signed_low >= 0) or (high == -1 and signed_low < 0):
            out[i] = np.float64(signed_low) / scale  # fits 64 signed bits: one rounding
        else:
            out[i] = (np.float64(high) * _TWO64 + np.float64(low)) / scale


@jit
def add_into(acc: np.ndarray, b: np.ndarray) -> None:
    """``acc += b`` modulo 2^128."""
    for i in range(acc.shape[0]):
        low = acc[i, 0] + b[i, 0]
        carry = np.uint64(1) if low < acc[i, 0] else np.uint64(0)
        acc[i, 0] = low
        acc[i, 1] = acc[i, 1] + b[i, 1] + carry


@jit
def subtract_into(acc: np.ndarray, b: np.ndarray) -> None:
    """``acc -= b`` modulo 2^128."""
    for i in range(acc.shape[0]):
        low = acc[i, 0] - b[i, 0]
        borrow = np.uint64(1) if acc[i, 0] < b[i, 0] else np.uint64(0)
        acc[i, 0] = low
        acc[i, 1] = acc[i, 1] - b[i, 1] - borrow
