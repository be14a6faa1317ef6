"""Aligned reads against samtools on the synthetic BAMs: flagstat, depth -a, bedcov, mpileup; then the
same numbers through three station servers (COVERAGE, READS, PILEUP, secure aggregation on)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from better.engine.kernels.read_metrics import FLAGSTAT_FIELDS, THRESHOLDS
from better.genomics.ingest_bam import ingest_bams
from better.genomics.pileup import pileup_counts
from better.genomics.store import Store
from better.query.federation import Federation
from better.query.remote import StationClient, StationError
from better.station_api.auth import new_token
from better.station_api.config import Policy, StationConfig, read_config, write_config
from better.station_api.launch import station_process
from tests.validation.conftest import needs

pytestmark = needs("samtools")
STATIONS = ("milano", "nijmegen", "barcelona")
#: samtools flagstat -O tsv line names, in FLAGSTAT_FIELDS order
FLAGSTAT_LINES = (
    "total (QC-passed reads + QC-failed reads)",
    "primary",
    "secondary",
    "supplementary",
    "duplicates",
    "primary duplicates",
    "mapped",
    "primary mapped",
    "paired in sequencing",
    "read1",
    "read2",
    "properly paired",
    "with itself and mate mapped",
    "singletons",
    "with mate mapped to a different chr",
    "with mate mapped to a different chr (mapQ>=5)",
)


def samtools(*args: str) -> str:
    return subprocess.run(["samtools", *args], check=True, capture_output=True, text=True).stdout


def all_bams(bam_cohort: Path) -> list[Path]:
    return sorted(p for s in STATIONS for p in (bam_cohort / s).glob("*.bam"))


def targets(bam_cohort: Path) -> list[tuple[str, int, int]]:
    return [
        (c, int(s), int(e))
        for c, s, e, _ in (line.split("\t") for line in (bam_cohort / "targets.bed").read_text().splitlines())
    ]


@pytest.fixture(scope="module")
def stores(bam_cohort: Path, small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Store]:
    root = tmp_path_factory.mktemp("reads")
    out = {}
    for s in STATIONS:
        store = Store.create(root / s)
        files = sorted(str(p) for p in (bam_cohort / s).glob("*.bam"))
        ingest_bams(
            store,
            "reads",
            files,
            targets_bed=str(bam_cohort / "targets.bed"),
            phenotypes=str(small_cohort / f"{s}.pheno.tsv"),
        )
        out[s] = store
    return out


def test_flagstat__equals_samtools_flagstat(stores: dict[str, Store], bam_cohort: Path) -> None:
    for s, store in stores.items():
        table = store.dataset("reads").table("reads").to_pylist()
        for row in table:
            lines = {
                name: (int(p), int(f))
                for p, f, name in (
                    line.split("\t") for line in samtools("flagstat", "-O", "tsv", row["file"]).splitlines()
                )
                if "%" not in p
            }
            for field, line in zip(FLAGSTAT_FIELDS, FLAGSTAT_LINES, strict=True):
                assert (row[field], row[f"qcfail_{field}"]) == lines[line], (s, row["sample_id"], field)


def test_depth__equals_samtools_depth_and_bedcov(stores: dict[str, Store], bam_cohort: Path) -> None:
    bed = targets(bam_cohort)
    for store in stores.values():
        ds = store.dataset("reads")
        files = ds.table("reads").column("file").to_pylist()
        cov = pl.from_arrow(ds.table("coverage"))
        assert isinstance(cov, pl.DataFrame)
        for k, f in enumerate(files):
            mine = cov.filter(pl.col("sample_index") == k).sort("target")
            depth_out = samtools("depth", "-a", "-b", str(bam_cohort / "targets.bed"), f)
            depth = {(c, int(p)): int(d) for c, p, d in (line.split("\t") for line in depth_out.splitlines())}
            bedcov = samtools("bedcov", "-j", "-d", "20", str(bam_cohort / "targets.bed"), f).splitlines()
            for t, ((chrom, start, end), row, bc) in enumerate(
                zip(bed, mine.iter_rows(named=True), bedcov, strict=True)
            ):
                d = np.array([depth[(chrom, p)] for p in range(start + 1, end + 1)])
                assert row["sum_depth"] == d.sum() == int(bc.split("\t")[4]), (f, t)
                assert row["bases_ge_20x"] == int(bc.split("\t")[5])
                assert [row[f"bases_ge_{th}x"] for th in THRESHOLDS] == [int((d >= th).sum()) for th in THRESHOLDS]
                assert row["mean_depth"] == pytest.approx(d.mean(), rel=1e-12)


#: samtools mpileup as PILEUP counts (docs/reads.md); -q and -Q follow
MPILEUP = ("mpileup", "-B", "-A", "-x", "--ff", "UNMAP,SECONDARY,QCFAIL,DUP")


def mpileup_counts(path: str, chrom: str, pos: int, bq: int, mq: int, reference: Path) -> list[int]:
    """A, C, G, T, N, deletions from ``samtools mpileup -B -A -x`` at one position."""
    out = samtools(*MPILEUP, "-q", str(mq), "-Q", str(bq), "-f", str(reference), "-r", f"{chrom}:{pos}-{pos}", path)
    if not out.strip():
        return [0] * 6
    _, _, ref, depth, bases, *_ = out.rstrip("\n").split("\t")
    return count_bases(ref, bases) if int(depth) else [0] * 6


def mpileup_samples(
    paths: list[str], chrom: str, positions: list[int], bq: int, mq: int, reference: Path, tmp: Path
) -> np.ndarray:
    """(positions, files, 6): A, C, G, T, N, deletions per position and file, from one ``samtools mpileup``
    over all the files (a group of columns per file)."""
    sites = tmp / "sites.txt"
    sites.write_text("".join(f"{chrom}\t{p}\n" for p in positions))
    out = samtools(*MPILEUP, "-q", str(mq), "-Q", str(bq), "-f", str(reference), "-l", str(sites), *paths)
    counts = np.zeros((len(positions), len(paths), 6), dtype=np.int64)
    row = {p: i for i, p in enumerate(positions)}
    for line in out.splitlines():  # positions no read covers are left out: zeros
        _, pos, ref, *columns = line.split("\t")
        assert len(columns) == 3 * len(paths)
        for k in range(len(paths)):
            depth, bases = columns[3 * k], columns[3 * k + 1]
            if int(depth):
                counts[row[int(pos)], k] = count_bases(ref, bases)
    return counts


def count_bases(ref: str, bases: str) -> list[int]:
    """A, C, G, T, N, deletions in one mpileup base column."""
    counts = [0] * 6
    i = 0
    while i < len(bases):
        ch = bases[i]
        if ch == "^":
            i += 2
            continue
        if ch == "$":
            i += 1
            continue
        if ch in "+-":
            m = re.match(r"[+-](\d+)", bases[i:])
            assert m is not None
            i += len(m.group(0)) + int(m.group(1))
            continue
        if ch in "*#":
            counts[5] += 1
        else:
            b = ref.upper() if ch in ".," else ch.upper()
            counts["ACGT".index(b) if b in "ACGT" else 4] += 1
        i += 1
    return counts


def pileup_positions(bam_cohort: Path) -> list[int]:
    """Positions in the targets, SNPs of the cohort among them."""
    bed = targets(bam_cohort)
    return [start + off for _, start, _ in bed[::4] for off in (1, 57, 203)]


@pytest.mark.parametrize(("bq", "mq"), [pytest.param(13, 0, marks=pytest.mark.slow), (25, 20)])
def test_pileup__equals_samtools_mpileup(bam_cohort: Path, bq: int, mq: int, tmp_path: Path) -> None:
    files = all_bams(bam_cohort)[::3]
    positions = pileup_positions(bam_cohort)
    chrom = targets(bam_cohort)[0][0]
    want = mpileup_samples([str(f) for f in files], chrom, positions, bq, mq, bam_cohort / "reference.fa", tmp_path)
    for k, f in enumerate(files):
        got = pileup_counts(str(f), None, [chrom] * len(positions), positions, bq, mq)
        assert got.tolist() == want[:, k].tolist(), f


# -- through the station servers -------------------------------------------------------------------------
@dataclass
class LiveReads:
    fed: Federation
    stores: dict[str, Store]


@pytest.fixture(scope="module")
def live_reads(stores: dict[str, Store]) -> Iterator[LiveReads]:
    clients = []
    with ExitStack() as stack:
        for name, store in stores.items():
            token, record = new_token("ana", "researcher")
            write_config(store.path, StationConfig(name=name, policy=Policy(min_cell_count=1), tokens=[record]))
            url = stack.enter_context(station_process(store.path, threads=1))
            clients.append(StationClient(name, url, token, timeout=120))
        yield LiveReads(Federation(clients, secure_aggregation="on"), stores)


def test_federated_coverage__equals_samtools_depth_over_all_samples(live_reads: LiveReads, bam_cohort: Path) -> None:
    bed = targets(bam_cohort)
    region = f"{bed[0][0]}:{bed[2][1] + 1}-{bed[5][2]}"
    frame = live_reads.fed.query(f"COVERAGE {region}")
    assert live_reads.fed.last_plan is not None and live_reads.fed.last_plan.secure
    wanted = bed[2:6]
    assert [(r["#CHROM"], r["START"] - 1, r["END"]) for r in frame.iter_rows(named=True)] == wanted
    files = all_bams(bam_cohort)
    for (chrom, start, end), row in zip(wanted, frame.iter_rows(named=True), strict=True):
        per_sample = []
        for f in files:
            out = samtools("depth", "-a", "-r", f"{chrom}:{start + 1}-{end}", str(f))
            per_sample.append(np.array([int(line.split("\t")[2]) for line in out.splitlines()]))
        d = np.stack(per_sample)
        assert row["SAMPLES"] == len(files)
        assert row["MEAN_DEPTH"] == pytest.approx(d.mean(), rel=1e-9)
        for th in THRESHOLDS:
            assert row[f"FRAC_BASES_GE_{th}X"] == pytest.approx((d >= th).mean(), rel=1e-9)
            assert row[f"FRAC_SAMPLES_GE_{th}X"] == pytest.approx((d.mean(axis=1) >= th).mean(), rel=1e-9)


def test_federated_reads__equals_summed_samtools_flagstat(live_reads: LiveReads, bam_cohort: Path) -> None:
    frame = live_reads.fed.query("READS")
    files = all_bams(bam_cohort)
    total = {line: 0 for line in FLAGSTAT_LINES}
    for f in files:
        for p, _, name in (line.split("\t") for line in samtools("flagstat", "-O", "tsv", str(f)).splitlines()):
            if name in total:
                total[name] += int(p)
    row = frame.row(0, named=True)
    assert row["SAMPLES"] == len(files)
    for field, line in zip(FLAGSTAT_FIELDS, FLAGSTAT_LINES, strict=True):
        assert row[field.upper()] == total[line], field
    assert row["MAPPED_PCT"] == pytest.approx(100 * total["mapped"] / total[FLAGSTAT_LINES[0]])


def test_federated_pileup__equals_summed_samtools_mpileup(live_reads: LiveReads, bam_cohort: Path) -> None:
    positions = pileup_positions(bam_cohort)[:6]
    chrom = targets(bam_cohort)[0][0]
    text = "PILEUP " + ", ".join(f"{chrom}:{p}" for p in positions) + " MIN_BASE_QUALITY 20 MIN_MAPPING_QUALITY 10"
    frame = live_reads.fed.query(text)
    files = all_bams(bam_cohort)
    for p, row in zip(positions, frame.iter_rows(named=True), strict=True):
        # one file at a time, with -r: independent of mpileup_samples' multi-file reading
        expected = np.sum(
            [mpileup_counts(str(f), chrom, p, 20, 10, bam_cohort / "reference.fa") for f in files], axis=0
        )
        assert [row[c] for c in ("A", "C", "G", "T", "N", "DEL")] == expected.tolist(), p
        assert row["DEPTH"] == expected.sum()


def test_federated_reads__sample_filter_and_withholding(live_reads: LiveReads) -> None:
    everyone = live_reads.fed.query("READS").row(0, named=True)
    women = live_reads.fed.query("READS WHERE sex = 2").row(0, named=True)
    men = live_reads.fed.query("READS WHERE sex = 1").row(0, named=True)
    assert women["SAMPLES"] + men["SAMPLES"] == everyone["SAMPLES"]
    assert women["TOTAL"] + men["TOTAL"] == everyone["TOTAL"]


def test_federated_pileup_and_reads__withhold_and_refuse_under_the_min_count(
    live_reads: LiveReads, bam_cohort: Path, tmp_path: Path
) -> None:
    """With min_cell_count 5, a position where the stations together see a base in 1..4 samples is withheld
    (and the others are not: judged on the totals, under secure aggregation); a sample filter leaving 1..4
    samples in all is refused. The expectation comes from samtools and the stations' configuration."""
    chrom = targets(bam_cohort)[0][0]
    positions = pileup_positions(bam_cohort)
    # every sample of every station, at PILEUP's default qualities (-Q 13 -q 0: docs/query-language.md)
    counts = mpileup_samples(
        [str(f) for f in all_bams(bam_cohort)], chrom, positions, 13, 0, bam_cohort / "reference.fa", tmp_path
    )
    # per position: the samples with any read there, and with each of A C G T N DEL (docs/privacy.md,
    # small_cells: "1..k - 1 samples are behind a target or a base")
    samples_behind = np.concatenate([(counts.sum(axis=2) > 0).sum(axis=1)[:, None], (counts > 0).sum(axis=1)], 1)
    ages = np.concatenate(
        [
            st.dataset("reads").phenotypes().column("age").to_numpy(zero_copy_only=False)
            for st in live_reads.stores.values()
        ]
    )
    oldest = np.sort(ages[np.isfinite(ages)])[-3:]  # three people are older than the next one down
    try:
        for name, store in live_reads.stores.items():  # the servers pick policy edits up without a restart
            write_config(store.path, StationConfig(name=name, policy=Policy(min_cell_count=5), tokens=_tokens(store)))
        (k,) = {read_config(store.path).policy.min_cell_count for store in live_reads.stores.values()}
        small = ((samples_behind > 0) & (samples_behind < k)).any(axis=1)
        assert small.any() and not small.all()
        frame = live_reads.fed.query("PILEUP " + ", ".join(f"{chrom}:{p}" for p in positions))
        assert frame["WITHHELD"].to_list() == small.tolist()
        assert frame.filter(pl.col("WITHHELD"))["DEPTH"].null_count() == int(small.sum())
        with pytest.raises(StationError, match="refused by policy"):
            live_reads.fed.query(f"READS WHERE age >= {oldest[0]}")
    finally:
        for name, store in live_reads.stores.items():
            write_config(store.path, StationConfig(name=name, policy=Policy(min_cell_count=1), tokens=_tokens(store)))


def _tokens(store: Store) -> list:
    return read_config(store.path).tokens
