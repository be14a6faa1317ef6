"""Federated engine results (three stations, in-process) against PLINK 2 and statsmodels on the pooled data.

The cohort and the PLINK 2 commands are in conftest.py; the statsmodels references in pooled.py. Every
comparison first checks that both sides hold the same variants, then compares them row by row.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from better.engine.analyses.counts import CountsProtocol
from better.engine.analyses.linear import LinearProtocol
from better.engine.analyses.logistic import LogisticProtocol
from better.engine.protocol import run_local
from better.genomics.station_inputs import StationBlocks, build_design
from better.genomics.store import Store
from tests.validation.conftest import COVARS, PLINK_FIRTH_Z, PLINK_WALD_Z, PlinkCohort, needs, read, rounds_to
from tests.validation.pooled import Key, Pooled, logistic_score, logistic_wald, statsmodels_score_test

pytestmark = needs("plink2", "bcftools")


@pytest.fixture(scope="module")
def cohort(plink_cohort: PlinkCohort) -> dict:
    return {"root": plink_cohort.root, "datasets": [Store.open(p).dataset("c") for p in plink_cohort.stores]}


def stations(cohort: dict, phenotype: str, binary: bool = False, adjust: bool = False) -> list:
    n = len(cohort["datasets"])
    return [
        (
            build_design(ds, phenotype, COVARS, binary=binary, station_index=i if adjust else None, n_stations=n),
            StationBlocks(ds),
        )
        for i, ds in enumerate(cohort["datasets"])
    ]


def keyed(res: dict) -> dict[Key, int]:
    """Our row of each variant key; no key twice."""
    rows = {
        (str(c), int(p), str(r), str(a)): i
        for i, (c, p, r, a) in enumerate(zip(res["chrom"], res["pos"], res["ref"], res["alt"], strict=True))
    }
    assert len(rows) == len(res["pos"]), "a variant key appears twice"
    return rows


@pytest.mark.parametrize(("adjust", "ref_name"), [(False, "lin.ldl.glm.linear"), (True, "adj.ldl.glm.linear")])
def test_linear__equals_plink2(cohort: dict, adjust: bool, ref_name: str) -> None:
    ref = read(cohort["root"] / ref_name)
    res = run_local(LinearProtocol(), stations(cohort, "ldl", adjust=adjust))
    got = keyed(res)
    assert set(got) == set(ref)
    dp = []
    for key, r in ref.items():
        i = got[key]
        ours = res["ERRCODE"][i] or "."
        # A covariate that is constant among a variant's called samples (ADJUST station, a variant that
        # failed at all but one station): PLINK's code then depends on whether rounding leaves that
        # covariate's variance exactly zero (INVALID_RESULT) or not (CORR_TOO_HIGH, or VIF_INFINITE when its
        # matrix turns out singular). All are errors.
        singular = ("CORR_TOO_HIGH", "VIF_INFINITE")
        assert ours == r["ERRCODE"] or (ours == "INVALID_RESULT" and r["ERRCODE"] in singular), (
            key,
            ours,
            r["ERRCODE"],
        )
        assert res["OBS_CT"][i] == int(r["OBS_CT"])
        if r["ERRCODE"] == ".":
            # PLINK 2 computes these in double precision and prints 6 significant digits: ours round to
            # them (measured: at most 0.9999 of half a last digit; max |dT| 6.1e-6)
            for col in ("BETA", "SE", "T_STAT"):
                assert rounds_to(res[col][i], r[col]), (key, col, res[col][i], r[col])
            dp.append(abs(res["LOG10_P"][i] + np.log10(float(r["P"]))))
    assert len(dp) > 2000
    # P also differs by how the t tail is computed: measured max 2.1e-6 in log10 P
    assert max(dp) <= 2e-5, max(dp)


def test_logistic__equals_plink2_hybrid_and_statsmodels(cohort: dict, pooled_case: Pooled) -> None:
    """Firth and error decisions agree with PLINK 2 everywhere; Z with PLINK (its precision) and, for every
    variant fitted without Firth, with statsmodels on the pooled samples."""
    ref = read(cohort["root"] / "log.case.glm.logistic.hybrid")
    res = run_local(LogisticProtocol(k=7), stations(cohort, "case", binary=True))
    got = keyed(res)
    assert set(got) == set(ref) == set(pooled_case.keys)
    wald: list[Key] = []
    dz_wald, dz_firth = [], []
    for key, r in ref.items():
        i = got[key]
        assert (res["ERRCODE"][i] or ".") == r["ERRCODE"], key
        if r["ERRCODE"] != ".":
            continue
        assert res["FIRTH?"][i] == r["FIRTH?"], key
        assert res["OBS_CT"][i] == int(r["OBS_CT"]), key
        sign = 1.0 if r["A1"] == r["ALT"] else -1.0  # PLINK's A1 is the minor allele, ours ALT
        dz = abs(res["Z_STAT"][i] - sign * float(r["Z_STAT"]))
        if r["FIRTH?"] == "Y":
            dz_firth.append(dz)
        else:
            dz_wald.append(dz)
            wald.append(key)
    assert len(dz_firth) > 50, "the cohort should exercise the Firth fallback"
    assert len(wald) > 1500
    assert max(dz_firth) <= PLINK_FIRTH_Z, max(dz_firth)
    assert max(dz_wald) <= PLINK_WALD_Z, max(dz_wald)

    # statsmodels on every variant PLINK fitted without Firth (statsmodels has no Firth regression)
    row = pooled_case.row()
    z_sm, p_sm = logistic_wald(pooled_case, [row[k] for k in wald])
    ours = np.array([got[k] for k in wald])
    dz = np.abs(res["Z_STAT"][ours] - z_sm)
    dp = np.abs(res["LOG10_P"][ours] + np.log10(p_sm))
    # measured max 1.0e-8 in Z and 2.5e-8 in log10 P (our Newton stops at a step below 1e-8)
    assert dz.max() <= 1e-7 and dp.max() <= 3e-7, (wald[int(dz.argmax())], dz.max(), dp.max())


def test_logistic_score__equals_statsmodels(cohort: dict, pooled_case: Pooled) -> None:
    """The score test (TEST score) of every variant against one computed from statsmodels' null fit, and,
    where every analysed sample has a call, against statsmodels' own score test."""
    res = run_local(LogisticProtocol(k=7, test="score"), stations(cohort, "case", binary=True))
    got = keyed(res)
    assert set(got) == set(pooled_case.keys)
    constant = pooled_case.constant()  # the only variants without a test
    assert {k for k, i in got.items() if res["ERRCODE"][i]} == constant
    assert all(res["ERRCODE"][got[k]] == "CONST_OMITTED_ALLELE" for k in constant)
    tested = [k for k in pooled_case.keys if k not in constant]
    row = pooled_case.row()
    z, p = logistic_score(pooled_case)
    ours = np.array([got[k] for k in tested])
    theirs = np.array([row[k] for k in tested])
    dz = np.abs(res["Z_STAT"][ours] - z[theirs])
    dp = np.abs(res["LOG10_P"][ours] + np.log10(p[theirs]))
    assert dz.max() <= 1e-11 and dp.max() <= 1e-11, (dz.max(), dp.max())  # measured 9.8e-13 and 6.5e-13

    complete = [k for k in tested if not np.isnan(pooled_case.G[row[k]]).any()]
    assert len(complete) > 500
    chi2 = statsmodels_score_test(pooled_case, [row[k] for k in complete])
    ours_chi2 = res["Z_STAT"][[got[k] for k in complete]] ** 2
    assert np.max(np.abs(ours_chi2 - chi2) / chi2) <= 1e-12  # measured 6.8e-14


def test_hwe_and_counts__equal_plink2_hardy(cohort: dict, pooled_case: Pooled) -> None:
    with open(cohort["root"] / "hwe.hardy") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    # --hardy counts every sample, phenotyped or not.
    res = run_local(CountsProtocol(groups=1), [(_everyone(ds), StationBlocks(ds)) for ds in cohort["datasets"]])
    # .hardy has no POS: its rows are the split VCF's, in order (A1 = REF); so are ours
    assert list(keyed(res)) == pooled_case.keys
    assert len(rows) == len(pooled_case.keys)
    for i, (r, key) in enumerate(zip(rows, pooled_case.keys, strict=True)):
        assert (r["#CHROM"], r["A1"], r["AX"]) == (key[0], key[2], key[3])
        assert (int(r["HOM_A1_CT"]), int(r["HET_A1_CT"]), int(r["TWO_AX_CT"])) == (
            res["HOM_A1_CT"][i],
            res["HET_A1_CT"][i],
            res["TWO_AX_CT"][i],
        )
        # measured: at most 0.9997 of half a last printed digit
        assert rounds_to(res["HWE_P"][i], r["P"]), (i, res["HWE_P"][i], r["P"])


def _everyone(ds):  # type: ignore[no-untyped-def]
    from better.engine.design import Design

    n = ds.n_samples
    return Design(C=np.ones((n, 1)), y=np.zeros(n), include=np.ones(n, dtype=bool), names=("intercept",))
