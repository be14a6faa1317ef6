"""ALT dosages from a VCF's FORMAT ``DS``, ``HDS`` or ``GP``, as ``plink2 --vcf F dosage=DS|HDS|GP`` reads them.

The rules live in one place, :func:`better.genomics.vcf_numba.field_units`, which both readers call: the
Numba text parser (:func:`better.genomics.vcf_numba.parse_dosage_lines`) and the cyvcf2 reader of BCF
(:func:`cyvcf2_units`, on the values htslib decoded). They follow plink2 v2.00a3.5 (``plink2_import.cc``),
checked against it by ``tests/validation/test_vcf_dosage_plink2.py``:

- **DS** ``d``: stored as ``floor(d * 16384 + 0.5)`` units (:mod:`better.genomics.dosage`); a haploid GT
  (one allele, ``.`` included) doubles it; ``d < 0`` or (doubled) ``d > 2`` is refused. A missing DS
  (``.`` or absent from the sample's shortened field) falls back to GT: 0, 1 or 2 ALT alleles, or missing.
- **HDS**: one value ``h`` per haplotype, each in [0, 1]: ``h1 + h2``, or ``2 h`` for a single value,
  whatever GT says; a half-missing HDS is refused; a missing HDS falls back to DS (if FORMAT has one),
  then GT.
- **GP**: probabilities in [0, 1] of each genotype (3 values diploid, 2 haploid for a biallelic record);
  they need not sum to 1: the dosage is ``(P01 + 2 P11) / (P00 + P01 + P11)``; all zero reads as
  missing (dosage and hard call, GT ignored); a missing GP falls back to GT.

The hard call of every sample is then that of its dosage (:func:`better.genomics.dosage.hard_calls`),
so a DS of 1.91 makes a ``0/1`` a ``1/1``, and a DS of 0.5 a missing call.

Where BETTER differs from plink2 v2.00a3.5 (which refuses *any* multi-allelic record in a dosage import):
a multi-allelic record is split into one row per ALT allele, as ``bcftools norm -m-`` does. Row ``k``
gets DS's ``k``-th value (Number=A; a lone ``.`` leaves every row to GT) and, from GP, the expected
number of copies of ALT ``k``, ``sum(count_k(g) P(g)) / sum(P)`` (for a biallelic record the formula
above); HDS of a multi-allelic record is refused. BETTER also refuses values plink2 would silently cut
short (``0.5,0.2`` as a biallelic DS, a third HDS value, a fourth GP value, ``0.5abc``), a partly missing
HDS or GP whichever value is missing, and reads GT wherever it sits in FORMAT (plink2 only as the first
field).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from better.engine.errors import InputError
from better.genomics import vcf_numba as kernels
from better.genomics.dosage import from_codes

#: The kernels' code of each dosage field.
KINDS = {"DS": kernels.KIND_DS, "HDS": kernels.KIND_HDS, "GP": kernels.KIND_GP}

#: htslib's float32 bit patterns of a missing value and of the padding after a sample's last value.
_BCF_FLOAT_MISSING = 0x7F800001
_BCF_FLOAT_VECTOR_END = 0x7F800002
_BCF_INT32_MISSING = -(2**31)
_BCF_INT32_VECTOR_END = -(2**31) + 1


def fallback_field(field: str) -> str | None:
    """The field read where ``field`` is missing: ``DS`` for ``HDS`` (as plink2 does), else none."""
    return "DS" if field == "HDS" else None


def genotype_count(n_alt: int, haploid: bool) -> int:
    """How many genotypes (GP values) a record with ``n_alt`` ALT alleles has for a sample of that ploidy.

    Examples
    --------
    >>> genotype_count(1, False), genotype_count(1, True), genotype_count(2, False)
    (3, 2, 6)
    """
    alleles = n_alt + 1
    return alleles if haploid else alleles * (alleles + 1) // 2


def dosage_problem(code: int, field: str, text: str, n_alt: int, haploid: bool) -> str:
    """What is wrong with one sample's ``field`` value ``text``, for an error message.

    Examples
    --------
    >>> dosage_problem(kernels.ERR_DOSAGE_RANGE, "DS", "2.5", 1, False)
    "FORMAT/DS '2.5' is outside [0, 2] (a haploid genotype's DS: [0, 1]); plink2 refuses it too"
    """
    n = len(text.split(","))
    if code == kernels.ERR_DOSAGE_VALUE:
        missing = "'.'" if field == "DS" else "'.' for the whole field"
        return f"FORMAT/{field} {text!r} is not a list of numbers (a missing value is {missing})"
    if code == kernels.ERR_DOSAGE_RANGE:
        if field == "DS":
            return f"FORMAT/DS {text!r} is outside [0, 2] (a haploid genotype's DS: [0, 1]); plink2 refuses it too"
        what = "haplotype dosage" if field == "HDS" else "genotype probability"
        return f"FORMAT/{field} {text!r}: each {what} must lie in [0, 1]; plink2 refuses it too"
    if code == kernels.ERR_DOSAGE_COUNT:
        if field == "DS":
            need = f"one per ALT allele ({n_alt})"
        elif field == "HDS":
            need = "one per haplotype (1 haploid, 2 diploid)"
        else:
            ploidy = "haploid" if haploid else "diploid"
            need = f"{genotype_count(n_alt, haploid)} for a {ploidy} genotype of {n_alt} ALT allele(s)"
        return f"FORMAT/{field} {text!r} has {n} value(s); it needs {need}"
    if code == kernels.ERR_DOSAGE_MULTIALLELIC:
        return (
            f"FORMAT/HDS {text!r} in a record with {n_alt} ALT alleles: haplotype dosages of multi-allelic "
            "records are not supported (plink2 refuses multi-allelic dosages); ingest with --dosage DS or none"
        )
    return f"FORMAT/{field} {text!r} is unreadable (code {code})"


def htslib_values(raw: Any, n_samples: int, field: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One record's FORMAT values as cyvcf2 returns them (``variant.format(field)``), for the kernels.

    Returns ``(values, missing, counts)``: float64 values and missing flags ``(samples, width)`` and how
    many values each sample has (htslib pads a sample's values with a vector-end marker); all zero when
    the record has no such field (``raw`` None).
    """
    if raw is None:
        return np.zeros((n_samples, 1)), np.zeros((n_samples, 1), dtype=np.bool_), np.zeros(n_samples, np.int64)
    raw = np.ascontiguousarray(raw).reshape(n_samples, -1)
    if raw.dtype == np.float32:
        bits = raw.view(np.uint32)
        end, missing = bits == _BCF_FLOAT_VECTOR_END, bits == _BCF_FLOAT_MISSING
    elif raw.dtype == np.int32:
        end, missing = raw == _BCF_INT32_VECTOR_END, raw == _BCF_INT32_MISSING
    else:
        raise InputError(f"{where}: FORMAT/{field} is not numeric (declare it Type=Float)")
    values = np.where(missing | end, 0.0, raw.astype(np.float64))
    counts = raw.shape[1] - end.sum(axis=1)
    return values, missing, counts.astype(np.int64)


def _shown(values: np.ndarray, missing: np.ndarray, n: int) -> str:
    return ",".join(
        "." if m else np.format_float_positional(np.float32(v), trim="-")
        for v, m in zip(values[:n], missing[:n], strict=True)
    )


def cyvcf2_units(
    variant: Any,
    field: str,
    codes: np.ndarray,
    haploid: np.ndarray,
    n_alt: int,
    where: str,
    samples: list[str],
) -> np.ndarray:
    """The dosage units ``(rows, samples)`` of one cyvcf2 record, read from FORMAT ``field``.

    Parameters
    ----------
    variant
        The ``cyvcf2.Variant``.
    field
        ``DS``, ``HDS`` or ``GP``.
    codes
        The record's hard-call codes ``(rows, samples)`` from GT (0, 1, 2, 3 missing): where the field is
        missing.
    haploid
        Whether each sample's GT has one allele (``.`` included).
    n_alt
        ALT alleles of the record (rows: ``max(n_alt, 1)``).
    where
        ``path: record N (chrom:pos)`` for error messages.
    samples
        Sample IDs, for error messages.
    """
    n = len(samples)
    units = from_codes(codes)
    vals, miss, counts = htslib_values(variant.format(field), n, field, where)
    other = fallback_field(field)
    fb = htslib_values(variant.format(other), n, other, where) if other else htslib_values(None, n, field, where)
    code, s, which = kernels.record_dosages(
        KINDS[field], vals, miss, counts, *fb, n_alt, np.ascontiguousarray(haploid, dtype=np.bool_), units
    )
    if code:
        name, (v, m, c) = (other, fb) if which else (field, (vals, miss, counts))
        what = dosage_problem(code, str(name), _shown(v[s], m[s], int(c[s])), n_alt, bool(haploid[s]))
        raise InputError(f"{where}: {what} (sample {samples[s]!r})")
    return units
