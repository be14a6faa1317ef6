"""Genotype counts per variant and sample group (cases/controls, or one group for everyone)."""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit_parallel, prange
from better.engine.kernels.packed import nonzero_codes


@jit_parallel
def _group_counts(packed: np.ndarray, group: np.ndarray, group_size: np.ndarray, out: np.ndarray) -> None:
    n = group.shape[0]
    for v in prange(packed.shape[0]):
        idx = np.empty(n, dtype=np.int64)
        codes = np.empty(n, dtype=np.int8)
        for e in range(nonzero_codes(packed[v], n, idx, codes)):
            g = group[idx[e]]
            if g >= 0:
                out[v, g, codes[e]] += 1
        for g in range(out.shape[1]):
            out[v, g, 0] = group_size[g] - out[v, g, 1] - out[v, g, 2] - out[v, g, 3]


def genotype_counts(packed: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Counts ``(variants, n_groups, 4)`` of codes 0 (hom-ref), 1 (het), 2 (hom-alt), 3 (missing).

    Parameters
    ----------
    packed
        ``(variants, ceil(n / 4))`` uint8 block.
    group
        ``(n,)`` int8/int32 group of each sample, -1 for samples left out.
    n_groups
        Number of groups.

    Examples
    --------
    >>> import numpy as np
    >>> from genomics.packing import pack_genotypes
    >>> p = pack_genotypes(np.array([[0, 1, 2, 3, 1]]))
    >>> genotype_counts(p, np.array([0, 0, 1, 1, -1]), 2)[0].tolist()
    [[1, 1, 0, 0], [0, 0, 1, 1]]
    """
    group = np.ascontiguousarray(group, dtype=np.int32)
    size = np.bincount(group[group >= 0], minlength=n_groups).astype(np.int64)
    out = np.zeros((packed.shape[0], n_groups, 4), dtype=np.int64)
    if packed.shape[0]:
        _group_counts(np.ascontiguousarray(packed), group, size, out)
    return out
