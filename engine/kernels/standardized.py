"""Variance-standardised genotypes, as PLINK 2's ``--pca`` reads them, unpacked block by block.

A genotype ``g`` (ALT allele count) of a variant with pooled ALT frequency ``p`` becomes
``(g - 2p) / sqrt(2p(1 - p))``; a missing genotype becomes 0 (the mean). Blocks are unpacked into
float64 rows ``(variants, samples)`` so that the products with the PCA basis run as BLAS matrix
products; a block of 1,024 variants of 10,000 samples takes 80 MB, and only one is held at a time.
"""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit_parallel, prange


@jit_parallel
def _standardize(packed: np.ndarray, rows: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    n = out.shape[1]
    full = n >> 2
    for r in prange(rows.shape[0]):
        v = rows[r]
        tab = table[r]
        for j in range(full):  # four samples a byte, each a lookup of its code's value
            b = packed[v, j]
            out[r, 4 * j] = tab[b & 3]
            out[r, 4 * j + 1] = tab[(b >> 2) & 3]
            out[r, 4 * j + 2] = tab[(b >> 4) & 3]
            out[r, 4 * j + 3] = tab[(b >> 6) & 3]
        for i in range(4 * full, n):
            out[r, i] = tab[(packed[v, i >> 2] >> (2 * (i & 3))) & 3]


def standardized_rows(
    packed: np.ndarray,
    rows: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    include: np.ndarray,
    buffer: np.ndarray | None = None,
) -> np.ndarray:
    """Rows ``rows`` of a packed block as ``(g - mean) * scale`` (0 where missing or not included).

    Parameters
    ----------
    packed
        ``(variants, ceil(n / 4))`` uint8 block.
    rows
        Which of the block's variants, in the order wanted.
    mean, scale
        Per wanted row: ``2p`` and ``1 / sqrt(2p(1 - p))``.
    include
        ``(n,)`` bool: the samples analysed; the others get 0.
    buffer
        A float64 array of at least ``len(rows) * n`` values to write into, reused from chunk to chunk:
        a fresh array of tens of MB costs more in page faults than the unpacking itself.

    Examples
    --------
    >>> from better.genomics.packing import pack_genotypes
    >>> p = pack_genotypes(np.array([[0, 1, 2, 3]]))
    >>> standardized_rows(p, np.array([0]), np.array([1.0]), np.array([2.0]), np.ones(4, bool)).tolist()
    [[-2.0, 0.0, 2.0, 0.0]]
    """
    n = include.shape[0]
    table = np.zeros((rows.shape[0], 4))
    for code in range(3):
        table[:, code] = (code - mean) * scale
    size = rows.shape[0] * n
    if buffer is not None and buffer.dtype == np.float64 and buffer.size >= size and buffer.flags.c_contiguous:
        out = buffer.reshape(-1)[:size].reshape(rows.shape[0], n)
    else:
        out = np.empty((rows.shape[0], n))
    if rows.shape[0]:
        _standardize(np.ascontiguousarray(packed), np.ascontiguousarray(rows, dtype=np.int64), table, out)
        if not include.all():
            out[:, ~include] = 0.0
    return out


@jit_parallel
def _missing_per_sample(packed: np.ndarray, n: int, out: np.ndarray) -> None:
    for i in prange(n):
        byte, shift = i >> 2, 2 * (i & 3)
        c = 0
        for v in range(packed.shape[0]):
            if (packed[v, byte] >> shift) & 3 == 3:
                c += 1
        out[i] = c


def missing_per_sample(packed: np.ndarray, n: int) -> np.ndarray:
    """Per sample, how many of the block's variants it has no call at.

    >>> from better.genomics.packing import pack_genotypes
    >>> missing_per_sample(pack_genotypes(np.array([[0, 3, 1], [3, 3, 2]])), 3).tolist()
    [1, 2, 0]
    """
    out = np.zeros(n, dtype=np.int64)
    if packed.shape[0]:
        _missing_per_sample(np.ascontiguousarray(packed), n, out)
    return out
