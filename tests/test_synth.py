from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from better.engine.errors import InputError
from better.genomics.phenotypes import read_phenotypes
from better.genomics.synth import SynthConfig, synthesize


def digest(path: Path) -> str:
    return hashlib.sha256(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()).hexdigest()


def test_synth__deterministic_for_seed(tmp_path: Path) -> None:
    a = synthesize(SynthConfig(out=str(tmp_path / "a"), samples=80, variants=120, stations=2, seed=3))
    b = synthesize(SynthConfig(out=str(tmp_path / "b"), samples=80, variants=120, stations=2, seed=3))
    c = synthesize(SynthConfig(out=str(tmp_path / "c"), samples=80, variants=120, stations=2, seed=4))
    for name in ("pooled.vcf.gz", "milano.pheno.tsv", "truth.tsv", "pooled.pheno.tsv"):
        assert digest(a.out / name) == digest(b.out / name), name
    assert digest(a.out / "pooled.vcf.gz") != digest(c.out / "pooled.vcf.gz")


def test_synth__cohort_shape(small_cohort: Path) -> None:
    import cyvcf2

    stations = ["milano", "nijmegen", "barcelona"]
    sizes = [len(cyvcf2.VCF(str(small_cohort / f"{s}.vcf.gz")).samples) for s in stations]
    pooled = cyvcf2.VCF(str(small_cohort / "pooled.vcf.gz"))
    assert sum(sizes) == len(pooled.samples) == 300
    assert sizes[0] > sizes[1] > sizes[2], "stations are of unequal size"
    gts = np.array([v.gt_types.copy() for v in pooled])  # cyvcf2 reuses the buffer between records
    assert 0.002 < (gts == 2).mean() < 0.1, "some genotypes are missing (cyvcf2 code 2 = UNKNOWN)"
    alt = ((gts == 1) + 2 * (gts == 3)).sum(axis=1) / (2 * (gts != 2).sum(axis=1))
    maf = np.minimum(alt, 1 - alt)
    assert (maf < 0.01).mean() > 0.3, "a coalescent AFS has many rare variants"
    assert (small_cohort / "pooled.vcf.gz.tbi").exists() and (small_cohort / "milano.vcf.gz.tbi").exists()
    ph = read_phenotypes(str(small_cohort / "milano.pheno.tsv")).table
    assert ph.column_names == [
        "sample_id",
        "age",
        "sex",
        "bmi",
        "smoking",
        "pc1",
        "pc2",
        "pc3",
        "pc4",
        "ldl",
        "case",
    ]
    assert ph.column("ldl").null_count > 0 and set(ph.column("case").drop_null().to_pylist()) == {0, 1}
    plink = (small_cohort / "pooled.pheno.tsv").read_text().splitlines()
    assert plink[0].startswith("#IID\t") and "station_nijmegen" in plink[0]
    truth = (small_cohort / "truth.tsv").read_text().splitlines()
    assert len(truth) == 1 + 5 + 4


def test_synth__batch_effect_shifts_station_means(tmp_path: Path) -> None:
    r = synthesize(SynthConfig(out=str(tmp_path / "b"), samples=3000, variants=200, stations=3, seed=5))
    means = {}
    for s in r.stations:
        ldl = read_phenotypes(str(r.out / f"{s}.pheno.tsv")).table.column("ldl").drop_null().to_numpy()
        means[s] = ldl.mean()
    spread = max(means.values()) - min(means.values())
    effects = list(r.batch_effects.values())
    assert spread > 0.5 * (max(effects) - min(effects))


def test_synth__bad_config() -> None:
    with pytest.raises(InputError, match="--samples"):
        synthesize(SynthConfig(out="/tmp/x", samples=3, stations=3))


def test_synth__many_stations_have_distinct_sample_ids(tmp_path: Path) -> None:
    import cyvcf2

    r = synthesize(SynthConfig(out=str(tmp_path / "many"), samples=180, variants=40, stations=12, seed=5))
    ids = list(cyvcf2.VCF(str(r.out / "pooled.vcf.gz")).samples)
    assert len(ids) == 180 and len(set(ids)) == 180
    assert ids[0] == "MIL00001" and any(i.startswith("ST8_") for i in ids) and any(i.startswith("ST12_") for i in ids)
