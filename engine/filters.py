"""Variant filters on pooled quantities: minor-allele frequency and count, call rate, HWE p-value, and
MaCH's imputation r².

A filter is data (names, comparisons, thresholds), evaluated centrally on pooled counts, never on one
station's: a variant rare at one station and common overall passes ``maf >= 0.01``. Variants without a
called genotype have no MAF and fail every MAF or MAC comparison, as PLINK 2 drops them. On a dataset
with dosages, the allele counts are dosage sums and "called" means "has a dosage" (PLINK 2's dosage-based
``--maf`` and ``--geno dosage``); ``r2`` is the pooled MaCH r² of the dosages (``--mach-r2-filter``), and a
variant where it is undefined (monomorphic, no dosages) passes, as PLINK 2 keeps it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from better.engine.stats import hwe_exact, mach_r2

#: The pooled variant quantities a filter can use.
NAMES = ("maf", "mac", "call_rate", "hwe_p", "r2")
_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class VariantCondition:
    """``name op value``, e.g. ``VariantCondition("maf", ">=", 0.01)``."""

    name: str
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise ValueError(f"unknown variant quantity {self.name!r}; use one of {', '.join(NAMES)}")
        if self.op not in _OPS:
            raise ValueError(f"unknown comparison {self.op!r}")


@dataclass(frozen=True)
class VariantFilter:
    """A conjunction of :class:`VariantCondition` (empty: keep everything)."""

    conditions: tuple[VariantCondition, ...] = ()

    @property
    def needs_genotypes(self) -> bool:
        """Whether a condition needs genotype counts (HWE), not just allele and call counts."""
        return any(c.name == "hwe_p" for c in self.conditions)

    def mask(
        self,
        alt: np.ndarray,
        called: np.ndarray,
        missing: np.ndarray,
        genotypes: np.ndarray | None = None,
        squares: np.ndarray | None = None,
    ) -> np.ndarray:
        """Which variants pass, from pooled ALT allele counts (dosage sums), called and missing sample
        counts, (for HWE) pooled genotype counts ``(variants, 3)`` (hom-ref, het, hom-alt) and (for r²)
        pooled sums of squared dosages.

        Examples
        --------
        >>> f = VariantFilter((VariantCondition("maf", ">=", 0.1),))
        >>> f.mask(np.array([1, 40, 190]), np.array([100, 100, 100]), np.array([0, 0, 0])).tolist()
        [False, True, False]
        """
        alt = np.asarray(alt, dtype=float)
        called = np.asarray(called, dtype=float)
        keep = np.ones(alt.shape[0], dtype=bool)
        with np.errstate(invalid="ignore", divide="ignore"):
            freq = alt / (2.0 * called)
            values = {
                "maf": np.minimum(freq, 1.0 - freq),
                "mac": np.where(called > 0, np.minimum(alt, 2.0 * called - alt), np.nan),
                "call_rate": called / (called + np.asarray(missing, dtype=float)),
            }
        for cond in self.conditions:
            if cond.name == "r2":
                if squares is None:
                    raise ValueError("an r2 filter needs the sums of squared dosages")
                r2 = mach_r2(alt, np.asarray(squares, dtype=float), called)
                with np.errstate(invalid="ignore"):
                    keep &= np.isnan(r2) | _OPS[cond.op](r2, cond.value)  # undefined: kept, as PLINK 2 does
                continue
            if cond.name == "hwe_p":
                if genotypes is None:
                    raise ValueError("an hwe_p filter needs genotype counts")
                if "hwe_p" not in values:
                    g = np.asarray(genotypes, dtype=np.int64)
                    values["hwe_p"] = np.where(called > 0, hwe_exact(g[:, 0], g[:, 1], g[:, 2]), np.nan)
            v = values[cond.name]
            with np.errstate(invalid="ignore"):
                keep &= np.isfinite(v) & _OPS[cond.op](v, cond.value)  # unknown (no calls): dropped
        return keep
