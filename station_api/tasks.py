"""Task lifecycle at a station: submit, (approve), queue, run off the event loop, keep, expire.

Tasks run in a thread pool (``[server] workers``); their kernel passes take turns under one lock,
since each pass already uses every core. A task waiting for manual approval is listed in the catalog's
``approvals`` table, where ``better station approve`` (another process) or the admin route records the
decision; a poller applies it. Finished results stay in memory for ``result_ttl_seconds``. Task records
live in memory only: a restarted station forgets its tasks, and coordinators resubmit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from better.engine.analyses import round_kind
from better.engine.design import KEY_COLUMNS
from better.engine.errors import BetterError, InputError, NotFoundError
from better.genomics.checksums import sha256
from better.genomics.store import Store
from better.station_api import __version__
from better.station_api.audit import AuditLog
from better.station_api.config import StationConfig
from better.station_api.exchange import SealedRound, SealedRounds, judge_context, open_round, seal_round
from better.station_api.executor import executor_for
from better.station_api.finishing import Finishing, finish_step
from better.station_api.policy import (
    PolicyRefusalError,
    check_model,
    check_secure,
    check_task,
    row_policy,
    rule_flags,
)
from better.station_api.query_audit import QueryAudit
from better.station_api.runner import (
    BlockCache,
    DatasetCache,
    Outcome,
    Prepared,
    compute,
    n_rows_of,
    on_shared_rows,
    prepare,
    run_task,
)
from better.station_api.secure_agg import ContextRegistry, StationSecrets, load_or_create_agreement_key, shared_secret
from better.station_api.signing import load_or_create_key, sign
from better.wire.masking import canonical, context_digest
from better.wire.messages import TaskRequest, participants_of

log = logging.getLogger("better.station")

Status = Literal["pending_approval", "queued", "running", "done", "failed", "cancelled", "rejected", "expired"]
FINAL = ("done", "failed", "cancelled", "rejected", "expired")

_APPROVALS_SQL = """
CREATE TABLE IF NOT EXISTS approvals (
    task_id VARCHAR PRIMARY KEY,
    user_name VARCHAR NOT NULL,
    summary VARCHAR NOT NULL,
    submitted_at VARCHAR NOT NULL,
    decision VARCHAR,
    decided_by VARCHAR,
    decided_at VARCHAR,
    reason VARCHAR
)
"""


class TaskCancelledError(BetterError):
    """Raised inside a running task when it was cancelled."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class _Plan:
    """How a submitted task runs, as decided at submission."""

    #: A count the query audit withholds (it is released as withheld).
    withhold: bool = False
    #: Per-row judgements a Newton round takes from its session's score round.
    rules: dict[str, np.ndarray] | None = None
    #: A sealed round: its judge context (hex), sets, whether they are audited, the audit's header and
    #: counts; or the seal it opens.
    context: str | None = None
    members: list[np.ndarray] = field(default_factory=list)
    audited: bool = False
    header: dict[str, Any] = field(default_factory=dict)
    audit_counts: np.ndarray | None = None
    opening: SealedRound | None = None
    finishing: Finishing | None = None


@dataclass
class TaskRecord:
    """One task as the station tracks it."""

    id: str
    user: str
    request: TaskRequest
    prepared: Prepared | None
    status: Status
    submitted_at: str
    variants_total: int
    variants_done: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    finished_mono: float | None = None
    error: str | None = None
    #: The policy rule that refused the task, if one did.
    refused_by: str | None = None
    outcome: Outcome | None = None
    manifest: dict[str, Any] | None = None
    signature: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[None] | None = None
    plan: _Plan = field(default_factory=lambda: _Plan())

    def describe(self) -> dict[str, Any]:
        """The public view of the task (no result bytes)."""
        total = self.variants_total
        progress = 1.0 if self.status == "done" else (min(self.variants_done / total, 1.0) if total else 0.0)
        return {
            "id": self.id,
            "status": self.status,
            "dataset": self.request.dataset,
            "analysis": self.request.analysis,
            "kind": self.request.kind,
            "label": self.request.label,
            "progress": round(progress, 4),
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "released": self.outcome.summary if self.outcome else None,
            "manifest": self.manifest,
            "signature": self.signature,
        }


def _record(user: str, request: TaskRequest, plan: _Plan, prepared: Prepared | None = None) -> TaskRecord:
    """A new task (an opening or a finishing step runs on what its seal kept, so without ``prepared``; it
    was approved with its seal)."""
    return TaskRecord(
        id=secrets.token_hex(16),
        user=user,
        request=request,
        prepared=prepared,
        status="queued",
        submitted_at=now(),
        variants_total=prepared.n_variants if prepared is not None else 0,
        plan=plan,
    )


def request_summary(request: TaskRequest) -> dict[str, Any]:
    """What the audit log and the approver see of a request (no state arrays)."""
    return {
        "dataset": request.dataset,
        "analysis": request.analysis,
        "kind": request.kind,
        "phenotype": request.phenotype,
        "covariates": request.covariates,
        "where": [c.model_dump() for c in request.where],
        "regions": request.regions,
        "adjust": request.adjust.model_dump() if request.adjust else None,
        "label": request.label,
        "state_bytes": len(request.state or ""),
    }


class TaskManager:
    """Owns the station's tasks and the worker pool."""

    def __init__(
        self, store: Store, config: StationConfig, audit: AuditLog, key: Ed25519PrivateKey | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.audit = audit
        self.key = key or load_or_create_key(Path(store.path))
        self.masking = StationSecrets(config.name, load_or_create_agreement_key(Path(store.path)))
        self.contexts = ContextRegistry(Path(store.path) / "secure_contexts.txt")
        self.tasks: dict[str, TaskRecord] = {}
        self.datasets = DatasetCache(store)
        self.blocks = BlockCache()
        self.executor = executor_for(config.executor)
        self.query_audit = QueryAudit(Path(store.path))
        self.sealed = SealedRounds()
        self._lock = threading.Lock()
        self._compute = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=config.server.workers, thread_name_prefix="better-task")
        self._stop = threading.Event()
        with store.catalog() as con:
            con.execute(_APPROVALS_SQL)
        self._poller = threading.Thread(target=self._poll, name="better-approvals", daemon=True)
        self._poller.start()

    # -- requests ---------------------------------------------------------------------------------
    def submit(self, user: str, request: TaskRequest) -> TaskRecord:
        """Check the policy and the query audit, then queue the task or park it for approval.

        Three kinds of request: a round in the clear (audited over this station's own people), a masked
        round of a session whose selection a sealed round audited already, and a sealed round's seal or
        opening (:mod:`better.station_api.exchange`).
        """
        policy = self.config.policy
        if request.exchange is not None and request.exchange.phase == "open":
            return self._submit_opening(user, request)
        if request.exchange is not None and request.exchange.phase == "finish":
            return self._submit_finishing(user, request)
        prepared = prepare(self.datasets, request, policy)
        check_task(request, policy, prepared.n_variants)
        check_secure(request, policy, self.config.name, self.masking.public_text)
        if request.secure is not None:  # a key that gives no shared secret is refused now, by name
            for name, key in participants_of(request.secure):
                if name != self.config.name:
                    shared_secret(self.masking.key, key, f"participant {name}")
        members = self._members(prepared)
        guard = policy.differencing_guard and bool(members)
        plan = _Plan()
        if request.secure is None:
            if guard:
                plan.withhold = self._admit_local(request, members)
            if members and not plan.withhold:
                check_model(request, prepared.design.k, tuple(int(m.sum()) for m in members), policy)
        elif request.exchange is None:
            self._claim(context_digest(request.secure.session, request.secure.round, participants_of(request.secure)))
            sealed_kind = round_kind(request.kind).sealed == "always"
            if guard and (
                sealed_kind
                or not self.query_audit.admitted(request.secure.session, members, participants_of(request.secure))
            ):
                raise PolicyRefusalError(
                    "audit_session",
                    f"a masked {request.kind} round runs sealed, or within a session whose selection a sealed round "
                    "audited; run the query with a current coordinator",
                )
            if round_kind(request.kind).rules_from is not None:
                task = prepared.task
                remembered = self.sealed.remembered_rules(
                    request.secure.session, {c: task[f"key_{c}"] for c in KEY_COLUMNS}
                )
                own = round_kind(request.kind).rules  # the round's own rules, as judged before (unjudged: withheld)
                rows = len(task["key_pos"])
                plan.rules = (
                    None if remembered is None else {r: remembered.get(r, np.ones(rows, dtype=bool)) for r in own}
                )
        else:
            context = judge_context(request)
            self._claim(context)
            plan.context = context.hex()
            plan.members = members
            plan.audited = guard
        record = _record(user, request, plan, prepared)
        return self._admit(record, manual=policy.approval == "manual")

    def _submit_opening(self, user: str, request: TaskRequest) -> TaskRecord:
        assert request.secure is not None
        context = judge_context(request)
        sealed = self.sealed.take(context.hex(), request, user)
        self._claim(context_digest(request.secure.session, request.secure.round, participants_of(request.secure)))
        return self._admit(_record(user, request, _Plan(context=context.hex(), opening=sealed)), manual=False)

    def _submit_finishing(self, user: str, request: TaskRequest) -> TaskRecord:
        context = judge_context(request).hex()
        finishing = self.sealed.finishing(context, user)
        return self._admit(_record(user, request, _Plan(context=context, finishing=finishing)), manual=False)

    def _admit(self, record: TaskRecord, manual: bool) -> TaskRecord:
        summary = request_summary(record.request)
        with self._lock:
            self._purge()
            self.tasks[record.id] = record
        if manual:
            record.status = "pending_approval"
            with self.store.catalog() as con:
                con.execute(
                    "INSERT INTO approvals (task_id, user_name, summary, submitted_at) VALUES (?, ?, ?, ?)",
                    [record.id, record.user, json.dumps(summary, sort_keys=True), record.submitted_at],
                )
        self.audit.append(record.user, "task.submitted", {"task": record.id, "status": record.status, **summary})
        if not manual:
            self._enqueue(record)
        return record

    def _members(self, prepared: Prepared) -> list[np.ndarray]:
        """The request's sample sets over the station's people (none for rounds that list keys)."""
        request, design = prepared.request, prepared.design
        kind = round_kind(request.kind)
        if kind.lists_keys:
            return []
        if request.groups == 2 or (request.binary and kind.case_control):
            case = design.y > 0.5
            masks = [design.include & ~case, design.include & case]
        else:
            masks = [design.include]
        if request.adjust is not None:  # each station's own sums leave in its indicator's columns: its own
            index = request.adjust.index  # sets, the others' empty, one block of sets per station index
            masks = [m if s == index else np.zeros_like(m) for s in range(request.adjust.count) for m in masks]
        ids = prepared.dataset.samples().column("sample_id").to_pylist()
        return self.query_audit.members([str(i) for i in ids], masks)

    def _admit_local(self, request: TaskRequest, members: list[np.ndarray]) -> bool:
        """Audit a release in the clear; True when it is a count the audit withholds (shown as withheld)."""
        try:
            self.query_audit.admit_local(secrets.token_hex(16), members, self.config.policy.min_cell_count)
        except PolicyRefusalError as exc:
            if round_kind(request.kind).whole_count and exc.rule == "query_audit":
                return True
            raise
        return False

    def _may_pin(self, participants: list[tuple[str, str]]) -> bool:
        """Whether this station may form its audit group with exactly ``participants``."""
        policy = self.config.policy
        if len(participants) < policy.min_secure_participants:
            return False
        if policy.secure_peers:
            wanted = {(self.config.name, self.masking.public_text), *policy.secure_peers.items()}
            return set(map(tuple, participants)) == wanted
        return True

    def _claim(self, context: bytes) -> None:
        if not self.contexts.claim(context.hex()):
            raise PolicyRefusalError(
                "secure_context_reused",
                "this secure-aggregation round was masked here before; a mask is never reused (start a new session)",
            )

    def get(self, user: str, task_id: str) -> TaskRecord:
        """A task of ``user`` (another user's task is as unknown as a missing one)."""
        with self._lock:
            record = self.tasks.get(task_id)
        if record is None or record.user != user:
            raise NotFoundError(f"no task {task_id} for you at this station (results expire; resubmit)")
        return record

    async def until_ended(self, user: str, task_id: str, seconds: float) -> TaskRecord:
        """A task of ``user`` as soon as it ends, or as it is once ``seconds`` have passed (looked at every
        2 ms at first, then less often, up to every 50 ms)."""
        deadline = time.monotonic() + seconds
        pause = 0.002
        while True:
            record = self.get(user, task_id)
            if record.status in FINAL or time.monotonic() + pause > deadline:
                return record
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.05)

    def of_user(self, user: str) -> list[TaskRecord]:
        with self._lock:
            return [t for t in self.tasks.values() if t.user == user]

    def cancel(self, user: str, task_id: str) -> TaskRecord:
        """Cancel a queued, pending or running task (a finished one is left as it is)."""
        record = self.get(user, task_id)
        if record.status in FINAL:
            if record.plan.context is not None and record.plan.opening is None:  # a seal whose round is given up
                self.sealed.drop(record.plan.context)
                self.query_audit.abort(record.plan.context)
            return record
        record.cancel.set()
        if record.status in ("queued", "pending_approval") and (record.future is None or record.future.cancel()):
            self._finish(record, "cancelled", None)
            self._decide_in_catalog(record.id, "cancelled", user, "cancelled by the researcher")
        self.audit.append(user, "task.cancel", {"task": task_id})
        return record

    def pending(self) -> list[dict[str, Any]]:
        """Tasks waiting for approval, as the approver sees them."""
        return pending_in_catalog(self.store)

    def decide(self, task_id: str, approve: bool, actor: str, reason: str = "") -> dict[str, Any]:
        """Record an approval decision (the poller then applies it)."""
        if not decide_in_catalog(self.store, self.audit, task_id, approve, actor, reason):
            raise NotFoundError(f"no task {task_id} waits for approval")
        self._apply_decisions()
        return {"task": task_id, "decision": "approved" if approve else "rejected"}

    def close(self) -> None:
        self._stop.set()
        for record in list(self.tasks.values()):
            record.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.executor is not None:
            self.executor.close()

    # -- internals --------------------------------------------------------------------------------
    def _enqueue(self, record: TaskRecord) -> None:
        record.status = "queued"
        record.future = self._pool.submit(self._run, record)

    def _run(self, record: TaskRecord) -> None:
        if record.cancel.is_set():
            self._finish(record, "cancelled", None)
            return
        record.status = "running"
        record.started_at = now()

        def on_block(rows: int) -> None:
            if record.cancel.is_set():
                raise TaskCancelledError("cancelled")
            record.variants_done += rows

        try:
            outcome = self._work(record, on_block)
        except TaskCancelledError:
            self._end(record, "cancelled", None, "task.cancelled", {})
            return
        except PolicyRefusalError as exc:
            error = f"refused by policy ({exc.rule}): {exc}"
            record.refused_by = exc.rule
        except BetterError as exc:
            error = str(exc)
        except Exception:  # a bug: the researcher gets a reference, the log gets the traceback
            log.exception("task %s failed", record.id)
            error = f"internal error in the station; tell its administrator: task {record.id}"
        else:
            manifest = self._manifest(record, outcome)
            record.outcome, record.manifest, record.signature = outcome, manifest, sign(self.key, manifest)
            self._end(record, "done", None, "task.released", outcome.summary)
            return
        self._end(record, "failed", error, "task.failed", {"error": error})

    def _end(self, record: TaskRecord, status: Status, error: str | None, action: str, details: dict[str, Any]) -> None:
        """End a task: its audit row first, then the status a client sees (nothing is released unrecorded).
        When the audit log cannot be written the task fails instead, and keeps no result or manifest."""
        try:
            self.audit.append(record.user, action, {"task": record.id, **details})
        except Exception:
            log.exception("task %s: the audit log could not be written", record.id)
            record.outcome, record.manifest, record.signature = None, None, None
            self._finish(record, "failed", "the station could not write its audit log; tell its administrator")
            return
        self._finish(record, status, error)

    def _work(self, record: TaskRecord, on_block: Any) -> Outcome:
        """The task's station work: a round in the clear or masked, a seal, or an opening."""
        plan, policy = record.plan, self.config.policy
        if plan.finishing is not None:
            assert record.request.exchange is not None and plan.context is not None
            ex = record.request.exchange
            payload, summary = finish_step(plan.finishing, ex.blobs, ex.test, self.masking)
            if "finished" in summary:
                self.sealed.done_finishing(plan.context)
            return Outcome(payload, {**summary, "bytes": len(payload)})
        if plan.opening is not None:
            audit = self.query_audit if policy.differencing_guard and plan.opening.members else None
            try:
                payload, summary = open_round(plan.opening, record.request, self.masking, audit, policy, self.sealed)
            finally:
                assert plan.context is not None
                self.query_audit.abort(plan.context)  # opened or failed: the audit is free for the next seal
            return Outcome(payload, {**summary, "bytes": len(payload)})
        prepared = record.prepared
        assert prepared is not None
        if plan.context is None:
            return run_task(
                prepared,
                policy,
                on_block,
                self._compute,
                self.blocks,
                self.masking,
                plan.withhold,
                plan.rules,
                self.executor,
            )
        try:
            if plan.audited:  # the audit is held from here to the opening: another query's seal waits
                spec = record.request.secure
                assert spec is not None
                plan.header, plan.audit_counts = self.query_audit.seal(
                    plan.context,
                    spec.session,
                    plan.members,
                    participants_of(spec),
                    self.config.name,
                    pin_ok=self._may_pin(participants_of(spec)),
                    local_only=policy.audit_scope == "local",
                    lock=record.request.exchange is not None and record.request.exchange.lock,
                )
            else:
                plan.header = {"status": "off"}
            plan.header = {**plan.header, "rows": row_policy(policy)}
            computed = on_shared_rows(
                prepared.request,
                prepared.task,
                compute(prepared, on_block, self._compute, self.blocks, executor=self.executor),
            )
            sealed = SealedRound(
                user=record.user,
                request=record.request,
                result=computed.result,
                people=computed.people,
                masked={},
                header=plan.header,
                members=plan.members,
                k=prepared.design.k,
                n_rows=n_rows_of(prepared.request, prepared.task, computed.result),
                shared_rows=prepared.task.get("shared_rows"),
                prepared=prepared,
            )
            own_rules = (  # ADJUST station releases each station's own cells: judge them here too
                rule_flags(record.request.kind, computed.people, policy)
                if record.request.adjust is not None and computed.people is not None
                else None
            )
            payload, summary = seal_round(sealed, self.masking, plan.audit_counts, own_rules)
        except BaseException:
            self.query_audit.abort(plan.context)
            raise
        self.sealed.keep(plan.context, sealed)
        spread = {"pieces": computed.pieces} if computed.pieces else {}
        return Outcome(payload, {**summary, "bytes": len(payload), **spread})

    def _manifest(self, record: TaskRecord, outcome: Outcome) -> dict[str, Any]:
        """What this release was, for the signed provenance (no data, only hashes and counts)."""
        request = record.request
        return {
            "station": self.config.name,
            "task": record.id,
            "user": record.user,
            "dataset": request.dataset,
            "analysis": request.analysis,
            "kind": request.kind,
            "label": request.label,
            "plan_sha256": sha256(canonical(request.model_dump(mode="json"))),
            "data_sha256": self.datasets.digest(request.dataset),
            "policy_sha256": sha256(canonical(self.config.policy.model_dump())),
            "software": f"better {__version__}",
            "result_sha256": sha256(outcome.payload),
            "released": outcome.summary,
            # which masked round this was, and who took part: a result missing one of them shows in verify
            "secure": {
                "session": request.secure.session,
                "round": request.secure.round,
                "participants": [p.name for p in request.secure.participants],
            }
            if request.secure is not None
            else None,
            "exchange": request.exchange.phase if request.exchange is not None else None,
        }

    def _finish(self, record: TaskRecord, status: Status, error: str | None) -> None:
        record.prepared = None  # the design and state arrays are not needed any more
        record.status = status
        record.error = error
        record.finished_at = now()
        record.finished_mono = time.monotonic()

    def _purge(self) -> None:
        """Expire old results and forget the oldest finished tasks beyond the cap (caller holds the lock)."""
        ttl = self.config.server.result_ttl_seconds
        t = time.monotonic()
        for record in self.tasks.values():
            if record.status == "done" and record.finished_mono is not None and t - record.finished_mono > ttl:
                record.outcome = None
                record.status = "expired"
        excess = len(self.tasks) - self.config.server.max_tasks_kept
        if excess > 0:
            finished = sorted(
                (r for r in self.tasks.values() if r.status in FINAL), key=lambda r: r.finished_mono or 0.0
            )
            for record in finished[:excess]:
                del self.tasks[record.id]

    def _decide_in_catalog(self, task_id: str, decision: str, actor: str, reason: str) -> None:
        with self.store.catalog() as con:
            con.execute(
                "UPDATE approvals SET decision = ?, decided_by = ?, decided_at = ?, reason = ? "
                "WHERE task_id = ? AND decision IS NULL",
                [decision, actor, now(), reason, task_id],
            )

    def _apply_decisions(self) -> None:
        waiting = [r for r in list(self.tasks.values()) if r.status == "pending_approval"]
        if not waiting:
            return
        with self.store.catalog() as con:
            rows = con.execute(
                f"SELECT task_id, decision, reason FROM approvals WHERE decision IS NOT NULL AND task_id IN "
                f"({', '.join('?' for _ in waiting)})",
                [r.id for r in waiting],
            ).fetchall()
        decided = {r[0]: (r[1], r[2]) for r in rows}
        for record in waiting:
            if record.id not in decided or record.status != "pending_approval":
                continue
            decision, reason = decided[record.id]
            if decision == "approved":
                self._enqueue(record)
            else:
                self._finish(
                    record, "rejected", f"the station's administrator rejected this task: {reason or 'no reason given'}"
                )

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._apply_decisions()
                with self._lock:
                    self._purge()
            except BetterError as exc:  # a catalog held by another process for long: try again later
                log.warning("approval poll: %s", exc)


def decide_in_catalog(store: Store, audit: AuditLog, task_id: str, approve: bool, actor: str, reason: str) -> bool:
    """Record an approval decision for a pending task; False if none waits under that id."""
    if len(reason) > 1000:
        raise InputError("the reason is over 1000 characters")
    decision = "approved" if approve else "rejected"
    with store.catalog() as con:
        con.execute(_APPROVALS_SQL)
        hit = con.execute("SELECT 1 FROM approvals WHERE task_id = ? AND decision IS NULL", [task_id]).fetchone()
        if hit is None:
            return False
        con.execute(
            "UPDATE approvals SET decision = ?, decided_by = ?, decided_at = ?, reason = ? WHERE task_id = ?",
            [decision, actor, now(), reason, task_id],
        )
    audit.append(actor, f"task.{decision}", {"task": task_id, "reason": reason})
    return True


def pending_in_catalog(store: Store) -> list[dict[str, Any]]:
    """Pending approvals, read straight from the catalog (for the CLI)."""
    with store.catalog() as con:
        con.execute(_APPROVALS_SQL)
        rows = con.execute(
            "SELECT task_id, user_name, summary, submitted_at FROM approvals WHERE decision IS NULL "
            "ORDER BY submitted_at"
        ).fetchall()
    return [{"task": r[0], "user": r[1], "request": json.loads(r[2]), "submitted_at": r[3]} for r in rows]
