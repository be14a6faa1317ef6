"""Per-variant sufficient statistics for linear and logistic regression on additive genotypes.

Conventions for all kernels: ``C`` is the ``(n, k)`` covariate matrix whose first column is the
intercept, ``include[i]`` says whether sample ``i`` is analysed (phenotype and covariates present,
sample filter met). A sample whose genotype is missing drops out of that variant's model, as in
PLINK 2's ``--glm``; the kernels return what is needed to remove its contribution exactly.
Symmetric ``k x k`` blocks are returned in full (not packed) for clarity; ``k`` is small.

Genotypes come as a packed block and, for a dataset with dosages, a ``(variants, n)`` uint16 block of
dosage units (:data:`~better.engine.kernels.packed.NO_DOSAGES` otherwise): the genotype ``g`` is then the
ALT dosage, as PLINK 2 regresses on dosages.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from threadpoolctl import threadpool_limits

from better.engine.accelerate import jit, jit_parallel, prange
from better.engine.kernels.fastexp import exp_into
from better.engine.kernels.packed import genotype_value, nonzero_values


@jit
def add_outer(out: np.ndarray, c: np.ndarray, weight: float) -> None:
    """``out += weight * c c'`` on and below the diagonal (callers mirror it once at the end)."""
    for a in range(c.shape[0]):
        wa = weight * c[a]
        for b in range(a + 1):
            out[a, b] += wa * c[b]


@jit_parallel
def linear_sums(
    packed: np.ndarray,
    dosages: np.ndarray,
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
        values = np.empty(n)
        for e in range(nonzero_values(packed, dosages, v, n, idx, values)):
            s = idx[e]
            g = values[e]
            if not include[s]:
                continue
            if g < 0:
                n_miss[v] += 1
                ys = y[s]
                m_yy[v] += ys * ys
                for a in range(k):
                    m_cy[v, a] += C[s, a] * ys
                add_outer(m_cc[v], C[s], 1.0)
            else:
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
    dosages: np.ndarray,
    C: np.ndarray,
    resid: np.ndarray,
    w: np.ndarray,
    include: np.ndarray,
    u: np.ndarray,
    gwg: np.ndarray,
    cwg: np.ndarray,
    m_cwc: np.ndarray,
    m_cr: np.ndarray,
    cg: np.ndarray,
    gg: np.ndarray,
    n_miss: np.ndarray,
    m_cc: np.ndarray,
    group: np.ndarray,
    alt_by_group: np.ndarray,
    miss_by_group: np.ndarray,
) -> None:
    """Score-test pieces under the null model (``resid = y - p``, ``w = p (1 - p)``): ``U = g' resid``,
    ``g'Wg``, ``C'Wg`` over called samples, and ``sum w c c'`` and ``sum c resid`` over samples with a
    missing genotype (with them, the centre also takes the first Newton step of every variant).

    Also the unweighted ``C'g``, ``g'g`` over called samples and the count and ``sum c c'`` of samples
    with a missing genotype: the centre's collinearity checks (CORR_TOO_HIGH, VIF_TOO_HIGH) use them,
    as PLINK 2 checks the unweighted predictors. And, by ``group`` (0 controls, 1 cases), the ALT allele
    count and the number of samples with a missing genotype, from which the case/control allele counts
    follow without a second pass."""
    n, k = C.shape
    for v in prange(packed.shape[0]):
        idx = np.empty(n, dtype=np.int64)
        values = np.empty(n)
        acc_wg = np.zeros(k)  # local accumulators: the compiler keeps them apart from the outputs
        acc_g = np.zeros(k)
        u_v = gwg_v = gg_v = 0.0
        for e in range(nonzero_values(packed, dosages, v, n, idx, values)):
            s = idx[e]
            g = values[e]
            if not include[s]:
                continue
            if g < 0:
                n_miss[v] += 1
                miss_by_group[v, group[s]] += 1
                for a in range(k):
                    m_cr[v, a] += resid[s] * C[s, a]
                add_outer(m_cwc[v], C[s], w[s])
                add_outer(m_cc[v], C[s], 1.0)
            else:
                alt_by_group[v, group[s]] += g
                u_v += g * resid[s]
                wg = w[s] * g
                gwg_v += wg * g
                gg_v += g * g
                for a in range(k):
                    ca = C[s, a]
                    acc_wg[a] += wg * ca
                    acc_g[a] += g * ca
        u[v], gwg[v], gg[v] = u_v, gwg_v, gg_v
        for a in range(k):
            cwg[v, a] = acc_wg[a]
            cg[v, a] = acc_g[a]
        for a in range(k):
            for c in range(a):
                m_cwc[v, c, a] = m_cwc[v, a, c]
                m_cc[v, c, a] = m_cc[v, a, c]


@jit_parallel
def logistic_weights(
    packed: np.ndarray,
    dosages: np.ndarray,
    rows: np.ndarray,
    eta_c: np.ndarray,
    beta: np.ndarray,
    Ct: np.ndarray,
    y: np.ndarray,
    include: np.ndarray,
    inv_info: np.ndarray,
    firth: np.ndarray,
    want_loglik: np.ndarray,
    w: np.ndarray,
    wg: np.ndarray,
    r: np.ndarray,
    gwg: np.ndarray,
    gr: np.ndarray,
    loglik: np.ndarray,
    alt_by_group: np.ndarray,
    miss_by_group: np.ndarray,
) -> None:
    """Per-sample weights of one Newton step for the variants ``rows`` of ``packed``.

    ``beta[i]`` holds the coefficients of variant ``rows[i]`` (covariates, then the genotype) and
    ``eta_c[i] = C beta[i, :k]`` the covariate part of its linear predictor, computed by the caller in one
    matrix product. ``Ct`` is the ``(k, n)`` transposed covariate matrix and ``Ct``, ``y`` must be finite
    (zero for excluded samples). With ``x = (c, g)`` and ``p = expit(x'beta)``, writes over called,
    included samples (zero elsewhere): ``w[i] = p (1 - p)``, ``wg[i] = w g`` and ``r[i] = y - p``, or
    Firth's ``y - p + h (1/2 - p)`` with ``h = w x' inv_info[i] x`` where ``firth[i]``; and per variant
    ``gwg = sum w g^2``, ``gr = sum r g`` and, where ``want_loglik[i]``, ``loglik = sum y log p +
    (1 - y) log(1 - p)``. The covariate sums ``C'WC``, ``C'Wg`` and ``C'r`` are then matrix products of
    these rows, left to BLAS. Also, by group (``y`` 0 controls, 1 cases), the ALT allele count and the
    number of included samples with a missing genotype. ``gwg``, ``gr``, ``loglik`` and the counts must be
    zeroed.
    """
    k, n = Ct.shape
    kk = k + 1
    for i in prange(rows.shape[0]):
        v = rows[i]
        g = np.empty(n)
        called = np.empty(n, dtype=np.bool_)
        neg_eta = np.empty(n)
        e = np.empty(n)
        scratch = np.empty(n, dtype=np.int64)
        bg = beta[i, k]
        for s in range(n):
            value = genotype_value(packed, dosages, v, s)
            ok = include[s] and value >= 0
            called[s] = ok
            g[s] = value if ok else 0.0
            neg_eta[s] = -(eta_c[i, s] + g[s] * bg)
            if include[s]:
                case = 1 if y[s] > 0.5 else 0
                if ok:
                    alt_by_group[i, case] += value
                else:
                    miss_by_group[i, case] += 1
        exp_into(neg_eta, e, scratch)
        for s in range(n):
            p = 1.0 / (1.0 + e[s])
            ws = p * (1.0 - p) if called[s] else 0.0
            w[i, s] = ws
            wg[i, s] = ws * g[s]
            r[i, s] = y[s] - p if called[s] else 0.0
        if firth[i] or want_loglik[i]:  # rare rows: per-sample leverages and logs are costly
            for s in range(n):
                if not called[s]:
                    continue
                p = 1.0 / (1.0 + e[s])
                if want_loglik[i]:
                    if y[s] > 0.5:
                        loglik[i] += np.log(p) if p > 0 else -np.inf
                    else:
                        loglik[i] += np.log1p(-p) if p < 1 else -np.inf
                if firth[i]:
                    h = 0.0
                    for a in range(kk):
                        xa = g[s] if a == k else Ct[a, s]
                        for c in range(kk):
                            h += inv_info[i, a, c] * xa * (g[s] if c == k else Ct[c, s])
                    # a leverage lies in [0, 1]: clipped, a coordinator's ``inv_info`` cannot scale a
                    # station's score out of the secure-aggregation range (a failure there is a release)
                    r[i, s] += min(max(w[i, s] * h, 0.0), 1.0) * (0.5 - p)
        # four interleaved partial sums keep the additions from waiting on each other
        q = n - n % 4
        a0 = a1 = a2 = a3 = 0.0
        b0 = b1 = b2 = b3 = 0.0
        for s in range(0, q, 4):
            a0 += wg[i, s] * g[s]
            a1 += wg[i, s + 1] * g[s + 1]
            a2 += wg[i, s + 2] * g[s + 2]
            a3 += wg[i, s + 3] * g[s + 3]
            b0 += r[i, s] * g[s]
            b1 += r[i, s + 1] * g[s + 1]
            b2 += r[i, s + 2] * g[s + 2]
            b3 += r[i, s + 3] * g[s + 3]
        for s in range(q, n):
            a0 += wg[i, s] * g[s]
            b0 += r[i, s] * g[s]
        gwg[i] = (a0 + a1) + (a2 + a3)
        gr[i] = (b0 + b1) + (b2 + b3)


# -- blocks with dosages: dense rows and matrix products ------------------------------------------------
#: Doubles of one chunk of dense dosage rows (4 MiB): big enough for single-threaded BLAS to run at speed,
#: small enough to stay in cache while the products read it (measured: 3.2 s per 10,000 x 50,000 against
#: 3.9 s at 1 MiB and 3.6 s at 16 MiB).
DENSE_CHUNK_VALUES = 1 << 19


@jit_parallel
def dense_dosages(
    dosages: np.ndarray,
    group: np.ndarray,
    weight: np.ndarray,
    absent: np.ndarray,
    out: np.ndarray,
    squares: np.ndarray,
    parts: np.ndarray,
    missing_by_group: np.ndarray,
) -> None:
    """One pass over dosage rows. ``out[v, s]``: sample ``s``'s ALT dosage where it has one and is analysed
    (``group[s] >= 0``), else 0, so that every sum over called samples is a matrix product with ``out``;
    ``squares[v]``: ``(sum g^2, sum weight g^2)`` over them; for analysed samples without a dosage,
    ``parts[v] = sum absent[s]`` (the per-sample pieces taken out for missing genotypes: a few percent of
    samples, added here rather than multiplied) and ``missing_by_group[v, g]`` their count per group.
    ``parts`` and ``missing_by_group`` must be zeroed."""
    n = group.shape[0]
    q = absent.shape[1]
    scale = 1.0 / 16384.0
    for v in prange(dosages.shape[0]):
        sq = 0.0
        sqw = 0.0
        for s in range(n):
            u = dosages[v, s]
            g = group[s]
            if g < 0:
                out[v, s] = 0.0
            elif u == 65535:
                out[v, s] = 0.0
                missing_by_group[v, g] += 1
                for j in range(q):
                    parts[v, j] += absent[s, j]
            else:
                x = u * scale
                out[v, s] = x
                sq += x * x
                sqw += weight[s] * x * x
        squares[v, 0] = sq
        squares[v, 1] = sqw


def dense_chunks(
    dosages: np.ndarray, group: np.ndarray, n_groups: int, weight: np.ndarray, absent: np.ndarray
) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """A block's dosages in chunks of :func:`dense_dosages` output: ``(rows, G, squares, parts,
    missing_by_group)``, one buffer reused (memory bounded by :data:`DENSE_CHUNK_VALUES`)."""
    m, n = dosages.shape
    step = max(1, min(m, DENSE_CHUNK_VALUES // max(n, 1)))
    values = np.empty((step, n))
    group = np.ascontiguousarray(group, dtype=np.int64)
    absent = np.ascontiguousarray(absent)
    for lo in range(0, m, step):
        rows = slice(lo, min(lo + step, m))
        r = rows.stop - lo
        squares, parts = np.empty((r, 2)), np.zeros((r, absent.shape[1]))
        by_group = np.zeros((r, n_groups), dtype=np.int64)
        dense_dosages(np.ascontiguousarray(dosages[rows]), group, weight, absent, values[:r], squares, parts, by_group)
        yield rows, values[:r], squares, parts, by_group


def pair_products(C: np.ndarray, weight: np.ndarray | None = None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Per sample, the products ``weight c_a c_b`` for ``a >= b`` ``(n, k(k+1)/2)``, and their indices:
    a matrix product with them gives ``sum weight c c'`` over any set of samples."""
    lower = np.tril_indices(C.shape[1])
    products = C[:, lower[0]] * C[:, lower[1]]
    return (products if weight is None else products * weight[:, None]), lower


def symmetric(packed: np.ndarray, lower: tuple[np.ndarray, ...], out: np.ndarray) -> None:
    """Write ``(rows, k(k+1)/2)`` lower-triangle values into ``out`` ``(rows, k, k)``, mirrored."""
    out[:, lower[0], lower[1]] = packed
    out[:, lower[1], lower[0]] = packed


def linear_sums_dense(
    dosages: np.ndarray,
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
    """:func:`linear_sums` for a block with dosages ``(variants, n)`` uint16, as matrix products over dense
    chunks (every sample's dosage counts, so there are no zeros to skip). Outputs must be zeroed."""
    group = np.where(include, 0, -1)
    k = C.shape[1]
    pairs, lower = pair_products(C)
    called = np.column_stack([C, y])  # G [C y]: one product
    absent = np.column_stack([pairs, C * y[:, None], y * y])
    q = pairs.shape[1]
    with threadpool_limits(limits=1, user_api="blas"):  # its threads would spin against Numba's
        for rows, G, squares, parts, missing in dense_chunks(dosages, group, 1, np.ones(C.shape[0]), absent):
            sums = G @ called
            cg[rows], gy[rows] = sums[:, :k], sums[:, k]
            gg[rows] = squares[:, 0]
            n_miss[rows] = missing[:, 0]
            symmetric(parts[:, :q], lower, m_cc[rows])
            m_cy[rows], m_yy[rows] = parts[:, q : q + k], parts[:, q + k]


def score_sums_dense(
    dosages: np.ndarray,
    C: np.ndarray,
    resid: np.ndarray,
    w: np.ndarray,
    include: np.ndarray,
    u: np.ndarray,
    gwg: np.ndarray,
    cwg: np.ndarray,
    m_cwc: np.ndarray,
    m_cr: np.ndarray,
    cg: np.ndarray,
    gg: np.ndarray,
    n_miss: np.ndarray,
    m_cc: np.ndarray,
    group: np.ndarray,
    alt_by_group: np.ndarray,
    miss_by_group: np.ndarray,
) -> None:
    """:func:`score_sums` for a block with dosages, as matrix products over dense chunks. Outputs must be
    zeroed."""
    analysed = np.where(include, group, -1)
    n_groups = alt_by_group.shape[1]
    member = np.zeros((C.shape[0], n_groups))
    member[np.flatnonzero(analysed >= 0), analysed[analysed >= 0]] = 1.0
    k = C.shape[1]
    pairs, lower = pair_products(C)
    q = pairs.shape[1]
    called = np.column_stack([C, w[:, None] * C, resid, member])  # G [C, wC, resid, group members]
    absent = np.column_stack([pairs * w[:, None], pairs, C * resid[:, None]])
    with threadpool_limits(limits=1, user_api="blas"):  # its threads would spin against Numba's
        for rows, G, squares, parts, missing in dense_chunks(dosages, analysed, n_groups, w, absent):
            sums = G @ called
            cg[rows], cwg[rows], u[rows] = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k]
            alt_by_group[rows] = sums[:, 2 * k + 1 :]
            gg[rows], gwg[rows] = squares[:, 0], squares[:, 1]
            miss_by_group[rows] = missing
            n_miss[rows] = missing.sum(axis=1)
            symmetric(parts[:, :q], lower, m_cwc[rows])
            symmetric(parts[:, q : 2 * q], lower, m_cc[rows])
            m_cr[rows] = parts[:, 2 * q :]
