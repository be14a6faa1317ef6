"""ALT-allele dosages at rest: PLINK 2's 1/16384 steps in ``uint16``, and the hard calls they imply.

A dosage ``d`` in [0, 2] is stored as ``floor(d * 16384 + 0.5)`` (0..32768), the integer PLINK 2 keeps in
a ``.pgen``, so every analysis sees the very numbers ``plink2 --vcf F dosage=DS`` sees. 65535 marks a
missing dosage. Hard calls follow PLINK 2's ``--hard-call-threshold 0.1``: a dosage within 0.1 of 0, 1
or 2 is that genotype, anything further from every integer is a missing call.
"""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit, jit_parallel, prange
from better.engine.errors import InputError
from better.genomics.schema import packed_width

#: One ALT allele, in stored dosage units.
DOSAGE_ONE = 16384
#: The stored value of a missing dosage.
DOSAGE_MISSING = 65535
#: The largest distance from an integer (in units) at which a dosage is still a hard call: 0.1 of a unit,
#: rounded down, as ``--hard-call-threshold 0.1`` does.
HARD_CALL_UNITS = int(0.1 * DOSAGE_ONE)


def to_units(dosage: np.ndarray, what: str = "dosage") -> np.ndarray:
    """Turn ALT dosages (float, NaN missing) into stored units, refusing values outside [0, 2].

    Parameters
    ----------
    dosage
        Any shape of float dosages; NaN is a missing dosage.
    what
        How an error names the values (e.g. ``"chr1.vcf.gz: DS"``).

    Examples
    --------
    >>> to_units(np.array([0.0, 0.1, 1.99994, np.nan, 2.0])).tolist()
    [0, 1638, 32767, 65535, 32768]
    """
    d = np.asarray(dosage, dtype=np.float64)
    missing = np.isnan(d)
    bad = ~missing & ((d < 0.0) | (d > 2.0))
    if bad.any():
        at = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), d.shape)
        raise InputError(
            f"{what}: dosage {d[at]!r} at position {tuple(int(i) for i in at)} is outside [0, 2]; a dosage "
            "counts ALT alleles of a diploid genotype"
        )
    units = np.floor(np.where(missing, 0.0, d) * DOSAGE_ONE + 0.5)
    return np.where(missing, DOSAGE_MISSING, units).astype(np.uint16)


def from_units(units: np.ndarray) -> np.ndarray:
    """Stored units back to float dosages (NaN missing).

    Examples
    --------
    >>> from_units(np.array([0, 8192, 32768, 65535], dtype=np.uint16)).tolist()
    [0.0, 0.5, 2.0, nan]
    """
    u = np.asarray(units)
    return np.where(u == DOSAGE_MISSING, np.nan, u / DOSAGE_ONE)


def from_codes(codes: np.ndarray) -> np.ndarray:
    """Hard-call codes (0, 1, 2, 3 missing) as dosage units, for samples that have only a hard call.

    Examples
    --------
    >>> from_codes(np.array([0, 1, 2, 3])).tolist()
    [0, 16384, 32768, 65535]
    """
    c = np.asarray(codes)
    return np.where(c == 3, DOSAGE_MISSING, c.astype(np.int64) * DOSAGE_ONE).astype(np.uint16)


@jit
def hard_call(units: int) -> int:
    """The hard-call code (0, 1, 2, or 3 missing) of one dosage of ``units`` (``--hard-call-threshold 0.1``).

    Examples
    --------
    >>> [hard_call(u) for u in (0, 1638, 1639, 16384, 31130, 31129, 32768, 65535)]
    [0, 0, 3, 1, 2, 3, 2, 3]
    """
    u = int(units)
    if u == DOSAGE_MISSING:
        return 3
    g = (u + DOSAGE_ONE // 2) // DOSAGE_ONE  # the nearest integer dosage
    return g if abs(u - g * DOSAGE_ONE) <= HARD_CALL_UNITS else 3


@jit
def hard_call_row(units: np.ndarray, packed: np.ndarray, counts: np.ndarray) -> None:
    """Write the hard calls of one row of dosage ``units`` into its zeroed ``packed`` bytes and ``counts``."""
    local = np.zeros(4, dtype=np.int64)
    for j in range(packed.shape[0]):
        byte = 0
        for t in range(4):
            s = 4 * j + t
            if s >= units.shape[0]:
                break
            code = hard_call(units[s])
            byte |= code << (2 * t)
            local[code] += 1
        packed[j] = byte
    for c in range(4):
        counts[c] = local[c]


@jit_parallel
def _hard_calls(units: np.ndarray, packed: np.ndarray, counts: np.ndarray) -> None:
    for v in prange(units.shape[0]):
        hard_call_row(units[v], packed[v], counts[v])


def hard_calls(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The packed hard calls ``(rows, ceil(n / 4))`` and their code counts ``(rows, 4)`` of dosage units.

    Examples
    --------
    >>> packed, counts = hard_calls(to_units(np.array([[0.1, 0.9, 1.5, np.nan, 1.95]])))
    >>> from better.genomics.packing import unpack_genotypes
    >>> unpack_genotypes(packed, 5).tolist(), counts.tolist()
    ([[0, 1, 3, 3, 2]], [[1, 1, 1, 2]])
    """
    units = np.ascontiguousarray(units, dtype=np.uint16)
    packed = np.zeros((units.shape[0], packed_width(units.shape[1])), dtype=np.uint8)
    counts = np.zeros((units.shape[0], 4), dtype=np.int32)
    if units.size:
        _hard_calls(units, packed, counts)
    return packed, counts
