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


#: The ``dosages`` argument of a kernel whose block has hard calls only.
NO_DOSAGES = np.zeros((0, 0), dtype=np.uint16)
#: A stored dosage unit: 1/16384 of an ALT allele (PLINK 2's); 65535 is a missing dosage.
DOSAGE_ONE = 16384.0
DOSAGE_MISSING = 65535


@jit
def nonzero_values(packed: np.ndarray, dosages: np.ndarray, v: int, n: int, idx: np.ndarray, values: np.ndarray) -> int:
    """List the samples of variant ``v`` whose ALT dosage is not 0, or is missing.

    With hard calls only (``dosages`` has no rows) the dosage is the code (1 het, 2 hom-alt); otherwise
    ``dosages[v, s] / 16384``. A missing genotype is written as -1. Writes indices into ``idx`` and
    dosages into ``values`` and returns how many there are: every kernel that sums over genotypes reads
    them through here, so hard calls and dosages are one code path.
    """
    if dosages.shape[0] == 0:
        codes = np.empty(n, dtype=np.int8)
        found = nonzero_codes(packed[v], n, idx, codes)
        for e in range(found):
            values[e] = -1.0 if codes[e] == 3 else float(codes[e])
        return found
    found = 0
    row16 = dosages[v]
    for s in range(n):
        u = row16[s]
        if u != 0:
            idx[found] = s
            values[found] = -1.0 if u == DOSAGE_MISSING else u / DOSAGE_ONE
            found += 1
    return found


@jit
def genotype_value(packed: np.ndarray, dosages: np.ndarray, v: int, s: int) -> float:
    """Sample ``s``'s ALT dosage at variant ``v`` (the hard call's code without dosages); -1 if missing."""
    if dosages.shape[0] == 0:
        c = (packed[v, s >> 2] >> (2 * (s & 3))) & 3
        return -1.0 if c == 3 else float(c)
    u = dosages[v, s]
    return -1.0 if u == DOSAGE_MISSING else u / DOSAGE_ONE
