"""Packing and unpacking of 2-bit genotype codes (PLINK ``.bed`` order, see :mod:`better.genomics.schema`)."""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit, jit_parallel, prange
from better.genomics.schema import packed_width


@jit_parallel
def _unpack(packed: np.ndarray, n_samples: int, out: np.ndarray) -> None:
    for v in prange(packed.shape[0]):
        for i in range(n_samples):
            out[v, i] = (packed[v, i >> 2] >> (2 * (i & 3))) & 3


@jit
def _pack(codes: np.ndarray, out: np.ndarray) -> None:
    for v in range(codes.shape[0]):
        for i in range(codes.shape[1]):
            out[v, i >> 2] |= np.uint8(codes[v, i] << (2 * (i & 3)))


def unpack_genotypes(packed: np.ndarray, n_samples: int) -> np.ndarray:
    """Unpack a ``(variants, bytes)`` uint8 block into ``(variants, n_samples)`` int8 codes 0..3.

    Examples
    --------
    >>> import numpy as np
    >>> unpack_genotypes(np.array([[0b11100100, 0b01]], dtype=np.uint8), 5).tolist()
    [[0, 1, 2, 3, 1]]
    """
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != packed_width(n_samples):
        raise ValueError(f"packed block of shape {packed.shape} does not hold {n_samples} samples")
    out = np.empty((packed.shape[0], n_samples), dtype=np.int8)
    _unpack(packed, n_samples, out)
    return out


def pack_genotypes(codes: np.ndarray) -> np.ndarray:
    """Pack ``(variants, samples)`` codes 0..3 into the 2-bit layout; inverse of :func:`unpack_genotypes`.

    Examples
    --------
    >>> import numpy as np
    >>> pack_genotypes(np.array([[0, 1, 2, 3, 1]])).tolist()
    [[228, 1]]
    """
    codes = np.ascontiguousarray(codes, dtype=np.int8)
    if codes.ndim != 2:
        raise ValueError("codes must be a 2-D (variants, samples) array")
    if codes.size and (codes.min() < 0 or codes.max() > 3):
        raise ValueError("genotype codes must be 0, 1, 2 or 3")
    out = np.zeros((codes.shape[0], packed_width(codes.shape[1])), dtype=np.uint8)
    _pack(codes, out)
    return out
