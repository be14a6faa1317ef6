"""Read counts at single positions, from a sample's indexed BAM or CRAM (``PILEUP`` queries).

The counts are those of ``samtools mpileup -B -A -x --ff UNMAP,SECONDARY,QCFAIL,DUP -q MQ -Q BQ``:
htslib's pileup engine through pysam, without base-alignment-quality recalibration, keeping orphan
reads, without the overlapping-mates correction; a base counts if its quality is at least ``BQ`` and its
read's mapping quality at least ``MQ``; deletions are counted apart (their base quality does not apply).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pysam

from better.engine.analyses.pileup import PILEUP_CODES
from better.engine.errors import InputError
from better.engine.kernels.read_metrics import DEPTH_EXCLUDE

_CODE = {b: i for i, b in enumerate("ACGTN")}
_DEL = PILEUP_CODES.index("DEL")


def pileup_counts(
    path: str,
    reference: str | None,
    chrom: Sequence[str],
    pos: Sequence[int],
    min_base_quality: int,
    min_mapping_quality: int,
) -> np.ndarray:
    """Read counts ``(positions, codes)`` (A, C, G, T, N, deletions) at 1-based ``pos`` on ``chrom``."""
    out = np.zeros((len(pos), len(PILEUP_CODES)), dtype=np.int64)
    try:
        af = pysam.AlignmentFile(path, reference_filename=reference)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot open the indexed reads ({exc}); was the file moved since ingest?") from None
    with af:
        contigs = set(af.references)
        for i, (c, p) in enumerate(zip(chrom, pos, strict=True)):
            if c not in contigs:
                continue
            for column in af.pileup(
                c,
                p - 1,
                p,
                truncate=True,
                stepper="nofilter",
                flag_filter=DEPTH_EXCLUDE,
                min_base_quality=min_base_quality,
                min_mapping_quality=min_mapping_quality,
                ignore_overlaps=False,
                ignore_orphans=False,
                compute_baq=False,
            ):
                for read in column.pileups:
                    if read.is_refskip:
                        continue
                    if read.is_del:
                        a = read.alignment
                        if not (a.flag & DEPTH_EXCLUDE or a.mapping_quality < min_mapping_quality):
                            out[i, _DEL] += 1
                        continue
                    a, q = read.alignment, read.query_position
                    if q is None or a.flag & DEPTH_EXCLUDE or a.mapping_quality < min_mapping_quality:
                        continue  # with the "nofilter" stepper, the filters are ours to apply
                    quals = a.query_qualities
                    if quals is not None and quals[q] < min_base_quality:
                        continue
                    seq = a.query_sequence
                    out[i][_CODE.get(seq[q].upper() if seq else "N", _CODE["N"])] += 1
    return out
