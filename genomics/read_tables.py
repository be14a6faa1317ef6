"""A "reads" dataset's tables as the arrays the read-level rounds add up
(:mod:`better.engine.analyses.coverage`, :mod:`~better.engine.analyses.reads`,
:mod:`~better.engine.analyses.pileup`): the targets overlapping the query's regions and their depth
sums per sample, the flagstat counters and MAPQ histograms per sample, and read counts at positions read
from the samples' files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from better.engine.design import TARGET_COLUMNS
from better.engine.kernels.read_metrics import FLAGSTAT_FIELDS, THRESHOLDS
from better.genomics.pileup import pileup_counts
from better.genomics.regions import Region
from better.genomics.store import Dataset


def targets_in(dataset: Dataset, regions: Sequence[Region] | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Key columns and indexes of the dataset's targets that overlap ``regions`` (all without)."""
    t = dataset.table("targets")
    chrom = t.column("chrom").to_numpy(zero_copy_only=False).astype(str)
    start = t.column("start").to_numpy()
    end = t.column("end").to_numpy()
    keep = np.ones(len(chrom), dtype=bool)
    if regions:
        keep[:] = False
        for r in regions:
            keep |= (chrom == r.chrom) & (start < r.end) & (end > r.start)
    idx = np.flatnonzero(keep)
    name = t.column("name").to_numpy(zero_copy_only=False).astype(str)
    keys = {"chrom": chrom[idx], "start": start[idx], "end": end[idx], "name": name[idx]}
    return {c: keys[c] for c in TARGET_COLUMNS}, t.column("target").to_numpy()[idx]


def target_depth(
    dataset: Dataset, regions: Sequence[Region] | None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Per sample and target of ``regions``: the targets' key columns, then sample index, target row and
    sums ``[bases, summed depth, bases >= T...]`` (what
    :func:`better.engine.analyses.coverage.coverage_station` adds up)."""
    keys, wanted = targets_in(dataset, regions)
    cov = dataset.table("coverage")
    target = cov.column("target").to_numpy()
    position = np.full(max(int(target.max(initial=-1)), int(wanted.max(initial=-1))) + 1, -1, dtype=np.int64)
    position[wanted] = np.arange(wanted.size)
    mine = position[target] if target.size else np.zeros(0, dtype=np.int64)
    sel = mine >= 0
    names = ["bases", "sum_depth", *(f"bases_ge_{t}x" for t in THRESHOLDS)]
    sums = np.stack([cov.column(n).to_numpy()[sel] for n in names], axis=1)
    sample = cov.column("sample_index").to_numpy()[sel]
    return keys, sample, mine[sel], sums


def read_metrics(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the flagstat counters ``(samples, 2, fields)`` (passed, QC-failed) and the MAPQ
    histogram ``(samples, 256)``."""
    t = dataset.table("reads")
    n = t.num_rows
    flagstat = np.zeros((n, 2, len(FLAGSTAT_FIELDS)), dtype=np.int64)
    for j, f in enumerate(FLAGSTAT_FIELDS):
        flagstat[:, 0, j] = t.column(f).to_numpy()
        flagstat[:, 1, j] = t.column(f"qcfail_{f}").to_numpy()
    q = dataset.table("mapq")
    mapq = np.zeros((n, 256), dtype=np.int64)
    np.add.at(mapq, (q.column("sample_index").to_numpy(), q.column("mapq").to_numpy()), q.column("reads").to_numpy())
    return flagstat, mapq


def pileup_counts_of(
    dataset: Dataset,
    include: np.ndarray,
    chrom: Sequence[str],
    pos: Sequence[int],
    min_base_quality: int,
    min_mapping_quality: int,
    on_sample: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Read counts ``(samples, positions, codes)`` at ``pos`` in each selected sample's file (opened
    through its index)."""
    t = dataset.table("reads", ["sample_index", "file", "reference"])
    files = t.column("file").to_pylist()
    refs = t.column("reference").to_pylist()
    counts = np.zeros((int(include.sum()), len(pos), 6), dtype=np.int64)
    for k, s in enumerate(np.flatnonzero(include)):
        counts[k] = pileup_counts(files[s], refs[s], chrom, pos, min_base_quality, min_mapping_quality)
        if on_sample is not None:
            on_sample(1)  # progress, and where a cancelled task stops
    return counts
