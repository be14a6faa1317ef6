"""Reading the 2-bit packed genotype layout inside kernels."""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit


@jit
def nonzero_codes(row: np.ndarray, n: int, idx: np.ndarray, codes: np.ndarray) -> int:
    """List the samples of one packed variant row whose code is not 0 (hom-ref).

    Writes their indices into ``idx`` and codes (1 het, 2 hom-alt, 3 missing) into ``codes``, and returns
    how many there are. All-hom-ref bytes are skipped whole, so the cost follows the carriers.
    """
    found = 0
    for j in range(row.shape[0]):
        b = row[j]
        if b == 0:
            continue
        for t in range(4):
            s = 4 * j + t
            if s >= n:
                break
            c = (b >> (2 * t)) & 3
            if c != 0:
                idx[found] = s
                codes[found] = c
                found += 1
    return found
