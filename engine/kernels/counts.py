"""Genotype counts per variant and sample group (cases/controls, or one group for everyone)."""

from __future__ import annotations

import numpy as np

from better.engine.accelerate import jit_parallel, prange
from better.engine.kernels.packed import NO_DOSAGES, nonzero_codes, nonzero_values


@jit_parallel
def _group_counts(
    packed: np.ndarray, dosages: np.ndarray, group: np.ndarray, group_size: np.ndarray, out: np.ndarray
) -> None:
    n = group.shape[0]
    for v in prange(packed.shape[0]):
        idx = np.empty(n, dtype=np.int64)
        alt_mass = np.zeros(out.shape[1])  # ALT dosage over called samples (REF: 2 per called sample minus it)
        if dosages.shape[0] == 0:
            codes = np.empty(n, dtype=np.int8)
            for e in range(nonzero_codes(packed[v], n, idx, codes)):
                g = group[idx[e]]
                if g >= 0:
                    out[v, g, codes[e]] += 1
        else:  # the nearest genotype of each dosage (0.5 rounds up), 3 for a missing one
            values = np.empty(n)
            for e in range(nonzero_values(packed, dosages, v, n, idx, values)):
                g = group[idx[e]]
                if g >= 0:
                    d = values[e]
                    if d < 0:
                        out[v, g, 3] += 1
                    else:
                        out[v, g, int(np.floor(d + 0.5))] += 1
                        alt_mass[g] += d
        for g in range(out.shape[1]):
            out[v, g, 0] = group_size[g] - out[v, g, 1] - out[v, g, 2] - out[v, g, 3]
        if dosages.shape[0] != 0:
            for g in range(out.shape[1]):
                called = out[v, g, 0] + out[v, g, 1] + out[v, g, 2]
                # An allele no nearest genotype carries, but some dosage does (one person at 0.4, or a cloud
                # of 0.001s): its sums are those few people's. Count the dosage's worth, rounded up, as
                # carriers, so that the rules see it as rare.
                if out[v, g, 1] + out[v, g, 2] == 0 and alt_mass[g] > 0:
                    moved = min(int(np.ceil(alt_mass[g])), out[v, g, 0])
                    out[v, g, 0] -= moved
                    out[v, g, 1] += moved
                if out[v, g, 0] + out[v, g, 1] == 0 and called > 0 and 2.0 * called - alt_mass[g] > 0:
                    moved = min(int(np.ceil(2.0 * called - alt_mass[g])), out[v, g, 2])
                    out[v, g, 2] -= moved
                    out[v, g, 1] += moved


def genotype_counts(
    packed: np.ndarray, group: np.ndarray, n_groups: int, dosages: np.ndarray | None = None
) -> np.ndarray:
    """Counts ``(variants, n_groups, 4)`` of codes 0 (hom-ref), 1 (het), 2 (hom-alt), 3 (missing).

    With ``dosages`` (a block's, not :data:`~better.engine.kernels.packed.NO_DOSAGES`), each sample counts
    at the genotype nearest its dosage and as missing without one: the people a regression on dosages
    sums over, as the disclosure rules judge them. Where, in a group, no nearest genotype carries an
    allele but some dosage does (one person at 0.4 among zeros; 1.6 among 2s; a cloud of 0.001s), that
    allele's dosage, rounded up, is counted as heterozygous carriers: the sums over it are those few
    people's, and the rules must see it as rare.

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
        rows = NO_DOSAGES if dosages is None else np.ascontiguousarray(dosages)
        _group_counts(np.ascontiguousarray(packed), rows, group, size, out)
    return out


@jit_parallel
def _dosage_sums(
    packed: np.ndarray,
    dosages: np.ndarray,
    group: np.ndarray,
    alt: np.ndarray,
    squares: np.ndarray,
    missing: np.ndarray,
) -> None:
    n = group.shape[0]
    for v in prange(packed.shape[0]):
        idx = np.empty(n, dtype=np.int64)
        values = np.empty(n)
        for e in range(nonzero_values(packed, dosages, v, n, idx, values)):
            g = group[idx[e]]
            if g < 0:
                continue
            d = values[e]
            if d < 0:
                missing[v, g] += 1
            else:
                alt[v, g] += d
                squares[v, g] += d * d


def dosage_sums(
    packed: np.ndarray, dosages: np.ndarray, group: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per variant and group: the ALT dosage sum and sum of squares over samples with a dosage, and the
    number of samples with one (``(variants, n_groups)`` each), PLINK 2's dosage-based frequencies.

    ``dosages`` is :data:`~better.engine.kernels.packed.NO_DOSAGES` for hard calls: the dosage is then the
    call. ``group`` is as for :func:`genotype_counts`.

    Examples
    --------
    >>> import numpy as np
    >>> from better.genomics.packing import pack_genotypes
    >>> from better.engine.kernels.packed import NO_DOSAGES
    >>> p = pack_genotypes(np.array([[0, 1, 2, 3, 1]]))
    >>> [a.tolist() for a in dosage_sums(p, NO_DOSAGES, np.array([0, 0, 0, 0, -1]), 1)]
    [[[3.0]], [[5.0]], [[3]]]
    >>> d = np.array([[0, 8192, 32768, 65535, 16384]], dtype=np.uint16)  # 0, 0.5, 2, missing, 1
    >>> [a.tolist() for a in dosage_sums(p, d, np.array([0, 0, 0, 0, -1]), 1)]
    [[[2.5]], [[4.25]], [[3]]]
    """
    group = np.ascontiguousarray(group, dtype=np.int32)
    size = np.bincount(group[group >= 0], minlength=n_groups).astype(np.int64)
    m = packed.shape[0]
    alt, squares, missing = np.zeros((m, n_groups)), np.zeros((m, n_groups)), np.zeros((m, n_groups), np.int64)
    if m:
        _dosage_sums(np.ascontiguousarray(packed), np.ascontiguousarray(dosages), group, alt, squares, missing)
    return alt, squares, size[None, :] - missing
