"""ingest-bam: what it stores, and bad input (each a clear error naming the file; nothing half-written)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pysam
import pytest

from better.engine.errors import InputError
from better.genomics.ingest_bam import ingest_bams
from better.genomics.store import Store


def bams(bam_cohort: Path, station: str = "milano") -> list[str]:
    return sorted(str(p) for p in (bam_cohort / station).glob("*.bam"))


def nothing_written(store: Store) -> None:
    assert "reads" not in store.dataset_names()
    assert not list((store.path / "datasets").glob(".ingest-*"))


def test_ingest_bam__stores_metrics_per_sample_and_target(store: Store, bam_cohort: Path, small_cohort: Path) -> None:
    files = bams(bam_cohort)
    report = ingest_bams(
        store,
        "reads",
        files,
        targets_bed=str(bam_cohort / "targets.bed"),
        phenotypes=str(small_cohort / "milano.pheno.tsv"),
    )
    assert report.n_samples == 6 and report.n_targets == 24 and report.n_phenotyped == 6
    ds = store.dataset("reads")
    assert ds.kind == "reads"
    reads = ds.table("reads").to_pydict()
    assert reads["sample_id"] == [Path(f).stem for f in files]
    assert all(t > 0 for t in reads["total"]) and all(len(h) == 64 for h in reads["sha256"])
    cov = ds.table("coverage")
    assert cov.num_rows == 6 * 24
    assert np.all(np.asarray(cov.column("bases_ge_10x")) >= np.asarray(cov.column("bases_ge_20x")))
    with store.catalog() as con:
        kinds = con.execute("SELECT source_kind, count(*) FROM ingests WHERE dataset = 'reads' GROUP BY 1").fetchall()
        views = con.execute("SELECT count(*) FROM coverage_reads").fetchone()
    assert dict(kinds) == {"reads": 6, "phenotypes": 1}
    assert views == (6 * 24,)


def test_ingest_bam__bins_without_a_bed(store: Store, bam_cohort: Path) -> None:
    report = ingest_bams(store, "reads", bams(bam_cohort)[:1], bin_size=1_000_000)
    header = pysam.AlignmentFile(bams(bam_cohort)[0]).header
    assert report.n_targets == sum(-(-length // 1_000_000) for length in header.lengths)


def test_ingest_bam__unindexed_file(store: Store, bam_cohort: Path, tmp_path: Path) -> None:
    copy = tmp_path / "no-index.bam"
    shutil.copy(bams(bam_cohort)[0], copy)
    with pytest.raises(InputError, match=r"no-index.bam: no index .*samtools index"):
        ingest_bams(store, "reads", [str(copy)])
    nothing_written(store)


def test_ingest_bam__unsorted_file(store: Store, bam_cohort: Path, tmp_path: Path) -> None:
    src = pysam.AlignmentFile(bams(bam_cohort)[0])
    out = tmp_path / "unsorted.bam"
    with pysam.AlignmentFile(str(out), "wb", header=src.header) as f:
        records = list(src.fetch(until_eof=True))
        records[10], records[200] = records[200], records[10]
        for r in records:
            f.write(r)
    shutil.copy(f"{bams(bam_cohort)[0]}.bai", f"{out}.bai")  # a stale index; the header claims coordinate order
    with pytest.raises(InputError, match=r"unsorted.bam: not coordinate-sorted.*samtools sort"):
        ingest_bams(store, "reads", [str(out)])
    nothing_written(store)


def test_ingest_bam__header_not_sorted(store: Store, bam_cohort: Path, tmp_path: Path) -> None:
    src = pysam.AlignmentFile(bams(bam_cohort)[0])
    header = src.header.to_dict()
    header["HD"]["SO"] = "unsorted"
    out = tmp_path / "so.bam"
    with pysam.AlignmentFile(str(out), "wb", header=header) as f:
        for r in src.fetch(until_eof=True):
            f.write(pysam.AlignedSegment.from_dict(r.to_dict(), f.header))
    pysam.index(str(out))
    with pytest.raises(InputError, match=r"so.bam: not coordinate-sorted \(the header says SO:unsorted\)"):
        ingest_bams(store, "reads", [str(out)])


def test_ingest_bam__truncated_file(store: Store, bam_cohort: Path, tmp_path: Path) -> None:
    src = Path(bams(bam_cohort)[0])
    for cut in (40, src.stat().st_size // 2, src.stat().st_size - 28):  # header, a block, the EOF marker
        out = tmp_path / f"cut{cut}.bam"
        out.write_bytes(src.read_bytes()[:cut])
        shutil.copy(f"{src}.bai", f"{out}.bai")
        with pytest.raises(InputError, match=rf"cut{cut}.bam: (truncated|cannot read the BAM header)"):
            ingest_bams(store, "reads", [str(out), *bams(bam_cohort)[1:]])
        nothing_written(store)


def test_ingest_bam__read_groups_that_match_no_sample(store: Store, bam_cohort: Path, small_cohort: Path) -> None:
    other = bams(bam_cohort, "nijmegen")[0]
    with pytest.raises(InputError, match=rf"{Path(other).name}: its sample '\w+' .* matches no sample of"):
        ingest_bams(store, "reads", [*bams(bam_cohort)[:2], other], phenotypes=str(small_cohort / "milano.pheno.tsv"))
    nothing_written(store)


def test_ingest_bam__sample_map_and_duplicate_samples(store: Store, bam_cohort: Path, tmp_path: Path) -> None:
    files = bams(bam_cohort)[:2]
    with pytest.raises(InputError, match="is also in"):
        ingest_bams(store, "reads", [files[0], files[0]])
    mapping = tmp_path / "map.tsv"
    mapping.write_text(f"{Path(files[0]).name}\tP1\n{files[1]}\tP2\n")
    report = ingest_bams(store, "reads", files, sample_map=str(mapping))
    assert report.samples == ["P1", "P2"]


def test_ingest_bam__cram_needs_its_reference(store: Store, bam_cohort: Path, tmp_path: Path) -> None:
    ref = str(bam_cohort / "reference.fa")
    src = pysam.AlignmentFile(bams(bam_cohort)[0])
    cram = tmp_path / "s.cram"
    with pysam.AlignmentFile(str(cram), "wc", header=src.header, reference_filename=ref) as f:
        for r in src.fetch(until_eof=True):
            f.write(r)
    pysam.index(str(cram))
    with pytest.raises(
        InputError, match=r"s.cram: a CRAM file is decoded against its reference; give it with --reference"
    ):
        ingest_bams(store, "reads", [str(cram)])
    from_cram = ingest_bams(store, "cram", [str(cram)], targets_bed=str(bam_cohort / "targets.bed"), reference=ref)
    from_bam = ingest_bams(store, "bam", bams(bam_cohort)[:1], targets_bed=str(bam_cohort / "targets.bed"))
    assert from_cram.n_reads == from_bam.n_reads
    a, b = store.dataset("cram"), store.dataset("bam")
    for table, skip in (("coverage", ()), ("reads", ("file", "format", "reference", "sha256")), ("mapq", ())):
        ta, tb = a.table(table).to_pydict(), b.table(table).to_pydict()
        assert {k: v for k, v in ta.items() if k not in skip} == {k: v for k, v in tb.items() if k not in skip}


def test_ingest_bam__not_an_alignment_file(store: Store, small_cohort: Path) -> None:
    with pytest.raises(InputError, match="not a BAM or CRAM file"):
        ingest_bams(store, "reads", [str(small_cohort / "milano.pheno.tsv")])
    with pytest.raises(InputError, match="no such file"):
        ingest_bams(store, "reads", ["/nonexistent.bam"])
