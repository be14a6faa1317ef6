"""Kernels against their slow twins."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from better.engine.analyses.logistic.station import NewtonInputs, newton_sums
from better.engine.design import Design
from better.engine.kernels.counts import dosage_sums, genotype_counts
from better.engine.kernels.fastexp import exp_into
from better.engine.kernels.packed import NO_DOSAGES
from better.engine.kernels.regression import linear_sums, linear_sums_dense, score_sums, score_sums_dense
from better.engine.stats import allelic_chi2, hwe_exact, log10_p_chi2, log10_p_normal, log10_p_t, trend_chi2
from better.genomics.dosage import from_units, hard_calls
from better.genomics.packing import pack_genotypes
from tests.engine_reference import (
    as_dosages,
    counts_twin,
    linear_sum_arrays,
    linear_sums_twin,
    newton_sums_twin,
    score_sum_arrays,
    score_sums_twin,
)


@st.composite
def cohorts(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 23))
    m = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    codes = rng.choice(4, size=(m, n), p=draw(st.sampled_from([[0.25] * 4, [0.7, 0.2, 0.05, 0.05], [1, 0, 0, 0]])))
    C = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    y = rng.normal(size=n)
    include = rng.random(n) < 0.85
    return codes.astype(np.int8), C, y, include


@st.composite
def dosage_cohorts(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A cohort whose genotypes are stored dosage units: exact 0/1/2, uncertain values, missing."""
    codes, C, y, include = draw(cohorts())
    rng = np.random.default_rng(codes.size + draw(st.integers(0, 2**31)))
    units = (codes.astype(np.int64) * 16384 + rng.integers(-3000, 3000, size=codes.shape)).clip(0, 32768)
    units = np.where(rng.random(codes.shape) < 0.4, codes.astype(np.int64) * 16384, units)  # exact calls
    return np.where(codes == 3, 65535, units).astype(np.uint16), C, y, include


def genotype_inputs(genotypes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a kernel takes for codes or dosage units: packed hard calls and dosages; and the twins' input
    (codes, or float dosages with NaN missing)."""
    if genotypes.dtype == np.uint16:
        return hard_calls(genotypes)[0], genotypes, from_units(genotypes)
    return pack_genotypes(genotypes), NO_DOSAGES, genotypes


any_cohorts = st.one_of(cohorts(), dosage_cohorts())


@settings(max_examples=50, deadline=None)
@given(cohorts())
def test_genotype_counts__equals_twin(c: tuple) -> None:
    codes, _, y, include = c
    group = np.where(include, (y > 0).astype(int), -1)
    assert np.array_equal(genotype_counts(pack_genotypes(codes), group, 2), counts_twin(codes, group, 2))


@settings(max_examples=50, deadline=None)
@given(dosage_cohorts())
def test_nearest_genotype_counts__equal_rounded_dosages(c: tuple) -> None:
    """Nearest genotypes; and an allele only dosages below them carry counts its dosage, rounded up, as hets."""
    units, _, y, include = c
    group = np.where(include, (y > 0).astype(int), -1)
    nearest = np.where(units == 65535, 3, (units.astype(np.int64) + 8192) // 16384)
    want = counts_twin(nearest, group, 2)
    dosage = np.where(units == 65535, 0.0, units / 16384.0)
    for v in range(units.shape[0]):
        for g in range(2):
            inside = (group == g) & (units[v] != 65535)
            alt, called = dosage[v, inside].sum(), int(inside.sum())
            hom_ref, het, hom_alt, _ = want[v, g]
            if het + hom_alt == 0 and alt > 0:
                moved = min(int(np.ceil(alt)), hom_ref)
                want[v, g, 0] -= moved
                want[v, g, 1] += moved
            hom_ref, het, hom_alt, _ = want[v, g]
            if hom_ref + het == 0 and called and 2 * called - alt > 0:
                moved = min(int(np.ceil(2 * called - alt)), hom_alt)
                want[v, g, 2] -= moved
                want[v, g, 1] += moved
    assert np.array_equal(genotype_counts(hard_calls(units)[0], group, 2, units), want)


@settings(max_examples=50, deadline=None)
@given(any_cohorts)
def test_dosage_sums__equal_twin(c: tuple) -> None:
    genotypes, _, y, include = c
    packed, dosages, twin = genotype_inputs(genotypes)
    group = np.where(include, (y > 0).astype(int), -1)
    alt, squares, called = dosage_sums(packed, dosages, group, 2)
    g, missing = as_dosages(twin)
    for k in range(2):
        inside = (group == k) & ~missing
        np.testing.assert_allclose(alt[:, k], (g * inside).sum(axis=1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(squares[:, k], (g * g * inside).sum(axis=1), rtol=1e-12, atol=1e-12)
        assert np.array_equal(called[:, k], inside.sum(axis=1))


@settings(max_examples=50, deadline=None)
@given(any_cohorts)
def test_linear_sums__equals_twin(c: tuple) -> None:
    genotypes, C, y, include = c
    packed, dosages, codes = genotype_inputs(genotypes)
    got = linear_sum_arrays(codes.shape[0], C.shape[1])
    linear_sums(packed, dosages, C, y, include, *got.values())
    want = linear_sums_twin(codes, C, y, include)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)


@settings(max_examples=50, deadline=None)
@given(dosage_cohorts(), st.integers(1, 200))
def test_dense_sums_of_dosage_blocks__equal_twins(c: tuple, chunk: int) -> None:
    """The matrix-product path for dosage blocks, in chunks of every size, equals the slow twins."""
    import better.engine.kernels.regression as regression

    units, C, y, include = c
    m, k = units.shape[0], C.shape[1]
    rng = np.random.default_rng(units.size + chunk)
    resid, w = rng.normal(size=len(y)), rng.random(len(y))
    group = np.where(include, (y > 0).astype(np.int64), -1)
    old = regression.DENSE_CHUNK_VALUES
    regression.DENSE_CHUNK_VALUES = chunk
    try:
        lin = linear_sum_arrays(m, k)
        linear_sums_dense(units, C, y, include, *lin.values())
        score = score_sum_arrays(m, k)
        alt, miss = np.zeros((m, 2)), np.zeros((m, 2), np.int64)
        score_sums_dense(units, C, resid, w, include, *score.values(), group, alt, miss)
    finally:
        regression.DENSE_CHUNK_VALUES = old
    dosages = from_units(units)
    for got, want in (
        (lin, linear_sums_twin(dosages, C, y, include)),
        (score, score_sums_twin(dosages, C, resid, w, include)),
    ):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)
    g, missing = as_dosages(dosages)
    for j in range(2):
        np.testing.assert_allclose(alt[:, j], (g * ((group == j) & ~missing)).sum(axis=1), rtol=1e-12, atol=1e-12)
        assert np.array_equal(miss[:, j], ((group == j) & missing).sum(axis=1))


@settings(max_examples=50, deadline=None)
@given(any_cohorts)
def test_score_sums__equals_twin(c: tuple) -> None:
    genotypes, C, y, include = c
    packed, dosages, codes = genotype_inputs(genotypes)
    m, k = codes.shape[0], C.shape[1]
    rng = np.random.default_rng(codes.size)
    resid, w = rng.normal(size=len(y)), rng.random(len(y))
    got = score_sum_arrays(m, k)
    group = np.where(include, (y > 0).astype(np.int64), -1)
    alt, miss = np.zeros((m, 2)), np.zeros((m, 2), np.int64)
    score_sums(packed, dosages, C, resid, w, include, *got.values(), group, alt, miss)
    want = score_sums_twin(codes, C, resid, w, include)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)
    g, missing = as_dosages(codes)
    for k in range(2):
        np.testing.assert_allclose(alt[:, k], (g * ((group == k) & ~missing)).sum(axis=1), rtol=1e-12)
        assert np.array_equal(miss[:, k], ((group == k) & missing).sum(axis=1))


@settings(max_examples=50, deadline=None)
@given(any_cohorts, st.integers(1, 700))
def test_newton_sums__equals_twin(c: tuple, chunk: int) -> None:
    """Chunks of every size (down to one value, so one variant a chunk), Firth and likelihood rows mixed."""
    import better.engine.analyses.logistic.station as logistic

    genotypes, C, y, include = c
    packed, dosages, codes = genotype_inputs(genotypes)
    m, kk = codes.shape[0], C.shape[1] + 1
    rng = np.random.default_rng(codes.size + chunk)
    y = (y > 0).astype(float)
    C = np.where(include[:, None], C, np.nan)  # excluded samples' rows must not matter
    beta = rng.normal(scale=0.7, size=(m, kk))
    a = rng.normal(size=(m, kk, kk))
    inv = a @ a.transpose(0, 2, 1) / kk
    firth, loglik = rng.random(m) < 0.5, rng.random(m) < 0.5
    rows = rng.permutation(m)
    old = logistic.NEWTON_CHUNK_VALUES
    logistic.NEWTON_CHUNK_VALUES = chunk
    try:
        inputs = NewtonInputs.of(Design(C=C, y=y, include=include, names=tuple("abc")))
        got = newton_sums(packed, dosages, rows, beta, inputs, inv, firth, loglik)
    finally:
        logistic.NEWTON_CHUNK_VALUES = old
    want = newton_sums_twin(codes[rows], beta, np.nan_to_num(C), y, include, inv, firth, loglik)
    for name, g, w in zip(("xwx", "score", "loglik"), got[:3], want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12, err_msg=name)
    group = np.where(include, (y > 0.5).astype(np.int64), -1)
    g, missing = as_dosages(codes[rows])
    for k in range(2):
        inside = group == k
        assert np.array_equal(got[3][:, k, 0], (inside & ~missing).sum(axis=1))  # called
        np.testing.assert_allclose(got[3][:, k, 1], (g * (inside & ~missing)).sum(axis=1), rtol=1e-12)  # ALT
        assert np.array_equal(got[3][:, k, 2], (inside & missing).sum(axis=1))  # missing


def test_fast_exp__within_two_ulp_of_numpy_everywhere() -> None:
    x = np.concatenate(
        [
            np.linspace(-708, 708, 200_001),
            np.random.default_rng(0).normal(scale=5, size=100_000),
            [0.0, -0.0, 1e-300, -1e-300, 0.5 * np.log(2), -0.5 * np.log(2)],
        ]
    )
    out, scratch = np.empty_like(x), np.empty(x.size, dtype=np.int64)
    exp_into(x, out, scratch)
    want = np.exp(x)
    assert np.max(np.abs(out / want - 1.0)) <= 2 * np.finfo(float).eps
    edge = np.array([-1e4, -709.0, 709.0, 1e4, np.nan])
    out, scratch = np.empty(5), np.empty(5, dtype=np.int64)
    exp_into(edge, out, scratch)
    np.testing.assert_allclose(out[:4], np.exp([-708.0, -708.0, 708.0, 708.0]), rtol=1e-15)
    assert np.isnan(out[4])


def test_hwe_exact__matches_enumeration() -> None:
    """Exact test against a direct enumeration of the conditional het distribution (Levene 1949)."""
    from math import lgamma

    def direct(hom1: int, het: int, hom2: int) -> float:
        n = hom1 + het + hom2
        rare = 2 * min(hom1, hom2) + het

        def logp(h: int) -> float:
            a = (rare - h) // 2
            b = n - h - a
            return (
                lgamma(n + 1)
                - lgamma(a + 1)
                - lgamma(h + 1)
                - lgamma(b + 1)
                + h * np.log(2)
                + lgamma(rare + 1)
                + lgamma(2 * n - rare + 1)
                - lgamma(2 * n + 1)
            )

        probs = {h: np.exp(logp(h)) for h in range(rare % 2, rare + 1, 2)}
        return min(1.0, sum(p for p in probs.values() if p <= probs[het] * (1 + 1e-7)))

    for hom1, het, hom2 in [(100, 50, 10), (10, 0, 10), (57, 31, 12), (0, 1, 0), (500, 2, 0), (3, 40, 2)]:
        got = hwe_exact(np.array([hom1]), np.array([het]), np.array([hom2]))[0]
        assert abs(got - direct(hom1, het, hom2)) < 1e-9, (hom1, het, hom2)


def test_pvalues__agree_with_scipy_and_stay_finite() -> None:
    from scipy import stats

    t = np.array([0.1, 2.0, 8.0, 40.0])
    np.testing.assert_allclose(10 ** log10_p_t(t, np.full(4, 50.0)), 2 * stats.t.sf(t, 50), rtol=1e-9)
    np.testing.assert_allclose(10 ** log10_p_normal(t), 2 * stats.norm.sf(t), rtol=1e-9)
    np.testing.assert_allclose(10 ** log10_p_chi2(np.array([3.0, 20.0]), 2), stats.chi2.sf([3.0, 20.0], 2), rtol=1e-9)
    extreme = log10_p_t(np.array([300.0]), np.array([5000.0]))[0]
    assert np.isfinite(extreme) and extreme < -300
    # Far tail: scipy still resolves p = 1e-308 directly; the log-space path must agree there.
    assert abs(log10_p_t(np.array([38.0]), np.array([30000.0]))[0] - np.log10(2 * stats.t.sf(38.0, 30000))) < 1e-9
    # ... and approach the normal limit at huge df (gap about t^4 / (4 df) * log10(e) = 7e-4 here).
    assert abs(log10_p_t(np.array([50.0]), np.array([1e9]))[0] - log10_p_normal(np.array([50.0]))[0]) < 2e-3
    assert np.isfinite(log10_p_normal(np.array([100.0]))[0])


def test_case_control_tests__against_scipy() -> None:
    from scipy import stats

    case = np.array([[30, 50, 20]])
    ctrl = np.array([[50, 40, 10]])
    alleles = np.array([[110, 90], [140, 60]])
    want = stats.chi2_contingency(alleles, correction=False)[0]
    assert abs(allelic_chi2(case, ctrl)[0] - want) < 1e-9
    # Trend test: n times the squared correlation between genotype and status.
    g = np.repeat([0, 1, 2, 0, 1, 2], np.concatenate([case[0], ctrl[0]]))
    status = np.repeat([1, 1, 1, 0, 0, 0], np.concatenate([case[0], ctrl[0]]))
    r = np.corrcoef(g, status)[0, 1]
    assert abs(trend_chi2(case, ctrl)[0] - len(g) * r**2) < 1e-9


def test_newton_sums__a_huge_inverse_information_cannot_scale_the_score() -> None:
    """A leverage lies in [0, 1]: whatever ``inv_info`` a coordinator sends, the Firth-corrected score
    stays within what the data give (a failure past the secure-aggregation range would be a release)."""
    rng = np.random.default_rng(3)
    n, m = 60, 4
    codes = rng.integers(0, 3, size=(m, n)).astype(np.uint8)
    C = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = (rng.random(n) < 0.5).astype(float)
    include = np.ones(n, dtype=bool)
    inputs = NewtonInputs.of(Design(C=C, y=y, include=include, names=("a", "b")))
    beta = np.zeros((m, 3))
    firth, loglik = np.ones(m, dtype=bool), np.zeros(m, dtype=bool)
    huge = np.broadcast_to(np.eye(3) * 1e30, (m, 3, 3)).copy()
    _, score, _, _ = newton_sums(pack_genotypes(codes), NO_DOSAGES, np.arange(m), beta, inputs, huge, firth, loglik)
    X = np.concatenate([np.broadcast_to(C, (m, n, 2)), codes[:, :, None].astype(float)], axis=2)
    assert np.all(np.abs(score) <= 1.5 * np.abs(X).sum(axis=1) + 1e-9)
