"""Fixed-point numbers in the integers modulo 2^128, the arithmetic secure aggregation adds masks in.

A value ``x`` is carried as the integer ``round(x * 2^FRACTION_BITS)`` modulo 2^128, stored as two
``uint64`` words (low, high) in a trailing axis of length 2. Sums of such numbers are exact; the only
error is the rounding of each station's value to a multiple of ``2^-40`` (about ``9.1e-13``), so a sum
over ``S`` stations is off by at most ``S * 2^-41`` in absolute terms.

Range: each value must be finite with ``|x| < 2^64`` (about ``1.8e19``); a sum of up to 2^16 of them stays
far inside the ``2^87`` the signed 128-bit integers hold. Infinities (a log-likelihood of ``-inf``) are
carried as ``±2^80`` and read back as infinities: a finite sum can never come near that. NaN has no
encoding and is refused.

Examples
--------
>>> words = add(encode(np.array([1.5, -2.25])), encode(np.array([0.25, 0.25])))
>>> decode(words).tolist()
[1.75, -2.0]
"""

from __future__ import annotations

import numpy as np

from engine.errors import InputError

FRACTION_BITS = 40
#: Largest magnitude a finite value may have.
MAX_ABS = 2.0**64
#: How an infinity is carried (in value units); decoded magnitudes from half of this up are infinite.
INFINITY_AS = 2.0**80
_SCALE = 2.0**FRACTION_BITS
_TWO64 = 2.0**64
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def encode(x: np.ndarray) -> np.ndarray:
    """Fixed-point words ``(..., 2)`` (low, high) of a real, integer or boolean array."""
    a = np.asarray(x, dtype=np.float64)
    if np.isnan(a).any():
        raise InputError("a statistic is NaN and cannot be securely aggregated")
    big = np.isfinite(a) & (np.abs(a) >= MAX_ABS)
    if big.any():
        raise InputError(
            f"a statistic of size {float(np.abs(a[big]).max()):.3g} is beyond the secure-aggregation range "
            f"(|x| < 2^64); rescale the phenotype or covariates"
        )
    scaled = np.rint(np.where(np.isfinite(a), a, np.sign(a) * INFINITY_AS) * _SCALE)
    out = np.empty((*a.shape, 2), dtype=np.uint64)
    small = np.abs(scaled) < 2.0**63
    as_int = np.where(small, scaled, 0.0).astype(np.int64)
    # Beyond 2^63 the scaled value is a multiple of 2^11, so the split into 64-bit halves is exact.
    high = np.floor(np.where(small, 0.0, scaled) / _TWO64)
    low = np.where(small, 0.0, scaled) - high * _TWO64
    out[..., 0] = np.where(small, as_int.view(np.uint64), low.astype(np.uint64))
    out[..., 1] = np.where(small, np.where(as_int < 0, _MASK64, np.uint64(0)), high.astype(np.int64).view(np.uint64))
    return out


def decode(words: np.ndarray) -> np.ndarray:
    """Real values of fixed-point words (a sum of encodings decodes to the sum, up to the rounding)."""
    w = np.asarray(words, dtype=np.uint64)
    low, high = w[..., 0], w[..., 1].view(np.int64)
    signed_low = low.view(np.int64)
    # A value that fits 64 signed bits converts in one rounding; the rest through both halves.
    fits = ((high == 0) & (signed_low >= 0)) | ((high == -1) & (signed_low < 0))
    value = np.where(fits, signed_low.astype(np.float64), high.astype(np.float64) * _TWO64 + low.astype(np.float64))
    value = value / _SCALE
    infinite = np.abs(value) >= INFINITY_AS / 2
    return np.where(infinite, np.copysign(np.inf, value), value)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` modulo 2^128."""
    if a.shape != b.shape:
        raise ValueError(f"fixed-point arrays of shapes {a.shape} and {b.shape} cannot be added")
    x, y = a.reshape(-1, 2), b.reshape(-1, 2)  # at least 1-d, so numpy wraps without a warning
    out = np.empty_like(x)
    np.add(x[:, 0], y[:, 0], out=out[:, 0])  # modulo 2^64
    carry = (out[:, 0] < x[:, 0]).astype(np.uint64)
    np.add(x[:, 1], y[:, 1], out=out[:, 1])
    out[:, 1] += carry
    return out.reshape(a.shape)


def negate(a: np.ndarray) -> np.ndarray:
    """``-a`` modulo 2^128 (two's complement)."""
    x = a.reshape(-1, 2)
    out = np.empty_like(x)
    np.add(~x[:, 0], np.uint64(1), out=out[:, 0])
    np.add(~x[:, 1], (out[:, 0] == 0).astype(np.uint64), out=out[:, 1])
    return out.reshape(a.shape)


def from_bytes(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Words of ``shape`` read from 16 bytes each (a key stream: uniform words)."""
    n = int(np.prod(shape, dtype=np.int64))
    if len(data) != 16 * n:
        raise ValueError(f"{len(data)} bytes for {n} words")
    return np.frombuffer(data, dtype="<u8").reshape((*shape, 2)).astype(np.uint64)
