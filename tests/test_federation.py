"""Federated results equal the pooled analysis, for random cohorts split into random stations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from better.engine.analyses.counts import CountsProtocol
from better.engine.analyses.linear import LinearProtocol
from better.engine.analyses.logistic import LogisticProtocol
from better.engine.design import Block, Design
from better.engine.errors import InputError
from better.engine.protocol import run_local
from better.genomics.dosage import from_codes, from_units, hard_calls
from better.genomics.packing import pack_genotypes, unpack_genotypes
from tests.engine_reference import pooled_ols

KEYS = {"chrom": "1", "ref": "A", "alt": "G"}


def block(codes: np.ndarray, rows: np.ndarray) -> Block:
    """A block of rows ``rows`` of codes (int8) or of dosage units (uint16: the block then has dosages)."""
    keys = {
        "chrom": np.array([KEYS["chrom"]] * rows.size, dtype=object),
        "pos": rows + 100,
        "ref": np.array(["A"] * rows.size, dtype=object),
        "alt": np.array(["G"] * rows.size, dtype=object),
    }
    if codes.dtype == np.uint16:
        return Block(keys, hard_calls(codes[rows])[0], codes[rows])
    return Block(keys, pack_genotypes(codes[rows]))


def imputed(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dosage units around the codes: some exact, most a little uncertain, some far from any call."""
    noise = rng.normal(scale=rng.choice([600.0, 3000.0, 9000.0], size=(codes.shape[0], 1)), size=codes.shape)
    units = np.clip(codes.astype(np.int64) * 16384 + np.rint(noise), 0, 32768)
    units = np.where(rng.random(codes.shape) < 0.3, codes.astype(np.int64) * 16384, units)
    return np.where(codes == 3, 65535, units).astype(np.uint16)


@st.composite
def split_cohorts(draw: st.DrawFn, binary: bool = False) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    n = draw(st.integers(12, 90))
    m = draw(st.integers(1, 6))
    freq = rng.uniform(0.02, 0.6, m)
    codes = rng.binomial(2, freq[:, None], size=(m, n)).astype(np.int8)
    codes[rng.random((m, n)) < draw(st.sampled_from([0.0, 0.05, 0.3]))] = 3
    if draw(st.booleans()):
        codes[0] = np.where(codes[0] == 3, 3, 0)  # monomorphic
    C = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n).astype(float)])
    if binary:
        y = (rng.random(n) < 1 / (1 + np.exp(-(0.3 * C[:, 1] + 0.4 * (codes[-1] % 3) - 0.5)))).astype(float)
    else:
        y = 0.5 * C[:, 1] + 0.3 * (codes[-1] % 3) + rng.normal(size=n)
    include = rng.random(n) < 0.9
    n_st = draw(st.integers(1, 5))
    station = rng.integers(0, n_st, n)
    station[0] = n_st - 1  # make sure the last station exists; it may hold a single sample
    lacks = {s: rng.random(m) < 0.2 for s in range(n_st)}  # variants a station does not have at all
    hard: set[int] = set()
    if draw(st.booleans()):  # imputed: dosages at most stations, only the hard calls of them at some
        codes = imputed(codes, rng)
        hard = {s for s in range(n_st) if rng.random() < 0.3}
        for s in hard:
            codes[:, station == s] = from_codes(hard_call_codes(codes[:, station == s]))
    return {
        "codes": codes,
        "C": C,
        "y": y,
        "include": include,
        "station": station,
        "n_st": n_st,
        "lacks": lacks,
        "hard": hard,
    }


def hard_call_codes(units: np.ndarray) -> np.ndarray:
    """The hard-call codes of dosage units (PLINK 2's threshold)."""
    return unpack_genotypes(hard_calls(units)[0], units.shape[1])


def stations_of(c: dict) -> list[tuple[Design, object]]:
    out = []
    for s in range(c["n_st"]):
        idx = np.flatnonzero(c["station"] == s)
        inc = c["include"][idx]
        C = np.where(inc[:, None], c["C"][idx], 0.0)
        design = Design(C=C, y=np.where(inc, c["y"][idx], 0.0), include=inc, names=("intercept", "x1", "x2"))
        rows = np.flatnonzero(~c["lacks"][s])
        codes = c["codes"][:, idx]
        if s in c["hard"]:  # a station that holds hard calls only
            codes = hard_call_codes(codes)
        out.append((design, (lambda _t, codes=codes, rows=rows: [block(codes, rows)])))
    return out


def pooled_of(c: dict) -> tuple[np.ndarray, list[tuple[Design, object]]]:
    """The pooled cohort, where a station's samples are missing for variants that station lacks."""
    codes = c["codes"].copy()
    for s in range(c["n_st"]):
        codes[np.ix_(c["lacks"][s], c["station"] == s)] = 65535 if codes.dtype == np.uint16 else 3
    inc = c["include"]
    design = Design(
        C=np.where(inc[:, None], c["C"], 0.0),
        y=np.where(inc, c["y"], 0.0),
        include=inc,
        names=("intercept", "x1", "x2"),
    )
    rows = np.flatnonzero(~np.all([c["lacks"][s] for s in range(c["n_st"])], axis=0))  # held somewhere
    return codes, [(design, (lambda _t: [block(codes, rows)]))]


def aligned(res: dict, m: int) -> dict:
    pos = np.asarray(res["pos"]) - 100
    out = {}
    for name, col in res.items():
        full = np.full(m, np.nan, dtype=object if np.asarray(col).dtype == object else float)
        full[pos] = col
        out[name] = full
    return out


def close(a: np.ndarray, b: np.ndarray, rtol: float) -> None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b)), (a, b)
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=rtol, atol=1e-10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split_cohorts())
def test_linear__federated_equals_pooled_and_statsmodels(c: dict) -> None:
    m = c["codes"].shape[0]
    fed = run_local(LinearProtocol(), stations_of(c))
    codes, pooled_station = pooled_of(c)
    pooled = run_local(LinearProtocol(), pooled_station)
    fed, pooled = aligned(fed, m), aligned(pooled, m)
    for col in ("OBS_CT", "BETA", "SE", "T_STAT", "LOG10_P", "A1_FREQ"):
        close(fed[col], pooled[col], 1e-8)
    assert list(fed["ERRCODE"]) == list(pooled["ERRCODE"])
    ref = pooled_ols(from_units(codes) if codes.dtype == np.uint16 else codes, c["C"], c["y"], c["include"])
    ok = np.array([e == "" for e in pooled["ERRCODE"]])
    np.testing.assert_allclose(pooled["BETA"][ok].astype(float), ref[ok, 0], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pooled["SE"][ok].astype(float), ref[ok, 1], rtol=1e-7, atol=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split_cohorts(binary=True))
def test_counts__federated_equals_pooled_exactly(c: dict) -> None:
    m = c["codes"].shape[0]
    for groups in (1, 2):
        fed = aligned(run_local(CountsProtocol(groups=groups), stations_of(c)), m)
        pooled = aligned(run_local(CountsProtocol(groups=groups), pooled_of(c)[1]), m)
        for col in fed:
            if col in ("chrom", "ref", "alt"):
                continue
            close(fed[col], pooled[col], 1e-12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split_cohorts(binary=True), st.sampled_from(["wald", "score", "firth"]))
def test_logistic__federated_equals_pooled(c: dict, test: str) -> None:
    m = c["codes"].shape[0]
    try:
        pooled = aligned(run_local(LogisticProtocol(k=3, test=test), pooled_of(c)[1]), m)
    except InputError:  # one class only, or covariates that separate: the federation must refuse too
        with pytest.raises(InputError):
            run_local(LogisticProtocol(k=3, test=test), stations_of(c))
        return
    fed = aligned(run_local(LogisticProtocol(k=3, test=test), stations_of(c)), m)
    # A nearly separated variant follows PLINK 2's Newton path, whose give-up rules are thresholds on the
    # steps: sums added in another order can tip one (federated and pooled then differ in FIRTH? alone).
    steady = ~near_empty(c) if test == "wald" else np.ones(m, dtype=bool)
    assert [e for e, s in zip(fed["ERRCODE"], steady, strict=True) if s] == [
        e for e, s in zip(pooled["ERRCODE"], steady, strict=True) if s
    ]
    assert list(fed["FIRTH?"][steady]) == list(pooled["FIRTH?"][steady])
    for col in ("OBS_CT", "OR", "LOG(OR)_SE", "Z_STAT", "A1_FREQ"):
        close(fed[col][steady], pooled[col][steady], 1e-5)


def near_empty(c: dict) -> np.ndarray:
    """Per variant: a case/control x allele cell of the pooled analysed samples under
    :data:`~better.engine.analyses.logistic.centre.NEAR_EMPTY_CELL` alleles (missing where a station lacks it)."""
    from better.engine.analyses.logistic.centre import NEAR_EMPTY_CELL

    genotypes, _ = pooled_of(c)
    if genotypes.dtype == np.uint16:
        missing, g = genotypes == 65535, np.where(genotypes == 65535, 0, genotypes) / 16384.0
    else:
        missing, g = genotypes == 3, np.where(genotypes == 3, 0, genotypes).astype(float)
    out = np.zeros(genotypes.shape[0], dtype=bool)
    for case in (0.0, 1.0):
        inside = c["include"] & (c["y"] == case) & ~missing
        alt = (g * inside).sum(axis=1)
        out |= np.minimum(alt, 2 * inside.sum(axis=1) - alt) < NEAR_EMPTY_CELL
    return out


def test_logistic__wald_equals_statsmodels() -> None:
    import statsmodels.api as sm

    rng = np.random.default_rng(4)
    n, m = 1500, 12
    codes = rng.binomial(2, rng.uniform(0.1, 0.5, m)[:, None], size=(m, n)).astype(np.int8)
    codes[rng.random((m, n)) < 0.02] = 3
    C = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.5 * C[:, 1] + 0.3 * (codes[0] % 3) - 0.4)))).astype(float)
    inc = np.ones(n, dtype=bool)
    halves = [np.arange(n) < 700, np.arange(n) >= 700]
    stations = []
    for h in halves:
        stations.append(
            (
                Design(C=C[h], y=y[h], include=inc[h], names=("i", "a", "b")),
                (lambda _t, h=h: [block(codes[:, h], np.arange(m))]),
            )
        )
    res = aligned(run_local(LogisticProtocol(k=3), stations), m)
    for v in range(m):
        keep = codes[v] != 3
        fit = sm.Logit(y[keep], np.column_stack([C[keep], codes[v, keep]])).fit(disp=0, tol=1e-12, maxiter=100)
        assert res["FIRTH?"][v] == "N"
        assert abs(float(res["Z_STAT"][v]) - fit.tvalues[-1]) < 1e-6
        assert abs(np.log(float(res["OR"][v])) - fit.params[-1]) < 1e-7


def test_logistic__score_test_is_a_wald_neighbour() -> None:
    """Under small effects the score and Wald statistics agree closely (a sanity check, not exactness)."""
    rng = np.random.default_rng(9)
    n, m = 3000, 6
    codes = rng.binomial(2, 0.3, size=(m, n)).astype(np.int8)
    C = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = (rng.random(n) < 0.4).astype(float)
    st_ = [(Design(C=C, y=y, include=np.ones(n, bool), names=("i", "a")), (lambda _t: [block(codes, np.arange(m))]))]
    wald = run_local(LogisticProtocol(k=2), st_)
    score = run_local(LogisticProtocol(k=2, test="score"), st_)
    np.testing.assert_allclose(score["Z_STAT"], wald["Z_STAT"], atol=0.05)


def test_linear__degenerate_variants_are_nan_with_code() -> None:
    n = 30
    rng = np.random.default_rng(1)
    codes = np.stack([np.zeros(n), np.full(n, 2), np.where(np.arange(n) < 15, 0, 1), np.full(n, 3)]).astype(np.int8)
    C = np.column_stack([np.ones(n), np.where(np.arange(n) < 15, 0.0, 1.0)])  # collinear with variant 2
    y = rng.normal(size=n)
    res = run_local(
        LinearProtocol(),
        [(Design(C=C, y=y, include=np.ones(n, bool), names=("i", "a")), (lambda _t: [block(codes, np.arange(4))]))],
    )
    assert list(res["ERRCODE"]) == [
        "CONST_OMITTED_ALLELE",
        "CONST_OMITTED_ALLELE",
        "CORR_TOO_HIGH",
        "SAMPLE_CT<=COVAR_CT",
    ]
    assert np.isnan(res["BETA"]).all() and np.isnan(res["P"]).all()


@pytest.mark.parametrize("n_stations", [1, 3])
def test_logistic__single_class_phenotype_is_a_clear_error(n_stations: int) -> None:
    n = 20
    C = np.ones((n, 1))
    designs = [
        (
            Design(C=C, y=np.zeros(n), include=np.ones(n, bool), names=("i",)),
            (lambda _t: [block(np.zeros((1, n), np.int8), np.arange(1))]),
        )
    ] * n_stations
    with pytest.raises(InputError, match="cases and controls"):
        run_local(LogisticProtocol(k=1), designs)
