"""Per-variant allele counts from the store against ``plink2 --freq`` on the same (split) pooled VCF.

Reference command (run by the test)::

    bcftools norm -m- pooled.vcf.gz -Oz -o split.vcf.gz
    plink2 --vcf split.vcf.gz --vcf-half-call missing --freq --out ref
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.genomics.synth import SynthConfig, synthesize

TOOLS = ("plink2", "bcftools")
pytestmark = [
    pytest.mark.validation,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS) and not os.environ.get("BETTER_REQUIRE_TOOLS"),
        reason="plink2 and bcftools are needed (apt-get install plink2 bcftools)",
    ),
]


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
    freq = np.array([float(r["ALT_FREQS"]) for r in ref])
    ours = np.divide(alt_count, 2 * called, out=np.full(len(obs), np.nan), where=called > 0)
    both = ~np.isnan(freq)
    assert np.array_equal(np.isnan(freq), np.isnan(ours))
    np.testing.assert_allclose(ours[both], freq[both], rtol=0, atol=5e-7)  # plink2 prints 6 significant digits
