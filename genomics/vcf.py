"""The front door for variant files: detect the format, pick a reader, check record order.

``.vcf`` and ``.vcf.gz`` go through the fast text path (:mod:`better.genomics.vcf_text`); ``.bcf`` through
cyvcf2 (:mod:`better.genomics.vcf_cyvcf2`). The format is told from the file's bytes, not its name.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from better.engine.errors import InputError
from better.genomics.paths import input_file
from better.genomics.vcf_header import VcfHeader, choose_dosage_field

Format = Literal["vcf", "vcf.gz", "bcf"]


def detect_format(path: str) -> Format:
    """Tell VCF text, gzip-compressed VCF text and BCF apart by their first bytes."""
    input_file(path, "VCF or BCF file")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        return "bcf" if magic[:2] == b"BC" else "vcf"
    try:
        with gzip.open(path, "rb") as g:
            head = g.read(5)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: a gzip file that cannot be decompressed ({exc})") from None
    return "bcf" if head[:3] == b"BCF" else "vcf.gz"


@dataclass
class SortChecker:
    """Refuses records out of (chrom, pos) order, as tabix and region pruning need sorted input."""

    path: str
    chrom: str | None = None
    pos: int = 0

    def __post_init__(self) -> None:
        self.done: set[str] = set()

    def check(self, batch: pa.RecordBatch, lines: np.ndarray) -> None:
        """Check one batch, continuing from the previous one."""
        if batch.num_rows == 0:
            return
        chrom = batch.column("chrom").to_numpy(zero_copy_only=False)
        pos = batch.column("pos").to_numpy()
        change = np.flatnonzero(chrom[1:] != chrom[:-1]) + 1
        for s, e in zip(np.concatenate(([0], change)), np.concatenate((change, [chrom.size])), strict=True):
            c = str(chrom[s])
            if c != self.chrom:
                if c in self.done:
                    raise InputError(
                        f"{self.path}: line {lines[s]}: chromosome {c} appears again after {self.chrom}; "
                        "records must be sorted (run `bcftools sort`)"
                    )
                if self.chrom is not None:
                    self.done.add(self.chrom)
                self.chrom, self.pos = c, 0
            p = pos[s:e]
            prev = np.concatenate(([self.pos], p[:-1]))
            bad = np.flatnonzero(p < prev)
            if bad.size:
                i = s + int(bad[0])
                raise InputError(
                    f"{self.path}: line {lines[i]}: {c}:{pos[i]} comes after {c}:{prev[bad[0]]}; records "
                    "must be sorted by position (run `bcftools sort`)"
                )
            self.pos = int(p[-1])


def open_vcf(
    path: str,
    chunk_bytes: int = 32 << 20,
    on_progress: Callable[[int, int], None] | None = None,
    dosage: str = "auto",
) -> tuple[VcfHeader, Iterator[tuple[pa.RecordBatch, np.ndarray]]]:
    """Open a VCF/BCF and return its header and sorted-checked batches of ``variants.parquet`` rows.

    Each item is ``(batch, line)`` where ``line[i]`` is the 1-based line (the record number for BCF)
    of row ``i``'s source record, for error messages. ``dosage`` picks the FORMAT field of ALT dosages
    (:func:`~better.genomics.vcf_header.choose_dosage_field`); the header's ``dosage_field`` says which
    was taken, and the batches then carry a ``dosages`` column.

    Examples
    --------
    >>> header, batches = open_vcf("data/synthetic/cohort/pooled.vcf.gz")  # doctest: +SKIP
    >>> sum(b.num_rows for b, _ in batches)  # doctest: +SKIP
    8000
    """
    fmt = detect_format(path)
    if fmt == "bcf":
        from better.genomics.vcf_cyvcf2 import iter_cyvcf2_batches

        header, inner = iter_cyvcf2_batches(path)
    else:
        from better.genomics.vcf_text import iter_text_batches

        header, inner = iter_text_batches(path, chunk_bytes=chunk_bytes, on_progress=on_progress)
    # the readers' batches are lazy and read ``header.dosage_field`` once iteration starts
    header.dosage_field = choose_dosage_field(header, dosage, path)
    checker = SortChecker(path)

    def checked() -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        for batch, lines in inner:
            checker.check(batch, lines)
            yield batch, lines

    return header, checked()
