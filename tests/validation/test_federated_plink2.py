"""End to end: three real station servers on loopback ports, queries in the language, against PLINK 2 on
the pooled VCF (the cohort and the reference commands are in conftest.py)."""

from __future__ import annotations

import csv
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.query.federation import Federation
from better.query.parser import QueryError
from better.query.remote import StationClient, StationError
from better.station_api.auth import new_token
from better.station_api.config import Policy, StationConfig, write_config
from better.station_api.launch import free_port, station_process
from tests.validation.conftest import COVARS, PLINK_FIRTH_Z, PLINK_WALD_Z, PlinkCohort, needs, read, rounds_to
from tests.validation.pooled import Pooled, logistic_score, logistic_wald

pytestmark = needs("plink2", "bcftools")
FORMULA = "age + sex + pc1 + pc2 + pc3 + pc4"
#: Everything may leave: these tests compare every variant with PLINK 2. Withholding is tested at the end.
#: Audited over each station's own people, so that the same stations also answer in the clear (the unmasked
#: comparison); the pooled audit has its own tests (tests/test_disclosure.py).
OPEN = Policy(min_cell_count=1, min_minor_allele_count=0, audit_scope="local")


@dataclass
class Live:
    fed: Federation
    urls: list[str]
    admins: list[str]
    cohort: PlinkCohort


@pytest.fixture(scope="module")
def live(plink_cohort: PlinkCohort) -> Iterator[Live]:
    clients, urls, admins = [], [], []
    with ExitStack() as stack:
        for name, path in zip(plink_cohort.stations, plink_cohort.stores, strict=True):
            researcher, r_rec = new_token("ana", "researcher")
            admin, a_rec = new_token("boss", "admin")
            write_config(path, StationConfig(name=name, policy=OPEN, tokens=[r_rec, a_rec]))
            url = stack.enter_context(station_process(path, threads=1))
            clients.append(StationClient(name, url, researcher, timeout=300))
            urls.append(url)
            admins.append(admin)
        # secure aggregation on: every comparison with PLINK 2 below runs on masked releases
        yield Live(Federation(clients, secure_aggregation="on"), urls, admins, plink_cohort)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def by_key(frame: pl.DataFrame) -> dict[tuple, dict]:
    rows = {(r["#CHROM"], r["POS"], r["REF"], r["ALT"]): r for r in frame.iter_rows(named=True)}
    assert len(rows) == frame.height, "a variant key appears twice"
    return rows


@pytest.mark.parametrize(("adjust", "ref_name"), [("", "lin.ldl.glm.linear"), ("ADJUST station", "adj.ldl.glm.linear")])
def test_gwas_linear__equals_plink2(live: Live, adjust: str, ref_name: str) -> None:
    frame = live.fed.query(f"GWAS LINEAR ldl ~ {FORMULA} {adjust}")
    ref = read(live.cohort.root / ref_name)
    got = by_key(frame)
    assert set(got) == set(ref)
    dp = []
    for key, r in ref.items():
        ours = got[key]
        assert ours["ID"] == r["ID"]
        assert ours["ERRCODE"] == r["ERRCODE"] or (
            ours["ERRCODE"] == "INVALID_RESULT" and r["ERRCODE"] in ("CORR_TOO_HIGH", "VIF_INFINITE")
        )  # a covariate singular among the variant's called samples: PLINK's code depends on rounding
        assert ours["OBS_CT"] == int(r["OBS_CT"])
        if r["ERRCODE"] == ".":
            # PLINK 2 prints 6 significant digits: ours, through masked sums, round to them (measured: at
            # most 0.9999 of half a last digit; max |dT| 6.1e-6)
            for col in ("BETA", "SE", "T_STAT"):
                assert rounds_to(ours[col], r[col]), (key, col, ours[col], r[col])
            dp.append(abs(ours["LOG10_P"] + np.log10(float(r["P"]))))
    assert len(dp) > 2000
    assert max(dp) <= 2e-5, max(dp)  # measured 2.1e-6 (PLINK computes the t tail its own way)


@pytest.mark.parametrize(
    ("adjust", "ref_name"),
    [
        ("", "log.case.glm.logistic.hybrid"),
        pytest.param("ADJUST station", "logadj.case.glm.logistic.hybrid", marks=pytest.mark.slow),
    ],
)
def test_gwas_logistic__equals_plink2_hybrid_and_statsmodels(
    live: Live, pooled_case: Pooled, adjust: str, ref_name: str
) -> None:
    """Firth and error decisions agree with PLINK 2 everywhere; Z with PLINK (to its single precision:
    tests/validation/test_plink2_glm.py) and, for every variant fitted without Firth, with statsmodels."""
    frame = live.fed.query(f"GWAS LOGISTIC case ~ {FORMULA} {adjust}")
    ref = read(live.cohort.root / ref_name)
    got = by_key(frame)
    assert set(got) == set(ref)
    mismatched: list = []
    wald: list[tuple] = []
    for key, r in ref.items():
        ours = got[key]
        pair = (ours["ERRCODE"], r["ERRCODE"])
        # A covariate constant among the called samples (ADJUST station, a variant seen at one station
        # only) makes the predictors singular: PLINK says CORR_TOO_HIGH or VIF_INFINITE depending on
        # whether rounding leaves that covariate's variance exactly zero. Both are errors.
        if pair[0] != pair[1] and pair != ("VIF_INFINITE", "CORR_TOO_HIGH"):
            mismatched.append((key, pair))
        if r["ERRCODE"] != ".":
            continue
        assert ours["FIRTH?"] == r["FIRTH?"] and ours["OBS_CT"] == int(r["OBS_CT"]), key
        sign = 1.0 if r["A1"] == r["ALT"] else -1.0
        dz = abs(ours["Z_STAT"] - sign * float(r["Z_STAT"]))
        assert dz <= (PLINK_FIRTH_Z if r["FIRTH?"] == "Y" else PLINK_WALD_Z), (key, r["FIRTH?"], dz)
        if r["FIRTH?"] == "N":
            wald.append(key)
    assert not mismatched, (len(mismatched), mismatched[:20])
    assert len(wald) > 1500
    dummies = [f"station_{s}" for s in live.cohort.stations[1:]]  # as PLINK 2 was given them
    pool = live.cohort.pooled("case", COVARS + dummies, binary=True) if adjust else pooled_case
    row = pool.row()
    z, _ = logistic_wald(pool, [row[k] for k in wald])
    dz = np.abs(np.array([got[k]["Z_STAT"] for k in wald]) - z)
    assert dz.max() <= 1e-7, (wald[int(dz.argmax())], dz.max())  # measured 1.0e-8, as in process


def test_gwas_logistic_score__equals_statsmodels(live: Live, pooled_case: Pooled) -> None:
    """TEST score, masked, against the score test from statsmodels' null fit (pooled.logistic_score; checked
    against statsmodels' own score test in tests/validation/test_plink2_glm.py) on every variant."""
    frame = live.fed.query(f"GWAS LOGISTIC case ~ {FORMULA} TEST score")
    got = by_key(frame)
    assert set(got) == set(pooled_case.keys)
    constant = pooled_case.constant()  # the only variants without a test
    assert {k for k, r in got.items() if r["ERRCODE"] != "."} == constant
    z, p = logistic_score(pooled_case)
    dz, dp = [], []
    for k, i in pooled_case.row().items():
        if k not in constant:
            assert got[k]["TEST"] == "SCORE"
            dz.append(abs(got[k]["Z_STAT"] - z[i]))
            dp.append(abs(got[k]["LOG10_P"] + np.log10(p[i])))
    assert max(dz) <= 1e-10 and max(dp) <= 1e-10, (max(dz), max(dp))  # measured 9.2e-12 and 6.0e-12


def test_freq__equals_plink2_freq(live: Live) -> None:
    frame = live.fed.query("FREQ")
    ref = rows(live.cohort.root / "freq.afreq")
    assert frame.height == len(ref)
    for r, ours in zip(ref, frame.iter_rows(named=True), strict=True):
        assert (r["ID"], r["REF"], r["ALT"]) == (ours["ID"], ours["REF"], ours["ALT"])
        assert ours["OBS_CT"] == int(r["OBS_CT"])
        # PLINK 2 prints 6 significant digits (measured: at most 0.9993 of half a last digit)
        assert rounds_to(ours["ALT_FREQS"], r["ALT_FREQS"]), (r["ID"], ours["ALT_FREQS"], r["ALT_FREQS"])


def test_hwe__equals_plink2_hardy(live: Live) -> None:
    frame = live.fed.query("HWE ON 22")
    ref = rows(live.cohort.root / "hwe.hardy")
    assert frame.height == len(ref)
    for r, ours in zip(ref, frame.iter_rows(named=True), strict=True):
        assert (r["A1"], r["AX"]) == (ours["A1"], ours["AX"])
        assert (int(r["HOM_A1_CT"]), int(r["HET_A1_CT"]), int(r["TWO_AX_CT"])) == (
            ours["HOM_A1_CT"],
            ours["HET_A1_CT"],
            ours["TWO_AX_CT"],
        )
        # PLINK 2 prints 6 significant digits (measured: at most 0.9997 of half a last digit)
        assert rounds_to(ours["P"], r["P"]), (r["ID"], ours["P"], r["P"])


def _pooled_phenotypes(cohort: PlinkCohort) -> pl.DataFrame:
    return pl.concat(
        [pl.read_csv(cohort.out / f"{s}.pheno.tsv", separator="\t", null_values=["NA", ""]) for s in cohort.stations],
        how="vertical_relaxed",
    )


def test_count__equals_the_pooled_count(live: Live) -> None:
    ph = _pooled_phenotypes(live.cohort)
    want = ph.filter((pl.col("sex") == 1) & (pl.col("age") > 60)).height
    frame = live.fed.query("count samples where sex = 1 and AGE > 60".replace("AGE", "age"))
    assert frame["COUNT"].to_list() == [want] and frame["WITHHELD"].to_list() == [False]


def test_a_small_count__is_withheld(live: Live) -> None:
    ph = pl.read_csv(live.cohort.out / f"{live.cohort.stations[0]}.pheno.tsv", separator="\t", null_values=["NA", ""])
    ages = np.sort(ph["age"].drop_nulls().to_numpy())[::-1]
    cut = float(ages[1] + ages[2]) / 2  # two people at the first station are older; maybe more elsewhere
    admin = {"Authorization": f"Bearer {live.admins[0]}"}
    strict = {**OPEN.model_dump(), "min_cell_count": 5}
    assert httpx.put(f"{live.urls[0]}/admin/policy", json=strict, headers=admin).status_code == 200
    try:
        frame = live.fed.query(f"COUNT WHERE age > {cut}")
    finally:
        httpx.put(f"{live.urls[0]}/admin/policy", json=OPEN.model_dump(), headers=admin)
    assert frame["WITHHELD"].to_list() == [True] and frame["COUNT"].to_list() == [None]
    from better.query.output import rows_as_text

    assert rows_as_text(frame) == [["withheld"]]


# -- the planner -------------------------------------------------------------------------------------------
def test_explain__plan_shapes(live: Live) -> None:
    lin = live.fed.explain("GWAS LINEAR ldl ~ age + sex WHERE maf >= 0.05")
    assert "round 1: `linear`" in lin and "riding along the linear round" in lin and "round 2" not in lin
    hwe = live.fed.explain("GWAS LINEAR ldl ~ age + sex WHERE hwe_p > 1e-6")
    assert "round 1: `counts` task at every station (beside the main round)" in hwe and "round 2: `linear`" in hwe
    log = live.fed.explain("GWAS LOGISTIC case ~ age WHERE mac >= 10 TEST score")
    assert "from the score round's counts, before any Newton round" in log and "logistic_newton" not in log
    naive = live.fed.explain("GWAS LINEAR ldl ~ age + sex WHERE maf >= 0.05", naive=True)
    assert "round 1: `counts` task at every station (first)" in naive
    frame = live.fed.query("EXPLAIN FREQ 22:1-20000000 WHERE maf > 0.1")
    assert frame.columns == ["plan"] and "`counts`" in "\n".join(frame["plan"])


@pytest.mark.parametrize(
    "text",
    [
        "GWAS LINEAR ldl ~ age + sex WHERE maf >= 0.05 AND call_rate >= 0.97",
        "GWAS LINEAR ldl ~ age + sex WHERE hwe_p > 1e-4 AND mac >= 20",
        pytest.param("GWAS LOGISTIC case ~ age + sex WHERE maf >= 0.1", marks=pytest.mark.slow),
        "FREQ WHERE maf < 0.2 AND call_rate > 0.98 AND sex = 1",
    ],
)
def test_planned__equals_the_naive_plan(live: Live, text: str) -> None:
    planned = live.fed.query(text)
    naive = live.fed.query(text, naive=True)
    assert 0 < planned.height < 2500
    assert planned.columns == naive.columns and planned.height == naive.height
    for c in planned.columns:
        a, b = planned[c], naive[c]
        if a.dtype == pl.Float64:  # measured equal; BLAS may sum another set of rows in another order
            np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-12, equal_nan=True, err_msg=c)
        else:
            assert a.to_list() == b.to_list(), c


def test_errors__name_the_token_and_the_station(live: Live) -> None:
    with pytest.raises(QueryError, match=r"unknown column 'agee' \(did you mean 'age'\?\)\n.*\n\s+\^{4}"):
        live.fed.query("GWAS LINEAR ldl ~ agee + sex")
    with pytest.raises(QueryError, match="holds text"):
        live.fed.query("GWAS LINEAR ldl ~ smoking")
    with pytest.raises(QueryError, match="compare it with 'quoted text'"):
        live.fed.query("COUNT WHERE smoking = 3")
    bogus = StationClient("zagreb", f"http://127.0.0.1:{free_port()}", "x", retries=0)
    fed = Federation([*live.fed.stations, bogus])
    with pytest.raises(StationError, match="station zagreb: unreachable"):
        fed.query("COUNT")
    frame = fed.query("COUNT", allow_partial=True)
    assert frame["LEFT_OUT"].to_list()[0].startswith("zagreb")
    assert frame["COUNT"].to_list() == live.fed.query("COUNT")["COUNT"].to_list()
    assert "ran again without station zagreb" in fed.notes[0]


# -- secure aggregation (on by default: three stations) -------------------------------------------------
@pytest.mark.slow  # the unit tests in tests/test_secure_aggregation.py check the same on random cohorts
def test_secure_aggregation__is_on_and_equals_the_unmasked_run(live: Live) -> None:
    """The comparisons above ran masked; the unmasked run gives the same table within the fixed-point
    precision (the masks cancel exactly; only the rounding of each station's numbers to 2^-40 remains)."""
    plain = Federation(live.fed.stations, secure_aggregation="off")
    for text in (f"GWAS LINEAR ldl ~ {FORMULA}", f"GWAS LOGISTIC case ~ {FORMULA}", "HWE"):
        masked = live.fed.query(text)
        assert live.fed.last_plan is not None and live.fed.last_plan.secure
        clear = plain.query(text)
        assert plain.last_plan is not None and not plain.last_plan.secure
        assert masked.columns == clear.columns and masked.height == clear.height
        for c in masked.columns:
            a, b = masked[c], clear[c]
            if a.dtype == pl.Float64:
                # measured: at most 2.4e-10 relative (T_STAT); atol for exact zeros
                np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=3e-9, atol=1e-12, equal_nan=True, err_msg=c)
            else:
                assert a.to_list() == b.to_list(), c
    assert "secure aggregation: on" in live.fed.explain("FREQ")


def _secure_count(live: Live, station: int, participants: list[dict[str, str]], session: str) -> httpx.Response:
    s = live.fed.stations[station]
    body = {
        "dataset": "c",
        "analysis": "count",
        "kind": "sample_count",
        "secure": {"session": session, "round": 0, "participants": participants},
        "exchange": {"phase": "seal"},
    }
    return httpx.post(f"{s.url}/tasks", json=body, headers={"Authorization": f"Bearer {s.token}"}, timeout=30)


def test_secure_aggregation__stations_refuse_unsafe_rounds(live: Live) -> None:
    from better.station_api.secure_agg import StationSecrets
    from tests.secure_local import station_secrets

    me = live.fed.stations[0]
    mine = httpx.get(f"{me.url}/info").json()["agreement_key"]
    others = [{"name": s.name, "agreement_key": s.public_text} for s in station_secrets(2)]
    ok = [{"name": me.name, "agreement_key": mine}, *others]
    session = secrets.token_hex(16)
    assert _secure_count(live, 0, ok, session).status_code == 202
    replay = _secure_count(live, 0, ok, session)  # the same mask twice would leak a difference
    assert replay.status_code == 403 and replay.json()["detail"]["rule"] == "secure_context_reused"
    impostor = [{"name": me.name, "agreement_key": StationSecrets("x", X25519PrivateKey.generate()).public_text}]
    r = _secure_count(live, 0, impostor + others, secrets.token_hex(16))
    assert r.status_code == 403 and r.json()["detail"]["rule"] == "secure_participants"
    r = _secure_count(live, 0, ok[:2], secrets.token_hex(16))
    assert r.status_code == 403 and r.json()["detail"]["rule"] == "min_secure_participants"


@pytest.mark.slow
def test_secure_aggregation__a_station_that_drops_out_makes_the_query_restart_without_it(
    live: Live, tmp_path: Path
) -> None:
    extra = Store.create(tmp_path / "extra")
    ingest_vcf(extra, "c", str(live.cohort.out / "milano.vcf.gz"), str(live.cohort.out / "milano.pheno.tsv"))
    researcher, record = new_token("ana", "researcher")
    write_config(extra.path, StationConfig(name="extra", policy=OPEN, tokens=[record]))
    text = f"GWAS LOGISTIC case ~ {FORMULA}"
    with ExitStack() as stack:
        url = stack.enter_context(station_process(extra.path, threads=1))
        fed = Federation([*live.fed.stations, StationClient("extra", url, researcher, retries=0)])

        def drop_after_first_round(stage: str, round_no: int, kind: str, stations: int, seconds: float) -> None:
            if stations == 4 and round_no == 1 and stage == "gwas":
                stack.close()  # the extra station's server stops in the middle of the query

        frame = fed.query(text, on_round=drop_after_first_round)
    assert frame["LEFT_OUT"].to_list()[0].startswith("extra")
    assert any("ran again without station extra" in n for n in fed.notes)
    expected = live.fed.query(text)
    for c in expected.columns:
        assert frame[c].to_list() == expected[c].to_list() or (
            expected[c].dtype == pl.Float64
            and np.allclose(frame[c].to_numpy(), expected[c].to_numpy(), rtol=1e-12, equal_nan=True)
        ), c
