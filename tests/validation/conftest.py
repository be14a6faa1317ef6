"""The validation cohort and its PLINK 2 references, built once per session; the outside tools each test needs.

Reference commands::

    bcftools norm -m- pooled.vcf.gz -Oz -o split.vcf.gz
    plink2 --vcf split.vcf.gz --vcf-half-call missing --pheno pooled.pheno.tsv --pheno-name ldl \\
        --covar pooled.pheno.tsv --covar-name age sex pc1-pc4 [station_*] --covar-variance-standardize \\
        --glm hide-covar omit-ref                 # linear: A1 = ALT, as BETTER reports
    plink2 ... --pheno-name case --glm hide-covar # logistic-Firth hybrid, A1 = minor allele
    plink2 --vcf split.vcf.gz --vcf-half-call missing --hardy | --freq

A test module declares the programs it runs with ``pytestmark = needs("plink2", ...)``. Where one is not
on PATH its tests are skipped, or, under ``BETTER_REQUIRE_TOOLS=1`` (CI), fail: a validation run that
compared nothing must not look green.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.genomics.synth import SynthConfig, synthesize
from tests.validation.pooled import Pooled, pooled

COVARS = ["age", "sex", "pc1", "pc2", "pc3", "pc4"]
#: Logistic Z against PLINK 2, at 10x the measured gaps. PLINK fits in single precision: its Wald Z is up to
#: 7.0e-3 from statsmodels' double-precision fit, and from ours (measured); what bounds ours there is
#: statsmodels, to 1e-7 (test_plink2_glm.py). Its Firth Z is within 2.1e-4 of ours (measured).
PLINK_WALD_Z = 7e-2
PLINK_FIRTH_Z = 2e-3
REQUIRE_TOOLS = bool(os.environ.get("BETTER_REQUIRE_TOOLS"))


def needs(*tools: str) -> list[pytest.MarkDecorator]:
    """The marks of a validation module that runs ``tools``: checked before any fixture is set up."""
    return [pytest.mark.validation, pytest.mark.tools(*tools)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tools(*names): outside programs the test runs (tests/validation)")


@pytest.hookimpl(tryfirst=True)  # before the fixtures, which would otherwise fail on the missing program
def pytest_runtest_setup(item: pytest.Item) -> None:
    missing = sorted({t for mark in item.iter_markers("tools") for t in mark.args if shutil.which(t) is None})
    if not missing:
        return
    message = f"{', '.join(missing)} not found on PATH (apt-get install {' '.join(missing)})"
    if REQUIRE_TOOLS:
        pytest.fail(f"{message}; BETTER_REQUIRE_TOOLS is set, so the validation tests fail", pytrace=False)
    pytest.skip(message)


def plink(*args: str) -> None:
    subprocess.run(["plink2", *args, "--threads", "2"], check=True, capture_output=True)


def read(path: Path) -> dict[tuple, dict[str, str]]:
    """A PLINK 2 output table keyed by (chrom, pos, ref, alt)."""
    with open(path) as f:
        table = {(r["#CHROM"], int(r["POS"]), r["REF"], r["ALT"]): r for r in csv.DictReader(f, delimiter="\t")}
    assert table, f"{path} is empty"
    return table


def rounds_to(ours: float, printed: str | float) -> bool:
    """Whether ``ours`` rounds to PLINK 2's ``printed`` value (6 significant digits): within half a unit of
    its last digit, plus 1e-9 of it where the two unrounded values straddle a rounding boundary."""
    x = float(printed)
    if x == 0.0:
        return ours == 0.0
    return abs(ours - x) <= 0.5 * 10.0 ** (math.floor(math.log10(abs(x))) - 5) + 1e-9 * abs(x)


@dataclass(frozen=True)
class PlinkCohort:
    root: Path
    out: Path  # the synthetic cohort's files
    stations: list[str]
    stores: list[Path]  # one ingested store per station (dataset "c")

    def pooled(self, phenotype: str, covariates: list[str], *, binary: bool = False) -> Pooled:
        """The pooled data as PLINK 2 read it (the split VCF and the pooled phenotype file)."""
        return pooled(self.root / "split.vcf.gz", self.out / "pooled.pheno.tsv", phenotype, covariates, binary=binary)


def build_plink_cohort(root: Path) -> PlinkCohort:
    """The cohort, its PLINK 2 references and one store per station, under ``root``."""
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


@pytest.fixture(scope="session")
def plink_cohort(tmp_path_factory: pytest.TempPathFactory) -> PlinkCohort:
    return build_plink_cohort(tmp_path_factory.mktemp("plink"))


@pytest.fixture(scope="session")
def pooled_case(plink_cohort: PlinkCohort) -> Pooled:
    """``case ~ covariates`` on the pooled data, for statsmodels."""
    return plink_cohort.pooled("case", COVARS, binary=True)
