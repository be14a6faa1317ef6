"""Slow, obviously correct twins of the engine kernels and a pooled-data reference for regressions."""

from __future__ import annotations

import numpy as np


def as_dosages(genotypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(g, missing)`` of a genotype matrix: int codes 0..3 (3 missing) or float dosages (NaN missing)."""
    if np.issubdtype(genotypes.dtype, np.floating):
        return np.nan_to_num(genotypes), np.isnan(genotypes)
    return np.where(genotypes == 3, 0, genotypes).astype(float), genotypes == 3


def counts_twin(codes: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((codes.shape[0], n_groups, 4), dtype=np.int64)
    for v in range(codes.shape[0]):
        for i, g in enumerate(group):
            if g >= 0:
                out[v, g, codes[v, i]] += 1
    return out


def linear_sum_arrays(m: int, k: int) -> dict[str, np.ndarray]:
    """Zeroed outputs of the linear sums for ``m`` variants and ``k`` covariates, in the kernel's order."""
    return {
        "cg": np.zeros((m, k)),
        "gg": np.zeros(m),
        "gy": np.zeros(m),
        "n_miss": np.zeros(m, np.int64),
        "m_cc": np.zeros((m, k, k)),
        "m_cy": np.zeros((m, k)),
        "m_yy": np.zeros(m),
    }


def score_sum_arrays(m: int, k: int) -> dict[str, np.ndarray]:
    """Zeroed outputs of the score sums for ``m`` variants and ``k`` covariates, in the kernel's order."""
    return {
        "u": np.zeros(m),
        "gwg": np.zeros(m),
        "cwg": np.zeros((m, k)),
        "m_cwc": np.zeros((m, k, k)),
        "m_cr": np.zeros((m, k)),
        "cg": np.zeros((m, k)),
        "gg": np.zeros(m),
        "n_miss": np.zeros(m, np.int64),
        "m_cc": np.zeros((m, k, k)),
    }


def linear_sums_twin(codes: np.ndarray, C: np.ndarray, y: np.ndarray, include: np.ndarray) -> dict[str, np.ndarray]:
    m = codes.shape[0]
    out = linear_sum_arrays(m, C.shape[1])
    values, missing = as_dosages(codes)
    for v in range(m):
        called = include & ~missing[v]
        miss = include & missing[v]
        g = values[v]
        out["cg"][v] = C[called].T @ g[called]
        out["gg"][v] = g[called] @ g[called]
        out["gy"][v] = g[called] @ y[called]
        out["n_miss"][v] = miss.sum()
        out["m_cc"][v] = C[miss].T @ C[miss]
        out["m_cy"][v] = C[miss].T @ y[miss]
        out["m_yy"][v] = y[miss] @ y[miss]
    return out


def pooled_ols(codes: np.ndarray, C: np.ndarray, y: np.ndarray, include: np.ndarray) -> np.ndarray:
    """(beta, se, t, n) per variant by statsmodels OLS on the pooled samples with a called genotype."""
    import statsmodels.api as sm

    out = np.full((codes.shape[0], 4), np.nan)
    values, missing = as_dosages(codes)
    for v in range(codes.shape[0]):
        keep = include & ~missing[v]
        X = np.column_stack([C[keep], values[v, keep]])
        if keep.sum() <= X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
            continue
        fit = sm.OLS(y[keep], X).fit()
        out[v] = fit.params[-1], fit.bse[-1], fit.tvalues[-1], keep.sum()
    return out


def score_sums_twin(
    codes: np.ndarray, C: np.ndarray, resid: np.ndarray, w: np.ndarray, include: np.ndarray
) -> dict[str, np.ndarray]:
    m, k = codes.shape[0], C.shape[1]
    out = {"u": np.zeros(m), "gwg": np.zeros(m), "cwg": np.zeros((m, k)), "m_cwc": np.zeros((m, k, k))}
    out["m_cr"] = np.zeros((m, k))
    out.update(cg=np.zeros((m, k)), gg=np.zeros(m), n_miss=np.zeros(m, np.int64), m_cc=np.zeros((m, k, k)))
    values, missing = as_dosages(codes)
    for v in range(m):
        called = include & ~missing[v]
        miss = include & missing[v]
        g = values[v]
        out["u"][v] = g[called] @ resid[called]
        out["gwg"][v] = g[called] @ (w[called] * g[called])
        out["cwg"][v] = C[called].T @ (w[called] * g[called])
        out["m_cwc"][v] = (C[miss] * w[miss, None]).T @ C[miss]
        out["m_cr"][v] = C[miss].T @ resid[miss]
        out["cg"][v] = C[called].T @ g[called]
        out["gg"][v] = g[called] @ g[called]
        out["n_miss"][v] = miss.sum()
        out["m_cc"][v] = C[miss].T @ C[miss]
    return out


def newton_sums_twin(
    codes: np.ndarray,
    beta: np.ndarray,
    C: np.ndarray,
    y: np.ndarray,
    include: np.ndarray,
    inv_info: np.ndarray,
    firth: np.ndarray,
    want_loglik: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X'WX, the (Firth) score and the log-likelihood per variant, straight from the definitions."""
    m, kk = beta.shape
    xwx, score, loglik = np.zeros((m, kk, kk)), np.zeros((m, kk)), np.zeros(m)
    values, missing = as_dosages(codes)
    for v in range(m):
        keep = include & ~missing[v]
        X = np.column_stack([C[keep], values[v, keep]])
        p = 1.0 / (1.0 + np.exp(-(X @ beta[v])))
        w = p * (1.0 - p)
        r = y[keep] - p
        if firth[v]:
            h = np.clip(w * np.einsum("sa,ab,sb->s", X, inv_info[v], X), 0.0, 1.0)
            r = r + h * (0.5 - p)
        xwx[v] = (X * w[:, None]).T @ X
        score[v] = X.T @ r
        if want_loglik[v]:
            loglik[v] = np.sum(np.where(y[keep] > 0.5, np.log(p), np.log1p(-p)))
    return xwx, score, loglik
