"""Arrow record batches of ``variants.parquet`` rows, shared by the text and the cyvcf2 readers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from better.genomics.schema import IMPUTATION_R2_KEYS, dosage_width, storage_width, variants_schema


def dot_to_null(values: pa.Array) -> pa.Array:
    """Replace the VCF missing-value string ``.`` by null."""
    return pc.if_else(pc.equal(values, "."), pa.scalar(None, pa.string()), values)


def packed_array(packed: np.ndarray, n_samples: int) -> pa.Array:
    """Wrap a ``(rows, bytes)`` uint8 array as a fixed-size binary column without copying."""
    width = storage_width(n_samples)
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.shape[1] != width:  # sites-only: one zero byte per variant
        packed = np.zeros((packed.shape[0], width), dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), packed.shape[0], [None, pa.py_buffer(packed)])


def dosage_array(units: np.ndarray, n_samples: int) -> pa.Array:
    """Wrap ``(rows, n_samples)`` uint16 dosage units as the fixed-size binary ``dosages`` column."""
    width = dosage_width(n_samples)
    flat = np.ascontiguousarray(units, dtype="<u2").view(np.uint8).reshape(units.shape[0], -1)
    if flat.shape[1] != width:  # sites-only
        flat = np.zeros((units.shape[0], width), dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), flat.shape[0], [None, pa.py_buffer(flat)])


def imputation_r2(info: pa.Array) -> pa.Array:
    """The imputation quality of each row from its INFO text (``R2``, ``DR2`` or ``INFO``; null if none).

    Examples
    --------
    >>> imputation_r2(pa.array(["AF=0.1;R2=0.93;IMPUTED", "DR2=0.5", None, "AF=0.2"])).to_pylist()
    [0.9300000071525574, 0.5, None, None]
    """
    out = pa.nulls(len(info), pa.float32())
    for key in reversed(IMPUTATION_R2_KEYS):  # the first key found wins
        found = pc.extract_regex(info, rf"(?:^|;){key}=(?P<v>[-+0-9.eE]+)(?:;|$)")
        value = pc.cast(pc.struct_field(found, [0]), pa.float32(), safe=False)
        out = pc.if_else(pc.is_valid(found), value, out)
    return out


def build_batch(
    n_samples: int,
    *,
    chrom: pa.Array | Sequence[str],
    pos: np.ndarray,
    ident: pa.Array | Sequence[str | None],
    ref: pa.Array | Sequence[str],
    alt: pa.Array | Sequence[str],
    qual: pa.Array | Sequence[float | None],
    filt: pa.Array | Sequence[str | None],
    info: pa.Array | Sequence[str | None],
    record: np.ndarray,
    alt_index: np.ndarray,
    counts: np.ndarray,
    packed: np.ndarray,
    dosages: np.ndarray | None = None,
) -> pa.RecordBatch:
    """Assemble one batch following :func:`better.genomics.schema.variants_schema`.

    ``dosages``, ``(rows, n_samples)`` uint16 units of :mod:`better.genomics.dosage`, makes it a batch of a
    dataset with dosages (``packed`` and ``counts`` must then be their hard calls).
    """
    schema = variants_schema(n_samples, dosages=dosages is not None)

    def col(name: str, values: Any) -> pa.Array:
        return (
            values.cast(schema.field(name).type)
            if isinstance(values, pa.Array)
            else pa.array(values, type=schema.field(name).type)
        )

    counts = np.asarray(counts, dtype=np.int32)
    arrays = [
        col("chrom", chrom),
        pa.array(np.asarray(pos, dtype=np.int64)),
        col("id", ident),
        col("ref", ref),
        col("alt", alt),
        col("qual", qual),
        col("filter", filt),
        col("info", info),
        pa.array(np.asarray(record, dtype=np.int64)),
        pa.array(np.asarray(alt_index, dtype=np.int16)),
        *(pa.array(np.ascontiguousarray(counts[:, c])) for c in range(4)),
        packed_array(packed, n_samples),
    ]
    if dosages is not None:
        arrays += [imputation_r2(arrays[7]), dosage_array(dosages, n_samples)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
