"""Fixed-point numbers in the integers modulo 2^128, the arithmetic secure aggregation adds masks in.

A value ``x`` is carried as the integer ``round(x * 2^FRACTION_BITS)`` modulo 2^128, stored as two
``uint64`` words (low, high) in a trailing axis of length 2. Sums of such numbers are exact; the only
error is the rounding of each station's value to a multiple of ``2^-40`` (about ``9.1e-13``), so a sum
over ``S`` stations is off by at most ``S * 2^-41`` in absolute terms.

Range: each value must be finite with ``|x| < 2^64`` (about ``1.8e19``); a sum of up to 2^16 of them stays
far inside the ``2^87`` the signed 128-bit integers hold. Infinities (a log-likelihood of ``-inf``) are
carried as ``±2^80`` and read back as infinities: a finite sum can never come near that. NaN has no
encoding and is refused.

The loops are kernels in :mod:`better.engine.kernels.words`; the tests hold them to Python's integers.

Examples
--------
>>> words = add(encode(np.array([1.5, -2.25])), encode(np.array([0.25, 0.25])))
>>> decode(words).tolist()
[1.75, -2.0]
"""

from __future__ import annotations

import numpy as np

from better.engine.errors import InputError
from better.engine.kernels.words import add_into, decode_into, encode_into, subtract_into

FRACTION_BITS = 40
#: Largest magnitude a finite value may have.
MAX_ABS = 2.0**64
#: How an infinity is carried (in value units); decoded magnitudes from half of this up are infinite.
INFINITY_AS = 2.0**80
_SCALE = 2.0**FRACTION_BITS


def _flat_words(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty((int(np.prod(shape, dtype=np.int64)), 2), dtype=np.uint64)


def encode(x: np.ndarray) -> np.ndarray:
    """Fixed-point words ``(..., 2)`` (low, high) of a real, integer or boolean array."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    if np.isnan(a).any():
        raise InputError("a statistic is NaN and cannot be securely aggregated")
    big = np.isfinite(a) & (np.abs(a) >= MAX_ABS)
    if big.any():
        raise InputError(  # no value: the statistic is this station's own, unmasked
            "a statistic is beyond the secure-aggregation range (|x| < 2^64); rescale the phenotype or covariates"
        )
    out = _flat_words(a.shape)
    encode_into(a.reshape(-1), _SCALE, INFINITY_AS, out)
    return out.reshape((*a.shape, 2))


def decode(words: np.ndarray) -> np.ndarray:
    """Real values of fixed-point words (a sum of encodings decodes to the sum, up to the rounding)."""
    w = np.ascontiguousarray(words, dtype=np.uint64)
    value = np.empty(w.shape[:-1], dtype=np.float64)
    decode_into(w.reshape(-1, 2), _SCALE, value.reshape(-1))
    infinite = np.abs(value) >= INFINITY_AS / 2
    return np.where(infinite, np.copysign(np.inf, value), value)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` modulo 2^128 (a new array)."""
    out = _checked_copy(a, b)
    add_into(out.reshape(-1, 2), np.ascontiguousarray(b).reshape(-1, 2))
    return out


def subtract(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` modulo 2^128 (a new array)."""
    out = _checked_copy(a, b)
    subtract_into(out.reshape(-1, 2), np.ascontiguousarray(b).reshape(-1, 2))
    return out


def negate(a: np.ndarray) -> np.ndarray:
    """``-a`` modulo 2^128 (two's complement)."""
    return subtract(np.zeros_like(a), a)


def _checked_copy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape != b.shape or a.shape[-1:] != (2,):
        raise ValueError(f"fixed-point arrays of shapes {a.shape} and {b.shape} cannot be combined")
    return np.array(a, dtype=np.uint64, order="C", copy=True)


def from_bytes(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Words of ``shape`` read from 16 bytes each (a key stream: uniform words)."""
    n = int(np.prod(shape, dtype=np.int64))
    if len(data) != 16 * n:
        raise ValueError(f"{len(data)} bytes for {n} words")
    return np.frombuffer(data, dtype=np.dtype("<u8")).reshape((*shape, 2))
