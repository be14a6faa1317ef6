"""Column specifications of the station store, declared once and checked at the boundaries.

The genotype layout is PLINK's ``.bed`` order: 2 bits a sample, sample ``i`` in byte ``i // 4`` at bits
``2 * (i % 4)``, low bits first; code 0 hom-ref, 1 het, 2 hom-alt, 3 missing. An all-hom-ref byte is 0.
"""

from __future__ import annotations

import pyarrow as pa

#: Store format version, written into the catalog; bump on any incompatible change.
STORE_FORMAT_VERSION = 1

HOM_REF, HET, HOM_ALT, MISSING = 0, 1, 2, 3

#: Per-variant counts precomputed at ingest (over all samples of the dataset).
COUNT_COLUMNS = ("n_hom_ref", "n_het", "n_hom_alt", "n_missing")


def packed_width(n_samples: int) -> int:
    """Bytes of one variant's packed genotypes.

    Examples
    --------
    >>> [packed_width(n) for n in (0, 1, 4, 5)]
    [0, 1, 1, 2]
    """
    return (n_samples + 3) // 4


def storage_width(n_samples: int) -> int:
    """Bytes of the stored genotype column: :func:`packed_width`, but at least 1.

    Parquet has no zero-width fixed-size binary, so a sites-only dataset (no samples) stores one
    zero byte per variant; readers ignore it.
    """
    return max(1, packed_width(n_samples))


def dosage_width(n_samples: int) -> int:
    """Bytes of one variant's dosages: a little-endian ``uint16`` a sample (see :mod:`better.genomics.dosage`)."""
    return max(1, 2 * n_samples)


#: The INFO keys of an imputation quality, in the order they are looked for: minimac's R2, Beagle's DR2,
#: IMPUTE's INFO.
IMPUTATION_R2_KEYS = ("R2", "DR2", "INFO")


def variants_schema(n_samples: int, dosages: bool = False) -> pa.Schema:
    """Schema of ``variants.parquet`` for a dataset of ``n_samples`` samples.

    One row per biallelic variant, multi-allelic records split as ``bcftools norm -m-`` does.
    ``record`` is the 0-based index of the source VCF record and ``alt_index`` the 1-based index of
    this row's ALT allele within it, so a split can be traced back to its record.

    A dataset ingested with dosages (``dosages=True``) adds ``imputation_r2``, the imputation server's
    quality (INFO ``R2``, ``DR2`` or ``INFO``; null where absent), and ``dosages``, ``n_samples``
    little-endian ``uint16`` ALT dosages in 1/16384 steps (65535 missing). Its ``genotypes`` are the hard
    calls of those dosages.
    """
    extra = (
        [
            pa.field("imputation_r2", pa.float32()),
            pa.field("dosages", pa.binary(dosage_width(n_samples)), nullable=False),
        ]
        if dosages
        else []
    )
    return pa.schema(
        [
            pa.field("chrom", pa.string(), nullable=False),
            pa.field("pos", pa.int64(), nullable=False),
            pa.field("id", pa.string()),
            pa.field("ref", pa.string(), nullable=False),
            pa.field("alt", pa.string(), nullable=False),
            pa.field("qual", pa.float32()),
            pa.field("filter", pa.string()),
            pa.field("info", pa.string()),
            pa.field("record", pa.int64(), nullable=False),
            pa.field("alt_index", pa.int16(), nullable=False),
            pa.field("n_hom_ref", pa.int32(), nullable=False),
            pa.field("n_het", pa.int32(), nullable=False),
            pa.field("n_hom_alt", pa.int32(), nullable=False),
            pa.field("n_missing", pa.int32(), nullable=False),
            pa.field("genotypes", pa.binary(storage_width(n_samples)), nullable=False),
            *extra,
        ]
    )


#: Columns of ``variants.parquet`` other than the packed genotypes.
VARIANT_META_COLUMNS = tuple(f.name for f in variants_schema(0) if f.name != "genotypes")

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("has_phenotypes", pa.bool_(), nullable=False),
    ]
)
