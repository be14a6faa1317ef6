"""The centre half of logistic regression: the null model's Newton steps, the score round's tests, and
the per-variant Newton (Wald) and Firth rounds, as one state machine (see :mod:`.station` for what each
round computes at the stations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from better.engine.analyses import linear as linear_
from better.engine.analyses.counts import combine_counts, pooled_summary, station_keys
from better.engine.analyses.logistic import station
from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.filters import VariantFilter
from better.engine.key_union import union_keys
from better.engine.protocol import Protocol
from better.engine.rounds import Result, Task
from better.engine.stats import log10_p_normal

NEWTON, FIRTH_INFO, FIRTH_SCORE, DONE, PLINK_PATH = 1, 2, 3, 0, 4
NULL_MAX_ITER = 25  # a well-posed null model converges in under 15; (quasi-)separation needs ~35 to fake it
#: A variant whose case/control x allele table has a cell below this many alleles (an ALT dosage sum of
#: 0.003 in cases, say: imputed data makes such near-empty cells common) is nearly separated. Whether
#: PLINK 2's hybrid falls back to Firth for it depends on how its Newton iterations from zero go, so
#: such variants follow that path (:meth:`LogisticProtocol._plink_update`) before being polished.
NEAR_EMPTY_CELL = 2.0


@dataclass
class LogisticProtocol(Protocol):
    """Null model rounds, a score round, then per-variant Newton (Wald/Firth) rounds.

    ``test``: ``"wald"`` (PLINK 2's logistic-Firth hybrid, the default), ``"score"`` or ``"firth"``.
    """

    k: int
    test: str = "wald"
    phase: str = "null"
    beta_null: np.ndarray = field(default_factory=lambda: np.zeros(0))
    null_iterations: int = 0
    keys: dict[str, np.ndarray] = field(default_factory=dict)
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 3), dtype=np.int64))
    score_z: np.ndarray = field(default_factory=lambda: np.zeros(0))
    score_v: np.ndarray = field(default_factory=lambda: np.zeros(0))
    score_u: np.ndarray = field(default_factory=lambda: np.zeros(0))
    beta: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    mode: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    iterations: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    inv: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    se: np.ndarray = field(default_factory=lambda: np.zeros(0))
    firth_used: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    final: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    pen_loglik: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_step: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    halvings: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    damping: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: Per variant on PLINK 2's path: the smallest step so far (L1, PLINK's coding) and whether PLINK's
    #: A1, the minor allele, is REF (its genotype column is then the REF dosage).
    min_delta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref_coded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: PLINK 2 stops these fits unfinished (its 14 Newton steps): reported as UNFINISHED, with the values
    #: the plain Newton steps then converge to.
    unfinished: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    errcode: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    #: Pooled variant filter, applied to the score round's counts before any Newton round.
    variant_filter: VariantFilter = field(default_factory=VariantFilter)
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.test not in ("wald", "score", "firth"):
            raise ValueError(f"test must be wald, score or firth, not {self.test!r}")
        if self.beta_null.size == 0:
            self.beta_null = np.zeros(self.k)

    def _active(self) -> np.ndarray:
        return np.flatnonzero(self.mode != DONE)

    def next_task(self) -> Task | None:
        if self.phase == "null":
            return {"kind": "logistic_null", "beta": self.beta_null}
        if self.phase == "score":
            return {"kind": "logistic_score", "beta": self.beta_null}
        if self.phase == "newton":
            act = self._active()
            kk = self.k + 1
            inv = self.inv[act] if act.size else np.zeros((0, kk, kk))
            return {
                "kind": "logistic_newton",
                **{f"key_{c}": self.keys[c][act] for c in KEY_COLUMNS},
                "beta": self.beta[act],
                "firth": self.mode[act] == FIRTH_SCORE,
                "loglik": np.isin(self.mode[act], (FIRTH_INFO, FIRTH_SCORE)),
                "inv": inv,
            }
        return None

    def receive(self, results: list[Result]) -> None:
        self.rounds += 1
        if self.phase == "null":
            n = int(sum(int(r["n"]) for r in results))
            n_case = int(sum(int(r["n_case"]) for r in results))
            if n_case == 0 or n_case == n:
                raise InputError(
                    f"the binary phenotype needs both cases and controls; the analysed samples "
                    f"hold {n_case} cases and {n - n_case} controls"
                )
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    beta, step = station.null_step(self.beta_null, results)
            except np.linalg.LinAlgError:
                beta = np.full_like(self.beta_null, np.nan)
                step = np.inf
            self.null_iterations += 1
            if not np.all(np.isfinite(beta)) or (step >= 1e-10 and self.null_iterations >= NULL_MAX_ITER):
                # Newton converges in a handful of steps unless a covariate (quasi-)separates the classes,
                # where the coefficients run off towards infinity until the information is singular.
                raise InputError(
                    "the null model (phenotype ~ covariates) has no finite fit: the covariates are "
                    "collinear, or one of them separates cases from controls; drop or recode it"
                )
            self.beta_null = beta
            if step < 1e-10:
                self.phase = "score"
        elif self.phase == "score":
            self._receive_score(results)
        elif self.phase == "newton":
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                self._receive_newton(results)

    def _receive_score(self, results: list[Result]) -> None:
        al = union_keys([station_keys(r) for r in results])
        m, k = al.n, self.k
        u, gwg, cwg, m_cwc, m_cr = np.zeros(m), np.zeros(m), np.zeros((m, k)), np.zeros((m, k, k)), np.zeros((m, k))
        cwc_total = np.sum([r["cwc"] for r in results], axis=0)
        cr_total = np.sum([r["cr"] for r in results], axis=0)
        self.keys, self.counts, withheld = combine_counts(
            [
                {
                    **{f"key_{c}": r[f"key_{c}"] for c in KEY_COLUMNS},
                    "counts": r["counts"],
                    "group_size": _group_size(r),
                    **({"withheld": r["withheld"]} if "withheld" in r else {}),
                }
                for r in results
            ],
            al,
        )
        for r, idx in zip(results, al.index, strict=True):
            absent = np.ones(m, dtype=bool)
            absent[idx] = False
            u[idx] += r["u"]
            gwg[idx] += r["gwg"]
            cwg[idx] += r["cwg"]
            m_cwc[idx] += r["m_cwc"]
            m_cwc[absent] += r["cwc"]
            m_cr[idx] += r["m_cr"]
            m_cr[absent] += r["cr"]
        info = cwc_total[None] - m_cwc
        with np.errstate(invalid="ignore", divide="ignore"):
            proj = np.einsum("vi,vi->v", cwg, _batched_solve(info, cwg))
            v = gwg - proj
            self.score_z = np.where(v > 1e-12 * np.maximum(gwg, 1e-300), u / np.sqrt(np.maximum(v, 1e-300)), np.nan)
        self.score_u, self.score_v = u, v
        called = self.counts[:, :, 0].sum(axis=1)
        a1 = self.counts[:, :, 1].sum(axis=1)
        const = (a1 == 0) | (a1 == 2 * called)
        self.errcode = np.where(const, "CONST_OMITTED_ALLELE", "").astype(object)
        few = called <= k + 1
        self.errcode[few & ~const] = "SAMPLE_CT<=COVAR_CT"
        # PLINK 2 checks the unweighted predictors of every variant as for linear regression.
        predictors = linear_.combine_linear([_predictor_stats(r, k) for r in results], al)
        collinear = linear_.finalize_linear(predictors)["ERRCODE"]
        flagged = np.isin(collinear, ("CORR_TOO_HIGH", "VIF_TOO_HIGH", "INVALID_RESULT")) & (self.errcode == "")
        # A singular predictor matrix is INVALID_RESULT in PLINK 2's linear output, VIF_INFINITE in station.
        self.errcode[flagged] = np.where(collinear[flagged] == "INVALID_RESULT", "VIF_INFINITE", collinear[flagged])
        self.errcode[withheld] = "WITHHELD"
        self.kept = withheld | self.variant_filter.mask(*pooled_summary(self.counts), squares=predictors.gg)
        self.unfinished = np.zeros(m, dtype=bool)
        if self.test == "score":
            self.phase = "done"
            return
        kk = k + 1
        self.beta = np.zeros((m, kk))
        self.beta[:, :k] = self.beta_null
        self.inv = np.zeros((m, kk, kk))
        self.se = np.full(m, np.nan)
        self.iterations = np.zeros(m, dtype=np.int64)
        self.final = np.zeros(m, dtype=bool)
        self.pen_loglik = np.full(m, -np.inf)
        self.last_step = np.zeros((m, kk))
        self.halvings = np.zeros(m, dtype=np.int64)
        self.damping = np.ones(m)
        use_firth = np.ones(m, dtype=bool) if self.test == "firth" else station.zero_cell(self.counts)
        self.firth_used = use_firth & (self.errcode == "")
        self.mode = np.where(self.errcode != "", DONE, np.where(use_firth, FIRTH_INFO, NEWTON)).astype(np.int8)
        self.mode[~self.kept] = DONE
        alt = self.counts[:, :, 1]
        ref = 2 * self.counts[:, :, 0] - alt
        near_empty = (np.minimum(alt, ref) < NEAR_EMPTY_CELL).any(axis=1) & (self.mode == NEWTON)
        self.mode[near_empty] = PLINK_PATH
        self.beta[near_empty] = 0.0  # PLINK starts every coefficient at zero
        self.min_delta = np.full(m, 1e9)
        self.ref_coded = alt.sum(axis=1) > ref.sum(axis=1)
        # The first Newton step, from the null fit, needs only what this round returned: X'WX and the
        # score over called samples are the totals minus the missing-genotype parts.
        first = np.flatnonzero(self.mode == NEWTON)
        xwx = np.zeros((first.size, kk, kk))
        xwx[:, :k, :k] = info[first]
        xwx[:, :k, k] = xwx[:, k, :k] = cwg[first]
        xwx[:, k, k] = gwg[first]
        score = np.concatenate([cr_total[None] - m_cr[first], u[first, None]], axis=1)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self._newton_update(first, xwx, score)
        self.phase = "newton" if (self.mode != DONE).any() else "done"

    def _newton_update(self, variants: np.ndarray, xwx: np.ndarray, score: np.ndarray) -> None:
        """Take a Newton step for ``variants`` (all in NEWTON mode) from their summed ``X'WX`` and score."""
        k = self.k
        step = _batched_solve(xwx, score)
        ok = np.isfinite(step).all(axis=1)
        self.beta[variants[ok]] += step[ok]
        self.iterations[variants[ok]] += 1
        ok &= np.isfinite(self.beta[variants]).all(axis=1)
        converged = ok & (np.max(np.abs(step), axis=1, initial=0.0) < station.TOL)
        inv = _batched_inv(xwx[converged])
        var = inv[:, k, k] if inv.size else np.zeros(0)
        self.se[variants[converged]] = np.where(var > 0, np.sqrt(np.where(var > 0, var, 1.0)), np.nan)
        self.mode[variants[converged]] = DONE
        give_up = ~ok | (~converged & (self.iterations[variants] >= station.MAX_ITER))
        for v in variants[give_up]:
            self._to_firth(int(v))

    def _plink_update(self, variants: np.ndarray, xwx: np.ndarray, score: np.ndarray) -> None:
        """A Newton step of PLINK 2's ``LogisticRegressionF`` for nearly separated variants, with its rules:
        from all coefficients zero, in its coding (A1 the minor allele), it gives up (and the hybrid turns
        to Firth) when the L1 step is NaN, or from the 5th step on grows past 20 and twice the smallest, or
        from the 8th stays within 1e-3 of 1 (a coefficient drifting off to infinity), or when after the
        15th a coefficient exceeds 8e3 (otherwise PLINK stops there, unfinished); an L1 step under 1e-4 is
        convergence (unless a coefficient exceeds 6e4). Converged or unfinished, a variant goes on by plain
        Newton steps to the usual tolerance. All variants of the round at once."""
        if not variants.size:
            return
        k = self.k
        # beta in PLINK's coding is a @ beta (and back: a is its own inverse); X' = X a, so X'WX' = a'(X'WX)a
        a = np.broadcast_to(np.eye(k + 1), (variants.size, k + 1, k + 1)).copy()
        flip = self.ref_coded[variants]
        a[flip, 0, k], a[flip, k, k] = 2.0, -1.0
        at = a.transpose(0, 2, 1)
        step = _batched_solve(at @ xwx @ a, np.einsum("vji,vj->vi", a, score))
        it = self.iterations[variants].copy()
        self.iterations[variants] += 1
        finite = np.isfinite(step).all(axis=1)
        step = np.where(finite[:, None], step, 0.0)
        coef = np.einsum("vij,vj->vi", a, self.beta[variants]) + step
        delta = np.abs(step).sum(axis=1)
        min_delta = np.minimum(self.min_delta[variants], delta)
        biggest = np.abs(coef).max(axis=1)
        late = it > 3
        firth = ~finite | (
            late & (((delta > 20.0) & (delta > 2 * min_delta)) | ((it > 6) & (np.abs(1.0 - delta) < 1e-3)))
        )
        stopped = late & (it > 13) & ~firth
        unfinished = stopped & (biggest <= 8e3)
        converged = ~firth & ~stopped & (delta < 1e-4)
        firth |= (stopped & (biggest > 8e3)) | (converged & (biggest > 6e4))
        self.beta[variants] = np.einsum("vij,vj->vi", a, coef)
        self.min_delta[variants] = min_delta
        self.unfinished[variants[unfinished & ~firth]] = True
        on = variants[(unfinished | converged) & ~firth]
        self.mode[on], self.iterations[on] = NEWTON, 0
        for v in variants[firth].tolist():
            self._to_firth(v)

    def _receive_newton(self, results: list[Result]) -> None:
        act = self._active()
        withheld = np.zeros(act.size, dtype=bool)
        for r in results:
            if "withheld" in r:
                withheld |= np.asarray(r["withheld"], dtype=bool)
        for v in act[withheld]:
            self._fail(int(v), "WITHHELD")
        keep = ~withheld
        act = act[keep]
        results = [{name: r[name][keep] for name in ("xwx", "score", "loglik")} for r in results]
        xwx = np.sum([r["xwx"] for r in results], axis=0)
        score = np.sum([r["score"] for r in results], axis=0)
        loglik = np.sum([r["loglik"] for r in results], axis=0)
        k = self.k
        newton = self.mode[act] == NEWTON
        plink = self.mode[act] == PLINK_PATH
        self._newton_update(act[newton], xwx[newton], score[newton])
        self._plink_update(act[plink], xwx[plink], score[plink])
        for j in np.flatnonzero(~newton & ~plink):
            v = act[j]
            mode = self.mode[v]
            info = xwx[j]
            if mode == FIRTH_INFO:
                sign, logdet = np.linalg.slogdet(info)
                pen = loglik[j] + 0.5 * logdet if sign > 0 else -np.inf
                if pen < self.pen_loglik[v] - 1e-10 and self.halvings[v] < 30:
                    # The penalised likelihood went down: halve the last step and look again.
                    self.last_step[v] /= 2.0
                    self.beta[v] -= self.last_step[v]
                    self.halvings[v] += 1
                    self.damping[v] = max(self.damping[v] / 2.0, 1e-3)
                    self.final[v] = False
                    continue
                inv = _inv_or_none(info)
                if inv is None:
                    self._fail(v, "FIRTH_CONVERGE_FAIL")
                    continue
                self.inv[v] = inv
                self.pen_loglik[v] = pen
                self.halvings[v] = 0
                if self.final[v]:
                    self.se[v] = np.sqrt(inv[k, k]) if inv[k, k] > 0 else np.nan
                    self.mode[v] = DONE
                else:
                    self.mode[v] = FIRTH_SCORE
            elif mode == FIRTH_SCORE:
                # Fisher scoring ignores the penalty's curvature and tends to overshoot (by about 2x for
                # singletons); a per-variant damping learnt from the step-halvings keeps it converging.
                full = self.inv[v] @ score[j]
                biggest = np.max(np.abs(full))
                if float(full @ self.last_step[v]) < 0.0:  # the step turned back: damp harder
                    self.damping[v] = max(self.damping[v] / 2.0, 1e-3)
                step = full * self.damping[v]
                if biggest > station.FIRTH_MAX_STEP:
                    step *= station.FIRTH_MAX_STEP / biggest
                self.beta[v] += step
                self.last_step[v] = step
                self.iterations[v] += 1
                if not np.all(np.isfinite(self.beta[v])):
                    self._fail(v, "FIRTH_CONVERGE_FAIL")
                    continue
                if self.iterations[v] >= station.FIRTH_MAX_ITER:  # PLINK 2 calls a fit out of steps so
                    self._fail(v, "UNFINISHED")
                    continue
                if biggest < station.FIRTH_TOL:
                    self.final[v] = True
                self.mode[v] = FIRTH_INFO
        if not (self.mode != DONE).any():
            self.phase = "done"

    def _to_firth(self, v: int) -> None:
        self.firth_used[v] = True
        self.beta[v] = 0.0
        self.beta[v, : self.k] = self.beta_null
        self.iterations[v] = 0
        self.pen_loglik[v] = -np.inf
        self.last_step[v] = 0.0
        self.damping[v] = 1.0
        self.mode[v] = FIRTH_INFO

    def _fail(self, v: int, code: str) -> None:
        self.errcode[v] = code
        self.mode[v] = DONE

    def result(self) -> dict[str, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = self._result()
        if self.kept.size and not self.kept.all():
            out = {name: col[self.kept] for name, col in out.items()}
        return out

    def _result(self) -> dict[str, np.ndarray]:
        called = self.counts[:, :, 0].sum(axis=1)
        a1 = self.counts[:, :, 1].sum(axis=1)
        bad = self.errcode != ""
        with np.errstate(invalid="ignore", divide="ignore"):
            freq = a1 / (2.0 * called)
        hidden = self.errcode == "WITHHELD"
        out: dict[str, np.ndarray] = {
            **self.keys,
            "OBS_CT": np.where(hidden, np.nan, called) if hidden.any() else called,
            "A1_FREQ": np.where(hidden, np.nan, freq),
        }
        if self.test == "score":
            z = np.where(bad, np.nan, self.score_z)
            with np.errstate(invalid="ignore", divide="ignore"):
                log_or = np.where(bad, np.nan, self.score_u / self.score_v)
                se = np.where(bad, np.nan, 1.0 / np.sqrt(self.score_v))
            out.update({"FIRTH?": np.full(len(z), "N", dtype=object), "TEST": np.full(len(z), "SCORE", dtype=object)})
        else:
            log_or = np.where(bad, np.nan, self.beta[:, self.k])
            se = np.where(bad, np.nan, self.se)
            with np.errstate(invalid="ignore", divide="ignore"):
                z = log_or / se
            out.update(
                {
                    "FIRTH?": np.where(self.firth_used, "Y", "N").astype(object),
                    "TEST": np.full(len(z), "ADD", dtype=object),
                }
            )
        unusable = ~bad & ~(np.isfinite(z) & np.isfinite(log_or) & np.isfinite(se))
        if unusable.any() or self.unfinished.any():  # e.g. a score variance of zero, or a fit that ran off
            self.errcode = self.errcode.copy()
            self.errcode[unusable | (~bad & self.unfinished)] = "UNFINISHED"
            z, log_or, se = (np.where(unusable, np.nan, a) for a in (z, log_or, se))
        lp = log10_p_normal(np.where(np.isfinite(z), z, 0.0))
        lp = np.where(np.isfinite(z), lp, np.nan)
        out.update(
            {
                "OR": np.exp(log_or),
                "LOG(OR)_SE": se,
                "Z_STAT": z,
                "P": 10.0**lp,
                "LOG10_P": -lp,
                "ERRCODE": self.errcode,
            }
        )
        return out


def _predictor_stats(r: Result, k: int) -> linear_.LinearStats:
    """A score round's unweighted predictor sums as linear statistics with a zero phenotype: enough for
    the collinearity checks of :func:`better.engine.linear_.finalize_linear`."""
    m = int(r["gg"].shape[0])
    return linear_.LinearStats(
        k=k,
        n=int(r["n"]),
        cc=r["cc"],
        cy=np.zeros(k),
        yy=0.0,
        keys=station_keys(r),
        cg=r["cg"],
        gg=r["gg"],
        gy=np.zeros(m),
        n_miss=np.asarray(r["n_miss"], dtype=np.int64),
        m_cc=r["m_cc"],
        m_cy=np.zeros((m, k)),
        m_yy=np.zeros(m),
    )


def _group_size(r: Result) -> np.ndarray:
    """Included controls and cases at a station."""
    return np.asarray(r["group_size"], dtype=np.int64)


def _solve_or_none(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return None


def _inv_or_none(a: np.ndarray) -> np.ndarray | None:
    try:
        inv = np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return None
    return inv if np.all(np.isfinite(inv)) else None


def _batched_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a[i] x[i] = b[i]`` for a stack; NaN rows where ``a[i]`` is singular."""
    if a.shape[0] == 0:
        return np.zeros(b.shape)
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:  # some matrix is singular: find which, one by one
        out = np.full(b.shape, np.nan)
        for i in range(a.shape[0]):
            s = _solve_or_none(a[i], b[i])
            if s is not None:
                out[i] = s
        return out


def _batched_inv(a: np.ndarray) -> np.ndarray:
    """Inverse of each matrix of a stack; NaN where singular or not finite."""
    if a.shape[0] == 0:
        return np.zeros(a.shape)
    try:
        out = np.linalg.inv(a)
    except np.linalg.LinAlgError:
        out = np.full(a.shape, np.nan)
        for i in range(a.shape[0]):
            inv = _inv_or_none(a[i])
            if inv is not None:
                out[i] = inv
    out[~np.isfinite(out).all(axis=(1, 2))] = np.nan
    return out
