"""The ``better`` verbs as a user runs them: a real process, stdout for results, stderr for messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import better


def test_cli__synth_init_ingest_info(tmp_path: Path) -> None:
    r = better("synth", "--out", str(tmp_path / "c"), "--samples", "60", "--variants", "80", "--stations", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "c")
    st = tmp_path / "st"
    r = better("station", "init", "--station", str(st), "--name", "milano")
    assert r.returncode == 0 and (st / "station.toml").exists() and r.stdout.strip().splitlines()[-1] == str(st)
    r = better(
        "ingest",
        "--station",
        str(st),
        "--dataset",
        "cohort",
        "--vcf",
        str(tmp_path / "c/milano.vcf.gz"),
        "--phenotypes",
        str(tmp_path / "c/milano.pheno.tsv"),
    )
    assert r.returncode == 0, r.stderr
    assert "records" in r.stderr and "phenotypes:" in r.stderr
    r = better("store", "info", "--station", str(st))
    assert r.returncode == 0 and "cohort" in r.stdout and "min_cell_count=5" in r.stdout


@pytest.mark.slow
def test_cli__synth_bam_and_ingest_bam(tmp_path: Path) -> None:
    c = tmp_path / "c"
    r = better(
        "synth",
        "--out",
        str(c),
        "--samples",
        "60",
        "--variants",
        "120",
        "--stations",
        "2",
        "--bam",
        "--bam-samples",
        "2",
    )
    assert r.returncode == 0, r.stderr
    bams = sorted((c / "bam" / "milano").glob("*.bam"))
    assert len(bams) == 2 and all(Path(f"{b}.bai").exists() for b in bams)
    assert (c / "bam" / "reference.fa.fai").exists() and (c / "bam" / "targets.bed").exists()
    st = tmp_path / "st"
    assert better("station", "init", "--station", str(st), "--name", "milano").returncode == 0
    r = better(
        "ingest-bam", "--station", str(st), "--dataset", "reads", "--targets", str(c / "bam" / "targets.bed"),
        "--bam", *map(str, bams),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "2 samples" in r.stderr and "24 targets" in r.stderr
    r = better("ingest-bam", "--station", str(st), "--dataset", "again", "--bam", str(c / "milano.vcf.gz"))
    assert r.returncode == 1 and "not a BAM or CRAM file" in r.stderr and "Traceback" not in r.stderr


def test_cli__errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    r = better("ingest", "--station", str(tmp_path / "nowhere"), "--dataset", "d", "--vcf", "x.vcf")
    assert r.returncode == 1
    assert "error:" in r.stderr and "station init" in r.stderr and "Traceback" not in r.stderr
    st = tmp_path / "st"
    better("station", "init", "--station", str(st), "--name", "a")
    bad = tmp_path / "bad.vcf"
    bad.write_text("not a vcf\n")
    r = better("ingest", "--station", str(st), "--dataset", "d", "--vcf", str(bad))
    assert r.returncode == 1 and "not a VCF" in r.stderr and "Traceback" not in r.stderr
    assert not (st / "datasets" / "d").exists()


def test_cli__help_on_every_verb() -> None:
    verbs = (["synth"], ["ingest"], ["demo"], ["gwas"], ["query"], ["station", "init"], ["station", "token"])
    for verb in (*verbs, ["station", "serve"], ["station", "approve"], ["station", "audit"], ["store", "info"]):
        r = better(*verb, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, verb


def test_demo__the_readme_main_job(tmp_path: Path) -> None:
    """Three stations as HTTP servers, a federated GWAS of two traits, top hits beside the truth."""
    r = better("demo", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top hits: ldl" in r.stdout and "top hits: case" in r.stdout
    assert "genome-wide" in r.stdout  # the simulation's strongest effects are found
    out = tmp_path / "demo" / "gwas"
    for name in ("report.html", "ldl.glm.linear", "case.glm.logistic", "ldl.tsv.gz", "case.manhattan.png"):
        assert (out / name).exists(), name
    assert "report:" in r.stderr
