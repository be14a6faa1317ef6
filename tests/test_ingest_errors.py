"""Bad input gets a clear error naming the file and line, and leaves no partial dataset."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from better.engine.errors import BetterError, InputError, StoreError
from better.genomics.ingest import ingest_vcf
from better.genomics.store import DATASETS, Store
from tests.conftest import bgzip, write_text
from tests.zoo import ZOO, vcf

GOOD = ZOO["two_chromosomes"]


def assert_no_trace(store: Store, name: str = "ds") -> None:
    assert name not in store.dataset_names()
    leftovers = [p.name for p in (store.path / DATASETS).iterdir()]
    assert leftovers == [] or (leftovers == [name] and name in store.dataset_names())


def ingest_fails(
    store: Store, path: Path, *fragments: str, pheno: Path | None = None, kind: type[BetterError] = InputError
) -> str:
    with pytest.raises(kind) as info:
        ingest_vcf(store, "ds", str(path), str(pheno) if pheno else None)
    message = str(info.value)
    for f in fragments:
        assert f in message, message
    assert_no_trace(store)
    return message


def test_truncated_bgzf__missing_eof_marker(store: Store, tmp_path: Path, small_cohort: Path) -> None:
    data = (small_cohort / "milano.vcf.gz").read_bytes()
    cut = write_text(tmp_path / "cut.vcf.gz", "")
    cut.write_bytes(data[: len(data) // 2])
    ingest_fails(store, cut, "cut.vcf.gz", "truncated")


def test_truncated_plain_gzip__names_file(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "plain.vcf.gz"
    path.write_bytes(gzip.compress(GOOD.encode() * 1)[:-30])
    ingest_fails(store, path, "plain.vcf.gz", "truncated or corrupt")


def test_not_a_vcf__text(store: Store, tmp_path: Path) -> None:
    ingest_fails(store, write_text(tmp_path / "notes.vcf", "hello\nworld\n"), "notes.vcf", "not a VCF")


def test_not_a_vcf__binary(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "random.vcf"
    path.write_bytes(os.urandom(5000))
    ingest_fails(store, path, "random.vcf")


def test_vcf_record_without_gt__reads_as_missing_genotypes(store: Store, tmp_path: Path) -> None:
    text = vcf(["a", "b"], ["22\t100\t.\tA\tG\t.\t.\t.\tGT\t0/1\t1/1", "22\t200\t.\tA\tG\t.\t.\t.\tDP\t3\t4"])
    ingest_vcf(store, "ds", str(write_text(tmp_path / "nogt.vcf", text)))
    rows = store.dataset("ds").variants(columns=["pos", "n_missing"]).to_pylist()
    assert rows == [{"pos": 100, "n_missing": 0}, {"pos": 200, "n_missing": 2}]  # as bcftools reads it


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ("22\t100\t.\tA\tG\t.\t.\t.\tGT\t0/1", "fewer columns"),
        ("22\t100\t.\tA\tG\t.\t.\t.\tGT\t0/1\t1/1\t0/0", "more columns"),
        ("22\tabc\t.\tA\tG\t.\t.\t.\tGT\t0/1\t1/1", "POS"),
        ("22\t100\t.\tA\tG\t.\t.\t.\tGT\t0/x\t1/1", "malformed GT"),
        ("22\t100\t.\tA\tG\t.\t.\t.\tGT\t0/1/1\t1/1", "ploidy"),
        ("22\t100\t.\tA\tG\t.\t.\t.\tGT\t0/2\t1/1", "allele index"),
        ("22\t100\t.\tA\tG\tbad\t.\t.\tGT\t0/1\t1/1", "QUAL"),
    ],
)
def test_malformed_record__names_line_and_problem(store: Store, tmp_path: Path, record: str, fragment: str) -> None:
    text = vcf(["a", "b"], ["22\t50\t.\tA\tG\t.\t.\t.\tGT\t0/1\t1/1", record])
    ingest_fails(store, write_text(tmp_path / "bad.vcf", text), "bad.vcf", "line 12", fragment)


def test_unsorted__names_line(store: Store, tmp_path: Path) -> None:
    text = vcf(["a"], ["22\t500\t.\tA\tG\t.\t.\t.\tGT\t0/1", "22\t400\t.\tA\tG\t.\t.\t.\tGT\t0/1"])
    ingest_fails(store, write_text(tmp_path / "u.vcf", text), "line 12", "sorted")
    text = vcf(
        ["a"],
        [
            "22\t5\t.\tA\tG\t.\t.\t.\tGT\t0/1",
            "X\t4\t.\tA\tG\t.\t.\t.\tGT\t0/1",
            "22\t9\t.\tA\tG\t.\t.\t.\tGT\t0/1",
        ],
    )
    ingest_fails(store, write_text(tmp_path / "u2.vcf", text), "line 13", "appears again")


def test_duplicate_vcf_sample_ids(store: Store, tmp_path: Path) -> None:
    text = vcf(["a", "a"], ["22\t100\t.\tA\tG\t.\t.\t.\tGT\t0/1\t1/1"])
    ingest_fails(store, write_text(tmp_path / "dup.vcf", text), "dup.vcf", "'a' appears twice")


def test_phenotypes_matching_no_sample(store: Store, tmp_path: Path) -> None:
    pheno = write_text(tmp_path / "p.tsv", "sample_id\tage\nx1\t50\nx2\t60\n")
    ingest_fails(store, write_text(tmp_path / "g.vcf", GOOD), "p.tsv", "none of its 2 sample IDs", "'x1'", pheno=pheno)


def test_phenotypes_matching_some__counted(store: Store, tmp_path: Path) -> None:
    pheno = write_text(tmp_path / "p.tsv", "sample_id\tage\na\t50\nb\t60\nzz\t70\n")
    report = ingest_vcf(store, "ds", str(write_text(tmp_path / "g.vcf", GOOD)), str(pheno))
    assert (report.n_phenotyped, report.n_phenotype_rows_unmatched, report.n_samples) == (2, 1, 5)


def test_phenotypes_duplicate_sample(store: Store, tmp_path: Path) -> None:
    pheno = write_text(tmp_path / "p.tsv", "sample_id\tage\na\t50\nb\t60\na\t70\n")
    ingest_fails(store, write_text(tmp_path / "g.vcf", GOOD), "p.tsv", "line 4", "line 2", "'a'", pheno=pheno)


def test_phenotypes_mixed_types(store: Store, tmp_path: Path) -> None:
    pheno = write_text(tmp_path / "p.tsv", "sample_id\tsex\tage\na\t1\t50\nb\tF\t60\nc\t2\tNA\n")
    ingest_fails(store, write_text(tmp_path / "g.vcf", GOOD), "p.tsv", "'sex'", "line 3", "'F'", "line 2", pheno=pheno)


def test_station_directory_is_a_file(tmp_path: Path) -> None:
    blocker = write_text(tmp_path / "station", "not a directory")
    with pytest.raises(StoreError, match="not a directory"):
        Store.create(blocker)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_station_directory_unwritable(store: Store, tmp_path: Path) -> None:
    os.chmod(store.path / DATASETS, 0o500)
    try:
        ingest_fails(store, write_text(tmp_path / "g.vcf", GOOD), "cannot be written", kind=StoreError)
    finally:
        os.chmod(store.path / DATASETS, 0o700)


def test_station_directory_unwritable__read_only_mount(tmp_path: Path) -> None:
    # As root, permissions do not stop writes; /proc is a filesystem nobody can create folders in.
    store = Store(Path("/proc/self"))
    with pytest.raises(StoreError, match="cannot be written"):
        store.check_writable()


def test_failed_reingest_keeps_previous_dataset(store: Store, tmp_path: Path) -> None:
    good = write_text(tmp_path / "g.vcf", GOOD)
    ingest_vcf(store, "ds", str(good))
    before = store.dataset("ds").variants()
    bad = write_text(tmp_path / "bad.vcf", GOOD.replace("0/1\t1/1\t0/0", "0/1\t1/q\t0/0", 1))
    with pytest.raises(InputError):
        ingest_vcf(store, "ds", str(bad))
    assert store.dataset("ds").variants().equals(before)
    assert [p.name.split("@")[0] for p in (store.path / DATASETS).iterdir()] == ["ds"]


def test_bad_input_gz__same_errors_as_text(store: Store, tmp_path: Path) -> None:
    text = vcf(["a", "b"], ["22\t100\t.\tA\tG\t.\t.\t.\tGT\t0/1\t1/1", "22\t200\t.\tA\tG\t.\t.\t.\tGT\t0/q\t3"])
    gz = bgzip(write_text(tmp_path / "bad.vcf", text), tmp_path / "bad.vcf.gz")
    ingest_fails(store, gz, "bad.vcf.gz", "line 12")


def test_bad_dataset_name(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not allowed"):
        ingest_vcf(store, "../evil", str(write_text(tmp_path / "g.vcf", GOOD)))


def test_missing_store() -> None:
    with pytest.raises(StoreError, match="station init"):
        Store.open("/nonexistent/station")


def test_stale_temporaries_and_unnamed_versions_are_removed(store: Store) -> None:
    (store.path / DATASETS / ".ingest-ds-dead").mkdir()
    (store.path / DATASETS / "ds@0123456789ab").mkdir()  # renamed, but the catalog never named it
    live = store.new_temporary("other")  # an ingest still running: left alone
    assert sorted(p.name for p in store.clean_up()) == [".ingest-ds-dead", "ds@0123456789ab"]
    assert live.exists()
    store.discard_temporary(live)
