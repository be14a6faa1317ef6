"""Per-variant sufficient statistics for linear and logistic regression on additive genotypes.

Conventions for all kernels: ``C`` is the ``(n, k)`` covariate matrix whose first column is the
intercept, ``include[i]`` says whether sample ``i`` is analysed (phenotype and covariates present,
sample filter met). A sample whose genotype is missing drops out of that variant's model, as in
PLINK 2's ``--glm``; the kernels return what is needed to remove its contribution exactly.
Symmetric ``k x k`` blocks are returned in full (not packed) for clarity; ``k`` is small.
"""

from __future__ import annotations

import numpy as np

from engine.accelerate import jit, jit_parallel, prange
from engine.kernels.packed import nonzero_codes


@jit_parallel
def linear_sums(
    packed: np.ndarray,
    C: np.ndarray,
    y: np.ndarray,
    include: np.ndarray,
    cg: np.ndarray,
    gg: np.ndarray,
    gy: np.ndarray,
    n_miss: np.ndarray,
    m_cc: np.ndarray,
    m_cy: np.ndarray,
    m_yy: np.ndarray,
) -> None:
    """For each variant: ``C'g``, ``g'g``, ``g'y`` over called samples, and over samples with a missing
    genotype: their count, ``sum c c'``, ``sum c y`` and ``sum y^2``. Outputs must be zeroed."""
    n, k = C.shape
    for v in prange(packed.shape[0]):
        idx = np.empty(n, dtype=np.int64)
        codes = np.empty(n, dtype=np.int8)
        for e in range(nonzero_codes(packed[v], n, idx, codes)):
            s = idx[e]
            code = codes[e]
            if not include[s]:
                continue
            if code == 3:
                n_miss[v] += 1
                ys = y[s]
                m_yy[v] += ys * ys
                for a in range(k):
                    ca = C[s, a]
                    m_cy[v, a] += ca * ys
                    for c in range(a + 1):
                        m_cc[v, a, c] += ca * C[s, c]
            else:
                g = float(code)
                gg[v] += g * g
                gy[v] += g * y[s]
                for a in range(k):
                    cg[v, a] += g * C[s, a]
        for a in range(k):
            for c in range(a):
                m_cc[v, c, a] = m_cc[v, a, c]


@jit
def weighted_gram(C: np.ndarray, w: np.ndarray, r: np.ndarray, include: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum w c c'`` and ``sum r c`` over included samples (one null-model IRLS step)."""
    n, k = C.shape
    cwc = np.zeros((k, k))
    cr = np.zeros(k)
    for s in range(n):
        if not include[s]:
            continue
        for a in range(k):
            cr[a] += r[s] * C[s, a]
            wa = w[s] * C[s, a]
            for c in range(a + 1):
                cwc[a, c] += wa * C[s, c]
    for a in range(k):
        for c in range(a):
            cwc[c, a] = cwc[a, c]
    return cwc, cr


@jit_parallel
def score_sums(
    packed: np.ndarray,
    C: np.ndarray,
    resid: np.ndarray,
    w: np.ndarray,
    include: np.ndarray,
    u: np.ndarray,
    gwg: np.ndarray,
    cwg: np.ndarray,
    m_cwc: np.ndarray,
) -> None:
    """Score-test pieces under the null model (``resid = y - p``, ``w = p (1 - p)``): ``U = g' resid``,
    ``g'Wg``, ``C'Wg`` over called samples, and ``sum w c c'`` over samples with a missing genotype."""
    n, k = C.shape
    for v in prange(packed.shape[0]):
        idx = np.empty(n, dtype=np.int64)
        codes = np.empty(n, dtype=np.int8)
        for e in range(nonzero_codes(packed[v], n, idx, codes)):
            s = idx[e]
            code = codes[e]
            if not include[s]:
                continue
            if code == 3:
                for a in range(k):
                    wa = w[s] * C[s, a]
                    for c in range(a + 1):
                        m_cwc[v, a, c] += wa * C[s, c]
            else:
                g = float(code)
                u[v] += g * resid[s]
                wg = w[s] * g
                gwg[v] += wg * g
                for a in range(k):
                    cwg[v, a] += wg * C[s, a]
        for a in range(k):
            for c in range(a):
                m_cwc[v, c, a] = m_cwc[v, a, c]


@jit
def _expit(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + np.exp(-x))
    e = np.exp(x)
    return e / (1.0 + e)


@jit_parallel
def logistic_newton_sums(
    packed: np.ndarray,
    rows: np.ndarray,
    beta: np.ndarray,
    C: np.ndarray,
    y: np.ndarray,
    include: np.ndarray,
    inv_info: np.ndarray,
    firth: np.ndarray,
    want_loglik: np.ndarray,
    xwx: np.ndarray,
    score: np.ndarray,
    loglik: np.ndarray,
) -> None:
    """One Newton step's sums for the variants ``rows`` of ``packed`` at coefficients ``beta``.

    ``beta[i]`` is ``(k + 1,)``: covariates then the genotype. Over called, included samples, with
    ``x = (c, g)``, ``p = expit(x'beta)`` and ``w = p (1 - p)``: ``xwx[i] = sum w x x'`` and
    ``score[i] = sum x (y - p)``. Where ``firth[i]``, the score is Firth's
    ``sum x (y - p + h (1/2 - p))`` with the leverage ``h = w x' inv_info[i] x``. Where
    ``want_loglik[i]``, ``loglik[i] = sum y log p + (1 - y) log(1 - p)`` (left at zero otherwise).
    Outputs must be zeroed.
    """
    n, k = C.shape
    kk = k + 1
    for i in prange(rows.shape[0]):
        v = rows[i]
        xi = np.empty(kk)
        for j in range(packed.shape[1]):
            b = packed[v, j]
            for t in range(4):
                s = 4 * j + t
                if s >= n:
                    break
                code = (b >> (2 * t)) & 3
                if code == 3 or not include[s]:
                    continue
                for a in range(k):
                    xi[a] = C[s, a]
                xi[k] = float(code)
                eta = 0.0
                for a in range(kk):
                    eta += xi[a] * beta[i, a]
                p = _expit(eta)
                ys = y[s]
                if want_loglik[i]:  # only Firth's step-halving needs the likelihood; logs are costly
                    if ys > 0.5:
                        loglik[i] += np.log(p) if p > 0 else -np.inf
                    else:
                        loglik[i] += np.log1p(-p) if p < 1 else -np.inf
                w = p * (1.0 - p)
                r = ys - p
                if firth[i]:
                    h = 0.0
                    for a in range(kk):
                        acc = 0.0
                        for c in range(kk):
                            acc += inv_info[i, a, c] * xi[c]
                        h += xi[a] * acc
                    r += w * h * (0.5 - p)
                for a in range(kk):
                    score[i, a] += r * xi[a]
                    wa = w * xi[a]
                    for c in range(a + 1):
                        xwx[i, a, c] += wa * xi[c]
        for a in range(kk):
            for c in range(a):
                xwx[i, c, a] = xwx[i, a, c]
