"""Sums behind the r² of pairs of nearby variants, as PLINK 2's ``--indep-pairwise`` computes it."""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit_parallel, prange

#: The sums per pair, over the people called at both variants, with ``x = g - 1`` in {-1, 0, 1}.
PAIR_SUMS = ("n", "sx", "sy", "sxx", "syy", "sxy")


@jit_parallel
def _pair_sums(codes: np.ndarray, span: np.ndarray, out: np.ndarray) -> None:
    n = codes.shape[1]
    for i in prange(codes.shape[0]):
        for d in range(span[i]):
            j = i + d + 1
            c = 0
            sx = 0
            sy = 0
            sxx = 0
            syy = 0
            sxy = 0
            for s in range(n):
                a = codes[i, s]
                b = codes[j, s]
                if a != 3 and b != 3:
                    x = a - 1
                    y = b - 1
                    c += 1
                    sx += x
                    sy += y
                    sxx += x * x
                    syy += y * y
                    sxy += x * y
            out[i, d, 0] = c
            out[i, d, 1] = sx
            out[i, d, 2] = sy
            out[i, d, 3] = sxx
            out[i, d, 4] = syy
            out[i, d, 5] = sxy


def pair_sums(codes: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Per row ``i`` and each of the next ``span[i]`` rows ``j = i + 1 + d``: the :data:`PAIR_SUMS` over
    the samples called at both, as ``(rows, max(span), 6)`` int64 (0 beyond a row's span).

    ``codes``: ``(rows, samples)`` genotype codes 0, 1, 2 and 3 (missing; also for people left out).

    >>> codes = np.array([[0, 1, 2, 3], [0, 1, 2, 2]], dtype=np.int8)
    >>> pair_sums(codes, np.array([1, 0]))[0, 0].tolist()
    [3, 0, 0, 2, 2, 2]
    """
    span = np.ascontiguousarray(span, dtype=np.int64)
    if np.any(span < 0) or np.any(np.arange(span.shape[0]) + span >= span.shape[0] + (span == 0)):
        raise ValueError("a row's span reaches past the last row")
    out = np.zeros((codes.shape[0], int(span.max(initial=0)), len(PAIR_SUMS)), dtype=np.int64)
    if codes.shape[0]:
        _pair_sums(np.ascontiguousarray(codes, dtype=np.int8), span, out)
    return out
