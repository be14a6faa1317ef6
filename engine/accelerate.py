"""The single place where Numba options are chosen.

No other module calls ``numba.jit`` directly: kernels are decorated with :func:`jit` (serial) or
:func:`jit_parallel` (``prange`` over independent rows), so caching and fast-math policy stay uniform.
Kernels are compiled on first use and cached on disk next to the package.

The one fast-math flag allowed is ``contract``: ``a * b + c`` may become a fused multiply-add, which
rounds once instead of twice (never less accurate) and lets LLVM vectorise polynomial loops. No
reassociation, no assumptions about NaN or infinity: results stay deterministic for a given machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

_FASTMATH = {"contract"}

F = TypeVar("F", bound=Callable[..., Any])

#: ``prange`` re-exported so kernel modules import Numba from here only.
prange = numba.prange


def jit(func: F) -> F:
    """Compile ``func`` in nopython mode (serial, cached, FMA contraction only).

    Examples
    --------
    ::

        @jit
        def add(a, b):
            return a + b
    """
    return cast(F, numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)(func))


def jit_parallel(func: F) -> F:
    """Compile ``func`` with ``parallel=True`` so that its ``prange`` loops run on all threads.

    Examples
    --------
    ::

        @jit_parallel
        def double(x):
            out = np.empty_like(x)
            for i in prange(x.shape[0]):
                out[i] = 2 * x[i]
            return out
    """
    return cast(F, numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FASTMATH)(func))


def set_threads(n: int | None) -> int:
    """Set the number of Numba threads (``None`` keeps the default) and return the number in use."""
    if n is not None:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    return int(numba.get_num_threads())
