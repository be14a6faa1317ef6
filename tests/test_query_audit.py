"""The query audit in-process: the isolation check against a brute-force oracle, and random query
sequences over random cohorts split into stations (pooled and local), checked by linear algebra on the
released sets, independently of the audit's own code."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from better.engine.isolation import isolation_check
from better.station_api.policy import PolicyRefusalError
from better.station_api.query_audit import AuditBusyError, QueryAudit


# -- the oracle: sets as vectors over people, brute force over small supports ---------------------------
def isolates(sets: list[np.ndarray], k: int) -> bool:
    """Whether some nonzero combination of ``sets`` (0/1 vectors over people) is supported on 1..k-1
    people: rank(A) > rank(A without the columns T) for some T of fewer than k people."""
    if not sets:
        return False
    a = np.array(sets, dtype=float)
    full = np.linalg.matrix_rank(a)
    for size in range(1, k):
        for t in itertools.combinations(range(a.shape[1]), size):
            if np.linalg.matrix_rank(np.delete(a, t, axis=1)) < full:
                return True
    return False


def atoms(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    patterns, inverse = np.unique(np.array(sets).T, axis=0, return_inverse=True)
    return patterns.astype(bool), np.bincount(inverse.ravel(), minlength=len(patterns))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_isolation_check__equals_brute_force(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 14))
    m = data.draw(st.integers(1, 6))
    k = data.draw(st.integers(2, 5))
    sets = [np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))) for _ in range(m)]
    a, size = atoms(sets)
    assert isolation_check(a, size, k).safe == (not isolates(sets, k))


def test_isolation_check__tracker_and_its_atoms() -> None:
    le, ge, everyone = [1, 1, 0], [0, 1, 1], [1, 1, 1]
    verdict = isolation_check(np.array([le, ge, everyone]).T, np.array([40, 1, 50]), 5)
    assert not verdict.safe and verdict.atoms == (1,)
    # a difference of exactly k people is allowed
    assert isolation_check(np.array([le, ge, everyone]).T, np.array([40, 5, 50]), 5).safe


# -- a federation of audits, in-process -----------------------------------------------------------------
@dataclass
class Cohort:
    """People of several stations with a few columns a query can select on."""

    station: np.ndarray  # station of each person
    group: np.ndarray  # a categorical column, 0..3
    missing: np.ndarray  # (people, 3): a phenotype is missing
    case: np.ndarray


def make_cohort(rng: np.random.Generator, sizes: list[int]) -> Cohort:
    n = sum(sizes)
    return Cohort(
        np.repeat(np.arange(len(sizes)), sizes),
        rng.integers(0, 4, n),
        rng.random((n, 3)) < rng.uniform(0.0, 0.3),
        rng.random(n) < 0.4,
    )


@dataclass(frozen=True)
class Query:
    op: str  # "=", "<=", ">=", "!=" on group, or "all"
    value: int
    phenotype: int  # -1: none, else the missing column it needs
    binary: bool

    def sets(self, c: Cohort) -> list[np.ndarray]:
        chosen = {
            "all": np.ones_like(c.group, dtype=bool),
            "=": c.group == self.value,
            "!=": c.group != self.value,
            "<=": c.group <= self.value,
            ">=": c.group >= self.value,
        }[self.op]
        if self.phenotype >= 0:
            chosen = chosen & ~c.missing[:, self.phenotype]
        return [chosen & ~c.case, chosen & c.case] if self.binary else [chosen]


queries = st.builds(
    Query,
    st.sampled_from(["all", "=", "<=", ">=", "!="]),
    st.integers(0, 3),
    st.integers(-1, 2),
    st.booleans(),
)
PARTICIPANTS = [("a", "x25519:A"), ("b", "x25519:B"), ("c", "x25519:C")]


class Federation:
    """One :class:`QueryAudit` per station, sealing and opening as the servers do (the masked sums are
    added in the clear here: what the masks hide is tested in test_secure_aggregation)."""

    def __init__(self, root: Path, cohort: Cohort, k: int, scope: str = "auto") -> None:
        self.cohort = cohort
        self.k = k
        self.scope = scope
        self.audits = [QueryAudit(root / name) for name, _ in PARTICIPANTS]
        self.ids = [[f"p{i}" for i in np.flatnonzero(cohort.station == s)] for s in range(len(PARTICIPANTS))]
        self.rounds = 0

    def ask(self, q: Query) -> bool:
        """Run ``q`` as the coordinator does: a sealed round, again (holding the audits) when a station
        asks for it; True if every station released."""
        rules: set[str] = set()
        for attempt in range(4):
            rules = self._round(q, lock=attempt > 0)
            if not rules & {"audit_lock", "audit_resync"}:
                break
        return not rules

    def _round(self, q: Query, lock: bool) -> set[str]:
        """One sealed round of ``q`` at every station: the rules of the refusals."""
        self.rounds += 1
        context, session = f"ctx{self.rounds}", f"s{self.rounds}"
        own = [s == self.cohort.station for s in range(len(self.audits))]
        sealed = []
        for audit, ids, mine in zip(self.audits, self.ids, own, strict=True):
            members = audit.members(ids, [m[mine] for m in q.sets(self.cohort)])
            header, counts = audit.seal(
                context, session, members, PARTICIPANTS, "a", pin_ok=True, local_only=self.scope == "local", lock=lock
            )
            sealed.append((members, header, counts))
        shapes = {c.shape for _, _, c in sealed if c is not None}
        total = sum(c for _, _, c in sealed) if len(shapes) == 1 and all(c is not None for _, _, c in sealed) else None
        rules = set()
        for i, (audit, (members, header, _)) in enumerate(zip(self.audits, sealed, strict=True)):
            peers = {str(j): h for j, (_, h, _) in enumerate(sealed) if j != i}

            def pooled() -> np.ndarray:
                assert total is not None, "counts summed only when comparable"
                return total

            try:
                audit.open(context, session, members, header, peers, PARTICIPANTS, pooled, self.k)
            except PolicyRefusalError as exc:
                rules.add(exc.rule)
        return rules


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    qs=st.lists(queries, min_size=1, max_size=10),
    scope=st.sampled_from(["auto", "local"]),
)
def test_random_query_sequences__no_released_combination_isolates_fewer_than_k(
    tmp_path_factory: pytest.TempPathFactory, seed: int, qs: list[Query], scope: str
) -> None:
    rng = np.random.default_rng(seed)
    k = 3
    cohort = make_cohort(rng, [int(x) for x in rng.integers(1, 14, 3)])
    fed = Federation(tmp_path_factory.mktemp("audit"), cohort, k, scope)
    released: list[np.ndarray] = []
    for q in qs:
        if fed.ask(q):
            released.extend(q.sets(cohort))
    # what the coordinator holds: sums over every station's part of each released set
    assert not isolates(released, k)
    if scope == "local":  # and every station's own parts, as a coordinator could get them in the clear
        for s in range(3):
            assert not isolates([r[cohort.station == s] for r in released], k)


def test_pooled_audit__answers_what_a_local_audit_must_refuse(tmp_path: Path) -> None:
    # One station has 2 people without the phenotype: alone it cannot answer both FREQ over everyone and a
    # GWAS over the rest; pooled over the group, 2 + 3 + 4 people differ, and both are answered.
    rng = np.random.default_rng(0)
    cohort = make_cohort(rng, [40, 30, 20])
    cohort.missing[:] = False
    for s, how_many in enumerate([2, 3, 4]):
        cohort.missing[np.flatnonzero(cohort.station == s)[:how_many], 0] = True
    everyone, complete = Query("all", 0, -1, False), Query("all", 0, 0, False)
    pooled = Federation(tmp_path / "pooled", cohort, 5)
    assert pooled.ask(everyone) and pooled.ask(complete)
    assert [a.scope for a in pooled.audits] == ["pooled"] * 3
    local = Federation(tmp_path / "local", cohort, 5, scope="local")
    assert local.ask(everyone) and not local.ask(complete)


def test_pooled_audit__tracker_is_refused_and_repeats_are_answered(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cohort = make_cohort(rng, [30, 30, 30])
    cohort.group[:] = np.where(cohort.group == 1, 2, cohort.group)
    cohort.group[5] = 1  # exactly one person in group 1
    fed = Federation(tmp_path, cohort, 5)
    assert fed.ask(Query("<=", 1, -1, False))
    assert fed.ask(Query(">=", 1, -1, False))
    assert not fed.ask(Query("all", 0, -1, False))  # le + ge - all = the one person
    assert fed.ask(Query("<=", 1, -1, False))  # answered before: answered again
    assert not fed.ask(Query("all", 0, -1, False))  # refused before: refused again
    # a restart forgets nothing
    again = Federation(tmp_path, cohort, 5)
    again.rounds = fed.rounds
    assert not again.ask(Query("all", 0, -1, False))


def test_pooled_audit__a_station_that_missed_an_opening_catches_up(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    cohort = make_cohort(rng, [20, 20, 20])
    fed = Federation(tmp_path, cohort, 3)
    assert fed.ask(Query("all", 0, -1, False))
    # round 2: every station seals, but the opening reaches only the first two
    q = Query("<=", 1, -1, False)
    own = [s == cohort.station for s in range(3)]
    sealed = []
    for audit, ids, mine in zip(fed.audits, fed.ids, own, strict=True):
        members = audit.members(ids, [m[mine] for m in q.sets(cohort)])
        sealed.append((members, *audit.seal("lost", "lost", members, PARTICIPANTS, "a", True, False, lock=True)))
    total = sum(c for _, _, c in sealed)
    for i in range(2):
        members, header, _ = sealed[i]
        peers = {str(j): h for j, (_, h, _) in enumerate(sealed) if j != i}
        fed.audits[i].open("lost", "lost", members, header, peers, PARTICIPANTS, lambda: total, 3)
    fed.audits[2].abort("lost")
    # the next round is refused (the third station catches up from its peers' log), and run again answered
    assert fed._round(Query(">=", 2, -1, False), lock=True) == {"audit_resync"}
    digests = {a.describe()["digest"] for a in fed.audits}
    assert len(digests) == 1
    assert fed.ask(Query(">=", 2, -1, False))


def test_pooled_audit__one_seal_at_a_time(tmp_path: Path) -> None:
    cohort = make_cohort(np.random.default_rng(3), [10, 10, 10])
    fed = Federation(tmp_path, cohort, 3)
    audit, ids = fed.audits[0], fed.ids[0]
    members = audit.members(ids, [np.ones(len(ids), dtype=bool)])
    audit.seal("first", "s1", members, PARTICIPANTS, "a", True, False)
    with pytest.raises(AuditBusyError):
        audit.seal("second", "s2", members, PARTICIPANTS, "a", True, False)
    audit.abort("first")
    audit.seal("second", "s2", members, PARTICIPANTS, "a", True, False)


def test_session__keeps_each_selections_sizes_and_only_what_passed_every_check(tmp_path: Path) -> None:
    # Rounds of one session go back to a selection sealed before: its own sizes count for the model's
    # size rules, not the last round's; and a selection whose round failed a later check stays unadmitted.
    audits = [QueryAudit(tmp_path / name) for name, _ in PARTICIPANTS]
    ids = [[f"{name}{i}" for i in range(30)] for name, _ in PARTICIPANTS]
    small, full = np.arange(30) < 6, np.ones(30, dtype=bool)

    def sealed_round(context: str, selection: np.ndarray, confirm: bool) -> list:
        for lock in (False, True):
            sealed = []
            for audit, people in zip(audits, ids, strict=True):
                members = audit.members(people, [selection])
                header, counts = audit.seal(
                    f"{context}{lock}", "S", members, PARTICIPANTS, "a", pin_ok=True, local_only=False, lock=lock
                )
                sealed.append((members, header, counts))
            total = None if any(c is None for *_, c in sealed) else sum(c for *_, c in sealed)
            try:
                out = []
                for i, (audit, (members, header, _)) in enumerate(zip(audits, sealed, strict=True)):
                    peers = {str(j): s[1] for j, s in enumerate(sealed) if j != i}
                    admission = audit.open(
                        f"{context}{lock}", "S", members, header, peers, PARTICIPANTS, lambda t=total: t, 5
                    )
                    if confirm:
                        audit.confirm("S", members, PARTICIPANTS, admission)
                    out.append(admission)
                return out
            except PolicyRefusalError as exc:
                assert exc.rule == "audit_lock" and not lock
        raise AssertionError("unreachable")

    assert {a.set_sizes for a in sealed_round("c1", small, confirm=True)} == {(18,)}
    assert {a.set_sizes for a in sealed_round("c2", full, confirm=True)} == {(90,)}
    assert {a.set_sizes for a in sealed_round("c3", small, confirm=True)} == {(18,)}  # not the last round's
    half = np.arange(30) < 15
    sealed_round("c4", half, confirm=False)  # as when the model's size check refuses the round
    members = audits[0].members(ids[0], [half])
    assert not audits[0].admitted("S", members, PARTICIPANTS)
    assert audits[0].admitted("S", audits[0].members(ids[0], [small]), PARTICIPANTS)
