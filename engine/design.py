"""What a station feeds the kernels: the covariate matrix, the phenotype, who is included."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

#: Key columns that identify a variant across stations.
KEY_COLUMNS = ("chrom", "pos", "ref", "alt")
#: Key columns of a coverage target (0-based, half-open, and its name).
TARGET_COLUMNS = ("chrom", "start", "end", "name")
#: Optional key entries a block may carry along (not part of the identity): the VCF ID.
LABEL_COLUMNS = ("id",)


def concat_keys(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the keys of several blocks: the key columns, and the label columns all blocks carry."""
    names = [*KEY_COLUMNS, *(c for c in LABEL_COLUMNS if parts and all(c in p for p in parts))]
    return {c: np.concatenate([p[c] for p in parts]) if parts else np.array([]) for c in names}


@dataclass(frozen=True)
class Design:
    """One station's model inputs, in the dataset's sample order.

    Attributes
    ----------
    C
        ``(n, k)`` float64; column 0 is the intercept, then covariates, then station indicators.
        Rows of excluded samples are zero.
    y
        ``(n,)`` float64 phenotype (0/1 for a binary trait); 0 for excluded samples.
    include
        ``(n,)`` bool: phenotype and all covariates present and the sample filter met.
    names
        Column names of ``C``.
    """

    C: np.ndarray
    y: np.ndarray
    include: np.ndarray
    names: tuple[str, ...]

    @property
    def k(self) -> int:
        return int(self.C.shape[1])

    def groups(self, n: int) -> np.ndarray:
        """Per sample, its group (``int32``): with ``n = 1`` everyone included is 0; with ``n = 2``
        controls are 0 and cases 1; an excluded sample is -1 either way.

        >>> d = Design(np.ones((3, 1)), np.array([0.0, 1.0, 1.0]), np.array([True, True, False]), ("intercept",))
        >>> d.groups(1).tolist(), d.groups(2).tolist()
        ([0, 0, -1], [0, 1, -1])
        """
        member = (self.y > 0.5).astype(np.int32) if n == 2 else 0
        return np.where(self.include, member, -1).astype(np.int32)


@dataclass(frozen=True)
class Block:
    """Variant keys (``chrom``, ``pos``, ``ref``, ``alt`` arrays), their packed genotypes (hard calls) and,
    for a dataset with dosages, their ALT dosages ``(variants, n)`` uint16 in 1/16384 steps (65535 missing).

    Regressions and frequencies read the dosages where a block has them (as PLINK 2 does); genotype
    counts (HWE), LD and PCA read the hard calls.
    """

    keys: dict[str, np.ndarray]
    packed: np.ndarray
    dosages: np.ndarray | None = None

    def dosage_rows(self) -> np.ndarray:
        """The dosages as a kernel takes them: contiguous, or an empty array for hard calls only."""
        from better.engine.kernels.packed import NO_DOSAGES

        return NO_DOSAGES if self.dosages is None else np.ascontiguousarray(self.dosages)

    def take(self, rows: np.ndarray | list[int]) -> Block:
        """The block's rows ``rows`` (keys, genotypes and dosages)."""
        return Block(
            {c: v[rows] for c, v in self.keys.items()},
            np.ascontiguousarray(self.packed[rows]),
            None if self.dosages is None else np.ascontiguousarray(self.dosages[rows]),
        )


#: Key columns of the variants a round needs (a Newton round of a few variants, say).
Targets = dict[str, np.ndarray]

#: Streams a station's blocks: all of them when called with None, or at least those holding the
#: targets (more is allowed; the station matches keys itself).
BlockSource = Callable[[Targets | None], Iterable[Block]]
