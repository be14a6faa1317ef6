"""Disclosure control: what a station refuses to run, and what it withholds from what it ran.

Refusals happen before any work (:func:`check_task`): an analysis the station does not allow, or a task
over the variant cap. Withholding happens on the result, before a byte leaves (:func:`release`):

- A count in ``1 .. min_cell_count - 1`` is disclosive (a zero is not: it says nobody). A variant with
  such a genotype-by-group cell is withheld whole: withholding one cell alone would not help, since the
  group size and the other cells give it back.
- Per-variant regression statistics need a local minor-allele count of 0 or at least
  ``min_minor_allele_count``.
- Samples with a missing genotype are left out of that variant's model, and the statistics that remove
  them (``sum c c'``, ``sum c y`` over those samples) describe just them: a variant with ``1 ..
  min_cell_count - 1`` such samples is withheld.
- Totals over the analysed samples (the null model, ``C'C``) need at least ``min_cell_count`` samples,
  and for a binary trait as many cases and controls; otherwise the task is refused.

A withheld variant travels as zeros with ``withheld = True``; the coordinator shows it as withheld.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.design import Design
from engine.errors import BetterError
from station_api.config import Policy
from station_api.wire import TaskRequest


class PolicyRefusalError(BetterError):
    """The station's policy refuses a task: ``rule`` names the rule, the message says how to comply."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def check_task(request: TaskRequest, policy: Policy, n_variants: int) -> None:
    """Refuse a task the policy does not allow, before running it."""
    if request.analysis not in policy.allowed_analyses:
        raise PolicyRefusalError(
            "allowed_analyses",
            f"this station does not run {request.analysis} analyses (it allows: "
            f"{', '.join(policy.allowed_analyses) or 'none'})",
        )
    if n_variants > policy.max_variants_per_task:
        raise PolicyRefusalError(
            "max_variants_per_task",
            f"the task covers {n_variants} variants, over this station's cap of {policy.max_variants_per_task}; "
            "split it into smaller regions",
        )


def check_secure(request: TaskRequest, policy: Policy, name: str, agreement_key: str) -> None:
    """Refuse a round whose secure aggregation this station cannot take part in safely.

    ``name`` and ``agreement_key`` are this station's own.
    """
    spec = request.secure
    if spec is None:
        if policy.require_secure_aggregation and request.kind not in ("variant_keys", "target_keys"):
            raise PolicyRefusalError(
                "require_secure_aggregation",
                "this station releases statistics only masked for secure aggregation; run the query with "
                "secure aggregation on (three or more stations)",
            )
        return
    participants = {p.name: p.agreement_key for p in spec.participants}
    if participants.get(name) != agreement_key:
        raise PolicyRefusalError(
            "secure_participants",
            f"this station ({name}) is not among the round's participants with its own agreement key; pin the "
            "key its /info shows in the federation file",
        )
    if len(participants) < policy.min_secure_participants:
        raise PolicyRefusalError(
            "min_secure_participants",
            f"secure aggregation here needs at least {policy.min_secure_participants} stations; the round "
            f"names {len(participants)}",
        )
    if policy.secure_peers:
        strangers = sorted(n for n, k in participants.items() if n != name and policy.secure_peers.get(n) != k)
        if strangers:
            raise PolicyRefusalError(
                "secure_peers",
                f"this station masks only together with the peers its policy lists; not with {', '.join(strangers)} "
                "(or their keys differ from the pinned ones)",
            )


def check_design(request: TaskRequest, design: Design, policy: Policy) -> None:
    """Refuse, before running, a model with too few samples per parameter or too few cases or controls.

    The messages name the rule, not the station's numbers.
    """
    inc = design.include
    n = int(inc.sum())
    if request.phenotype is not None and request.analysis.startswith("gwas"):
        parameters = design.k + 1  # covariates with intercept and station indicators, and the genotype
        if 0 < n < policy.min_samples_per_parameter * parameters:
            raise PolicyRefusalError(
                "min_samples_per_parameter",
                f"the model has {parameters} parameters, too many for the samples this station can analyse "
                f"(it needs {policy.min_samples_per_parameter} per parameter); use fewer covariates or a wider "
                "sample filter",
            )
    if request.binary:
        cases = int((design.y[inc] > 0.5).sum())
        for count, floor, what in ((cases, policy.min_cases, "cases"), (n - cases, policy.min_controls, "controls")):
            if 0 < count < floor:
                raise PolicyRefusalError(
                    f"min_{what}",
                    f"too few {what} at this station for its policy (at least {floor}); widen the sample "
                    "filter or leave this station out",
                )


def _small(x: np.ndarray, floor: int) -> np.ndarray:
    """Values that are disclosive under a threshold: ``0 < x < floor``."""
    return (x > 0) & (x < floor)


def _require_total(n: int, policy: Policy, what: str, floor: int | None = None) -> None:
    if _small(np.array(n), policy.min_cell_count if floor is None else floor):
        raise PolicyRefusalError(
            "min_cell_count" if floor is None else f"min_{what}",
            f"the sample filter leaves too few {what} at this station to release anything; "
            "widen the filter or leave this station out",
        )


def release(kind: str, result: dict[str, np.ndarray], policy: Policy) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Apply the policy to one task's result: what may leave, and a summary for the audit log."""
    out = dict(result)
    withheld: np.ndarray = np.zeros(0, dtype=bool)
    if kind == "sample_count":
        hide = bool(_small(np.asarray(out["n"]), policy.min_cell_count))
        if hide:
            out["n"] = np.array(0)
        out["withheld"] = np.array(hide)
        return out, {"kind": kind, "withheld": hide}
    if kind == "variant_keys":  # the variant list, as FREQ results have always shown it
        return out, {"kind": kind, "variants": int(np.asarray(out["key_pos"]).shape[0])}
    if kind == "target_keys":  # the capture design (or bins), which is not about anyone
        return out, {"kind": kind, "targets": int(np.asarray(out["key_start"]).shape[0])}
    if kind == "reads":
        _require_total(int(out["n"]), policy, "samples")
        return out, {"kind": kind, "samples": int(out["n"])}
    if kind == "coverage":
        _require_total(int(out["n"]), policy, "samples")
        people = np.concatenate([out["samples"][:, None], out["samples_ge"]], axis=1)
        withheld = np.asarray(_small(people, policy.min_cell_count).any(axis=1), dtype=bool)
        for name in ("samples", "bases", "sum_depth", "bases_ge", "samples_ge"):
            out[name] = np.where(_rows(withheld, out[name]), 0, out[name])
        out["withheld"] = withheld
        return out, {"kind": kind, "targets": int(withheld.size), "withheld": int(withheld.sum())}
    if kind == "pileup":
        _require_total(int(out["n"]), policy, "samples")
        # the people behind the reads: a base seen in 1..min_cell_count-1 samples, or so few samples covered
        people = np.concatenate([out["samples"][:, None], out.pop("carriers")], axis=1)
        withheld = np.asarray(_small(people, policy.min_cell_count).any(axis=1), dtype=bool)
        for name in ("counts", "samples"):
            out[name] = np.where(_rows(withheld, out[name]), 0, out[name])
        out["withheld"] = withheld
        return out, {"kind": kind, "positions": int(withheld.size), "withheld": int(withheld.sum())}
    if kind == "counts":
        for size in np.asarray(out["group_size"]).tolist():
            _require_total(size, policy, "samples in a group")
        withheld = np.asarray(_small(out["counts"], policy.min_cell_count).any(axis=(1, 2)), dtype=bool)
        out["counts"] = np.where(withheld[:, None, None], 0, out["counts"])
    elif kind == "linear":
        _require_total(int(out["n"]), policy, "samples")
        called = int(out["n"]) - out["n_miss"]
        alt = out["cg"][:, 0] if out["cg"].size else np.zeros(0)
        withheld = _regression_withheld(np.rint(alt).astype(np.int64), called, out["n_miss"], policy)
        for name in ("cg", "gg", "gy", "n_miss", "m_cc", "m_cy", "m_yy"):
            out[name] = np.where(_rows(withheld, out[name]), 0, out[name]).astype(out[name].dtype)
    elif kind == "logistic_null":
        n, cases = int(out["n"]), int(out["n_case"])
        _require_total(n, policy, "samples")
        _require_total(cases, policy, "cases", policy.min_cases)
        _require_total(n - cases, policy, "controls", policy.min_controls)
        return out, {"kind": kind, "samples": n}
    elif kind in ("logistic_score", "logistic_newton"):
        if kind == "logistic_score":
            controls, cases = np.asarray(out["group_size"]).tolist()
            _require_total(controls, policy, "controls", policy.min_controls)
            _require_total(cases, policy, "cases", policy.min_cases)
        counts = out["counts"]  # case/control allele counts: called samples, ALT alleles, missing samples
        called, alt, missing = counts[:, :, 0], counts[:, :, 1], counts[:, :, 2]
        withheld = _regression_withheld(alt.sum(axis=1), called.sum(axis=1), missing.sum(axis=1), policy)
        cells = np.concatenate([called, alt, 2 * called - alt, missing], axis=1)
        withheld = withheld | np.asarray(_small(cells, policy.min_cell_count).any(axis=1), dtype=bool)
        names = (
            ("u", "gwg", "cwg", "m_cwc", "m_cr", "counts", "cg", "gg", "n_miss", "m_cc")
            if kind == "logistic_score"
            else ("xwx", "score", "loglik")
        )
        for name in names:
            out[name] = np.where(_rows(withheld, out[name]), 0, out[name]).astype(out[name].dtype)
        if kind == "logistic_newton":
            del out["counts"]  # the station checked them; the centre has them from the score round
    else:
        raise ValueError(f"no release rule for {kind!r}")
    out["withheld"] = withheld
    return out, {"kind": kind, "variants": int(withheld.size), "withheld": int(withheld.sum())}


def _regression_withheld(alt: np.ndarray, called: np.ndarray, missing: np.ndarray, policy: Policy) -> np.ndarray:
    mac = np.minimum(alt, 2 * called - alt)
    return _small(mac, policy.min_minor_allele_count) | _small(np.asarray(missing), policy.min_cell_count)


def _rows(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))
