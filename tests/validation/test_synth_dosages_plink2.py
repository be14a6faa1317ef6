"""``better synth --dosages`` read by PLINK 2: its MaCH r² and ALT frequencies from the DS field agree with the
INFO R2 and AF the files declare, and a dosage GWAS finds the causal variants.

Reference commands (run by the tests)::

    plink2 --vcf pooled.vcf.gz dosage=DS --freq cols=+machr2 --out ref
    plink2 --vcf pooled.vcf.gz dosage=DS --pheno pooled.pheno.tsv --pheno-name ldl \\
        --covar pooled.pheno.tsv --covar-name age sex pc1-pc4 --covar-variance-standardize \\
        --glm hide-covar omit-ref --out ref
"""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from better.genomics.synth import SynthConfig, synthesize
from tests.validation.conftest import needs, plink

pytestmark = needs("plink2")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dosage-cohort")
    synthesize(SynthConfig(out=str(out), samples=800, variants=2000, stations=3, seed=21, dosages=True))
    return out


def written(vcf: Path) -> dict[str, tuple[dict[str, str], np.ndarray]]:
    """INFO and the DS values (missing left out) of each record, by ID."""
    table = {}
    with gzip.open(vcf, "rt") as f:
        for line in f:
            if not line.startswith("#"):
                cols = line.rstrip("\n").split("\t")
                info = dict(kv.partition("=")[::2] for kv in cols[7].split(";"))
                ds = np.array([c.split(":")[1] for c in cols[9:]])
                table[cols[2]] = info, ds[ds != "."].astype(float)
    return table


def mach_r2(ds: np.ndarray) -> float:
    p = ds.mean() / 2
    return float(ds.var() / (2 * p * (1 - p))) if 0 < p < 1 else math.nan


@pytest.mark.parametrize("name", ["pooled", "barcelona"])
def test_plink2_machr2__matches_info_r2(cohort: Path, tmp_path: Path, name: str) -> None:
    vcf = cohort / f"{name}.vcf.gz"
    plink("--vcf", str(vcf), "dosage=DS", "--freq", "cols=+machr2", "--out", str(tmp_path / "ref"))
    with open(tmp_path / "ref.afreq") as f:
        ref = {r["ID"]: r for r in csv.DictReader(f, delimiter="\t")}
    ours = written(vcf)
    assert ref.keys() == ours.keys()
    n_compared = 0
    for vid, r in ref.items():
        info, ds = ours[vid]
        freq = float(r["ALT_FREQS"])
        assert freq == pytest.approx(float(info["AF"]), abs=2e-5)
        if r["MACH_R2"] in ("nan", "NA"):  # PLINK 2 gives no r² where the file has no ALT (or no REF) dosage
            assert float(info["R2"]) == 0.0 and min(freq, 1 - freq) == 0.0
            continue
        plink_r2 = float(r["MACH_R2"])
        # PLINK 2 computes var(DS) / (2p(1-p)) of the dosages it keeps, in 1/16384 steps (6 digits printed) ...
        assert plink_r2 == pytest.approx(mach_r2(np.floor(ds * 16384 + 0.5) / 16384), rel=2e-5, abs=1e-6), vid
        # ... so it moves from the R2 of the written 3-decimal dosages mostly where many of them are tiny
        maf = min(freq, 1 - freq)
        tol = 2e-3 if maf < 0.01 else 1e-3 if maf < 0.05 else 2e-4
        assert plink_r2 == pytest.approx(float(info["R2"]), abs=tol), vid
        n_compared += 1
    assert n_compared > (0.9 if name == "pooled" else 0.5) * len(ref)


def test_plink2_dosage_glm__finds_the_causal_variants(cohort: Path, tmp_path: Path) -> None:
    pheno = str(cohort / "pooled.pheno.tsv")
    plink(
        "--vcf", str(cohort / "pooled.vcf.gz"), "dosage=DS",
        "--pheno", pheno, "--pheno-name", "ldl",
        "--covar", pheno, "--covar-name", "age", "sex", "pc1-pc4", "--covar-variance-standardize",
        "--glm", "hide-covar", "omit-ref", "--out", str(tmp_path / "ref"),
    )  # fmt: skip
    with open(tmp_path / "ref.ldl.glm.linear") as f:
        glm = {r["ID"]: r for r in csv.DictReader(f, delimiter="\t")}
    with open(cohort / "truth.tsv") as f:
        causal = [r for r in csv.DictReader(f, delimiter="\t") if r["trait"] == "ldl"]
    for c in causal:
        row = glm[c["id"]]
        assert math.copysign(1, float(row["BETA"])) == math.copysign(1, float(c["effect"])), c
    p_causal = sorted(float(glm[c["id"]]["P"]) for c in causal)
    assert p_causal[len(p_causal) // 2] < 1e-4, p_causal
