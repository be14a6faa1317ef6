"""A station's read-level rounds over a "reads" dataset: the arrays that :mod:`better.engine.reads` sums.

``target_keys`` lists the targets overlapping the query's regions; ``coverage`` sums their depth
over the selected samples; ``reads`` sums the flagstat counters and MAPQ histograms; ``pileup`` reads
the selected samples' files at the positions asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from better.engine.kernels.read_metrics import FLAGSTAT_FIELDS, THRESHOLDS
from better.engine.protocol import Result
from better.engine.reads import coverage_station, pileup_station, reads_station
from better.engine.shared_rows import TARGET_COLUMNS
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


def target_keys(dataset: Dataset, regions: Sequence[Region] | None) -> Result:
    """The targets a coverage round covers, as key columns (in the clear, for secure aggregation's frame)."""
    keys, _ = targets_in(dataset, regions)
    return {f"key_{c}": v for c, v in keys.items()}


def coverage(dataset: Dataset, regions: Sequence[Region] | None, include: np.ndarray) -> Result:
    """Per-target depth sums over the selected samples (see :func:`better.engine.reads.coverage_station`)."""
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
    return coverage_station(keys, sample, mine[sel], sums, include)


def reads(dataset: Dataset, include: np.ndarray) -> Result:
    """Flagstat counters and MAPQ histograms summed over the selected samples."""
    t = dataset.table("reads")
    n = t.num_rows
    flagstat = np.zeros((n, 2, len(FLAGSTAT_FIELDS)), dtype=np.int64)
    for j, f in enumerate(FLAGSTAT_FIELDS):
        flagstat[:, 0, j] = t.column(f).to_numpy()
        flagstat[:, 1, j] = t.column(f"qcfail_{f}").to_numpy()
    q = dataset.table("mapq")
    mapq = np.zeros((n, 256), dtype=np.int64)
    np.add.at(mapq, (q.column("sample_index").to_numpy(), q.column("mapq").to_numpy()), q.column("reads").to_numpy())
    return reads_station(flagstat, mapq, include)


def pileup(
    dataset: Dataset,
    include: np.ndarray,
    chrom: Sequence[str],
    pos: Sequence[int],
    min_base_quality: int,
    min_mapping_quality: int,
    on_sample: Callable[[int], None] | None = None,
) -> Result:
    """Read counts at ``pos`` summed over the selected samples' files (opened through their indexes)."""
    t = dataset.table("reads", ["sample_index", "file", "reference"])
    files = t.column("file").to_pylist()
    refs = t.column("reference").to_pylist()
    counts = np.zeros((int(include.sum()), len(pos), 6), dtype=np.int64)
    for k, s in enumerate(np.flatnonzero(include)):
        counts[k] = pileup_counts(files[s], refs[s], chrom, pos, min_base_quality, min_mapping_quality)
        if on_sample is not None:
            on_sample(1)  # progress, and where a cancelled task stops
    return pileup_station(counts)
