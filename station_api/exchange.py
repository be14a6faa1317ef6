"""Sealed rounds at a station: the seal (compute, keep, seal the totals to the peers) and the opening
(sum the peers' totals, audit, judge the rows, release what was kept).

Between the two steps the station keeps the round's result in memory (:class:`SealedRounds`, at most
``MAX_KEPT`` rounds for ``KEEP_SECONDS``); nothing of it leaves before the opening. After a logistic score
round is opened, the rows it withheld are remembered for that session's Newton rounds, which are judged
on them (their own counts would be this station's alone).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from better.engine.analyses import judges_later_rounds, round_kind, round_kinds
from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError, NotFoundError
from better.station_api.config import Policy
from better.station_api.finishing import Finishing
from better.station_api.policy import (
    PolicyRefusalError,
    check_model,
    finishable,
    release,
    strictest,
    with_flags,
    withheld_rows,
)
from better.station_api.query_audit import Admission, QueryAudit
from better.station_api.runner import Prepared
from better.station_api.sealed import seal, unseal
from better.station_api.secure_agg import StationSecrets
from better.wire.arrays import encode_arrays
from better.wire.masking import context_digest, unmask_sum
from better.wire.messages import TaskRequest, participants_of

#: Seconds a seal's result is kept for its opening, and how many are kept at once.
KEEP_SECONDS = 600.0
MAX_KEPT = 16
#: The request fields a seal and its opening must agree on.
MODEL_FIELDS = (
    "dataset",
    "analysis",
    "kind",
    "phenotype",
    "covariates",
    "binary",
    "groups",
    "where",
    "regions",
    "pass_only",
    "adjust",
    "secure",
)


def judge_context(request: TaskRequest) -> bytes:
    """The context of what a sealed round's stations exchange (distinct from its release's masks)."""
    spec = request.secure
    assert spec is not None
    return context_digest(spec.session, spec.round, participants_of(spec), "judge")


@dataclass
class SealedRound:
    """What a station keeps of a sealed round until its opening."""

    user: str
    request: TaskRequest
    result: dict[str, np.ndarray]
    people: np.ndarray | None
    masked: dict[str, np.ndarray]
    header: dict[str, Any]
    members: list[np.ndarray]
    k: int
    n_rows: int | None
    shared_rows: dict[str, np.ndarray] | None = None
    prepared: Prepared | None = None
    sealed_at: float = field(default_factory=time.monotonic)


class SealedRounds:
    """Seals waiting for their opening, and the row judgements of opened rounds that later rounds take (a
    logistic score round's, for the session's Newton rounds)."""

    def __init__(self) -> None:
        self._kept: dict[str, SealedRound] = {}
        self._judged: dict[str, dict[tuple[Any, ...], dict[str, bool]]] = {}
        self._finishing: dict[str, Finishing] = {}
        self._lock = threading.Lock()

    def keep(self, context: str, sealed: SealedRound) -> None:
        with self._lock:
            t = time.monotonic()
            for c in [c for c, s in self._kept.items() if t - s.sealed_at > KEEP_SECONDS]:
                del self._kept[c]
            self._kept[context] = sealed
            while len(self._kept) > MAX_KEPT:
                del self._kept[next(iter(self._kept))]

    def take(self, context: str, request: TaskRequest, user: str) -> SealedRound:
        """The seal a request opens (once): same user, same model."""
        with self._lock:
            sealed = self._kept.get(context)
            if sealed is None or sealed.user != user:
                raise NotFoundError(
                    "no sealed round here to open under this session and round (it was opened already, expired "
                    "or never sealed); run the query again"
                )
            differ = [f for f in MODEL_FIELDS if getattr(sealed.request, f) != getattr(request, f)]
            if differ:
                raise InputError(f"the opening's {', '.join(differ)} differ from its seal's")
            del self._kept[context]
            return sealed

    def drop(self, context: str) -> None:
        with self._lock:
            self._kept.pop(context, None)

    def keep_finishing(self, context: str, finishing: Finishing) -> None:
        """Rows of an opened round that the stations finish, by the round's context."""
        with self._lock:
            self._finishing[context] = finishing
            while len(self._finishing) > MAX_KEPT:
                del self._finishing[next(iter(self._finishing))]

    def finishing(self, context: str, user: str) -> Finishing:
        with self._lock:
            f = self._finishing.get(context)
        if f is None or f.user != user:
            raise NotFoundError("no rows to finish here under this session and round; run the query again")
        return f

    def done_finishing(self, context: str) -> None:
        with self._lock:
            self._finishing.pop(context, None)

    def remember_rules(self, session: str, keys: dict[str, np.ndarray], rules: dict[str, np.ndarray]) -> None:
        """A round's judgement of each variant, for the session's later rounds that take it."""
        rows = zip(*(keys[c].tolist() for c in KEY_COLUMNS), strict=True)
        judged = {key: {r: bool(v[i]) for r, v in rules.items()} for i, key in enumerate(rows)}
        with self._lock:
            self._judged[session] = judged
            while len(self._judged) > MAX_KEPT:
                del self._judged[next(iter(self._judged))]

    def remembered_rules(self, session: str, keys: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Per rule, which of ``keys`` the session's judging round withheld (a variant it did not judge is
        withheld by every rule); None when no such round of the session was opened here."""
        with self._lock:
            judged = self._judged.get(session)
        if judged is None:
            return None
        rows = list(zip(*(np.asarray(keys[c]).tolist() for c in KEY_COLUMNS), strict=True))
        names = sorted({r for v in judged.values() for r in v}) or ["case_control_cells"]
        return {r: np.array([judged.get(key, {}).get(r, True) for key in rows], dtype=bool) for r in names}


def later_rules(kind: str, rules: dict[str, np.ndarray], people: np.ndarray, policy: Policy) -> dict[str, np.ndarray]:
    """``rules`` with, judged on the same people (genotype counts), the rules of the session's later rounds
    that take this round's judgement (LD pairs also judge the people lacking a call, FREQ's counts not)."""
    out = dict(rules)
    for later in round_kinds():
        if round_kind(later).rules_from == kind and people.ndim == 3:
            view = people
            if people.shape[-1] == 8:  # hard calls, then nearest genotypes: the view the later round reads
                view = people[..., :4] if round_kind(later).hard_calls else people[..., 4:]
            for rule, hit in withheld_rows(later, view, policy).items():
                out[rule] = out[rule] | hit if rule in out else hit
    return out


def seal_round(
    sealed: SealedRound,
    secrets: StationSecrets,
    audit_counts: np.ndarray | None,
    own_rules: np.ndarray | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Mask and seal a round's totals to every other participant; the payload lists the blobs.

    ``own_rules``: this station's own judgement of its rows (:func:`~better.station_api.policy.rule_flags`), for a
    round that releases each station's own sums (``ADJUST station``): a row any station flags is withheld.
    """
    spec = sealed.request.secure
    assert spec is not None
    participants = participants_of(spec)
    arrays = {}
    if audit_counts is not None:
        arrays["audit"] = audit_counts
    if sealed.people is not None:
        arrays["rows"] = sealed.people
    if own_rules is not None:
        arrays["own_rules"] = own_rules
    masked = secrets.mask(arrays, spec.session, spec.round, participants, "judge") if arrays else {}
    sealed.masked = masked
    blobs = seal(secrets, participants, judge_context(sealed.request), sealed.header, masked)
    names = sorted(blobs)
    payload = encode_arrays({"recipient": np.array(names), "blob": np.array([blobs[n] for n in names])}, len(names))
    return payload, {"kind": sealed.request.kind, "sealed_to": names, "secure_round": spec.round}


def open_round(
    sealed: SealedRound,
    opening: TaskRequest,
    secrets: StationSecrets,
    audit: QueryAudit | None,
    policy: Policy,
    rounds: SealedRounds,
) -> tuple[bytes, dict[str, Any]]:
    """Open a sealed round: check every peer's message, audit, judge the rows, release masked; rows only
    the stations may finish are kept for the finishing steps (:mod:`better.station_api.finishing`)."""
    request = sealed.request
    spec = request.secure
    assert spec is not None and opening.exchange is not None
    participants = participants_of(spec)
    context = judge_context(request)
    blobs = opening.exchange.blobs
    others = [(n, key) for n, key in participants if n != secrets.name]
    strangers = sorted(set(blobs) - {n for n, _ in others})
    if strangers:
        raise InputError(f"the opening carries messages from stations outside the round: {', '.join(strangers)}")
    missing = [name for name, _ in others if name not in blobs]
    if missing:
        raise PolicyRefusalError(
            "sealed_round",
            f"the opening lacks the sealed message of station {', '.join(missing)}: every participant's totals "
            "are needed",
        )
    peers = {name: unseal(secrets, name, key, context, blobs[name]) for name, key in others}
    pooled = _lazy_sum([sealed.masked, *(arrays for _, arrays in peers.values())], [secrets.name, *peers])
    if audit is None:
        admission = Admission("local", tuple(int(m.sum()) for m in sealed.members))
    else:
        try:
            admission = audit.open(
                context.hex(),
                spec.session,
                sealed.members,
                sealed.header,
                {n: h for n, (h, _) in peers.items()},
                participants,
                lambda: pooled()["audit"],
                policy.min_cell_count,
            )
        except PolicyRefusalError as exc:
            if not round_kind(request.kind).whole_count or exc.rule != "query_audit":
                raise
            admission = Admission("withheld", ())
    is_pooled = admission.scope == "pooled"
    if is_pooled:  # every station decides the rows alike: on the same totals, by the strictest values
        policy = strictest(policy, {n: h.get("rows") for n, (h, _) in peers.items()})
    result = dict(sealed.result)
    if admission.scope == "withheld":
        result["withheld"] = np.array(True)
    else:
        check_model(request, sealed.k, admission.set_sizes, policy)
        if audit is not None:
            audit.confirm(spec.session, sealed.members, participants, admission)
    people = pooled()["rows"] if is_pooled and sealed.people is not None else sealed.people
    rules = withheld_rows(request.kind, people, policy) if people is not None else None
    if rules is not None and is_pooled and request.adjust is not None:
        rules = with_flags(rules, pooled()["own_rules"])
    finish = None
    if (
        is_pooled
        and policy.finish_rows
        and rules is not None
        and sealed.shared_rows is not None
        and sealed.prepared is not None
    ):
        finish = finishable(request.kind, rules)
        if finish.any():
            rounds.keep_finishing(
                context.hex(),
                Finishing.of(
                    request.kind, sealed.prepared, request, sealed.shared_rows, finish, sealed.result, sealed.user
                ),
            )
    released, summary = release(request.kind, result, policy, people, pooled=is_pooled, rules=rules, finish=finish)
    if judges_later_rounds(request.kind) and rules is not None and sealed.shared_rows is not None:
        if finish is not None:  # the stations finish those rows; their Newton rounds are not the coordinator's
            rules = {**rules, "missing_genotypes": rules["missing_genotypes"] | finish}
        assert people is not None
        rounds.remember_rules(spec.session, sealed.shared_rows, later_rules(request.kind, rules, people, policy))
    masked = secrets.mask(released, spec.session, spec.round, participants)
    summary.update({"secure_round": spec.round, "audit_scope": admission.scope})
    return encode_arrays(masked, sealed.n_rows, compress=False), summary


def _lazy_sum(payloads: list[dict[str, np.ndarray]], stations: list[str]) -> Callable[[], dict[str, np.ndarray]]:
    """The decoded sum of the stations' masked totals, computed when first asked for."""
    cache: dict[str, dict[str, np.ndarray]] = {}

    def total() -> dict[str, np.ndarray]:
        if "sum" not in cache:
            if any(not p for p in payloads):
                raise PolicyRefusalError(
                    "sealed_round", "not every station of the round sealed the totals this decision needs"
                )
            cache["sum"] = unmask_sum(payloads, stations)
        return cache["sum"]

    return total
