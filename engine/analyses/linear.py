"""Linear regression of a phenotype on each variant's additive genotype with covariates (PLINK 2
``--glm`` semantics), federated exactly in one round.

Station (``linear_station``): totals ``C'C``, ``C'y``, ``y'y``, ``n`` over included samples, and per
variant ``C'g``, ``g'g``, ``g'y`` over called samples plus, for samples whose genotype is missing,
their count, ``sum c c'``, ``sum c y``, ``sum y^2`` (PLINK drops them from that variant's model).

Centre (``combine_linear`` then ``finalize_linear``): sums over stations; per variant
``A = C'C - M_cc`` and the Schur complement ``s = g'g - b' A^-1 b`` (``b = C'g``) give
``beta = (g'y - b' A^-1 C'y) / s``, ``RSS = y'y - C'y' A^-1 C'y - beta^2 s``,
``SE = sqrt(RSS / (N - k - 1) / s)``; identical to the pooled fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from better.engine.accelerate import jit
from better.engine.analyses.counts import station_keys
from better.engine.design import KEY_COLUMNS, Block, Design, concat_keys
from better.engine.kernels.packed import NO_DOSAGES
from better.engine.kernels.regression import linear_sums, linear_sums_dense
from better.engine.key_union import KeyUnion, union_keys
from better.engine.pieces import whole
from better.engine.protocol import OneRoundProtocol
from better.engine.rounds import Analysis, Finishing, Result, RoundKind, SharedRows, Split, StationData, Task
from better.engine.stats import log10_p_t

#: Error codes, as PLINK 2 writes them in ERRCODE.
ERR_NONE, ERR_CONST_OMITTED, ERR_CONST, ERR_CORR, ERR_VIF, ERR_FEW_OBS, ERR_INVALID, ERR_WITHHELD = range(8)
ERRCODE_NAMES = (
    "",
    "CONST_OMITTED_ALLELE",
    "CONST_ALLELE",
    "CORR_TOO_HIGH",
    "VIF_TOO_HIGH",
    "SAMPLE_CT<=COVAR_CT",
    "INVALID_RESULT",
    "WITHHELD",  # not PLINK's: a station's disclosure policy kept this variant's statistics back
)
MAX_CORR = 0.999
MAX_VIF = 50.0


@dataclass
class LinearStats:
    """Sufficient statistics of one station, or of several added together."""

    k: int
    n: int
    cc: np.ndarray
    cy: np.ndarray
    yy: float
    keys: dict[str, np.ndarray]
    cg: np.ndarray
    gg: np.ndarray
    gy: np.ndarray
    n_miss: np.ndarray
    m_cc: np.ndarray
    m_cy: np.ndarray
    m_yy: np.ndarray
    names: tuple[str, ...] = field(default_factory=tuple)
    #: Per variant: a station withheld its statistics (policy); the pooled fit is then not computable.
    withheld: np.ndarray | None = None

    @property
    def n_variants(self) -> int:
        return int(self.gg.shape[0])


def linear_station(design: Design, blocks: Iterable[Block]) -> LinearStats:
    """Compute one station's linear-regression statistics over its variant blocks."""
    C = np.ascontiguousarray(design.C, dtype=np.float64)
    y = np.ascontiguousarray(design.y, dtype=np.float64)
    inc = np.ascontiguousarray(design.include, dtype=np.bool_)
    Ci, yi = C[inc], y[inc]
    k = design.k
    parts: list[tuple] = []
    for block in blocks:
        m = block.packed.shape[0]
        cg, gg, gy = np.zeros((m, k)), np.zeros(m), np.zeros(m)
        n_miss, m_cc, m_cy, m_yy = np.zeros(m, np.int64), np.zeros((m, k, k)), np.zeros((m, k)), np.zeros(m)
        if m:
            if block.dosages is not None:  # every sample has a value: matrix products over dense rows
                linear_sums_dense(block.dosages, C, y, inc, cg, gg, gy, n_miss, m_cc, m_cy, m_yy)
            else:  # sparse: the cost follows the carriers
                linear_sums(
                    np.ascontiguousarray(block.packed), NO_DOSAGES, C, y, inc, cg, gg, gy, n_miss, m_cc, m_cy, m_yy
                )
        parts.append((block.keys, cg, gg, gy, n_miss, m_cc, m_cy, m_yy))
    keys = concat_keys([p[0] for p in parts])

    def cat(i: int, shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([p[i] for p in parts]) if parts else np.zeros((0, *shape))

    return LinearStats(
        k=k,
        n=int(inc.sum()),
        cc=Ci.T @ Ci,
        cy=Ci.T @ yi,
        yy=float(yi @ yi),
        keys=keys,
        cg=cat(1, (k,)),
        gg=cat(2, ()),
        gy=cat(3, ()),
        n_miss=cat(4, ()).astype(np.int64),
        m_cc=cat(5, (k, k)),
        m_cy=cat(6, (k,)),
        m_yy=cat(7, ()),
        names=design.names,
    )


def combine_linear(stats: list[LinearStats], al: KeyUnion | None = None) -> LinearStats:
    """Add station statistics. A variant a station lacks counts all that station's samples as missing.

    ``al``, the stations' variant alignment, is computed unless the caller has it already.
    """
    if not stats:
        raise ValueError("no station statistics to combine")
    k = stats[0].k
    if any(s.k != k for s in stats):
        raise ValueError("stations used different numbers of covariates")
    al = al or union_keys([s.keys for s in stats])
    m = al.n
    out = LinearStats(
        k=k,
        n=sum(s.n for s in stats),
        cc=np.sum([s.cc for s in stats], axis=0),
        cy=np.sum([s.cy for s in stats], axis=0),
        yy=float(sum(s.yy for s in stats)),
        keys=al.keys,
        cg=np.zeros((m, k)),
        gg=np.zeros(m),
        gy=np.zeros(m),
        n_miss=np.zeros(m, np.int64),
        m_cc=np.zeros((m, k, k)),
        m_cy=np.zeros((m, k)),
        m_yy=np.zeros(m),
        names=stats[0].names,
        withheld=np.zeros(m, dtype=bool),
    )
    assert out.withheld is not None
    for s, idx in zip(stats, al.index, strict=True):
        if s.withheld is not None:
            out.withheld[idx] |= s.withheld
        absent = np.ones(m, dtype=bool)
        absent[idx] = False
        out.cg[idx] += s.cg
        out.gg[idx] += s.gg
        out.gy[idx] += s.gy
        out.n_miss[idx] += s.n_miss
        out.m_cc[idx] += s.m_cc
        out.m_cy[idx] += s.m_cy
        out.m_yy[idx] += s.m_yy
        out.n_miss[absent] += s.n
        out.m_cc[absent] += s.cc
        out.m_cy[absent] += s.cy
        out.m_yy[absent] += s.yy
    return out


@jit
def _cholesky(A: np.ndarray) -> tuple[np.ndarray, bool]:
    """Lower Cholesky factor of a symmetric matrix, and False instead of an exception if not positive definite."""
    k = A.shape[0]
    L = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1):
            acc = A[i, j]
            for t in range(j):
                acc -= L[i, t] * L[j, t]
            if i == j:
                if acc <= 1e-10 * max(abs(A[i, i]), 1e-300):
                    return L, False
                L[i, i] = np.sqrt(acc)
            else:
                L[i, j] = acc / L[j, j]
    return L, True


@jit
def _forward(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = b.shape[0]
    z = np.empty(k)
    for i in range(k):
        acc = b[i]
        for t in range(i):
            acc -= L[i, t] * z[t]
        z[i] = acc / L[i, i]
    return z


@jit
def _solve_variants(cc, cy, yy, n, cg, gg, gy, n_miss, m_cc, m_cy, m_yy, out):  # type: ignore[no-untyped-def]
    k = cc.shape[0]
    for v in range(gg.shape[0]):
        nv = n - n_miss[v]
        out[v, 0] = nv
        A = cc - m_cc[v]
        cyv = cy - m_cy[v]
        yyv = yy - m_yy[v]
        b = cg[v]
        sum_g = b[0]  # column 0 is the intercept
        out[v, 5] = sum_g
        if nv <= k + 1:
            out[v, 4] = ERR_FEW_OBS
            continue
        if sum_g <= 0.0 or sum_g >= 2.0 * nv:  # all REF or all ALT: PLINK names both this way
            out[v, 4] = ERR_CONST_OMITTED
            continue
        g_var = gg[v] - sum_g * sum_g / nv
        if g_var <= 1e-12 * gg[v]:
            out[v, 4] = ERR_CONST
            continue
        corr_bad = False
        for a in range(1, k):
            c_var = A[a, a] - A[0, a] * A[0, a] / nv
            if c_var > 0:
                r = (b[a] - sum_g * A[0, a] / nv) / np.sqrt(c_var * g_var)
                if abs(r) > MAX_CORR:
                    corr_bad = True
        if corr_bad:
            out[v, 4] = ERR_CORR
            continue
        L, ok = _cholesky(A)
        if not ok:  # a covariate became constant or collinear among this variant's called samples
            out[v, 4] = ERR_INVALID
            continue
        zb = _forward(L, b)
        zy = _forward(L, cyv)
        s = gg[v] - zb @ zb
        if s <= 0.0 or g_var / s > MAX_VIF:
            out[v, 4] = ERR_VIF
            continue
        beta = (gy[v] - zb @ zy) / s
        rss = yyv - zy @ zy - beta * beta * s
        df = nv - k - 1
        se = np.sqrt(max(rss, 0.0) / df / s)
        out[v, 1] = beta
        out[v, 2] = se
        out[v, 3] = beta / se if se > 0 else np.nan


def finalize_linear(pooled: LinearStats) -> dict[str, np.ndarray]:
    """Per-variant results: OBS_CT, BETA, SE, T_STAT, P, LOG10_P, A1_FREQ, ERRCODE (PLINK 2 names).

    Degenerate variants get NaN statistics and an ERRCODE, never an exception.
    """
    m = pooled.n_variants
    out = np.full((m, 6), np.nan)
    out[:, 4] = ERR_NONE
    if m:
        _solve_variants(
            pooled.cc,
            pooled.cy,
            pooled.yy,
            pooled.n,
            pooled.cg,
            pooled.gg,
            pooled.gy,
            pooled.n_miss,
            pooled.m_cc,
            pooled.m_cy,
            pooled.m_yy,
            out,
        )
    if pooled.withheld is not None:
        out[pooled.withheld, 4] = ERR_WITHHELD
    obs = out[:, 0].astype(np.int64)
    err = out[:, 4].astype(np.int64)
    beta, se, t = out[:, 1], out[:, 2], out[:, 3]
    bad = err != ERR_NONE
    beta[bad] = se[bad] = t[bad] = np.nan
    df = (obs - pooled.k - 1).astype(float)
    log10p = np.where(bad, np.nan, log10_p_t(np.where(bad, 0.0, t), np.where(df > 0, df, 1.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        a1_freq = out[:, 5] / (2.0 * obs)
    return {
        **pooled.keys,
        "OBS_CT": obs,
        "BETA": beta,
        "SE": se,
        "T_STAT": t,
        "P": 10.0**log10p,
        "LOG10_P": -log10p,
        "A1_FREQ": a1_freq,
        "ERRCODE": np.array([ERRCODE_NAMES[e] for e in err], dtype=object),
    }


# -- the round ------------------------------------------------------------------------------------------
def linear_round_station(task: Task, data: StationData) -> Result:
    """The station half of the ``linear`` round: :func:`linear_station` as named arrays."""
    return linear_to_result(linear_station(data.design, data.blocks(None)))


def linear_to_result(s: LinearStats) -> Result:
    out: Result = {f"key_{c}": v for c, v in s.keys.items()}
    for name in ("cc", "cy", "cg", "gg", "gy", "n_miss", "m_cc", "m_cy", "m_yy"):
        out[name] = getattr(s, name)
    out["n"] = np.array(s.n)
    out["yy"] = np.array(s.yy)
    if s.withheld is not None:
        out["withheld"] = s.withheld
    return out


def linear_from_result(r: Result) -> LinearStats:
    return LinearStats(
        k=int(r["cc"].shape[0]),
        n=int(r["n"]),
        cc=r["cc"],
        cy=r["cy"],
        yy=float(r["yy"]),
        keys=station_keys(r),
        cg=r["cg"],
        gg=r["gg"],
        gy=r["gy"],
        n_miss=r["n_miss"],
        m_cc=r["m_cc"],
        m_cy=r["m_cy"],
        m_yy=r["m_yy"],
        withheld=r.get("withheld"),
    )


def linear_genotype_counts(result: dict[str, np.ndarray]) -> np.ndarray:
    """Genotype counts ``(rows, 1, 4)`` from a linear round's sums: with ``a = Σg`` and ``q = Σg²`` over
    the called samples, hom-alt ``(q - a) / 2``, het ``a - 2 hom-alt``, hom-ref the rest of the called.

    >>> r = {"n": np.array(6), "n_miss": np.array([1]), "cg": np.array([[3.0]]), "gg": np.array([5.0])}
    >>> linear_genotype_counts(r)[0, 0].tolist()
    [3, 1, 1, 1]
    """
    missing = np.asarray(result["n_miss"], dtype=np.int64)
    alt = np.rint(np.asarray(result["cg"], dtype=float)[:, 0]).astype(np.int64) if missing.size else missing
    squares = np.rint(np.asarray(result["gg"], dtype=float)).astype(np.int64)
    hom_alt = (squares - alt) // 2
    het = alt - 2 * hom_alt
    hom_ref = int(result["n"]) - missing - het - hom_alt
    return np.stack([hom_ref, het, hom_alt, missing], axis=1)[:, None, :]


def linear_calls(result: Result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Called and missing samples and ALT alleles per variant, from a linear round's sums."""
    missing = np.asarray(result["n_miss"], dtype=np.int64)
    alt = np.rint(np.asarray(result["cg"])[:, 0]).astype(np.int64) if len(missing) else missing
    return int(result["n"]) - missing, missing, alt


@dataclass
class LinearProtocol(OneRoundProtocol):
    """One round: stations' linear sums, combined and finalised centrally."""

    kind = "linear"

    pooled: LinearStats | None = None

    def combine(self, results: list[Result]) -> None:
        self.pooled = combine_linear([linear_from_result(r) for r in results])

    def result(self) -> dict[str, np.ndarray]:
        assert self.pooled is not None
        return finalize_linear(self.pooled)


ROUNDS = (
    RoundKind(
        "linear",
        linear_round_station,
        shared=SharedRows(
            "variant_keys",
            KEY_COLUMNS,
            {**dict.fromkeys(("cg", "gg", "gy", "withheld")), "n_miss": "n", "m_cc": "cc", "m_cy": "cy", "m_yy": "yy"},
        ),
        rules=("minor_allele_count", "carriers", "missing_genotypes"),
        judged_groups=1,
        zeroed=("cg", "gg", "gy", "n_miss", "m_cc", "m_cy", "m_yy"),
        people=linear_genotype_counts,
        calls=linear_calls,
        finishing=Finishing(("cg", "gg", "gy", "n_miss", "m_cc", "m_cy", "m_yy"), ("cc", "cy", "yy", "n"), "linear"),
        split=Split(whole(linear_round_station), rows=("cg", "gg", "gy", "n_miss", "m_cc", "m_cy", "m_yy")),
    ),
)
ANALYSES = (Analysis("gwas_linear", ("variant_keys", "counts", "linear"), needs_phenotype=True),)
