"""``better ingest``: stream a VCF/BCF (and a phenotype table) into a station's store.

Memory is bounded by the parser's chunk plus one Parquet row group, never by the file. Everything is
written into a temporary folder and committed atomically by :meth:`better.genomics.store.Store.commit_dataset`.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from better.genomics.checksums import sha256_file
from better.genomics.phenotypes import match_samples, read_phenotypes
from better.genomics.schema import SAMPLES_SCHEMA, variants_schema
from better.genomics.store import Store, check_dataset_name
from better.genomics.vcf import detect_format, open_vcf

#: A row group is flushed at this many bytes of packed genotypes, or at a chromosome change.
ROW_GROUP_BYTES = 32 << 20
ROW_GROUP_MAX_ROWS = 1 << 16


@dataclass
class IngestReport:
    """What an ingest wrote, as printed by the CLI and recorded in the catalog."""

    dataset: str
    n_samples: int
    n_records: int
    n_variants: int
    n_multiallelic_records: int
    chromosomes: list[str]
    n_phenotyped: int = 0
    n_phenotype_rows_unmatched: int = 0
    phenotype_columns: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    sha256: str = ""
    dosage_field: str | None = None


def software_versions() -> dict[str, str]:
    """Versions of BETTER and the libraries that shape what is stored."""
    out = {"python": platform.python_version()}
    for dist in ("better-genomics", "numpy", "numba", "pyarrow", "duckdb", "cyvcf2", "isal"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def phenotype_record(
    path: str, rows: int, details: dict[str, Any], software: dict[str, str], started_at: datetime
) -> dict[str, Any]:
    """The catalog's provenance row of a phenotype table read by an ingest."""
    return {
        "kind": "phenotypes",
        "path": os.path.abspath(path),
        "sha256": sha256_file(path),
        "bytes": os.path.getsize(path),
        "software": software,
        "started_at": started_at,
        "seconds": 0.0,
        "details": {"rows": rows, **details},
    }


class RowGroupWriter:
    """Writes batches to ``variants.parquet`` in row groups that never span two chromosomes."""

    def __init__(self, path: Path, n_samples: int, dosages: bool = False) -> None:
        schema = variants_schema(n_samples, dosages)
        self._writer = pq.ParquetWriter(
            path,
            schema,
            # dosages take LZ4: on imputed values zstd saves a quarter of the bytes but inflates at 0.4 GB/s,
            # which would cost more than every analysis of them (LZ4: 2.6 GB/s, measured)
            compression={name: "lz4" if name == "dosages" else "zstd" for name in schema.names},
            compression_level={name: 1 for name in schema.names if name != "dosages"},
            use_dictionary=["chrom", "ref", "alt", "filter"],
            write_statistics=["chrom", "pos", "record"],
        )
        self._pending: list[pa.RecordBatch] = []
        self._bytes = 0
        self._rows = 0
        self._chrom: str | None = None
        self._row_bytes = sum(schema.field(c).type.byte_width for c in ("genotypes", "dosages") if c in schema.names)
        self.chromosomes: list[str] = []
        self.n_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        chrom = batch.column("chrom")
        runs = pa.compute.run_end_encode(chrom) if batch.num_rows else None
        start = 0
        if runs is not None:
            for end, value in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
                if value != self._chrom:
                    self.flush()
                    self._chrom = value
                    self.chromosomes.append(value)
                self._append(batch.slice(start, end - start))
                start = end

    def _append(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            room = min(ROW_GROUP_MAX_ROWS - self._rows, -(-(ROW_GROUP_BYTES - self._bytes) // self._row_bytes))
            piece = batch.slice(0, max(room, 1))
            batch = batch.slice(piece.num_rows)
            self._pending.append(piece)
            self._rows += piece.num_rows
            self._bytes += piece.num_rows * self._row_bytes
            if self._bytes >= ROW_GROUP_BYTES or self._rows >= ROW_GROUP_MAX_ROWS:
                self.flush()

    def flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending), row_group_size=self._rows)
            self.n_rows += self._rows
            self._pending, self._bytes, self._rows = [], 0, 0

    def close(self) -> None:
        self.flush()
        self._writer.close()


@dataclass
class VariantSource:
    """An opened variant file (or fileset) ready to be ingested: what :func:`ingest_variants` reads.

    Attributes
    ----------
    path
        The file whose hash identifies the source (the VCF, the ``.bed``, ``.pgen`` or ``.bgen``).
    format
        Short format name recorded in the catalog (``vcf.gz``, ``bcf``, ``bed``, ``pgen``, ``bgen``).
    samples
        Sample IDs in file order.
    batches
        ``(batch, line)`` items following :func:`better.genomics.schema.variants_schema`, where ``line[i]``
        locates row ``i`` in the source for error messages.
    dosages
        Whether the batches carry a ``dosages`` column.
    companions
        Other files read (``.bim``, ``.fam``, ``.pvar``, ``.psam``, ``.sample``): recorded with their hashes.
    details
        Extra provenance for the catalog (e.g. which FORMAT field gave the dosages).
    """

    path: str
    format: str
    samples: list[str]
    batches: Iterable[tuple[pa.RecordBatch, Any]]
    dosages: bool = False
    companions: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def vcf_source(
    vcf: str,
    *,
    dosage: str = "auto",
    chunk_bytes: int = 32 << 20,
    on_progress: Callable[[int, int], None] | None = None,
) -> VariantSource:
    """A VCF/BCF as a :class:`VariantSource` (``dosage``: ``auto``, ``DS``, ``HDS``, ``GP`` or ``none``)."""
    fmt = detect_format(vcf)
    header, batches = open_vcf(vcf, chunk_bytes=chunk_bytes, on_progress=on_progress, dosage=dosage)
    details = {"dosage_field": header.dosage_field} if header.dosage_field else {}
    return VariantSource(vcf, fmt, header.samples, batches, header.dosage_field is not None, details=details)


def ingest_vcf(
    store: Store,
    dataset: str,
    vcf: str,
    phenotypes: str | None = None,
    *,
    dosage: str = "auto",
    chunk_bytes: int = 32 << 20,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Ingest a VCF/BCF (and optionally a phenotype TSV): :func:`ingest_variants` of :func:`vcf_source`.

    Parameters
    ----------
    store, dataset, phenotypes
        As for :func:`ingest_variants`.
    vcf
        ``.vcf``, ``.vcf.gz`` (BGZF or gzip) or ``.bcf``; records sorted by chromosome and position.
    dosage
        Which FORMAT field gives ALT dosages: ``auto`` (``DS``, else ``HDS``, else ``GP``, whichever the
        header declares first; none: hard calls only), one of those names, or ``none``.
    chunk_bytes
        Bytes of VCF text parsed at a time (bounds memory).
    on_progress
        Called with ``(bytes read, file size)`` while the VCF is read.

    Returns
    -------
    IngestReport
        Counts, chromosomes, the source hash and the time taken.
    """
    check_dataset_name(dataset)
    source = vcf_source(vcf, dosage=dosage, chunk_bytes=chunk_bytes, on_progress=on_progress)
    return ingest_variants(store, dataset, source, phenotypes)


def ingest_variants(
    store: Store,
    dataset: str,
    source: VariantSource,
    phenotypes: str | None = None,
) -> IngestReport:
    """Ingest an opened :class:`VariantSource` (and optionally a phenotype TSV) as dataset ``dataset``.

    Parameters
    ----------
    store
        An opened :class:`~better.genomics.store.Store`.
    dataset
        Name of the dataset to create or replace (replaced only if this ingest succeeds).
    source
        The variant file(s), e.g. from :func:`vcf_source`.
    phenotypes
        Optional tab-separated table, sample ID first (see :mod:`better.genomics.phenotypes`).

    Returns
    -------
    IngestReport
        Counts, chromosomes, the source hash and the time taken.
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    check_dataset_name(dataset)
    vcf, fmt = source.path, source.format
    store.check_writable()
    stop_hashing = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        vcf_hash: Future[str] = pool.submit(sha256_file, vcf, stop=stop_hashing)
        batches = source.batches
        samples = source.samples
        pheno_table = None
        unmatched = 0
        try:
            pheno = read_phenotypes(phenotypes) if phenotypes is not None else None
            if pheno is not None:
                pheno_table, unmatched = match_samples(pheno, samples, vcf)
        except BaseException:
            stop_hashing.set()
            raise
        try:
            store.clean_up()  # what a killed ingest left
            tmp = store.new_temporary(dataset)
        except BaseException:
            stop_hashing.set()
            raise
        try:
            writer = RowGroupWriter(tmp / "variants.parquet", len(samples), source.dosages)
            n_records = 0
            n_multi = 0
            # Parquet encoding and compression (Arrow, without the GIL) overlap the parsing of the next
            # batch: one batch is written at a time, in order, so memory grows by one batch at most.
            writing: Future[None] | None = None
            with ThreadPoolExecutor(max_workers=1) as write_pool:
                try:
                    for batch, _lines in batches:
                        alt_index = batch.column("alt_index")
                        n_records += int(pa.compute.sum(pa.compute.equal(alt_index, 1)).as_py() or 0)
                        n_multi += int(pa.compute.sum(pa.compute.equal(alt_index, 2)).as_py() or 0)
                        if writing is not None:
                            writing.result()
                        writing = write_pool.submit(writer.write, batch)
                    if writing is not None:
                        writing.result()
                finally:
                    if writing is not None:
                        wait([writing])  # never close the file under a write (an error is raised already)
                    writer.close()
            phenotyped = set()
            if pheno_table is not None:
                pq.write_table(pheno_table, tmp / "phenotypes.parquet")
                phenotyped = set(pheno_table.column("sample_index").to_pylist())
            pq.write_table(
                pa.table(
                    [
                        pa.array(range(len(samples)), pa.int32()),
                        pa.array(samples, pa.string()),
                        pa.array([i in phenotyped for i in range(len(samples))], pa.bool_()),
                    ],
                    schema=SAMPLES_SCHEMA,
                ),
                tmp / "samples.parquet",
            )
            report = IngestReport(
                dataset=dataset,
                n_samples=len(samples),
                n_records=n_records,
                n_variants=writer.n_rows,
                n_multiallelic_records=n_multi,
                chromosomes=writer.chromosomes,
                n_phenotyped=len(phenotyped),
                n_phenotype_rows_unmatched=unmatched,
                phenotype_columns={
                    f.name: str(f.type) for f in (pheno.table.schema if pheno else []) if f.name != "sample_id"
                },
                sha256=vcf_hash.result(),
                dosage_field=source.details.get("dosage_field"),
            )
            report.seconds = time.perf_counter() - started
            software = software_versions()
            ingests: list[dict[str, Any]] = [
                {
                    "kind": "variants",
                    "path": os.path.abspath(vcf),
                    "sha256": report.sha256,
                    "bytes": os.path.getsize(vcf),
                    "software": software,
                    "started_at": started_at,
                    "seconds": report.seconds,
                    "details": {
                        "records": n_records,
                        "variants": writer.n_rows,
                        "multiallelic_records": n_multi,
                        "samples": len(samples),
                        "format": fmt,
                        "dosages": source.dosages,
                        **source.details,
                    },
                }
            ]
            for companion in source.companions:
                ingests.append(
                    {
                        "kind": "variants-companion",
                        "path": os.path.abspath(companion),
                        "sha256": sha256_file(companion),
                        "bytes": os.path.getsize(companion),
                        "software": software,
                        "started_at": started_at,
                        "seconds": 0.0,
                        "details": {"of": os.path.abspath(vcf)},
                    }
                )
            if pheno is not None and phenotypes is not None:
                details = {"matched": len(phenotyped), "unmatched": unmatched, "columns": report.phenotype_columns}
                ingests.append(phenotype_record(phenotypes, pheno.table.num_rows, details, software, started_at))
            store.commit_dataset(
                dataset,
                tmp,
                {
                    "n_samples": len(samples),
                    "n_variants": writer.n_rows,
                    "n_records": n_records,
                    "n_phenotyped": len(phenotyped),
                    "chromosomes": writer.chromosomes,
                    "phenotype_columns": report.phenotype_columns,
                    "dosages": source.dosages,
                },
                ingests,
            )
        except BaseException:
            stop_hashing.set()
            store.discard_temporary(tmp)
            raise
    return report
