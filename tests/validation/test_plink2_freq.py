"""Per-variant allele counts from the store against ``plink2 --freq`` on the same (split) pooled VCF.

Reference command (run by the test)::

    bcftools norm -m- pooled.vcf.gz -Oz -o split.vcf.gz
    plink2 --vcf split.vcf.gz --vcf-half-call missing --freq --out ref
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.genomics.synth import SynthConfig, synthesize
from tests.validation.conftest import needs, rounds_to

pytestmark = needs("plink2", "bcftools")


def test_allele_counts__equal_plink2_freq(tmp_path: Path, store: Store) -> None:
    cohort = tmp_path / "cohort"
    synthesize(SynthConfig(out=str(cohort), samples=800, variants=3000, stations=3, seed=11))
    pooled = cohort / "pooled.vcf.gz"
    split = tmp_path / "split.vcf.gz"
    subprocess.run(["bcftools", "norm", "-m-", str(pooled), "-Oz", "-o", str(split)], check=True, capture_output=True)
    subprocess.run(
        [
            "plink2",
            "--vcf",
            str(split),
            "--vcf-half-call",
            "missing",
            "--freq",
            "--out",
            str(tmp_path / "ref"),
            "--threads",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    with open(tmp_path / "ref.afreq") as f:
        ref = list(csv.DictReader(f, delimiter="\t"))

    report = ingest_vcf(store, "pooled", str(pooled))
    assert report.n_multiallelic_records > 0, "the cohort should exercise multi-allelic splitting"
    v = store.dataset("pooled").variants().to_pydict()
    assert len(ref) == len(v["pos"])
    assert [r["REF"] for r in ref] == v["ref"]
    assert [r["ALT"] for r in ref] == v["alt"]
    called = np.array(v["n_hom_ref"]) + np.array(v["n_het"]) + np.array(v["n_hom_alt"])
    alt_count = np.array(v["n_het"]) + 2 * np.array(v["n_hom_alt"])
    obs = np.array([int(r["OBS_CT"]) for r in ref])
    assert np.array_equal(2 * called, obs)
    for r, alt, n in zip(ref, alt_count, called, strict=True):
        if n == 0:  # no call
            assert np.isnan(float(r["ALT_FREQS"])), r["ID"]
            continue
        # plink2 prints 6 significant digits (measured: at most 1 + 2e-10 of half a last digit, at a tie)
        assert rounds_to(alt / (2 * n), r["ALT_FREQS"]), (r["ID"], alt / (2 * n), r["ALT_FREQS"])
