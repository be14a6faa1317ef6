"""Logistic regression of a binary trait (0/1) on each variant, federated; PLINK 2's logistic-Firth hybrid.

Rounds (what each station computes, what the centre does in between):

1. Null model, repeated until converged: stations return ``C'WC``, ``C'(y - p)`` and the log-likelihood
   at the current covariate coefficients; the centre takes a Newton step.
2. Score round: under the null fit, stations return per variant ``U = g'(y - p)``, ``g'Wg``, ``C'Wg``,
   ``sum w c c'`` over samples with a missing genotype, and allele counts of cases and controls (called
   samples, ALT alleles, missing samples: :func:`allele_counts`, coarser than genotype counts).
   The centre computes score tests, and decides which variants need Firth regression: PLINK 2 uses it
   when the case/control x allele table has an empty cell (checked on 8,041 variants of the synthetic
   cohort: 1,386 of 1,386 Firth variants had one, 0 of 6,624 others).
3. Newton rounds per variant (Wald): stations return ``X'WX``, ``X'(y - p)`` and the log-likelihood at
   each variant's coefficients, over called samples. A variant that fails to converge falls back to
   Firth. A Firth iteration takes two rounds: the information at the coefficients, then the Firth score
   ``X'(y - p + h (1/2 - p))`` using its inverse (the leverages ``h`` are computed at the station).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from better.engine.design import Block, Design, concat_keys
from better.engine.kernels.packed import NO_DOSAGES
from better.engine.kernels.regression import logistic_weights, score_sums, score_sums_dense, weighted_gram

MAX_ITER = 25
FIRTH_MAX_ITER = 100
TOL = 1e-8
FIRTH_TOL = 1e-6
FIRTH_MAX_STEP = 5.0


def expit(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    out = np.empty_like(x, dtype=float)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


# -- station side ---------------------------------------------------------------------------------------
def null_station(design: Design, beta: np.ndarray) -> dict[str, np.ndarray]:
    """Null-model sums at ``beta``: ``cwc``, ``cr`` (``C'(y - p)``), ``loglik``, ``n``, ``n_case``."""
    inc = design.include
    p = expit(design.C @ beta)
    w = p * (1 - p)
    cwc, cr = weighted_gram(design.C, w, design.y - p, inc)
    yi, pi = design.y[inc], p[inc]
    with np.errstate(divide="ignore"):
        ll = float(np.sum(np.where(yi > 0.5, np.log(pi), np.log1p(-pi))))
    return {
        "cwc": cwc,
        "cr": cr,
        "loglik": np.array(ll),
        "n": np.array(int(inc.sum())),
        "n_case": np.array(int((yi > 0.5).sum())),
    }


def score_station(design: Design, beta: np.ndarray, blocks: Iterable[Block]) -> dict[str, np.ndarray]:
    """Per-variant score pieces and case/control allele counts under the null coefficients ``beta``."""
    C = np.ascontiguousarray(design.C)
    inc = np.ascontiguousarray(design.include)
    p = expit(C @ beta)
    w = np.where(inc, p * (1 - p), 0.0)
    resid = np.where(inc, design.y - p, 0.0)
    group = design.groups(2)
    sizes = _group_sizes(design)
    k = design.k
    key_parts: list[dict[str, np.ndarray]] = []
    shapes = {
        "u": (),
        "gwg": (),
        "cwg": (k,),
        "m_cwc": (k, k),
        "m_cr": (k,),
        "cg": (k,),
        "gg": (),
        "n_miss": (),
        "m_cc": (k, k),
    }
    parts: dict[str, list[np.ndarray]] = {c: [] for c in (*shapes, "counts")}
    for b in blocks:
        m = b.packed.shape[0]
        sums = {
            name: np.zeros((m, *shape), dtype=np.int64 if name == "n_miss" else float) for name, shape in shapes.items()
        }
        alt, miss = np.zeros((m, 2)), np.zeros((m, 2), dtype=np.int64)
        packed = np.ascontiguousarray(b.packed)
        if m and b.dosages is not None:  # every sample has a value: matrix products over dense rows
            score_sums_dense(b.dosages, C, resid, w, inc, **sums, group=group, alt_by_group=alt, miss_by_group=miss)
        elif m:  # sparse: the cost follows the carriers
            score_sums(packed, NO_DOSAGES, C, resid, w, inc, **sums, group=group, alt_by_group=alt, miss_by_group=miss)
        key_parts.append(b.keys)
        for name, arr in sums.items():
            parts[name].append(arr)
        parts["counts"].append(allele_counts(sizes, alt, miss))
    cwc, cr = weighted_gram(C, w, resid, inc)
    out = {f"key_{c}": v for c, v in concat_keys(key_parts).items()}
    shapes["counts"] = (2, 3)
    out.update({n: np.concatenate(v) if v else np.zeros((0, *shapes[n])) for n, v in parts.items()})
    out["n_miss"] = out["n_miss"].astype(np.int64)
    out["cwc"] = cwc
    out["cr"] = cr
    out["cc"] = C[inc].T @ C[inc]
    out["n"] = np.array(int(inc.sum()))
    out["group_size"] = _group_sizes(design)
    return out


#: Per-sample weights held at once by :func:`newton_sums`, in doubles per array (1 MiB): small enough
#: that the kernel's output is still in cache when the matrix products read it.
NEWTON_CHUNK_VALUES = 1 << 17


@dataclass(frozen=True)
class NewtonInputs:
    """A station's per-sample inputs to :func:`newton_sums`, prepared once per round.

    ``C`` and ``y`` are zeroed for excluded samples (so that they are finite), ``Ct`` is ``C``
    transposed, and ``pairs`` holds the products ``c_a c_b`` (``a >= b``) whose weighted sums make
    ``C'WC``.
    """

    C: np.ndarray
    Ct: np.ndarray
    y: np.ndarray
    include: np.ndarray
    pairs: np.ndarray
    group_sizes: np.ndarray  # included controls, cases

    @classmethod
    def of(cls, design: Design) -> NewtonInputs:
        inc = np.ascontiguousarray(design.include)
        C = np.ascontiguousarray(np.where(inc[:, None], design.C, 0.0))
        lower = np.tril_indices(C.shape[1])
        return cls(
            C=C,
            Ct=np.ascontiguousarray(C.T),
            y=np.where(inc, design.y, 0.0),
            include=inc,
            pairs=np.ascontiguousarray(C[:, lower[0]] * C[:, lower[1]]),
            group_sizes=_group_sizes(design),
        )


def newton_sums(
    packed: np.ndarray,
    dosages: np.ndarray,
    rows: np.ndarray,
    beta: np.ndarray,
    inputs: NewtonInputs,
    inv_info: np.ndarray,
    firth: np.ndarray,
    want_loglik: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X'WX``, ``X'(y - p)`` (Firth-corrected where ``firth``) and the log-likelihood (where
    ``want_loglik``) for the variants ``rows`` of ``packed`` (and of ``dosages``, where the block has
    them: :meth:`~better.engine.design.Block.dosage_rows`) at coefficients ``beta``, over called samples;
    and their case/control allele counts (:func:`allele_counts`), for the station's policy.

    The per-sample weights come from the :func:`~better.engine.kernels.regression.logistic_weights` kernel;
    the sums over samples are matrix products: ``W P`` for the covariate pairs of ``C'WC``, ``(W g) C``
    for ``C'Wg`` and ``R C`` for ``C'r``. Rows are taken in chunks of bounded size.
    """
    C, Ct = inputs.C, inputs.Ct
    n, k = C.shape
    kk = k + 1
    lower = np.tril_indices(k)
    m = rows.shape[0]
    xwx, score, loglik = np.zeros((m, kk, kk)), np.zeros((m, kk)), np.zeros(m)
    alt, miss = np.zeros((m, 2)), np.zeros((m, 2), dtype=np.int64)
    step = min(m, max(1, NEWTON_CHUNK_VALUES // max(n, 1)))
    buffers = np.empty((4, step, n))  # reused: fresh pages for every chunk cost as much as the work
    for lo in range(0, m, step):
        sl = slice(lo, min(lo + step, m))
        b = np.ascontiguousarray(beta[sl])
        c = b.shape[0]
        eta_c, w, wg, r = buffers[0, :c], buffers[1, :c], buffers[2, :c], buffers[3, :c]
        np.matmul(b[:, :k], Ct, out=eta_c)
        gwg, gr = np.zeros(c), np.zeros(c)
        logistic_weights(
            packed,
            dosages,
            rows[sl],
            eta_c,
            b,
            Ct,
            inputs.y,
            inputs.include,
            np.ascontiguousarray(inv_info[sl]),
            np.ascontiguousarray(firth[sl]),
            np.ascontiguousarray(want_loglik[sl]),
            w,
            wg,
            r,
            gwg,
            gr,
            loglik[sl],
            alt[sl],
            miss[sl],
        )
        x = xwx[sl]
        x[:, lower[0], lower[1]] = w @ inputs.pairs
        x[:, lower[1], lower[0]] = x[:, lower[0], lower[1]]
        cwg = wg @ C
        x[:, :k, k] = cwg
        x[:, k, :k] = cwg
        x[:, k, k] = gwg
        score[sl, :k] = r @ C
        score[sl, k] = gr
    return xwx, score, loglik, allele_counts(inputs.group_sizes, alt, miss)


def newton_station(design: Design, blocks: Iterable[Block], request: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Newton sums for the requested variants (``key_*`` arrays, ``beta``, ``firth``, ``inv``).

    Variants this station lacks get zero sums: all its samples are missing for them.
    """
    a = request["beta"].shape[0]
    kk = request["beta"].shape[1]
    where = {
        key: i
        for i, key in enumerate(
            zip(
                request["key_chrom"].tolist(),
                request["key_pos"].tolist(),
                request["key_ref"].tolist(),
                request["key_alt"].tolist(),
                strict=True,
            )
        )
    }
    xwx, score, loglik = np.zeros((a, kk, kk)), np.zeros((a, kk)), np.zeros(a)
    counts = np.zeros((a, 2, 3))
    counts[:, :, 2] = _group_sizes(design)  # a variant this station lacks: everyone missing
    inputs = NewtonInputs.of(design)
    # The kernel runs on all threads and BLAS on one: its small products come between kernel calls,
    # and its own threads would spin against Numba's.
    with threadpool_limits(limits=1, user_api="blas"):
        _newton_blocks(blocks, where, inputs, request, xwx, score, loglik, counts)
    return {"xwx": xwx, "score": score, "loglik": loglik, "counts": counts}


def _group_sizes(design: Design) -> np.ndarray:
    g = design.groups(2)
    return np.bincount(g[g >= 0], minlength=2).astype(np.int64)


def _newton_blocks(
    blocks: Iterable[Block],
    where: dict[tuple[Any, ...], int],
    inputs: NewtonInputs,
    request: dict[str, np.ndarray],
    xwx: np.ndarray,
    score: np.ndarray,
    loglik: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Fill the sums (and the local case/control allele counts, which the station's disclosure
    policy checks) of the requested variants found in ``blocks``."""
    for b in blocks:
        ks = zip(
            b.keys["chrom"].tolist(),
            b.keys["pos"].tolist(),
            b.keys["ref"].tolist(),
            b.keys["alt"].tolist(),
            strict=True,
        )
        hits = [(r, where[k]) for r, k in enumerate(ks) if k in where]
        if not hits:
            continue
        rows = np.array([h[0] for h in hits], dtype=np.int64)
        req = np.array([h[1] for h in hits], dtype=np.int64)
        packed = np.ascontiguousarray(b.packed)
        xwx[req], score[req], loglik[req], counts[req] = newton_sums(
            packed,
            b.dosage_rows(),
            rows,
            request["beta"][req],
            inputs,
            request["inv"][req],
            request["firth"][req],
            request["loglik"][req],
        )


# -- centre side -----------------------------------------------------------------------------------------
@dataclass
class NullFit:
    beta: np.ndarray
    converged: bool
    iterations: int
    n: int
    n_case: int
    loglik: float


def null_step(beta: np.ndarray, results: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, float]:
    """One Newton step of the null model from the stations' sums; returns new beta and step size."""
    cwc = np.sum([r["cwc"] for r in results], axis=0)
    cr = np.sum([r["cr"] for r in results], axis=0)
    step = np.linalg.solve(cwc, cr)
    return beta + step, float(np.max(np.abs(step)))


def allele_counts(group_sizes: np.ndarray, alt: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Per variant and group, ``(called samples, ALT alleles, missing samples)``: all logistic regression
    needs to know, coarser than genotype counts. ``alt`` and ``missing`` are ``(variants, groups)``,
    ``group_sizes`` the included samples per group. Float: with dosages the ALT count is a dosage sum.

    Examples
    --------
    >>> allele_counts(np.array([11]), np.array([[5.0]]), np.array([[2]])).tolist()
    [[[9.0, 5.0, 2.0]]]
    """
    return np.stack([group_sizes[None, :] - missing, alt, missing], axis=-1).astype(np.float64)


def zero_cell(counts: np.ndarray) -> np.ndarray:
    """Whether the (case, control) x (A1, other allele) table of each variant has an empty cell.

    ``counts`` is ``(variants, 2, 3)`` allele counts (:func:`allele_counts`): group 0 controls, 1 cases.
    """
    a1 = counts[:, :, 1]
    other = 2 * counts[:, :, 0] - counts[:, :, 1]
    return ((a1 == 0) | (other == 0)).any(axis=1)
