"""``better ingest-bam``: index aligned-read files (BAM, CRAM) into a station dataset of kind "reads".

Per sample (one file each; the sample ID from the file's read groups, ``SM``, or a mapping file):

- read metrics as ``samtools flagstat`` counts them (QC-passed reads; QC-failed ones in ``qcfail_*``)
  and a MAPQ histogram of primary mapped reads (table ``mapq``);
- per target of a BED file, or per fixed-size bin of every contig without one: bases, summed depth
  (so mean depth), and bases at >= 10x, 20x and 30x, with ``samtools depth -a`` semantics (table
  ``coverage``).

Each file passes once through bounded memory (:mod:`better.genomics.bam_reader`,
:mod:`better.engine.kernels.read_metrics`).
The files stay where they are, and their paths and SHA-256 are recorded: ``PILEUP`` queries read them at
query time through their indexes. As for VCFs, the dataset is written to a temporary folder and committed
with its catalog rows in one step: a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from better.engine.errors import InputError
from better.engine.kernels.read_metrics import (
    FLAGSTAT_FIELDS,
    OK,
    SPAN_TOO_LONG,
    THRESHOLDS,
    UNSORTED,
    accumulate,
    finish,
    new_state,
)
from better.genomics.bam_reader import AlignmentInfo, chunks, inspect
from better.genomics.ingest import phenotype_record, software_versions
from better.genomics.phenotypes import match_samples, read_phenotypes
from better.genomics.schema import SAMPLES_SCHEMA
from better.genomics.store import Store, check_dataset_name

#: Longest reference span of a read (bases); the depth ring buffer is this long (int32: 16 MiB).
MAX_READ_SPAN = 1 << 22
DEFAULT_BIN = 100_000


@dataclass
class Targets:
    """Intervals (0-based, half-open) on named contigs: a BED file's targets or fixed-size bins."""

    contigs: list[str]
    lengths: list[int]
    chrom: np.ndarray
    start: np.ndarray
    end: np.ndarray
    name: np.ndarray
    source: str

    @classmethod
    def from_bed(cls, path: str | os.PathLike[str], contigs: list[str], lengths: list[int]) -> Targets:
        """Targets from a BED file (chrom, start, end, optional name), checked against the contigs."""
        known = dict(zip(contigs, lengths, strict=True))
        rows: list[tuple[str, int, int, str]] = []
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise InputError(f"{path}: cannot read the targets ({exc.strerror})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            parts = line.split("\t")
            try:
                chrom, start, end = parts[0], int(parts[1]), int(parts[2])
            except (IndexError, ValueError):
                raise InputError(f"{path}, line {n}: a BED line needs chrom, start and end (tab-separated)") from None
            if chrom not in known:
                raise InputError(f"{path}, line {n}: contig {chrom!r} is not in the alignment files' headers")
            if not 0 <= start < end <= known[chrom]:
                raise InputError(
                    f"{path}, line {n}: {start}-{end} is not an interval within {chrom} (length {known[chrom]})"
                )
            rows.append((chrom, start, end, parts[3] if len(parts) > 3 and parts[3] else f"{chrom}:{start + 1}-{end}"))
        if not rows:
            raise InputError(f"{path}: no targets in the BED file")
        rank = {c: i for i, c in enumerate(contigs)}
        rows.sort(key=lambda r: (rank[r[0]], r[1], r[2]))
        return cls._of(rows, contigs, lengths, str(Path(path).resolve()))

    @classmethod
    def bins(cls, contigs: list[str], lengths: list[int], size: int) -> Targets:
        """Every contig cut into bins of ``size`` bases (the last one shorter)."""
        if size < 1:
            raise InputError(f"--bin-size {size}: give a positive number of bases")
        rows = [
            (c, s, min(s + size, length), f"{c}:{s + 1}-{min(s + size, length)}")
            for c, length in zip(contigs, lengths, strict=True)
            for s in range(0, length, size)
        ]
        return cls._of(rows, contigs, lengths, f"bins of {size} bases")

    @classmethod
    def _of(cls, rows: list[tuple[str, int, int, str]], contigs: list[str], lengths: list[int], source: str) -> Targets:
        return cls(
            contigs,
            lengths,
            np.array([r[0] for r in rows], dtype=object),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.int64),
            np.array([r[3] for r in rows], dtype=object),
            source,
        )

    def layout_for(self, info: AlignmentInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Target arrays in one file's contig order: starts, ends, offsets per file contig, and the
        dataset index of each (files may order their contigs differently)."""
        order: list[int] = []
        offsets = [0]
        for contig in info.contigs:
            order += [int(i) for i in np.flatnonzero(self.chrom == contig)]
            offsets.append(len(order))
        idx = np.array(order, dtype=np.int64)
        return self.start[idx], self.end[idx], np.array(offsets, dtype=np.int64), idx


@dataclass
class SampleMetrics:
    """One file's results."""

    sample: str
    info: AlignmentInfo
    flagstat: np.ndarray  # (2, fields): QC-passed, QC-failed
    mapq: np.ndarray  # (256,)
    coverage: np.ndarray  # (targets, 1 + thresholds): summed depth, bases at >= each threshold
    seconds: float = 0.0


def measure(info: AlignmentInfo, targets: Targets, sample: str, min_mapq: int = 0) -> SampleMetrics:
    """Stream one file once: flagstat counts, MAPQ histogram and depth over the targets."""
    t0 = time.perf_counter()
    for c, length in zip(targets.contigs, targets.lengths, strict=True):
        if c in info.contigs and info.lengths[info.contigs.index(c)] != length:
            raise InputError(f"{info.path}: contig {c} has length {info.lengths[info.contigs.index(c)]}, not {length}")
    starts, ends, offsets, index = targets.layout_for(info)
    thresholds = np.array(THRESHOLDS, dtype=np.int64)
    lengths = np.array(info.lengths, dtype=np.int64)
    state, ring, cursor = new_state(), np.zeros(MAX_READ_SPAN, dtype=np.int32), np.zeros(1, dtype=np.int64)
    flagstat = np.zeros((2, len(FLAGSTAT_FIELDS)), dtype=np.int64)
    mapq = np.zeros(256, dtype=np.int64)
    acc = np.zeros((starts.shape[0], 1 + len(THRESHOLDS)), dtype=np.int64)
    for ch in chunks(info):
        status = accumulate(
            ch.n, ch.tid, ch.pos, ch.flag, ch.mapq, ch.mtid, ch.cigar_end, ch.cigar, min_mapq, lengths,
            starts, ends, offsets, thresholds, state, ring, cursor, flagstat, mapq, acc,
        )  # fmt: skip
        if status == UNSORTED:
            raise InputError(
                f"{info.path}: not coordinate-sorted (a read at {info.contigs[state[4]]}:{state[5] + 1} comes "
                f"after later ones) although its header says so; sort it with `samtools sort`"
            )
        if status == SPAN_TOO_LONG:
            raise InputError(f"{info.path}: a read spans over {MAX_READ_SPAN:,} reference bases; not supported")
        assert status == OK
    finish(state, ring, lengths, starts, ends, offsets, cursor, thresholds, acc)
    coverage = np.zeros_like(acc)
    coverage[index] = acc
    return SampleMetrics(sample, info, flagstat, mapq, coverage, time.perf_counter() - t0)


def read_sample_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """A tab-separated ``file<TAB>sample_id`` table (file as given, or its name)."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1]:
            raise InputError(f"{path}, line {n}: expected FILE<TAB>SAMPLE_ID")
        out[parts[0]] = parts[1]
    return out


def sample_of(info: AlignmentInfo, mapping: dict[str, str]) -> str:
    """The file's sample: from the mapping file if it names the file, else its read groups' one SM."""
    for key in (str(info.path), info.path.name):
        if key in mapping:
            return mapping[key]
    if len(info.samples) == 1:
        return info.samples[0]
    if not info.samples:
        raise InputError(
            f"{info.path}: no read group names a sample (@RG SM:); give a mapping file with --sample-map "
            "(FILE<TAB>SAMPLE_ID)"
        )
    raise InputError(
        f"{info.path}: read groups of {len(info.samples)} samples ({', '.join(info.samples[:4])}); give one file "
        "per sample, or name its sample with --sample-map"
    )


@dataclass
class BamIngestReport:
    dataset: str
    n_samples: int
    n_targets: int
    n_reads: int
    n_phenotyped: int
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)


def ingest_bams(
    store: Store,
    dataset: str,
    files: Sequence[str],
    targets_bed: str | None = None,
    reference: str | None = None,
    phenotypes: str | None = None,
    sample_map: str | None = None,
    bin_size: int = DEFAULT_BIN,
    min_mapq: int = 0,
    on_file: Callable[[int, str], None] | None = None,
) -> BamIngestReport:
    """Ingest aligned-read ``files`` (one sample each) into ``dataset`` of ``store``; see the module text."""
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    check_dataset_name(dataset)
    if not files:
        raise InputError("give at least one --bam file")
    store.check_writable()
    infos = [inspect(f, reference) for f in files]  # every header checked before any long work
    mapping = read_sample_map(sample_map) if sample_map else {}
    samples = [sample_of(i, mapping) for i in infos]
    seen: dict[str, Path] = {}
    for s, i in zip(samples, infos, strict=True):
        if s in seen:
            raise InputError(f"{i.path}: sample {s!r} is also in {seen[s]}; give one file per sample")
        seen[s] = i.path
    pheno_table, unmatched = None, 0
    pheno = read_phenotypes(phenotypes) if phenotypes is not None else None
    if pheno is not None:
        known = set(pheno.table.column("sample_id").to_pylist())
        for s, i in zip(samples, infos, strict=True):
            if s not in known:
                raise InputError(
                    f"{i.path}: its sample {s!r} (from its read groups) matches no sample of {phenotypes}; "
                    "fix the read group's SM or map the file with --sample-map"
                )
        pheno_table, unmatched = match_samples(pheno, samples, "the alignment files")
    first = infos[0]
    targets = (
        Targets.from_bed(targets_bed, first.contigs, first.lengths)
        if targets_bed
        else Targets.bins(first.contigs, first.lengths, bin_size)
    )
    results = []
    for k, info in enumerate(infos):
        if on_file is not None:
            on_file(k, str(info.path))
        results.append(measure(info, targets, samples[k], min_mapq))
    store.clean_up()  # what a killed ingest left
    tmp = store.new_temporary(dataset)
    try:
        _write_tables(tmp, targets, results, pheno_table)
        n_phenotyped = pheno_table.num_rows if pheno_table is not None else 0
        report = BamIngestReport(
            dataset, len(results), len(targets.start), int(sum(r.flagstat.sum(axis=0)[0] for r in results)),
            n_phenotyped, samples=samples,
        )  # fmt: skip
        report.seconds = time.perf_counter() - started
        software = software_versions()
        ingests: list[dict[str, Any]] = [
            {
                "kind": "reads",
                "path": str(r.info.path.resolve()),
                "sha256": r.info.sha256,
                "bytes": r.info.bytes,
                "software": software,
                "started_at": started_at,
                "seconds": r.seconds,
                "details": {
                    "sample": r.sample,
                    "format": r.info.format,
                    "records": r.info.records,
                    "targets": targets.source,
                    "min_mapq": min_mapq,
                    "reference": reference,
                },
            }
            for r in results
        ]
        if pheno is not None and phenotypes is not None:
            details = {"matched": n_phenotyped, "unmatched": unmatched}
            ingests.append(phenotype_record(phenotypes, pheno.table.num_rows, details, software, started_at))
        store.commit_dataset(
            dataset,
            tmp,
            {
                "kind": "reads",
                "n_samples": len(results),
                "n_variants": 0,
                "n_records": report.n_reads,
                "n_phenotyped": n_phenotyped,
                "chromosomes": sorted(set(targets.chrom.tolist()), key=targets.contigs.index),
                "phenotype_columns": {
                    f.name: str(f.type) for f in (pheno.table.schema if pheno else []) if f.name != "sample_id"
                },
            },
            ingests,
        )
    except BaseException:
        store.discard_temporary(tmp)
        raise
    return report


def _write_tables(tmp: Path, targets: Targets, results: list[SampleMetrics], pheno_table: pa.Table | None) -> None:
    n = len(results)
    samples = [r.sample for r in results]
    phenotyped = set(pheno_table.column("sample_index").to_pylist()) if pheno_table is not None else set()
    if pheno_table is not None:
        pq.write_table(pheno_table, tmp / "phenotypes.parquet")
    pq.write_table(
        pa.table(
            [
                pa.array(range(n), pa.int32()),
                pa.array(samples, pa.string()),
                pa.array([i in phenotyped for i in range(n)]),
            ],
            schema=SAMPLES_SCHEMA,
        ),
        tmp / "samples.parquet",
    )
    reads: dict[str, Any] = {
        "sample_index": pa.array(range(n), pa.int32()),
        "sample_id": pa.array(samples, pa.string()),
        "file": pa.array([str(r.info.path.resolve()) for r in results]),
        "format": pa.array([r.info.format for r in results]),
        "reference": pa.array([r.info.reference for r in results], pa.string()),
        "sha256": pa.array([r.info.sha256 for r in results]),
    }
    for j, name in enumerate(FLAGSTAT_FIELDS):
        reads[name] = pa.array([int(r.flagstat[0, j]) for r in results], pa.int64())
    for j, name in enumerate(FLAGSTAT_FIELDS):
        reads[f"qcfail_{name}"] = pa.array([int(r.flagstat[1, j]) for r in results], pa.int64())
    pq.write_table(pa.table(reads), tmp / "reads.parquet")
    hist = np.stack([r.mapq for r in results])
    s_idx, q_idx = np.nonzero(hist)
    pq.write_table(
        pa.table(
            {
                "sample_index": pa.array(s_idx.astype(np.int32)),
                "mapq": pa.array(q_idx.astype(np.int32)),
                "reads": pa.array(hist[s_idx, q_idx].astype(np.int64)),
            }
        ),
        tmp / "mapq.parquet",
    )
    m = len(targets.start)
    pq.write_table(
        pa.table(
            {
                "target": pa.array(np.arange(m, dtype=np.int32)),
                "chrom": pa.array(targets.chrom.tolist(), pa.string()),
                "start": pa.array(targets.start),
                "end": pa.array(targets.end),
                "name": pa.array(targets.name.tolist(), pa.string()),
            }
        ),
        tmp / "targets.parquet",
    )
    cov = np.stack([r.coverage for r in results])  # (samples, targets, 1 + thresholds)
    bases = (targets.end - targets.start).astype(np.int64)
    table: dict[str, Any] = {
        "sample_index": pa.array(np.repeat(np.arange(n, dtype=np.int32), m)),
        "target": pa.array(np.tile(np.arange(m, dtype=np.int32), n)),
        "bases": pa.array(np.tile(bases, n)),
        "sum_depth": pa.array(cov[:, :, 0].reshape(-1)),
        "mean_depth": pa.array((cov[:, :, 0] / bases[None, :]).reshape(-1)),
    }
    for h, t in enumerate(THRESHOLDS):
        table[f"bases_ge_{t}x"] = pa.array(cov[:, :, 1 + h].reshape(-1))
    pq.write_table(pa.table(table), tmp / "coverage.parquet")
