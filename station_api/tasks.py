"""Task lifecycle at a station: submit, (approve), queue, run off the event loop, keep, expire.

Tasks run in a thread pool (``[server] workers``); their kernel passes take turns under one lock,
since each pass already uses every core. A task waiting for manual approval is listed in the catalog's
``approvals`` table, where ``better station approve`` (another process) or the admin route records the
decision; a poller applies it. Finished results stay in memory for ``result_ttl_seconds``. Task records
live in memory only: a restarted station forgets its tasks, and coordinators resubmit.
"""

from __future__ import annotations

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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.errors import BetterError, InputError, NotFoundError
from genomics.store import Store
from station_api import __version__
from station_api.audit import AuditLog
from station_api.config import StationConfig
from station_api.ledger import QueryLedger
from station_api.policy import PolicyRefusalError, check_design, check_secure, check_task
from station_api.runner import BlockCache, DatasetCache, Outcome, Prepared, prepare, run_task
from station_api.secure_agg import (
    ContextRegistry,
    StationSecrets,
    context_digest,
    load_or_create_agreement_key,
    participants_of,
)
from station_api.signing import canonical, load_or_create_key, sha256, sign
from station_api.wire import TaskRequest

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
    outcome: Outcome | None = None
    manifest: dict[str, Any] | None = None
    signature: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[None] | None = None

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
        self.ledger = QueryLedger(store)
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
        """Check the policy and either queue the task or park it for approval."""
        policy = self.config.policy
        prepared = prepare(self.datasets, request, policy)
        check_task(request, policy, prepared.n_variants)
        check_secure(request, policy, self.config.name, self.masking.public_text)
        check_design(request, prepared.design, policy)
        if policy.differencing_guard:
            self.ledger.admit(user, request.dataset, prepared.design.include, policy.min_cell_count)
        if request.secure is not None:
            spec = request.secure
            digest = context_digest(spec.session, spec.round, participants_of(spec)).hex()
            if not self.contexts.claim(digest):
                raise PolicyRefusalError(
                    "secure_context_reused",
                    f"secure-aggregation round {spec.round} of session {spec.session} was masked here before; a "
                    "mask is never reused (start a new session)",
                )
        record = TaskRecord(
            id=secrets.token_hex(16),
            user=user,
            request=request,
            prepared=prepared,
            status="queued",
            submitted_at=now(),
            variants_total=prepared.n_variants,
        )
        summary = request_summary(request)
        with self._lock:
            self._purge()
            self.tasks[record.id] = record
        manual = self.config.policy.approval == "manual"
        if manual:
            record.status = "pending_approval"
            with self.store.catalog() as con:
                con.execute(
                    "INSERT INTO approvals (task_id, user_name, summary, submitted_at) VALUES (?, ?, ?, ?)",
                    [record.id, user, json.dumps(summary, sort_keys=True), record.submitted_at],
                )
        self.audit.append(user, "task.submitted", {"task": record.id, "status": record.status, **summary})
        if not manual:
            self._enqueue(record)
        return record

    def get(self, user: str, task_id: str) -> TaskRecord:
        """A task of ``user`` (another user's task is as unknown as a missing one)."""
        with self._lock:
            record = self.tasks.get(task_id)
        if record is None or record.user != user:
            raise NotFoundError(f"no task {task_id} for you at this station (results expire; resubmit)")
        return record

    def of_user(self, user: str) -> list[TaskRecord]:
        with self._lock:
            return [t for t in self.tasks.values() if t.user == user]

    def cancel(self, user: str, task_id: str) -> TaskRecord:
        """Cancel a queued, pending or running task (a finished one is left as it is)."""
        record = self.get(user, task_id)
        if record.status in FINAL:
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
            assert record.prepared is not None
            outcome = run_task(record.prepared, self.config.policy, on_block, self._compute, self.blocks, self.masking)
        except TaskCancelledError:
            self._finish(record, "cancelled", None)
            self.audit.append(record.user, "task.cancelled", {"task": record.id})
            return
        except PolicyRefusalError as exc:
            self._finish(record, "failed", f"refused by policy ({exc.rule}): {exc}")
        except BetterError as exc:
            self._finish(record, "failed", str(exc))
        except Exception:  # a bug: the researcher gets a reference, the log gets the traceback
            log.exception("task %s failed", record.id)
            self._finish(record, "failed", f"internal error in the station; tell its administrator: task {record.id}")
        else:
            record.outcome = outcome
            record.manifest = self._manifest(record, outcome)
            record.signature = sign(self.key, record.manifest)
            self._finish(record, "done", None)
            self.audit.append(record.user, "task.released", {"task": record.id, **outcome.summary})
            return
        self.audit.append(record.user, "task.failed", {"task": record.id, "error": record.error})

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
