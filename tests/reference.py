"""Slow, obviously correct twins of the ingest path, used as references by the tests."""

from __future__ import annotations

import numpy as np


def cyvcf2_rows(path: str) -> list[dict]:
    """One dict per biallelic row, split as ``bcftools norm -m-`` does, genotypes via Python loops.

    Uses cyvcf2's ``genotypes`` lists (one ``[a, b, phased]`` per sample), not the numpy arrays that
    the production cyvcf2 reader uses, so the two stay independent.
    """
    import cyvcf2

    rows = []
    for v in cyvcf2.VCF(path, strict_gt=False):
        alts = list(v.ALT) or ["."]
        gts = v.genotypes if v.genotypes is not None else []
        for k, alt in enumerate(alts, start=1):
            codes = []
            for g in gts:
                alleles = g[:-1]
                if any(a < 0 for a in alleles):
                    codes.append(3)
                elif len(alleles) == 1:
                    codes.append(2 if alleles[0] == k else 0)
                else:
                    codes.append(sum(1 for a in alleles if a == k))
            rows.append(
                {
                    "chrom": v.CHROM,
                    "pos": v.POS,
                    "id": v.ID,
                    "ref": v.REF,
                    "alt": alt,
                    "alt_index": k,
                    "codes": codes,
                }
            )
    return rows


def python_unpack(packed: np.ndarray, n: int) -> np.ndarray:
    """Unpack 2-bit codes one sample at a time."""
    out = np.zeros((packed.shape[0], n), dtype=np.int8)
    for v in range(packed.shape[0]):
        for i in range(n):
            out[v, i] = (int(packed[v, i // 4]) >> (2 * (i % 4))) & 3
    return out
