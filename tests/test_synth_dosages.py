"""``better synth --dosages``: imputed-style VCFs (GT:DS:GP, INFO R2), consistent across the stations and the
pooled file, with the phenotypes of the true genotypes. ``plink2 --freq cols=+machr2`` on them is in
tests/validation/test_synth_dosages_plink2.py."""

from __future__ import annotations

import functools
import gzip
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from better.genomics.synth import SynthConfig, synthesize
from better.genomics.synth_dosage import BgzfWriter, ImputedRecords, genotype_probabilities, mach_r2
from tests.servers import better

STATIONS = ["milano", "nijmegen", "barcelona"]
FILES = [*STATIONS, "pooled"]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The dosage cohort (600 samples, 2,000 sites) and its hard-call twin (same seed)."""
    root = tmp_path_factory.mktemp("dosages")
    kw = dict(samples=600, variants=2000, stations=3, seed=11)
    synthesize(SynthConfig(out=str(root / "dosages"), dosages=True, **kw))  # type: ignore[arg-type]
    synthesize(SynthConfig(out=str(root / "hard"), **kw))  # type: ignore[arg-type]
    return root / "dosages", root / "hard"


def records(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header lines and the tab-split records of a VCF."""
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    return header, [ln.split("\t") for ln in lines if not ln.startswith("#")]


@dataclass
class Parsed:
    """A dosage VCF read by cyvcf2: per record INFO, per entry DS, GP and GT (NaN / -1 missing)."""

    ids: list[str]
    r2: np.ndarray
    af: np.ndarray
    typed: np.ndarray
    ds: np.ndarray  # (records, samples)
    gp: np.ndarray  # (records, samples, 3)
    gt: np.ndarray  # (records, samples, 2) allele indices


@functools.cache
def parsed(path: Path) -> Parsed:
    import cyvcf2

    ids, r2, af, typed, ds, gp, gt = [], [], [], [], [], [], []
    for v in cyvcf2.VCF(str(path)):
        ids.append(v.ID)
        r2.append(v.INFO["R2"])
        af.append(v.INFO["AF"])
        typed.append(bool(v.INFO.get("TYPED")))
        ds.append(v.format("DS")[:, 0].astype(float))
        gp.append(v.format("GP").astype(float))
        gt.append(v.genotype.array()[:, :2].copy())  # cyvcf2 reuses its buffers between records
    return Parsed(ids, np.array(r2), np.array(af), np.array(typed), np.array(ds), np.array(gp), np.array(gt))


def info(rec: list[str]) -> dict[str, str]:
    return dict(kv.partition("=")[::2] for kv in rec[7].split(";"))


def test_dosages__parse_with_cyvcf2_and_declare_the_fields(cohorts: tuple[Path, Path]) -> None:
    import cyvcf2

    out, _ = cohorts
    for name in FILES:
        vcf = cyvcf2.VCF(str(out / f"{name}.vcf.gz"))
        fmt = {h["ID"]: h for h in vcf.header_iter() if h["HeaderType"] == "FORMAT"}
        inf = {h["ID"]: h for h in vcf.header_iter() if h["HeaderType"] == "INFO"}
        assert (fmt["DS"]["Number"], fmt["DS"]["Type"]) == ("A", "Float")
        assert (fmt["GP"]["Number"], fmt["GP"]["Type"]) == ("G", "Float")
        assert (inf["R2"]["Number"], inf["R2"]["Type"]) == ("1", "Float")
        assert inf["IMPUTED"]["Type"] == inf["TYPED"]["Type"] == "Flag"
        n_missing = 0
        flags = set()
        for v in vcf:
            assert len(v.ALT) == 1, "the dosage cohort is biallelic: multi-allelic sites are split"
            ds = v.format("DS")[:, 0]
            called = ~np.isnan(ds)
            assert ((ds[called] >= 0) & (ds[called] <= 2)).all()
            n_missing += int((~called).sum())
            assert 0 <= v.INFO["R2"] <= 2  # var(DS) / (2p(1-p)) passes 1 where a rare ALT sits in homozygotes
            flags.add("TYPED" if v.INFO.get("TYPED") else "IMPUTED")
        assert flags == {"TYPED", "IMPUTED"}
        if name == "pooled":
            assert 10 < n_missing < 600 * 2000 * 0.001, "about 0.5% of the samples on about 1% of the records"


def test_dosages__ds_gp_gt_consistent_to_the_written_digits(cohorts: tuple[Path, Path]) -> None:
    out, _ = cohorts
    f = parsed(out / "pooled.vcf.gz")
    called = ~np.isnan(f.ds)
    assert ((f.gt[called] >= 0).all()) and (f.gt[~called] < 0).all(), "a missing entry is missing throughout"
    milli = np.rint(f.gp[called] * 1000).astype(int)
    ds = np.rint(f.ds[called] * 1000).astype(int)
    assert (np.abs(f.gp[called] * 1000 - milli) < 1e-3).all(), "3 decimals at most"
    assert (milli.sum(axis=1) == 1000).all(), "GP sums to 1"
    assert (milli[:, 1] + 2 * milli[:, 2] == ds).all(), "DS = P(het) + 2 P(hom ALT)"
    geno = f.gt[called].sum(axis=1)
    assert (milli[np.arange(geno.size), geno] == milli.max(axis=1)).all(), "GT is the most likely genotype"
    # Realistic uncertainty: good records' dosages sit near 0, 1 or 2; poor ones' are spread out.
    near = np.where(called, np.abs(f.ds - np.rint(f.ds)) < 0.1, np.nan)
    common = (f.af > 0.05) & (f.af < 0.95)
    assert np.nanmean(near[(f.r2 > 0.9) & common]) > 0.95
    assert np.nanmean(near[(f.r2 < 0.5) & common]) < 0.75
    assert ((f.r2 < 0.3).mean() > 0.02) and (np.median(f.r2) > 0.8), "mostly well imputed, with a poor tail"
    assert 0.02 < f.typed.mean() < 0.2
    # The text as minimac writes it: phased GT, numbers with at most 3 decimals and no trailing zeros.
    _, recs = records(out / "pooled.vcf.gz")
    cells = [c for r in recs[::10] for c in r[9:]]
    assert {c[:3] for c in cells} == {"0|0", "0|1", "1|0", "1|1", "./."}
    numbers = {x for c in cells if c != "./.:.:." for x in c[4:].replace(":", ",").split(",")}
    assert {"0", "1", "2"} <= numbers and any(len(x) == 5 for x in numbers)
    assert all(len(x) == 1 or (x[1] == "." and 3 <= len(x) <= 5 and x[-1] != "0") for x in numbers)


def test_dosages__info_r2_and_af_are_the_files_mach_r2(cohorts: tuple[Path, Path]) -> None:
    out, _ = cohorts
    for name in FILES:
        f = parsed(out / f"{name}.vcf.gz")
        called = ~np.isnan(f.ds)
        af, r2 = mach_r2(np.rint(np.nan_to_num(f.ds) * 1000).astype(int), called)
        assert np.abs(f.r2 - r2).max() < 6e-6 and np.abs(f.af - af).max() < 6e-6
        # and straight from the definition, var(DS) / (2p(1-p))
        for i in np.flatnonzero((af > 0.05) & (af < 0.95))[:50]:
            d = f.ds[i][called[i]]
            p = d.mean() / 2
            assert f.r2[i] == pytest.approx(d.var() / (2 * p * (1 - p)), abs=6e-6)
        monomorphic = (af == 0) | (af == 1)
        assert (f.r2[monomorphic] == 0).all()


def test_dosages__pooled_is_the_stations_concatenated(cohorts: tuple[Path, Path]) -> None:
    out, _ = cohorts
    pooled_header, pooled = records(out / "pooled.vcf.gz")
    parts = [records(out / f"{s}.vcf.gz") for s in STATIONS]
    assert pooled_header[-1].split("\t")[9:] == [x for h, _ in parts for x in h[-1].split("\t")[9:]]
    for p_rec, *s_recs in zip(pooled, *(r for _, r in parts), strict=True):
        assert all(s[:7] == p_rec[:7] and s[8] == p_rec[8] for s in s_recs)
        assert p_rec[9:] == [x for s in s_recs for x in s[9:]]
    assert len({r[2] for r in pooled}) == len(pooled), "unique CHROM:POS:REF:ALT IDs"
    positions = [int(r[1]) for r in pooled]
    assert positions == sorted(positions) and len(set(positions)) < len(positions), "split multi-allelic sites"


def test_dosages__same_phenotypes_as_the_hard_calls_and_the_causal_variants_show(cohorts: tuple[Path, Path]) -> None:
    out, hard = cohorts
    for name in ("pooled.pheno.tsv", *(f"{s}.pheno.tsv" for s in STATIONS)):
        assert (out / name).read_bytes() == (hard / name).read_bytes(), name
    truth = [ln.split("\t") for ln in (out / "truth.tsv").read_text().splitlines()[1:]]
    truth_hard = [ln.split("\t") for ln in (hard / "truth.tsv").read_text().splitlines()[1:]]
    assert [t[:3] + t[4:] for t in truth] == [t[:3] + t[4:] for t in truth_hard]
    # The dosages carry the effects: ldl's association with each causal variant's DS is about as strong as
    # with its true genotype (the GT of the hard-call twin).
    f = parsed(out / "pooled.vcf.gz")
    _, hard_recs = records(hard / "pooled.vcf.gz")
    by_id = {vid: i for i, vid in enumerate(f.ids)}
    by_pos = {(r[1], r[3], r[4]): i for i, r in enumerate(hard_recs)}
    ldl_text = [ln.split("\t") for ln in (out / "pooled.pheno.tsv").read_text().splitlines()]
    col = ldl_text[0].index("ldl")
    ldl = np.array([np.nan if r[col] == "NA" else float(r[col]) for r in ldl_text[1:]])
    for t in (t for t in truth if t[0] == "ldl"):
        gt = np.array(hard_recs[by_pos[(t[2], t[4], t[5])]][9:])
        g = np.where(gt == "./.", np.nan, np.char.count(gt, "1")).astype(float)
        r_ds, r_gt = corr(f.ds[by_id[t[3]]], ldl), corr(g, ldl)
        assert np.sign(r_ds) == np.sign(float(t[7])) and abs(r_ds) > 0.8 * abs(r_gt), t


def corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = ~np.isnan(x) & ~np.isnan(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dosages__deterministic_for_a_seed(tmp_path: Path) -> None:
    kw = dict(samples=120, variants=200, stations=2, dosages=True)
    a = synthesize(SynthConfig(out=str(tmp_path / "a"), seed=3, **kw))  # type: ignore[arg-type]
    b = synthesize(SynthConfig(out=str(tmp_path / "b"), seed=3, **kw))  # type: ignore[arg-type]
    c = synthesize(SynthConfig(out=str(tmp_path / "c"), seed=4, **kw))  # type: ignore[arg-type]
    for name in ("pooled.vcf.gz", "milano.vcf.gz", "nijmegen.vcf.gz", "imputation.tsv", "truth.tsv"):
        assert digest(a.out / name) == digest(b.out / name), name  # the compressed bytes too
    assert digest(a.out / "pooled.vcf.gz") != digest(c.out / "pooled.vcf.gz")
    assert a.n_multiallelic == 0 and a.n_records == a.n_variants


def test_cli__synth_dosages_without_gp(tmp_path: Path) -> None:
    out = tmp_path / "x"
    r = better(
        "synth", "--out", str(out), "--samples", "60", "--variants", "50", "--stations", "2", "--dosages", "--no-gp"
    )
    assert r.returncode == 0, r.stderr
    assert "imputation.tsv" in r.stderr
    header, recs = records(out / "pooled.vcf.gz")
    assert not any("ID=GP," in h for h in header) and any("ID=DS,Number=A" in h for h in header)
    assert {x[8] for x in recs} == {"GT:DS"} and all(c.count(":") == 1 for x in recs for c in x[9:])


def test_genotype_probabilities__stay_consistent_after_rounding() -> None:
    rng = np.random.default_rng(0)
    h = np.concatenate([rng.random((20000, 2)), 1 - rng.random((2000, 2)) * 1e-3, rng.random((2000, 2)) * 1e-3])
    h = h.astype(np.float32)
    ds, g1, g2, gt = (x[0].astype(int) for x in genotype_probabilities(h[None]))
    g0 = 1000 - ds + g2
    assert (g0 >= 0).all() and (g1 >= 0).all() and (g2 >= 0).all()
    assert (ds == np.rint((h[:, 0].astype(float) + h[:, 1]) * 1000)).all()
    assert np.abs(g2 - h[:, 0].astype(float) * h[:, 1] * 1000).max() <= 1.5
    geno = np.array([0, 1, 1, 2])[gt]
    assert (np.stack([g0, g1, g2], axis=1)[np.arange(gt.size), geno] == np.maximum.reduce([g0, g1, g2])).all()
    het = geno == 1
    assert ((gt[het] == 2) == (h[het, 0] >= h[het, 1])).all(), "a heterozygote's ALT on the likelier carrier"


def test_split_records__one_per_alt() -> None:
    r = ImputedRecords.split("1", np.array([5, 9]), [["A", "C", "G", "T"], ["G", "A"]])
    assert r.ids == ["1:5:A:C", "1:5:A:G", "1:5:A:T", "1:9:G:A"] and r.site.tolist() == [0, 0, 0, 1]


def test_bgzf_writer__blocks_readable_by_htslib(tmp_path: Path) -> None:
    import pysam

    text = "".join(f"1\t{i}\t.\tA\tC\t.\tPASS\t.\n" for i in range(1, 30000)).encode()
    path = tmp_path / "x.vcf.gz"
    with ThreadPoolExecutor(3) as pool, BgzfWriter(path, pool) as w:
        w.write(b"##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for k in range(0, len(text), 70001):
            w.write(text[k : k + 70001])
    pysam.tabix_index(str(path), preset="vcf", force=True)
    assert len(list(pysam.TabixFile(str(path)).fetch("1", 20000, 20010))) == 10


def test_dosages__tbi_index_fetches_like_htslibs(cohorts: tuple[Path, Path], tmp_path: Path) -> None:
    import pysam

    out, _ = cohorts
    for name in ("pooled", "barcelona"):
        theirs = tmp_path / f"{name}.vcf.gz"
        theirs.write_bytes((out / f"{name}.vcf.gz").read_bytes())
        pysam.tabix_index(str(theirs), preset="vcf", force=True)
        a, b = pysam.TabixFile(str(out / f"{name}.vcf.gz")), pysam.TabixFile(str(theirs))
        assert a.contigs == b.contigs == ["22"]
        assert list(a.fetch("22")) == list(b.fetch("22"))
        rng = np.random.default_rng(1)
        n = 0
        for _ in range(200):
            start = int(rng.integers(15_990_000, 16_250_000))
            stop = start + int(rng.choice([1, 100, 5_000, 40_000, 400_000]))
            ours = list(a.fetch("22", start, stop))
            assert ours == list(b.fetch("22", start, stop)), (start, stop)
            n += len(ours)
        assert n > 1000
