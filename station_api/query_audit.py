"""The query audit: a station releases statistics over a sample set only if no combination of everything
it has released (to anyone, over any dataset, across re-ingests) singles out fewer than
``min_cell_count`` people.

People are keyed by sample ID, station-wide (:class:`PersonRegistry`), so the same person in two
datasets, or in a dataset ingested again with one more sample, is one person. Every released set becomes
a column of a :class:`~better.station_api.atoms.Partition`; :func:`better.engine.isolation.isolation_check` decides on
it. Two scopes:

- **local**: the atoms are this station's own people. Sound whatever the coordinator sees: every
  combination of pooled releases, restricted to this station, is a combination of its own sets. Used for
  releases in the clear and whenever the stations of a round do not form one audit group.
- **pooled**: under secure aggregation the coordinator sees only sums over the stations of a fixed
  **audit group** (pinned at first use, or by ``secure_peers``). The atoms are then pooled over the
  group: each station refines with the sum of every member's counts, exchanged masked and sealed station
  to station (:mod:`better.station_api.sealed`), so no station learns another's counts and the coordinator
  learns nothing. A station in a group releases only masked, and only with exactly its group: a round
  with fewer stations, or in the clear, could be subtracted from a pooled one.

The refinement of a pooled round is applied when the round is opened. A station that missed an opening
catches up from the log its peers seal to it with their next seal (:meth:`QueryAudit.open`); a station
holds one pooled seal at a time (:class:`AuditBusyError`), which keeps every member's log in one order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from better.engine.errors import BetterError
from better.station_api.atoms import GENESIS, MAX_ATOMS, MAX_COLUMNS, Partition
from better.station_api.policy import PolicyRefusalError

AUDIT_DIR = "audit"
STATE_FILE = "state.npz"
#: Refinements each station keeps in its log for peers that missed an opening.
LOG_KEPT = 16
#: Seconds a pooled seal holds the station's audit before another query may take it.
SEAL_HOLD_SECONDS = 300.0
#: Sessions whose admissions are remembered (for their later, unsealed rounds).
SESSIONS_KEPT = 512

Participants = list[tuple[str, str]]


class AuditBusyError(PolicyRefusalError):
    """Another query's pooled audit is between its seal and its opening here; retry in a moment."""

    def __init__(self) -> None:
        super().__init__(
            "audit_busy", "another query's audit is in progress at this station; run this round again in a moment"
        )


@dataclass(frozen=True)
class Admission:
    """What :meth:`QueryAudit.open` decided: the scope, and the people in each of the query's sets
    (pooled over the group in the pooled scope)."""

    scope: str
    set_sizes: tuple[int, ...]


@dataclass
class _Pending:
    """A pooled seal of this station: the state it was sealed on and its sets (for catching up)."""

    base: str
    members: list[np.ndarray]
    sealed_at: float
    live: bool = True


def refusal(rule: str, message: str) -> PolicyRefusalError:
    return PolicyRefusalError(rule, message)


ISOLATES = (
    "together with statistics {who} released before (to anyone, over any dataset), this selection would let "
    "someone compute a total over fewer than {k} people; change the sample filter, phenotype or covariates "
    "(a selection already answered is always answered again)"
)
#: Whose earlier releases a refusal is about: judged on this station's people, or on the audit group's.
WHO = {"local": "this station", "pooled": "the stations of this audit group (judged on their totals)"}
TOO_COMPLEX = (
    "this station cannot prove that this selection, combined with everything it released before, describes "
    "{k} people or more (too many small groups to check); use a selection answered before"
)


class PersonRegistry:
    """Station-wide person numbers, one per sample ID, in order of first appearance."""

    def __init__(self, ids: Sequence[str] = ()) -> None:
        self.ids: list[str] = list(ids)
        self._index = {s: i for i, s in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def numbers(self, sample_ids: Sequence[str]) -> np.ndarray:
        """The person number of each sample ID, registering new ones."""
        out = np.empty(len(sample_ids), dtype=np.int64)
        for i, s in enumerate(sample_ids):
            n = self._index.get(s)
            if n is None:
                n = self._index[s] = len(self.ids)
                self.ids.append(s)
            out[i] = n
        return out


@dataclass
class _State:
    status: str = "unpinned"  # "unpinned" | "local" | "pooled"
    group: Participants = field(default_factory=list)
    persons: PersonRegistry = field(default_factory=PersonRegistry)
    partition: Partition = field(default_factory=Partition)
    log: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, _Pending] = field(default_factory=dict)


def _check_header(h: dict[str, Any], n_sets: int, station: str) -> None:
    """A peer's audit header, as this version writes it (else a clear error, not a crash)."""
    ok = isinstance(h.get("status"), str)
    if ok and h["status"] in ("pooled", "unpinned"):
        matches = h.get("matches")
        ok = (
            isinstance(h.get("state"), str)
            and isinstance(h.get("group"), str)
            and isinstance(h.get("log"), list)
            and all(isinstance(e, dict) and {"prev", "ids", "counts", "next"} <= set(e) for e in h["log"])
            and isinstance(matches, list)
            and len(matches) == n_sets
            and all(isinstance(m, list) and all(isinstance(c, str) for c in m) for m in matches)
        )
    if not ok:
        raise BetterError(
            f"station {station} sent an audit header this station cannot read; the stations run different "
            "BETTER versions"
        )


def group_digest(group: Participants) -> str:
    return hashlib.sha256(json.dumps(sorted(map(list, group))).encode()).hexdigest()


def _session_key(session: str, participants: Participants) -> str:
    """A session's record is its participants' too: a round of the same session over other stations (peers
    a coordinator made up, whose masks it knows) finds nothing admitted."""
    return f"{session}:{group_digest(participants)}"


def _members_digest(members: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for m in members:
        h.update(np.packbits(m).tobytes() + str(m.shape[0]).encode() + b";")
    return h.hexdigest()


class QueryAudit:
    """The station's audit state (in ``STATION/audit/``) and its decisions."""

    def __init__(self, station: Path) -> None:
        self.dir = Path(station) / AUDIT_DIR
        self._lock = threading.RLock()
        self._holder: str | None = None
        #: Per session (and its participants): the scope, and each admitted selection's set sizes.
        self._sessions: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {}
        self.state = self._load()

    # -- people -----------------------------------------------------------------------------------------
    def members(self, sample_ids: Sequence[str], masks: list[np.ndarray]) -> list[np.ndarray]:
        """Each mask over a dataset's samples as a set over every person of the station."""
        with self._lock:
            numbers = self.state.persons.numbers(sample_ids)
            n = len(self.state.persons)
        out = []
        for mask in masks:
            m = np.zeros(n, dtype=bool)
            m[numbers[np.asarray(mask, dtype=bool)]] = True
            out.append(m)
        return out

    @property
    def scope(self) -> str:
        return self.state.status

    # -- releases in the clear ----------------------------------------------------------------------------
    def admit_local(self, query_id: str, members: list[np.ndarray], k: int) -> Admission:
        """Audit a release in the clear over this station's own people; refuse, or record it."""
        with self._lock:
            if self.state.status == "pooled":
                raise refusal(
                    "audit_group",
                    "this station releases statistics only masked by secure aggregation within its audit "
                    f"group ({', '.join(n for n, _ in self.state.group)}); run the query over that group with "
                    "secure aggregation on",
                )
            return self._decide_local(query_id, members, k)

    def _decide_local(self, query_id: str, members: list[np.ndarray], k: int) -> Admission:
        part = self.state.partition
        known = [part.matches(m) for m in members]
        if all(known):
            return self._answer_known([c[0] for c in known], k, "local")
        refined = part.refine([f"{query_id}:{j}" for j in range(len(members))], members, part.counts(members))
        columns = list(range(len(part.columns), len(refined.columns)))
        self._decide(refined, columns, k, "local")
        return Admission("local", tuple(self.state.partition.column_sizes(columns)))

    def _answer_known(self, columns: list[int], k: int, scope: str) -> Admission:
        """Sets recorded before: answered again if answered before (or now safe), else refused again."""
        part = self.state.partition
        if not part.answered[columns].all():
            self._decide(part, columns, k, scope)
        return Admission(scope, tuple(self.state.partition.column_sizes(columns)))

    def _decide(self, refined: Partition, columns: list[int], k: int, status: str) -> None:
        """Adopt ``refined``; mark ``columns`` answered if safe, else refuse (the refinement stays)."""
        if refined.n_atoms > MAX_ATOMS or len(refined.columns) > MAX_COLUMNS:
            raise refusal(
                "query_audit",
                "this station's audit holds as many distinct selections as it can check; use a selection "
                "answered before",
            )
        verdict = refined.check(columns, k)
        if verdict.safe:
            refined = refined.with_answered(columns)
        self.state.partition = refined
        if self.state.status == "unpinned":
            self.state.status = status
        self._save()
        if not verdict.safe:
            template = TOO_COMPLEX if verdict.reason == "too_complex" else ISOLATES
            raise refusal("query_audit", template.format(k=k, who=WHO[status]))

    # -- masked rounds: seal and open -------------------------------------------------------------------
    def seal(
        self,
        context: str,
        session: str,
        members: list[np.ndarray],
        participants: Participants,
        me: str,
        pin_ok: bool,
        local_only: bool,
        lock: bool = False,
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """This station's audit header and counts for a sealed round (``context`` names the round).

        ``pin_ok``: the policy lets this station form an audit group with exactly these participants.
        The station holds its audit for the round (one seal at a time) when the round may change it: when
        its own people's sets are not all recorded already, or when ``lock`` asks for it (the round is
        run again because a peer's sets were new). Returns the header for the peers and the counts to mask
        and sum (None when no counts are needed).
        """
        digest = _members_digest(members)
        with self._lock:
            hit = self._sessions.get(_session_key(session, participants))
            if hit is not None and digest in hit[1]:
                return {"status": "admitted", "scope": hit[0]}, None
            status = "local" if local_only else self.state.status
            group = sorted(map(tuple, participants))
            if status == "pooled" and group != sorted(map(tuple, self.state.group)):
                raise refusal(
                    "audit_group",
                    "this station releases only within its audit group "
                    f"({', '.join(n for n, _ in self.state.group)}); this round names "
                    f"{', '.join(n for n, _ in participants)}",
                )
            if status == "unpinned" and not pin_ok:
                status = "local"
            if status == "local":
                return {"status": "local"}, None
            part = self._pinned_partition(participants) if status == "unpinned" else self.state.partition
            matches = [[part.columns[c] for c in part.matches(m)] for m in members]
            locked = lock or not all(matches)
            if locked:
                self._take(context)
                self.state.pending[context] = _Pending(part.digest, members, time.monotonic())
                self._trim_pending()
                self._save()
            header = {
                "status": status,
                "group": group_digest(participants),
                "state": part.digest,
                "log": self.state.log[-LOG_KEPT:],
                "matches": matches,
                "locked": locked,
            }
            return header, part.counts(members)

    def _pinned_partition(self, participants: Participants) -> Partition:
        """The empty partition a group starts from (its digest names the group)."""
        seed = hashlib.sha256(f"{GENESIS}\n{group_digest(participants)}".encode()).hexdigest()
        return Partition(digest=seed)

    def _take(self, context: str) -> None:
        holder = self._holder
        if holder is not None and holder != context:
            pending = self.state.pending.get(holder)
            if pending is not None and pending.live and time.monotonic() - pending.sealed_at < SEAL_HOLD_SECONDS:
                raise AuditBusyError()
            if pending is not None:
                pending.live = False  # its opening, should it come, is refused
        self._holder = context

    def abort(self, context: str) -> None:
        """Forget a seal whose round will not be opened (the coordinator gave up on it)."""
        with self._lock:
            pending = self.state.pending.get(context)
            if pending is not None:
                pending.live = False
            if self._holder == context:
                self._holder = None

    def open(
        self,
        context: str,
        session: str,
        members: list[np.ndarray],
        mine: dict[str, Any],
        peers: dict[str, dict[str, Any]],
        participants: Participants,
        pooled_counts: Callable[[], np.ndarray],
        k: int,
    ) -> Admission:
        """Decide a sealed round from every participant's header (``mine`` and ``peers``, by station).

        ``pooled_counts`` sums the participants' masked counts (only called when they are comparable).
        Refuses with a :class:`PolicyRefusalError` naming the rule; records the decision.
        """
        for station, h in peers.items():
            _check_header(h, len(members), station)
        headers = [mine, *peers.values()]
        digest = _members_digest(members)
        with self._lock:
            try:
                if all(h["status"] == "admitted" for h in headers):
                    hit = self._sessions.get(_session_key(session, participants))
                    if hit is None or digest not in hit[1]:
                        raise refusal("audit_session", "this round's selection was not audited in its session")
                    return Admission(hit[0], hit[1][digest])
                return self._open(context, members, mine, headers, participants, pooled_counts, k)
            finally:
                if self._holder == context:
                    self._holder = None

    def confirm(
        self, session: str, members: list[np.ndarray], participants: Participants, admission: Admission
    ) -> None:
        """Remember a sealed round's selection as admitted in its session, once every check of the round (the
        model's size too) has passed: later rounds of the session over the same selection need no seal."""
        key = _session_key(session, participants)
        with self._lock:
            scope, sizes = self._sessions.pop(key, (admission.scope, {}))
            self._sessions[key] = (scope, {**sizes, _members_digest(members): admission.set_sizes})
            while len(self._sessions) > SESSIONS_KEPT:
                self._sessions.pop(next(iter(self._sessions)))

    def _open(
        self,
        context: str,
        members: list[np.ndarray],
        mine: dict[str, Any],
        headers: list[dict[str, Any]],
        participants: Participants,
        pooled_counts: Callable[[], np.ndarray],
        k: int,
    ) -> Admission:
        statuses = {h["status"] for h in headers}
        pooled_ok = statuses <= {"pooled", "unpinned"} and len({h.get("group") for h in headers}) == 1
        if mine["status"] == "pooled" and not (pooled_ok and statuses == {"pooled"}):
            raise refusal(
                "audit_group",
                "not every station of this round belongs to this station's audit group; run the query over "
                "exactly that group",
            )
        if not pooled_ok or mine["status"] == "local" or statuses == {"pooled", "unpinned"}:
            if self.state.status == "pooled":
                raise refusal("audit_group", "a station of this round is not in this station's audit group")
            return self._decide_local(context, members, k)
        shared = [set(h["matches"][j]) for h in headers for j in range(len(members))]
        per_set = [set.intersection(*shared[j :: len(members)]) for j in range(len(members))]
        if (
            self.state.status == "pooled"
            and all(per_set)
            and {h["state"] for h in headers} == {self.state.partition.digest}
        ):
            part = self.state.partition
            return self._answer_known([part.columns.index(sorted(s)[0]) for s in per_set], k, "pooled")
        if not all(h.get("locked") for h in headers):
            raise refusal("audit_lock", "a station's sets are new to its audit; run the round again, holding the audit")
        pending = self.state.pending.get(context)
        if pending is None or not pending.live:
            raise refusal("audit_expired", "this round's seal here expired before it was opened; run the query again")
        if statuses == {"unpinned"}:
            if self.state.status != "unpinned":
                raise refusal("audit_group", "this station's audit changed while the round was open; run it again")
            self.state.status, self.state.group = "pooled", sorted(map(tuple, participants))  # type: ignore[arg-type]
            self.state.partition = self._pinned_partition(participants)
        part = self.state.partition
        states = {h["state"] for h in headers}
        if states != {part.digest} or pending.base != part.digest:
            self._catch_up(headers)
            pending.live = False
            raise refusal(
                "audit_resync",
                "the stations' audit records were out of step and have been brought together; run the query again",
            )
        pending.live = False
        del self.state.pending[context]
        counts = pooled_counts()
        ids = [f"{context}:{j}" for j in range(len(members))]
        try:
            refined = part.refine(ids, members, counts)
        except ValueError:
            raise refusal(
                "audit_diverged",
                "the stations' audit records disagree; the station administrators must "
                "look at them (better station audit-state)",
            ) from None
        self.state.log.append({"prev": part.digest, "ids": ids, "counts": counts.tolist(), "next": refined.digest})
        self.state.log = self.state.log[-LOG_KEPT:]
        columns = list(range(len(part.columns), len(refined.columns)))
        self._decide(refined, columns, k, "pooled")
        return Admission("pooled", tuple(self.state.partition.column_sizes(columns)))

    def _catch_up(self, headers: list[dict[str, Any]]) -> None:
        """Apply refinements a peer made and this station missed (its openings did not arrive here)."""
        entries = {e["prev"]: e for h in headers for e in h.get("log", [])}
        part = self.state.partition
        changed = False
        while part.digest in entries:
            e = entries[part.digest]
            context = e["ids"][0].rsplit(":", 1)[0]
            pending = self.state.pending.get(context)
            if pending is None or pending.base != part.digest:
                break
            counts = np.asarray(e["counts"], dtype=np.int64)
            try:
                nxt = part.refine(list(e["ids"]), pending.members, counts)
            except ValueError:
                break
            if nxt.digest != e["next"]:
                break
            part = nxt
            self.state.log = [*self.state.log, e][-LOG_KEPT:]
            self.state.pending.pop(context, None)
            changed = True
        if changed:
            self.state.partition = part
            self._save()

    def admitted(self, session: str, members: list[np.ndarray], participants: Participants) -> bool:
        """Whether an earlier sealed round of ``session``, over the same ``participants``, admitted exactly
        these sets."""
        with self._lock:
            hit = self._sessions.get(_session_key(session, participants))
            return hit is not None and _members_digest(members) in hit[1]

    # -- persistence ------------------------------------------------------------------------------------
    def _trim_pending(self) -> None:
        while len(self.state.pending) > LOG_KEPT:
            self.state.pending.pop(next(iter(self.state.pending)))

    def _save(self) -> None:
        s = self.state
        p = s.partition
        pending = {
            c: {
                "base": v.base,
                "n": [int(m.shape[0]) for m in v.members],
                "bits": [base64.b64encode(np.packbits(m).tobytes()).decode() for m in v.members],
            }
            for c, v in s.pending.items()
        }
        meta = {
            "version": 1,
            "status": s.status,
            "group": s.group,
            "digest": p.digest,
            "log": s.log,
            "pending": pending,
            "columns": list(p.columns),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{STATE_FILE}.tmp"
        with open(tmp, "wb") as f:
            np.savez(
                f,
                meta=np.array(json.dumps(meta)),
                persons=np.array(s.persons.ids, dtype=str),
                person_atom=p.person_atom,
                bits=p.bits,
                size=p.size,
                answered=p.answered,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / STATE_FILE)

    def _load(self) -> _State:
        path = self.dir / STATE_FILE
        if not path.exists():
            return _State()
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                part = Partition(
                    person_atom=z["person_atom"].astype(np.int32),
                    bits=z["bits"].astype(bool),
                    size=z["size"].astype(np.int64),
                    columns=tuple(meta["columns"]),
                    answered=z["answered"].astype(bool),
                    digest=meta["digest"],
                )
                persons = PersonRegistry(z["persons"].tolist())
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise BetterError(
                f"{path}: the query audit's record is unreadable ({exc}); the station cannot release anything "
                "until it is restored from a backup"
            ) from None
        pending = {
            c: _Pending(
                v["base"],
                [
                    np.unpackbits(np.frombuffer(base64.b64decode(b), np.uint8), count=n).astype(bool)
                    for b, n in zip(v["bits"], v["n"], strict=True)
                ],
                0.0,
                live=False,
            )
            for c, v in meta["pending"].items()
        }
        return _State(meta["status"], [tuple(g) for g in meta["group"]], persons, part, meta["log"], pending)

    def describe(self) -> dict[str, Any]:
        """What the audit holds, for the administrator (no sizes of small atoms)."""
        with self._lock:
            p = self.state.partition
            return {
                "scope": self.state.status,
                "group": [n for n, _ in self.state.group],
                "persons": len(self.state.persons),
                "selections": len(p.columns),
                "answered": int(p.answered.sum()),
                "atoms": p.n_atoms,
                "digest": p.digest,
            }
