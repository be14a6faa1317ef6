"""A vectorisable ``exp`` for kernels: LLVM turns the loop below into SIMD code, libm's ``exp`` stays scalar.

Method (Cody-Waite): write ``x = k ln2 + r`` with integer ``k`` and ``|r| <= ln2 / 2``, take ``exp(r)``
from its degree-13 Taylor polynomial (truncation error below 1e-17 on that interval), and scale by
``2^k`` built directly in the exponent bits. ``k`` comes from the round-to-nearest trick: adding
``1.5 * 2^52`` puts ``k`` in the low mantissa bits. Inputs are clamped to ``[-708, 708]`` so that
``2^k`` stays a normal number; callers use it for the logistic function, where that clamp changes
nothing that matters (``expit(-708)`` is 3e-308). NaN gives NaN. Relative error is about 1 ulp of
``numpy.exp``.
"""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SHIFTER = 6755399441055744.0  # 1.5 * 2^52
_SHIFTER_BITS = 0x4338000000000000  # its bit pattern
_LIMIT = 708.0


@jit
def exp_into(x: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """``out[:] = exp(clamp(x, -708, 708))``; ``scratch`` is an int64 array at least as long as ``x``."""
    n = x.shape[0]
    shifted = scratch[:n].view(np.float64)
    for s in range(n):
        v = x[s]
        v = -_LIMIT if v < -_LIMIT else v  # written so that NaN passes through
        v = _LIMIT if v > _LIMIT else v
        t = v * _LOG2E + _SHIFTER
        shifted[s] = t
        kf = t - _SHIFTER
        r = v - kf * _LN2_HI
        r = r - kf * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        out[s] = p * r + 1.0
    bits = scratch[:n]
    for s in range(n):
        bits[s] = (bits[s] - _SHIFTER_BITS + 1023) << 52
    scale = bits.view(np.float64)
    for s in range(n):
        out[s] *= scale[s]
