"""Imputed data end to end: three station servers hold an imputed cohort (VCF ``DS``), queried with secure
aggregation, against PLINK 2 on the pooled VCF with ``dosage=DS``.

Reference commands (``pooled.vcf.gz``: biallelic already)::

    plink2 --vcf pooled.vcf.gz dosage=DS --pheno pooled.pheno.tsv --pheno-name ldl --covar pooled.pheno.tsv \\
        --covar-name age sex pc1-pc4 --covar-variance-standardize --glm hide-covar omit-ref
    plink2 ... --pheno-name case --glm hide-covar                 # logistic-Firth hybrid
    plink2 --vcf pooled.vcf.gz dosage=DS --freq cols=+machr2 | --hardy
    plink2 --vcf pooled.vcf.gz dosage=DS --mach-r2-filter 0.8 2 --write-snplist
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.genomics.synth import SynthConfig, synthesize
from better.query.federation import Federation
from better.query.remote import StationClient
from better.station_api.auth import new_token
from better.station_api.config import Policy, StationConfig, write_config
from better.station_api.launch import station_process
from tests.validation.conftest import COVARS, PLINK_FIRTH_Z, PLINK_WALD_Z, needs, plink, read, rounds_to

pytestmark = needs("plink2")
FORMULA = " + ".join(COVARS)
#: Everything may leave: every variant is compared with PLINK 2 (withholding has its own tests).
OPEN = Policy(min_cell_count=1, min_minor_allele_count=0, audit_scope="local")


@dataclass
class Imputed:
    root: Path
    fed: Federation
    stations: list[str]


@pytest.fixture(scope="module")
def imputed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imputed]:
    root = tmp_path_factory.mktemp("imputed")
    r = synthesize(SynthConfig(out=str(root / "cohort"), stations=3, samples=700, variants=1100, seed=11, dosages=True))
    # the imputed cohort is biallelic already (multi-allelic sites written as split records, as the
    # imputation servers write them), so PLINK 2 reads the pooled VCF itself: `bcftools norm` would
    # rewrite every DS in single precision
    pooled = r.out / "pooled.vcf.gz"
    pheno = str(r.out / "pooled.pheno.tsv")
    vcf = ["--vcf", str(pooled), "dosage=DS"]
    common = [*vcf, "--pheno", pheno, "--covar", pheno, "--covar-variance-standardize", "--covar-name", *COVARS]
    plink(*common, "--pheno-name", "ldl", "--glm", "hide-covar", "omit-ref", "--out", str(root / "lin"))
    plink(*common, "--pheno-name", "case", "--glm", "hide-covar", "--out", str(root / "log"))
    plink(*vcf, "--freq", "cols=+machr2", "--out", str(root / "freq"))
    # (--freq runs before PLINK 2's variant filters: the variants kept are listed by --write-snplist)
    plink(*vcf, "--mach-r2-filter", "0.8", "2", "--write-snplist", "--out", str(root / "r2"))
    plink(*vcf, "--hardy", "--out", str(root / "hwe"))
    clients = []
    with ExitStack() as stack:
        for name in r.stations:
            store = Store.create(root / "stations" / name)
            report = ingest_vcf(store, "c", str(r.out / f"{name}.vcf.gz"), str(r.out / f"{name}.pheno.tsv"))
            assert report.n_variants > 0 and store.dataset("c").has_dosages
            researcher, rec = new_token("ana", "researcher")
            write_config(store.path, StationConfig(name=name, policy=OPEN, tokens=[rec]))
            url = stack.enter_context(station_process(store.path, threads=1))
            clients.append(StationClient(name, url, researcher, timeout=300))
        yield Imputed(root, Federation(clients, secure_aggregation="on"), list(r.stations))


def by_key(frame: pl.DataFrame) -> dict[tuple, dict]:
    rows = {(r["#CHROM"], r["POS"], r["REF"], r["ALT"]): r for r in frame.iter_rows(named=True)}
    assert len(rows) == frame.height, "a variant key appears twice"
    return rows


def rows(path: Path) -> list[dict[str, str]]:
    """A PLINK 2 table in file order (``.afreq`` and ``.hardy`` have no POS column)."""
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_gwas_linear_on_dosages__equals_plink2(imputed: Imputed) -> None:
    frame = imputed.fed.query(f"GWAS LINEAR ldl ~ {FORMULA}")
    ref = read(imputed.root / "lin.ldl.glm.linear")
    got = by_key(frame)
    assert set(got) == set(ref)
    fitted = 0
    for key, r in ref.items():
        ours = got[key]
        assert ours["ERRCODE"] == r["ERRCODE"], (key, ours["ERRCODE"], r["ERRCODE"])
        assert ours["OBS_CT"] == int(r["OBS_CT"]), key
        if r["ERRCODE"] == ".":
            for col in ("BETA", "SE", "T_STAT"):
                assert rounds_to(ours[col], r[col]), (key, col, ours[col], r[col])
            assert abs(ours["LOG10_P"] + np.log10(float(r["P"]))) <= 2e-5, key
            fitted += 1
    assert fitted > 700


def test_gwas_logistic_on_dosages__equals_plink2_hybrid(imputed: Imputed) -> None:
    frame = imputed.fed.query(f"GWAS LOGISTIC case ~ {FORMULA}")
    ref = read(imputed.root / "log.case.glm.logistic.hybrid")
    got = by_key(frame)
    assert set(got) == set(ref)
    fitted, mismatched, degenerate = 0, [], 0
    for key, r in ref.items():
        ours = got[key]
        if ours["ERRCODE"] != r["ERRCODE"] or ours["FIRTH?"] != r["FIRTH?"]:
            # On a nearly separated variant (an ALT dosage of 0.003 among the cases, say) whether PLINK's
            # single-precision Newton steps converge, stop unfinished or give up for Firth depends on
            # where its floats saturate; BETTER follows its steps in double precision. Such fits have a
            # log(OR) standard error in the tens to thousands (measured: 56 and 178 on this cohort).
            if float(r["LOG(OR)_SE"]) > 20:
                degenerate += 1
            else:
                mismatched.append((key, ours["ERRCODE"], r["ERRCODE"], ours["FIRTH?"], r["FIRTH?"]))
            continue
        if r["ERRCODE"] != ".":
            continue
        assert ours["OBS_CT"] == int(r["OBS_CT"]), key
        sign = 1.0 if r["A1"] == r["ALT"] else -1.0
        dz = abs(ours["Z_STAT"] - sign * float(r["Z_STAT"]))
        assert dz <= (PLINK_FIRTH_Z if r["FIRTH?"] == "Y" else PLINK_WALD_Z), (key, r["FIRTH?"], dz)
        fitted += 1
    assert not mismatched, (len(mismatched), mismatched[:20])
    assert degenerate <= len(ref) // 200, degenerate  # measured 2 of 1,504 (900 samples, seed 11)
    assert fitted > 700


def test_freq_on_dosages__equals_plink2_with_mach_r2(imputed: Imputed) -> None:
    frame = imputed.fed.query("FREQ")
    ref = rows(imputed.root / "freq.afreq")
    assert frame.height == len(ref)
    uncertain = 0
    for r, ours in zip(ref, frame.iter_rows(named=True), strict=True):
        assert (r["ID"], r["REF"], r["ALT"]) == (ours["ID"], ours["REF"], ours["ALT"])
        assert ours["OBS_CT"] == int(r["OBS_CT"])
        assert rounds_to(ours["ALT_FREQS"], r["ALT_FREQS"]), (r["ID"], ours["ALT_FREQS"], r["ALT_FREQS"])
        if r["MACH_R2"] == "nan":
            assert ours["MACH_R2"] is None or np.isnan(ours["MACH_R2"])
        else:
            assert rounds_to(ours["MACH_R2"], r["MACH_R2"]), (r["ID"], ours["MACH_R2"], r["MACH_R2"])
            uncertain += float(r["MACH_R2"]) < 0.95
    assert uncertain > 30  # the cohort is imputed: many variants are far from hard calls


def test_r2_filter__equals_plink2_mach_r2_filter(imputed: Imputed) -> None:
    kept = imputed.fed.query("FREQ WHERE r2 >= 0.8")
    ref = (imputed.root / "r2.snplist").read_text().split()
    assert kept["ID"].to_list() == ref
    assert 0 < kept.height < len(rows(imputed.root / "freq.afreq"))


def test_hwe_on_dosage_data__uses_plink2_hard_calls(imputed: Imputed) -> None:
    frame = imputed.fed.query("HWE")
    ref = rows(imputed.root / "hwe.hardy")
    assert frame.height == len(ref)
    for r, ours in zip(ref, frame.iter_rows(named=True), strict=True):
        assert (r["ID"], r["A1"], r["AX"]) == (ours["ID"], ours["A1"], ours["AX"])
        want = (int(r["HOM_A1_CT"]), int(r["HET_A1_CT"]), int(r["TWO_AX_CT"]))
        assert (ours["HOM_A1_CT"], ours["HET_A1_CT"], ours["TWO_AX_CT"]) == want, ours["ID"]
        assert rounds_to(ours["P"], r["P"]), (r["ID"], ours["P"], r["P"])


@pytest.fixture(scope="module")
def filesets(imputed: Imputed) -> dict[str, Path]:
    """The pooled cohort and each station's part as PLINK 2 ``.pgen`` (dosages exactly as in the VCF) and
    as 16-bit BGEN v1.2 (plink2 ``--export bgen-1.2 bits=16 ref-first``), all made by plink2."""
    root = imputed.root
    plink("--vcf", str(root / "cohort" / "pooled.vcf.gz"), "dosage=DS", "--make-pgen", "--out", str(root / "pooled"))
    plink(
        "--pfile", str(root / "pooled"), "--export", "bgen-1.2", "bits=16", "ref-first", "--out", str(root / "pooled")
    )
    for name in imputed.stations:
        ids = [line.split("\t")[0] for line in (root / "cohort" / f"{name}.pheno.tsv").read_text().splitlines()[1:]]
        (root / f"{name}.ids").write_text("\n".join(ids) + "\n")
        plink(
            "--pfile",
            str(root / "pooled"),
            "--keep",
            str(root / f"{name}.ids"),
            "--make-pgen",
            "--out",
            str(root / name),
        )
        plink("--pfile", str(root / name), "--export", "bgen-1.2", "bits=16", "ref-first", "--out", str(root / name))
    bgen = ["--bgen", str(root / "pooled.bgen"), "ref-first", "--sample", str(root / "pooled.sample")]
    pheno = str(root / "cohort" / "pooled.pheno.tsv")
    glm = ["--pheno", pheno, "--covar", pheno, "--covar-variance-standardize", "--covar-name", *COVARS]
    plink(*bgen, *glm, "--pheno-name", "ldl", "--glm", "hide-covar", "omit-ref", "--out", str(root / "bgen_lin"))
    return {"root": root}


@pytest.mark.slow  # six more ingests and plink2 conversions: run with -m slow
def test_gwas_linear_on_pgen_and_bgen_stations__equals_plink2(imputed: Imputed, filesets: dict[str, Path]) -> None:
    """Stations that ingested ``.pgen`` and BGEN files (in process): the same table as PLINK 2 on the pooled
    ``.pgen`` (whose dosages are the VCF's: the VCF reference applies) and on the pooled BGEN."""
    from better.engine.analyses.linear import LinearProtocol
    from better.engine.protocol import run_local
    from better.genomics.bgen import bgen_source
    from better.genomics.ingest import ingest_variants
    from better.genomics.plink_files import pgen_source
    from better.genomics.station_inputs import StationBlocks, build_design

    root = filesets["root"]
    for kind, reference in (("pgen", "lin.ldl.glm.linear"), ("bgen", "bgen_lin.ldl.glm.linear")):
        stations = []
        for name in imputed.stations:
            store = Store.create(root / f"{kind}_stations" / name)
            if kind == "pgen":
                source = pgen_source(str(root / name))
            else:
                source = bgen_source(str(root / f"{name}.bgen"), str(root / f"{name}.sample"), ref="first")
            ingest_variants(store, "c", source, str(root / "cohort" / f"{name}.pheno.tsv"))
            ds = store.dataset("c")
            assert ds.has_dosages
            stations.append((build_design(ds, "ldl", COVARS), StationBlocks(ds)))
        res = run_local(LinearProtocol(), stations)
        ref = read(root / reference)
        rows = {
            (str(c), int(p), str(r), str(a)): i
            for i, (c, p, r, a) in enumerate(zip(res["chrom"], res["pos"], res["ref"], res["alt"], strict=True))
        }
        assert set(rows) == set(ref), kind
        fitted = 0
        for key, r in ref.items():
            i = rows[key]
            assert (res["ERRCODE"][i] or ".") == r["ERRCODE"], (kind, key)
            assert res["OBS_CT"][i] == int(r["OBS_CT"]), (kind, key)
            if r["ERRCODE"] == ".":
                for col in ("BETA", "SE", "T_STAT"):
                    assert rounds_to(res[col][i], r[col]), (kind, key, col, res[col][i], r[col])
                fitted += 1
        assert fitted > 700, kind
