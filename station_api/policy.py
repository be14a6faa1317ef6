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

from better.engine.analyses import analysis, round_kind
from better.engine.errors import BetterError, InputError
from better.engine.rounds import RULES
from better.station_api.config import Policy
from better.wire.messages import TaskRequest


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
        if policy.require_secure_aggregation and not round_kind(request.kind).lists_keys:
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


def check_model(request: TaskRequest, k: int, set_sizes: tuple[int, ...], policy: Policy) -> None:
    """Refuse a model with too few samples per parameter, or too few cases or controls.

    ``set_sizes``: the people in the request's sets (all analysed samples, or controls and cases), this
    station's own or, in a pooled audit, the sum over the group. The messages name the rule, not the
    numbers.
    """
    if request.adjust is not None:  # one block of sets per station index (tasks._members): add them up
        per = max(1, len(set_sizes) // request.adjust.count)
        set_sizes = tuple(sum(set_sizes[j::per]) for j in range(per))
    n = sum(set_sizes)
    if request.phenotype is not None and analysis(request.analysis).needs_phenotype:
        parameters = k + 1  # covariates with intercept and station indicators, and the genotype
        if 0 < n < policy.min_samples_per_parameter * parameters:
            raise PolicyRefusalError(
                "min_samples_per_parameter",
                f"the model has {parameters} parameters, too many for the samples analysed (the policy needs "
                f"{policy.min_samples_per_parameter} per parameter); use fewer covariates or a wider sample filter",
            )
    if request.binary and len(set_sizes) == 2:
        controls, cases = set_sizes
        for count, floor, what in ((cases, policy.min_cases, "cases"), (controls, policy.min_controls, "controls")):
            if 0 < count < floor:
                raise PolicyRefusalError(
                    f"min_{what}",
                    f"too few {what} among the analysed samples for the policy (at least {floor}); widen the "
                    "sample filter",
                )


def _small(x: np.ndarray, floor: int) -> np.ndarray:
    """Values that are disclosive under a threshold: ``0 < x < floor``."""
    return np.asarray((x > 0) & (x < floor), dtype=bool)


def _require_total(n: int, policy: Policy, what: str) -> None:
    if _small(np.array(n), policy.min_cell_count):
        raise PolicyRefusalError(
            "min_cell_count",
            f"the sample filter leaves too few {what} at this station to release anything; "
            "widen the filter or leave this station out",
        )


def withheld_rows(kind: str, people: np.ndarray, policy: Policy) -> dict[str, np.ndarray]:
    """Per rule of the round kind, the rows it withholds, judged on ``people`` (the kind's people counts,
    this station's own or summed over an audit group). People with 8 codes are two views of 4 (a counts
    round's hard calls and nearest genotypes, :func:`~better.engine.analyses.counts.counts_people`): a row
    either view withholds is withheld.

    - ``minor_allele_count``: the minor allele is seen 1 to ``min_minor_allele_count - 1`` times.
    - ``carriers`` (linear): the people called, carrying the ALT allele or carrying the REF allele number
      1 to ``min_cell_count - 1``: the regression sums over them would describe them.
    - ``missing_genotypes`` (regressions): 1 to ``min_cell_count - 1`` people have no call here; PLINK
      drops them from the variant's model, and the sums that do so describe just them.
    - ``case_control_cells`` (logistic): the same as ``carriers`` within cases and within controls.
    - ``small_cells`` (reads): a target or position with 1 to ``min_cell_count - 1`` samples behind it.
    """
    k = policy.min_cell_count
    wanted = round_kind(kind).rules
    if "small_cells" in wanted:  # samples behind each row (not genotype counts: no other rule applies)
        return {"small_cells": np.asarray(_small(people, k).any(axis=1))}
    if people.shape[-1] == 8:  # two views of the people (hard calls, nearest genotypes): either withholds
        first, second = withheld_rows(kind, people[..., :4], policy), withheld_rows(kind, people[..., 4:], policy)
        return {rule: first[rule] | second[rule] for rule in first}
    hom_ref, het, hom_alt, missing = (people[:, :, i] for i in range(4))
    alt = (het + 2 * hom_alt).sum(axis=1)
    ref = (2 * hom_ref + het).sum(axis=1)
    cells = np.stack([hom_ref + het + hom_alt, het + hom_alt, hom_ref + het], axis=-1)  # called, ALT, REF carriers
    judge = {
        "minor_allele_count": lambda: _small(np.minimum(alt, ref), policy.min_minor_allele_count),
        "missing_genotypes": lambda: _small(missing.sum(axis=1), k),
        "carriers": lambda: np.asarray(_small(cells.sum(axis=1), k).any(axis=1)),
        "case_control_cells": lambda: np.asarray(_small(cells, k).any(axis=(1, 2))),
    }
    return {rule: np.asarray(judge[rule](), dtype=bool) for rule in RULES if rule in wanted}


def rule_flags(kind: str, people: np.ndarray, policy: Policy) -> np.ndarray:
    """:func:`withheld_rows` as one array ``(rows, len(RULES))`` of 0 and 1, to be summed over stations."""
    rules = withheld_rows(kind, people, policy)
    flags = np.zeros((len(next(iter(rules.values()))), len(RULES)), dtype=np.int64)
    for rule, hit in rules.items():
        flags[:, RULES.index(rule)] = hit
    return flags


def with_flags(rules: dict[str, np.ndarray], flags: np.ndarray) -> dict[str, np.ndarray]:
    """``rules`` that also withhold every row some station flagged (``flags``: :func:`rule_flags` summed)."""
    return {rule: np.asarray(hit | (flags[:, RULES.index(rule)] > 0), dtype=bool) for rule, hit in rules.items()}


#: The policy values that decide a pooled round's rows: every station of the round must decide alike (a
#: row one station zeroes and another releases would leave the others' own sums bare), so each applies
#: the strictest of them over the round's stations.
ROW_POLICY = ("min_cell_count", "min_minor_allele_count", "finish_rows")


def row_policy(policy: Policy) -> dict[str, Any]:
    """The values of ``policy`` that decide a pooled round's rows, for the sealed header."""
    return {name: getattr(policy, name) for name in ROW_POLICY}


def strictest(policy: Policy, peers: dict[str, Any]) -> Policy:
    """``policy`` with its row values made the strictest over itself and the peers' (``row_policy``)."""
    values = [row_policy(policy)]
    for station, v in peers.items():
        if not isinstance(v, dict) or set(v) != set(ROW_POLICY):
            raise InputError(
                f"station {station} did not say how it judges rows; the stations run different BETTER versions"
            )
        values.append(v)
    try:
        return policy.model_copy(
            update={
                "min_cell_count": max(int(v["min_cell_count"]) for v in values),
                "min_minor_allele_count": max(int(v["min_minor_allele_count"]) for v in values),
                "finish_rows": all(v["finish_rows"] is True for v in values),
            }
        )
    except (TypeError, ValueError):
        raise InputError("a station of the round sent row thresholds that are not numbers") from None


def finishable(kind: str, rules: dict[str, np.ndarray]) -> np.ndarray:
    """Rows withheld only because 1 to ``min_cell_count - 1`` people lack a call: under a pooled audit the
    stations can finish them and release their results (:mod:`better.station_api.finishing`), for a round
    kind whose rows may be finished and which is not itself a later round of a finished row."""
    spec = round_kind(kind)
    if spec.finishing is None or spec.rules_from is not None or "missing_genotypes" not in rules:
        return np.zeros(len(next(iter(rules.values()))), dtype=bool)
    others = np.zeros_like(rules["missing_genotypes"])
    for rule, hit in rules.items():
        if rule != "missing_genotypes":
            others |= hit
    return np.asarray(rules["missing_genotypes"] & ~others, dtype=bool)


def release(
    kind: str,
    result: dict[str, np.ndarray],
    policy: Policy,
    people: np.ndarray | None = None,
    pooled: bool = False,
    rules: dict[str, np.ndarray] | None = None,
    finish: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Apply the policy to one task's result: what may leave, and a summary for the audit log.

    ``people`` are the per-row counts to judge (the kind's, or those computed beside its kernel);
    ``pooled``: they are the sums over an audit group, whose sample totals the query audit has judged, so
    this station's own totals are not.
    A withheld row is zeroed and flagged, in ``withheld`` and in ``withheld_<rule>`` for each rule.
    ``rules``: per-row judgements made before (they replace judging ``people``). ``finish``: rows whose
    sums stay among the stations, which finish them (:mod:`better.station_api.finishing`): zeroed like withheld
    rows, and flagged ``finish``.
    """
    spec = round_kind(kind)
    out = dict(result)
    for name in spec.dropped:
        out.pop(name, None)
    if spec.lists_keys:  # the variant list (as FREQ results have always shown it), or the capture design
        listed = "variants" if spec.data == "variants" else "targets"
        return out, {"kind": kind, listed: len(next(iter(out.values()), []))}
    if spec.whole_count:  # withheld: the query audit refused it, or (alone) too few samples here
        small_here = not pooled and bool(_small(np.asarray(out["n"]), policy.min_cell_count))
        hide = bool(out.get("withheld", False)) or small_here
        if hide:  # nothing else about so few people leaves either (a PCA's sums weighted by their scores)
            out = {name: np.zeros_like(np.asarray(value)) for name, value in out.items()}
        out["n"] = np.array(0 if hide else int(result["n"]))
        out["withheld"] = np.array(hide)
        return out, {"kind": kind, "withheld": hide}
    if not pooled:
        for name, what in (("n", "samples"), ("n_case", "cases")):
            if name in out:
                _require_total(int(out[name]), policy, what)
        if "n_case" in out:
            _require_total(int(out["n"]) - int(out["n_case"]), policy, "controls")
        for size in np.asarray(out.get("group_size", [])).tolist():
            _require_total(size, policy, "samples in a group")
    if not spec.rules:
        return out, {"kind": kind}
    calls = spec.calls(result) if spec.calls is not None else None
    if rules is None:
        people = people if people is not None else spec.people(result) if spec.people is not None else None
        assert people is not None, f"a {kind} release needs the people behind its rows"
        rules = withheld_rows(kind, people, policy)
    withheld = np.zeros(len(next(iter(rules.values()))), dtype=bool)
    for hit in rules.values():
        withheld |= hit
    if finish is not None:
        out["finish"] = finish
        withheld |= finish
    for name in spec.zeroed:
        if name in out:
            out[name] = np.where(_rows(withheld, out[name]), 0, out[name]).astype(out[name].dtype)
    for name in spec.pairs:
        if name in out:
            hit = _partner_withheld(withheld, out[name].shape[1])
            out[name] = np.where(hit.reshape(hit.shape + (1,) * (out[name].ndim - 2)), 0, out[name])
    out["withheld"] = withheld
    if calls is not None:  # calls and (unless rare) ALT alleles of withheld rows too, as FREQ would show
        out["called_ct"], out["missing_ct"], alt = calls  # them: a variant filter can still drop such rows
        out["alt_ct"] = np.where(rules.get("minor_allele_count", False), 0, alt)
    for rule in RULES:
        if rule in rules:
            out[f"withheld_{rule}"] = np.asarray(rules[rule], dtype=bool)
    by_rule = {rule: int(hit.sum()) for rule, hit in rules.items() if hit.any()}
    summary = {"kind": kind, "rows": int(withheld.size), "withheld": int(withheld.sum()), "withheld_by": by_rule}
    if finish is not None:
        summary["finished_by_stations"] = int(finish.sum())
    return out, summary


def _partner_withheld(withheld: np.ndarray, span: int) -> np.ndarray:
    """``(rows, span)``: the pair of row ``i`` and row ``i + 1 + d`` has a withheld row.

    >>> _partner_withheld(np.array([False, True, False]), 2).tolist()
    [[True, False], [True, True], [False, False]]
    """
    rows = withheld.shape[0]
    partner = np.arange(rows)[:, None] + 1 + np.arange(span)[None, :]
    beyond = partner >= rows
    return withheld[:, None] | np.where(beyond, False, withheld[np.minimum(partner, rows - 1)])


def _rows(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))
