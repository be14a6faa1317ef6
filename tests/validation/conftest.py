"""The validation cohort and its PLINK 2 references, built once per session.

Reference commands::

    bcftools norm -m- pooled.vcf.gz -Oz -o split.vcf.gz
    plink2 --vcf split.vcf.gz --vcf-half-call missing --pheno pooled.pheno.tsv --pheno-name ldl \\
        --covar pooled.pheno.tsv --covar-name age sex pc1-pc4 [station_*] --covar-variance-standardize \\
        --glm hide-covar omit-ref                 # linear: A1 = ALT, as BETTER reports
    plink2 ... --pheno-name case --glm hide-covar # logistic-Firth hybrid, A1 = minor allele
    plink2 --vcf split.vcf.gz --vcf-half-call missing --hardy | --freq
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.genomics.synth import SynthConfig, synthesize

COVARS = ["age", "sex", "pc1", "pc2", "pc3", "pc4"]
TOOLS_MISSING = any(shutil.which(t) is None for t in ("plink2", "bcftools"))
needs_tools = pytest.mark.skipif(
    TOOLS_MISSING and not os.environ.get("BETTER_REQUIRE_TOOLS"),
    reason="plink2 and bcftools are needed (apt-get install plink2 bcftools)",
)


def plink(*args: str) -> None:
    subprocess.run(["plink2", *args, "--threads", "2"], check=True, capture_output=True)


def read(path: Path) -> dict[tuple, dict[str, str]]:
    """A PLINK 2 output table keyed by (chrom, pos, ref, alt)."""
    with open(path) as f:
        return {(r["#CHROM"], int(r["POS"]), r["REF"], r["ALT"]): r for r in csv.DictReader(f, delimiter="\t")}


@dataclass(frozen=True)
class PlinkCohort:
    root: Path
    out: Path  # the synthetic cohort's files
    stations: list[str]
    stores: list[Path]  # one ingested store per station (dataset "c")


@pytest.fixture(scope="session")
def plink_cohort(tmp_path_factory: pytest.TempPathFactory) -> PlinkCohort:
    if TOOLS_MISSING:
        pytest.skip("plink2 and bcftools are needed")
    root = tmp_path_factory.mktemp("plink")
    r = synthesize(SynthConfig(out=str(root / "cohort"), samples=1500, variants=2500, stations=3, seed=21))
    split = root / "split.vcf.gz"
    subprocess.run(
        ["bcftools", "norm", "-m-", str(r.out / "pooled.vcf.gz"), "-Oz", "-o", str(split)],
        check=True,
        capture_output=True,
    )
    pheno = str(r.out / "pooled.pheno.tsv")
    common = ["--vcf", str(split), "--vcf-half-call", "missing", "--pheno", pheno, "--covar", pheno]
    common += ["--covar-variance-standardize"]
    dummies = [f"station_{s}" for s in r.stations[1:]]
    lin = ["--pheno-name", "ldl", "--glm", "hide-covar", "omit-ref"]
    plink(*common, *lin, "--covar-name", *COVARS, "--out", str(root / "lin"))
    plink(*common, *lin, "--covar-name", *COVARS, *dummies, "--out", str(root / "adj"))
    log = ["--pheno-name", "case", "--glm", "hide-covar"]
    plink(*common, *log, "--covar-name", *COVARS, "--out", str(root / "log"))
    plink(*common, *log, "--covar-name", *COVARS, *dummies, "--out", str(root / "logadj"))
    plink("--vcf", str(split), "--vcf-half-call", "missing", "--hardy", "--out", str(root / "hwe"))
    plink("--vcf", str(split), "--vcf-half-call", "missing", "--freq", "--out", str(root / "freq"))
    stores = []
    for name in r.stations:
        store = Store.create(root / "stations" / name)
        ingest_vcf(store, "c", str(r.out / f"{name}.vcf.gz"), str(r.out / f"{name}.pheno.tsv"))
        stores.append(store.path)
    return PlinkCohort(root, r.out, list(r.stations), stores)
