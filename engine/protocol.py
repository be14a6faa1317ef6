"""Analyses as small protocols: rounds of station tasks with explicit, serialisable central state.

A protocol hands out one task per round (the same for every station), receives each station's result
(a dict of numpy arrays), and updates its state; :func:`run_local` drives it in-process, the coordinator
drives it over HTTP. Station work is :func:`execute`, a pure function of the task, the station's
:class:`~better.engine.design.Design` and its genotype blocks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from better.engine import linear, logistic
from better.engine.design import KEY_COLUMNS, Block, BlockSource, Design, concat_keys
from better.engine.errors import InputError
from better.engine.filters import VariantFilter
from better.engine.kernels.counts import genotype_counts
from better.engine.key_union import KeyUnion, union_keys
from better.engine.stats import allelic_chi2, genotypic_chi2, hwe_exact, log10_p_chi2, log10_p_normal, trend_chi2

Result = dict[str, np.ndarray]
Task = dict[str, Any]
KEYS = KEY_COLUMNS


class Protocol(ABC):
    """Central state of one federated analysis."""

    rounds: int = 0

    @abstractmethod
    def next_task(self) -> Task | None:
        """The task for every station this round, or None when finished."""

    @abstractmethod
    def receive(self, results: list[Result]) -> None:
        """Take the stations' results for the current task."""

    @abstractmethod
    def result(self) -> dict[str, np.ndarray]:
        """The final per-variant (or one-row) table as columns."""


# -- station side ----------------------------------------------------------------------------------------
#: A task naming at most this many variants reads only the blocks that hold them.
TARGETED_MAX = 256


def execute(task: Task, design: Design, blocks: BlockSource) -> Result:
    """Run one task at a station and return what it releases (aggregates only)."""
    kind = task["kind"]
    if kind == "sample_count":
        return {"n": np.array(int(design.include.sum()))}
    if kind == "counts":
        return _counts_station(design, blocks(None), int(task["groups"]))
    if kind == "linear":
        return linear_to_result(linear.linear_station(design, blocks(None)))
    if kind == "logistic_null":
        return logistic.null_station(design, np.asarray(task["beta"], dtype=float))
    if kind == "logistic_score":
        return logistic.score_station(design, np.asarray(task["beta"], dtype=float), blocks(None))
    if kind == "logistic_newton":
        few = len(task["key_pos"]) <= TARGETED_MAX
        targets = {c: np.asarray(task[f"key_{c}"]) for c in KEYS} if few else None
        return logistic.newton_station(design, blocks(targets), task)
    raise ValueError(f"unknown task kind {kind!r}")


def _counts_station(design: Design, blocks: Iterable[Block], groups: int) -> Result:
    if groups == 1:
        group = np.where(design.include, 0, -1).astype(np.int32)
    else:
        group = np.where(design.include, (design.y > 0.5).astype(np.int32), -1).astype(np.int32)
    key_parts = []
    counts = []
    for b in blocks:
        key_parts.append(b.keys)
        counts.append(genotype_counts(np.ascontiguousarray(b.packed), group, groups))
    out = {f"key_{c}": v for c, v in concat_keys(key_parts).items()}
    out["counts"] = np.concatenate(counts) if counts else np.zeros((0, groups, 4), dtype=np.int64)
    out["group_size"] = np.bincount(group[group >= 0], minlength=groups).astype(np.int64)
    return out


def station_keys(result: Result) -> dict[str, np.ndarray]:
    return {c: result[f"key_{c}"] for c in KEYS}


def linear_to_result(s: linear.LinearStats) -> Result:
    out: Result = {f"key_{c}": v for c, v in s.keys.items()}
    for name in ("cc", "cy", "cg", "gg", "gy", "n_miss", "m_cc", "m_cy", "m_yy"):
        out[name] = getattr(s, name)
    out["n"] = np.array(s.n)
    out["yy"] = np.array(s.yy)
    if s.withheld is not None:
        out["withheld"] = s.withheld
    return out


def linear_from_result(r: Result) -> linear.LinearStats:
    return linear.LinearStats(
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


def pooled_summary(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """ALT allele count, called and missing sample counts and (from genotype counts only) genotype counts
    ``(m, 3)`` from pooled ``(m, groups, 4)`` genotype or ``(m, groups, 3)`` allele counts: what
    :meth:`better.engine.filters.VariantFilter.mask` takes."""
    c = counts.sum(axis=1)
    if counts.shape[2] == 3:  # allele counts: called, ALT alleles, missing
        return c[:, 1], c[:, 0], c[:, 2], None
    return c[:, 1] + 2 * c[:, 2], c[:, :3].sum(axis=1), c[:, 3], c[:, :3]


def withheld_of(results: list[Result], al: KeyUnion) -> np.ndarray:
    """Per pooled variant: some station withheld its statistics (a ``withheld`` array in its result)."""
    out = np.zeros(al.n, dtype=bool)
    for r, idx in zip(results, al.index, strict=True):
        if "withheld" in r:
            out[idx] |= np.asarray(r["withheld"], dtype=bool)
    return out


def combine_counts(
    results: list[Result], al: KeyUnion | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Pooled keys, counts and the withheld mask; a variant a station lacks is missing there.

    Counts are ``(variants, groups, codes)`` with "missing" the last code: genotype counts (4 codes) or
    the allele counts of the logistic score round (3). ``al`` is computed unless given.
    """
    al = al or union_keys([station_keys(r) for r in results])
    groups, codes = results[0]["counts"].shape[1:]
    total = np.zeros((al.n, groups, codes), dtype=np.int64)
    for r, idx in zip(results, al.index, strict=True):
        total[idx] += r["counts"]
        absent = np.ones(al.n, dtype=bool)
        absent[idx] = False
        total[absent, :, -1] += r["group_size"]  # the last code is "missing", in either layout
    return al.keys, total, withheld_of(results, al)


# -- sample count ----------------------------------------------------------------------------------------
@dataclass
class SampleCountProtocol(Protocol):
    """One round: how many samples pass the filter (and have the phenotype and covariates asked for)."""

    total: int | None = None
    withheld: bool = False

    def next_task(self) -> Task | None:
        return None if self.total is not None else {"kind": "sample_count"}

    def receive(self, results: list[Result]) -> None:
        self.withheld = any(bool(r.get("withheld", False)) for r in results)
        self.total = int(sum(int(r["n"]) for r in results))
        self.rounds += 1

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        return {
            "COUNT": np.array([np.nan if self.withheld else self.total]),
            "WITHHELD": np.array([self.withheld]),
        }


# -- counts: FREQ, HWE, case/control tests ---------------------------------------------------------------
@dataclass
class CountsProtocol(Protocol):
    """One round of genotype counts; ``groups`` 1 (everyone) or 2 (controls, cases)."""

    groups: int = 1
    keys: dict[str, np.ndarray] = field(default_factory=dict)
    counts: np.ndarray | None = None
    withheld: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def next_task(self) -> Task | None:
        return None if self.counts is not None else {"kind": "counts", "groups": self.groups}

    def receive(self, results: list[Result]) -> None:
        self.keys, self.counts, self.withheld = combine_counts(results)
        self.rounds += 1

    def result(self) -> dict[str, np.ndarray]:
        assert self.counts is not None
        return {**self.keys, **counts_columns(self.counts, self.withheld)}


def counts_columns(counts: np.ndarray, withheld: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """FREQ (``.afreq``: ALT_FREQS, OBS_CT), HWE (``.hardy``: HOM_A1_CT, HET_A1_CT, TWO_AX_CT, O(HET_A1),
    E(HET_A1), HWE_P with A1 = REF) and, for two groups, allelic, genotypic and trend test columns.

    Rows in ``withheld`` (a station's policy kept its counts back) get NaN in every column and
    ``WITHHELD`` True: no number is shown for them.
    """
    if withheld is not None and withheld.any():
        out = counts_columns(np.where(withheld[:, None, None], 0, counts))
        for name, col in out.items():
            out[name] = np.where(withheld, np.nan, col.astype(float))
        out["WITHHELD"] = withheld.copy()
        return out
    c = counts.sum(axis=1)
    hom_ref, het, hom_alt, miss = (c[:, i] for i in range(4))
    called = hom_ref + het + hom_alt
    with np.errstate(invalid="ignore", divide="ignore"):
        alt_freq = (het + 2 * hom_alt) / (2.0 * called)
        e_het = 2 * alt_freq * (1 - alt_freq) * called
    out = {
        "ALT_FREQS": alt_freq,
        "OBS_CT": 2 * called,
        "MISSING_CT": miss,
        "CALL_RATE": np.where(called + miss > 0, called / np.maximum(called + miss, 1), np.nan),
        # .hardy columns: A1 is REF, AX is ALT, as plink2 --hardy writes them for biallelic variants.
        "HOM_A1_CT": hom_ref,
        "HET_A1_CT": het,
        "TWO_AX_CT": hom_alt,
        "O(HET_A1)": np.where(called > 0, het / np.maximum(called, 1), np.nan),
        "E(HET_A1)": np.where(called > 0, e_het / np.maximum(called, 1), np.nan),
        "HWE_P": hwe_exact(hom_ref, het, hom_alt),
    }
    if counts.shape[1] == 2:
        ctrl, case = counts[:, 0, :3], counts[:, 1, :3]
        for name, stat, df in (
            ("ALLELIC", allelic_chi2(case, ctrl), 1),
            ("GENO", genotypic_chi2(case, ctrl), 2),
            ("TREND", trend_chi2(case, ctrl), 1),
        ):
            lp = log10_p_chi2(stat, df)
            out[f"{name}_CHISQ"] = stat
            out[f"{name}_P"] = 10.0**lp
            out[f"{name}_LOG10_P"] = -lp
    out["WITHHELD"] = np.zeros(counts.shape[0], dtype=bool)
    return out


# -- linear ----------------------------------------------------------------------------------------------
@dataclass
class LinearProtocol(Protocol):
    """One round: stations' linear sums, combined and finalised centrally."""

    pooled: linear.LinearStats | None = None

    def next_task(self) -> Task | None:
        return None if self.pooled is not None else {"kind": "linear"}

    def receive(self, results: list[Result]) -> None:
        self.pooled = linear.combine_linear([linear_from_result(r) for r in results])
        self.rounds += 1

    def result(self) -> dict[str, np.ndarray]:
        assert self.pooled is not None
        return linear.finalize_linear(self.pooled)


# -- logistic --------------------------------------------------------------------------------------------
NEWTON, FIRTH_INFO, FIRTH_SCORE, DONE = 1, 2, 3, 0
NULL_MAX_ITER = 25  # a well-posed null model converges in under 15; (quasi-)separation needs ~35 to fake it


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
                **{f"key_{c}": self.keys[c][act] for c in KEYS},
                "beta": self.beta[act],
                "firth": self.mode[act] == FIRTH_SCORE,
                "loglik": self.mode[act] != NEWTON,
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
                    beta, step = logistic.null_step(self.beta_null, results)
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
                    **{f"key_{c}": r[f"key_{c}"] for c in KEYS},
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
        collinear = linear.finalize_linear(linear.combine_linear([_predictor_stats(r, k) for r in results], al))[
            "ERRCODE"
        ]
        flagged = np.isin(collinear, ("CORR_TOO_HIGH", "VIF_TOO_HIGH", "INVALID_RESULT")) & (self.errcode == "")
        # A singular predictor matrix is INVALID_RESULT in PLINK 2's linear output, VIF_INFINITE in logistic.
        self.errcode[flagged] = np.where(collinear[flagged] == "INVALID_RESULT", "VIF_INFINITE", collinear[flagged])
        self.errcode[withheld] = "WITHHELD"
        self.kept = withheld | self.variant_filter.mask(*pooled_summary(self.counts))
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
        use_firth = np.ones(m, dtype=bool) if self.test == "firth" else logistic.zero_cell(self.counts)
        self.firth_used = use_firth & (self.errcode == "")
        self.mode = np.where(self.errcode != "", DONE, np.where(use_firth, FIRTH_INFO, NEWTON)).astype(np.int8)
        self.mode[~self.kept] = DONE
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
        converged = ok & (np.max(np.abs(step), axis=1, initial=0.0) < logistic.TOL)
        inv = _batched_inv(xwx[converged])
        var = inv[:, k, k] if inv.size else np.zeros(0)
        self.se[variants[converged]] = np.where(var > 0, np.sqrt(np.where(var > 0, var, 1.0)), np.nan)
        self.mode[variants[converged]] = DONE
        give_up = ~ok | (~converged & (self.iterations[variants] >= logistic.MAX_ITER))
        for v in variants[give_up]:
            self._to_firth(int(v))

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
        self._newton_update(act[newton], xwx[newton], score[newton])
        for j in np.flatnonzero(~newton):
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
                if biggest > logistic.FIRTH_MAX_STEP:
                    step *= logistic.FIRTH_MAX_STEP / biggest
                self.beta[v] += step
                self.last_step[v] = step
                self.iterations[v] += 1
                if not np.all(np.isfinite(self.beta[v])) or self.iterations[v] >= logistic.FIRTH_MAX_ITER:
                    self._fail(v, "FIRTH_CONVERGE_FAIL")
                    continue
                if biggest < logistic.FIRTH_TOL:
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
        if unusable.any():  # e.g. a score variance of zero, or a fit that ran off to infinity
            self.errcode = self.errcode.copy()
            self.errcode[unusable] = "UNFINISHED"
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


def _predictor_stats(r: Result, k: int) -> linear.LinearStats:
    """A score round's unweighted predictor sums as linear statistics with a zero phenotype: enough for
    the collinearity checks of :func:`better.engine.linear.finalize_linear`."""
    m = int(r["gg"].shape[0])
    return linear.LinearStats(
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


def run_local(protocol: Protocol, stations: list[tuple[Design, BlockSource]]) -> dict[str, np.ndarray]:
    """Drive a protocol in-process over ``(design, block source)`` pairs, one per station."""
    while (task := protocol.next_task()) is not None:
        protocol.receive([execute(task, d, b) for d, b in stations])
    return protocol.result()
