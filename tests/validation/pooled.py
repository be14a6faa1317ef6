"""The pooled cohort as outside tools read it, and statsmodels fits on it: references that share no code
with BETTER. Genotypes come from ``bcftools query`` of the split VCF that PLINK 2 read, the design from the
pooled phenotype file; nothing here imports ``better``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

Key = tuple[str, int, str, str]


@dataclass(frozen=True)
class Pooled:
    """The analysed samples of one model: those with the phenotype and every covariate."""

    keys: list[Key]  # (chrom, pos, ref, alt) per row of G, in file order
    G: np.ndarray  # (variants, analysed samples): ALT alleles, NaN where the call is missing
    X: np.ndarray  # (analysed samples, 1 + covariates): intercept first
    y: np.ndarray

    def row(self) -> dict[Key, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def constant(self) -> set[Key]:
        """The variants whose called genotypes are all the same: no test there (CONST_OMITTED_ALLELE)."""
        return {k for k, g in zip(self.keys, self.G, strict=True) if np.unique(g[~np.isnan(g)]).size <= 1}


def bcftools_query(*args: str) -> bytes:
    return subprocess.run(["bcftools", "query", *args], check=True, capture_output=True).stdout


def pooled(split: Path, pheno: Path, phenotype: str, covariates: list[str], *, binary: bool = False) -> Pooled:
    """``split``: a biallelic, diploid VCF; ``binary``: the phenotype is coded 1/2 (control/case) as PLINK reads it."""
    samples = bcftools_query("-l", str(split)).decode().split()
    lines = bcftools_query("-f", "%CHROM\t%POS\t%REF\t%ALT\n", str(split)).decode().splitlines()
    keys = [(c, int(p), r, a) for c, p, r, a in (line.split("\t") for line in lines)]
    # One fixed-width "a|b" or "a/b" per sample, one line per variant: read as a byte array.
    raw = np.frombuffer(bcftools_query("-f", "[%GT]\n", str(split)), dtype=np.uint8)
    assert raw.size == len(keys) * (3 * len(samples) + 1), "expected diploid, biallelic genotypes only"
    gt = raw.reshape(len(keys), -1)[:, :-1].reshape(len(keys), len(samples), 3)
    first, second = gt[..., 0], gt[..., 2]
    G = (first == ord("1")).astype(float) + (second == ord("1"))
    G[(first == ord(".")) | (second == ord("."))] = np.nan  # a half call is missing (--vcf-half-call missing)

    table = pl.read_csv(pheno, separator="\t", null_values=["NA", ""])
    table = pl.DataFrame({"#IID": samples}).join(table, on="#IID", how="left", maintain_order="left")
    used = [phenotype, *covariates]
    keep = table.select(pl.all_horizontal(pl.col(c).is_not_null() for c in used)).to_series().to_numpy()
    table = table.filter(pl.Series(keep))
    X = np.column_stack([np.ones(table.height), table.select(covariates).to_numpy().astype(float)])
    y = table[phenotype].to_numpy().astype(float)
    if binary:
        assert set(np.unique(y)) == {1.0, 2.0}
        y = y - 1.0
    return Pooled(keys, G[:, keep], X, y)


def logistic_wald(p: Pooled, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' Wald Z of the genotype and its P, ``y ~ X + g`` over each row's called samples."""
    import statsmodels.api as sm

    start = np.append(sm.Logit(p.y, p.X, check_rank=False).fit(disp=0).params, 0.0)
    z, pvalue = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for j, v in enumerate(rows):
        called = ~np.isnan(p.G[v])
        # check_rank=False: the rank check (a full QR) costs 5x the fit; PLINK's collinearity checks have
        # already picked the rows given here
        model = sm.Logit(p.y[called], np.column_stack([p.X[called], p.G[v, called]]), check_rank=False)
        fit = model.fit(start_params=start, disp=0, tol=1e-10, maxiter=100)
        z[j], pvalue[j] = fit.tvalues[-1], fit.pvalues[-1]
    return z, pvalue


def logistic_score(p: Pooled) -> tuple[np.ndarray, np.ndarray]:
    """The score test of every row as docs/engine.md defines it: the null model ``y ~ X`` fitted by
    statsmodels on all analysed samples; the score ``U = g'(y - p)`` and its variance
    ``V = g'Wg - g'WX (X'WX)⁻¹ X'Wg`` over the row's called samples (numpy). Returns Z = U/√V and the
    two-sided normal P (NaN for a constant genotype)."""
    import statsmodels.api as sm
    from scipy.stats import norm

    null = sm.Logit(p.y, p.X).fit(disp=0, tol=1e-12)
    prob = null.predict(p.X)
    w, resid = prob * (1 - prob), p.y - prob
    called = ~np.isnan(p.G)
    g = np.where(called, p.G, 0.0)  # a missing call adds nothing to U, g'Wg or X'Wg
    u = g @ resid
    gwg = (g * g) @ w
    xwg = (g * w) @ p.X
    xwx = p.X.T @ (p.X * w[:, None])
    k = p.X.shape[1]
    missing_xwx = ((~called) * w) @ (p.X[:, :, None] * p.X[:, None, :]).reshape(-1, k * k)
    info = xwx[None] - missing_xwx.reshape(-1, k, k)
    v = gwg - np.einsum("vi,vi->v", xwg, np.linalg.solve(info, xwg[..., None])[..., 0])
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant genotype has V = 0: NaN
        z = u / np.sqrt(v)
    return z, 2 * norm.sf(np.abs(z))


def statsmodels_score_test(p: Pooled, rows: list[int]) -> np.ndarray:
    """statsmodels' own score test (``GLMResults.score_test`` from the null fit) of each row, whose every
    analysed sample has a call: the chi-squared statistic, Z²."""
    import statsmodels.api as sm

    null = sm.GLM(p.y, p.X, family=sm.families.Binomial()).fit(tol=1e-12)
    out = np.full(len(rows), np.nan)
    for j, v in enumerate(rows):
        assert not np.isnan(p.G[v]).any()
        out[j] = float(np.squeeze(null.score_test(exog_extra=p.G[v][:, None])[0]))
    return out
