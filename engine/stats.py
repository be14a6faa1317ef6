"""Finalizers shared by several analyses: p-values in log space, the HWE exact test, chi-square tests.

P-values are returned with ``LOG10_P`` computed without underflow, so that a p-value below the smallest
double still has a finite ``-log10``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from better.engine.accelerate import jit

LN10 = float(np.log(10.0))


def log10_p_normal(z: np.ndarray) -> np.ndarray:
    """``log10`` of the two-sided normal p-value of ``z`` (finite for any finite ``z``).

    Examples
    --------
    >>> float(np.round(log10_p_normal(np.array([1.959963984540054]))[0], 6))
    -1.30103
    >>> bool(np.isfinite(log10_p_normal(np.array([60.0]))[0]))
    True
    """
    z = np.asarray(z, dtype=float)
    return (np.log(2.0) + special.log_ndtr(-np.abs(z))) / LN10


def log10_p_t(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """``log10`` of the two-sided Student-t p-value, exact in the far tail too.

    Uses ``p = I_x(df/2, 1/2)`` with ``x = df / (df + t^2)``; where ``p`` underflows, ``log I_x`` is
    evaluated directly: ``a log x + b log(1 - x) - log B(a, b)`` plus the log of the incomplete beta
    continued fraction (Lentz), which converges in the whole tail.

    Examples
    --------
    >>> from scipy import stats
    >>> round(float(log10_p_t(np.array([2.5]), np.array([30.0]))[0]), 10) == round(
    ...     float(np.log10(2 * stats.t.sf(2.5, 30))), 10)
    True
    """
    t = np.abs(np.asarray(t, dtype=float))
    df = np.broadcast_to(np.asarray(df, dtype=float), t.shape)
    out = np.full(t.shape, np.nan)
    ok = np.isfinite(t) & (df > 0)
    p = np.where(ok, 2.0 * special.stdtr(np.where(ok, df, 1.0), -np.where(ok, t, 0.0)), np.nan)
    direct = ok & (p > 1e-250)
    out[direct] = np.log10(p[direct])
    tail = ok & ~direct
    if tail.any():
        a = df[tail] / 2.0
        t2 = t[tail] ** 2
        log_x = np.log(df[tail]) - np.log(df[tail] + t2)
        log_1mx = np.log(t2) - np.log(df[tail] + t2)
        x = np.exp(log_x)
        cf = np.array([_betacf(ai, 0.5, xi) for ai, xi in zip(a, x, strict=True)])
        log_i = a * log_x + 0.5 * log_1mx - special.betaln(a, 0.5) + np.log(cf) - np.log(a)
        out[tail] = log_i / LN10
    return out


@jit
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), as in Numerical Recipes."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def log10_p_chi2(stat: np.ndarray, df: int) -> np.ndarray:
    """``log10`` of the upper-tail chi-square p-value (via the normal tail for 1 df)."""
    stat = np.asarray(stat, dtype=float)
    if df == 1:
        return log10_p_normal(np.sqrt(np.maximum(stat, 0.0)))
    p = special.chdtrc(df, stat)
    out = np.log10(np.maximum(p, np.finfo(float).tiny))
    small = p < 1e-250
    if small.any():  # log of the regularised upper incomplete gamma by its asymptotic series
        a = df / 2.0
        x = stat[small] / 2.0
        out[small] = ((a - 1) * np.log(x) - x - special.gammaln(a) + np.log1p((a - 1) / x)) / LN10
    return out


@jit
def _hwe_exact_one(n_het: int, n_hom1: int, n_hom2: int) -> float:
    n_rare_hom = min(n_hom1, n_hom2)
    n_common_hom = max(n_hom1, n_hom2)
    n = n_het + n_common_hom + n_rare_hom
    if n == 0:
        return 1.0
    rare = 2 * n_rare_hom + n_het
    probs = np.zeros(rare + 1)
    mid = rare * (2 * n - rare) // (2 * n)
    if (rare & 1) ^ (mid & 1):
        mid += 1
    probs[mid] = 1.0
    total = 1.0
    curr_hets = mid
    curr_homr = (rare - mid) // 2
    curr_homc = n - curr_hets - curr_homr
    while curr_hets >= 2:
        probs[curr_hets - 2] = (
            probs[curr_hets] * curr_hets * (curr_hets - 1.0) / (4.0 * (curr_homr + 1.0) * (curr_homc + 1.0))
        )
        total += probs[curr_hets - 2]
        curr_hets -= 2
        curr_homr += 1
        curr_homc += 1
    curr_hets = mid
    curr_homr = (rare - mid) // 2
    curr_homc = n - curr_hets - curr_homr
    while curr_hets <= rare - 2:
        probs[curr_hets + 2] = probs[curr_hets] * 4.0 * curr_homr * curr_homc / ((curr_hets + 2.0) * (curr_hets + 1.0))
        total += probs[curr_hets + 2]
        curr_hets += 2
        curr_homr -= 1
        curr_homc -= 1
    target = probs[n_het]
    p = 0.0
    for i in range(rare + 1):
        if probs[i] <= target * (1.0 + 1e-7):
            p += probs[i]
    return min(1.0, p / total)


@jit
def _hwe_exact(het: np.ndarray, hom1: np.ndarray, hom2: np.ndarray, out: np.ndarray) -> None:
    for i in range(het.shape[0]):
        out[i] = _hwe_exact_one(het[i], hom1[i], hom2[i])


def hwe_exact(n_hom_ref: np.ndarray, n_het: np.ndarray, n_hom_alt: np.ndarray) -> np.ndarray:
    """Hardy-Weinberg exact test p-values (Wigginton, Cutler & Abecasis 2005), as ``plink2 --hardy``.

    Examples
    --------
    >>> float(np.round(hwe_exact(np.array([50]), np.array([0]), np.array([50]))[0], 12)) < 1e-20
    True
    >>> float(hwe_exact(np.array([25]), np.array([50]), np.array([25]))[0]) > 0.5
    True
    """
    a = np.asarray(n_hom_ref, dtype=np.int64)
    out = np.empty(a.shape[0])
    _hwe_exact(np.asarray(n_het, dtype=np.int64), a, np.asarray(n_hom_alt, dtype=np.int64), out)
    return out


def allelic_chi2(case: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """1-df allelic chi-square from ``(variants, 3)`` genotype counts (hom-ref, het, hom-alt) per group."""
    alt = np.stack([case[:, 1] + 2 * case[:, 2], ctrl[:, 1] + 2 * ctrl[:, 2]], axis=1).astype(float)
    ref = np.stack([2 * case[:, 0] + case[:, 1], 2 * ctrl[:, 0] + ctrl[:, 1]], axis=1).astype(float)
    return _chi2_2xk(np.stack([alt, ref], axis=2))


def genotypic_chi2(case: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """2-df genotypic chi-square (2 x 3 table of genotype counts)."""
    return _chi2_2xk(np.stack([case, ctrl], axis=1).astype(float))


def _chi2_2xk(table: np.ndarray) -> np.ndarray:
    """Pearson chi-square of ``(variants, 2, k)`` tables; NaN where a margin is empty."""
    total = table.sum(axis=(1, 2), keepdims=True)
    rows = table.sum(axis=2, keepdims=True)
    cols = table.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = rows * cols / total
        terms = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
        stat = terms.sum(axis=(1, 2))
    empty = (rows.min(axis=(1, 2)) == 0) | ((cols > 0).sum(axis=(1, 2)) < 2)
    return np.where(empty, np.nan, stat)


def trend_chi2(case: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """Cochran-Armitage trend test chi-square (1 df), weights 0, 1, 2."""
    case = case.astype(float)
    ctrl = ctrl.astype(float)
    w = np.array([0.0, 1.0, 2.0])
    r = case.sum(axis=1)
    s = ctrl.sum(axis=1)
    n = r + s
    col = case + ctrl
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (case * w).sum(axis=1) * s - (ctrl * w).sum(axis=1) * r
        var = r * s / n * ((col * w**2).sum(axis=1) * n - ((col * w).sum(axis=1)) ** 2)
        stat = t**2 / var
    return np.where(var > 0, stat, np.nan)


def mach_r2(alt: np.ndarray, squares: np.ndarray, called: np.ndarray) -> np.ndarray:
    """MaCH's imputation r² from dosage sums (PLINK 2's ``MACH_R2``): the dosages' variance over the
    ``2p(1 - p)`` of hard calls at that frequency; NaN for a monomorphic variant or one without dosages.

    Examples
    --------
    >>> d = np.array([0.05, 0.95, 1.5, 0.5, 1.2, 1.0])
    >>> round(float(mach_r2(np.array([d.sum()]), np.array([(d * d).sum()]), np.array([6.0]))[0]), 4)
    0.4542
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = alt / called
        p = mean / 2.0
        spread = 2.0 * p * (1.0 - p)
        r2 = (squares / called - mean * mean) / spread
    return np.where((called > 0) & (spread > 0), r2, np.nan)
