"""The station's HTTP API (FastAPI): what a hospital runs so that analyses can come to its data.

Open routes: ``/health`` and service metadata (``/service-info``, ``/info``, the OpenAPI document).
Everything else needs a bearer token; researchers submit tasks and read their own results, admins read
the audit log, decide approvals and set the policy. Every request but the health probe and the docs
is written to the audit log, with the caller, the route and the outcome.
"""

# No `from __future__ import annotations` here: FastAPI reads the route annotations at definition time,
# and the role dependencies are local to create_app.

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from better.engine.errors import BetterError, NotFoundError
from better.genomics.store import Store
from better.station_api import __version__
from better.station_api.audit import AuditLog
from better.station_api.auth import Principal, authenticate
from better.station_api.config import CONFIG_FILE, Policy, StationConfig, read_config, write_config
from better.station_api.policy import PolicyRefusalError
from better.station_api.signing import load_or_create_key, public_key_text
from better.station_api.tasks import TaskManager, TaskRecord
from better.station_api.wire import ARROW_STREAM, WIRE_VERSION, TaskRequest

log = logging.getLogger("better.station")

_UNAUDITED = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
TaskId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="task id as returned on submission")]


@dataclass
class _Live:
    """The configuration in force and the station.toml modification time it was read at."""

    config: StationConfig
    mtime: int


# -- response models ------------------------------------------------------------------------------------
class TaskStatus(BaseModel):
    id: str
    status: str
    dataset: str
    analysis: str
    kind: str
    label: str | None
    progress: float = Field(description="fraction of the task's variants read so far")
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    released: dict[str, Any] | None = Field(description="what the policy let out (counts, withheld variants)")
    manifest: dict[str, Any] | None = Field(None, description="what was released and under what (hashes)")
    signature: str | None = Field(None, description="the station's Ed25519 signature of the manifest, base64")


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: str = Field("", max_length=1000)


# -- middleware -----------------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``limit`` bytes, whether declared or streamed, with a 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(self.limit, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            await _too_large(self.limit, send)


class _BodyTooLargeError(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    body = (
        f'{{"detail":"request body over {limit} bytes; send fewer variants per task (a region) or raise '
        f'[server] max_request_mib in station.toml"}}'
    ).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """At most ``per_minute`` task submissions per user in any 60 seconds."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, user: str) -> None:
        t = time.monotonic()
        with self._lock:
            q = self._seen[user]
            while q and t - q[0] > 60.0:
                q.popleft()
            if len(q) >= self.per_minute:
                wait = int(60.0 - (t - q[0])) + 1
                raise HTTPException(
                    429,
                    f"rate limit: {self.per_minute} tasks a minute per user at this station; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            q.append(t)


# -- the app --------------------------------------------------------------------------------------------
def create_app(station_dir: Path) -> FastAPI:
    """The FastAPI application of the station in ``station_dir`` (a store with ``station.toml``)."""
    store = Store.open(station_dir)
    config = read_config(station_dir)
    for leftover in store.clean_up():  # what an ingest killed midway left behind
        log.info("removed %s, left by an ingest that did not finish", leftover)
    audit = AuditLog(store)
    audit.create_view()
    checked = audit.verify()
    if not checked.ok:  # the station keeps serving (and logging, chained from the head) and says so
        audit.damaged = checked.problem
        log.warning("audit log needs attention: %s (better station audit --verify)", checked.problem)
    live = _Live(config, (Path(station_dir) / CONFIG_FILE).stat().st_mtime_ns)
    key = load_or_create_key(Path(station_dir))
    public_key = public_key_text(key)
    manager = TaskManager(store, config, audit, key)
    limiter = RateLimiter(config.policy.rate_limit_per_minute)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        audit.append("station", "server.start", {"software": __version__, "policy": config.policy.model_dump()})
        yield
        manager.close()
        audit.append("station", "server.stop", {})

    app = FastAPI(
        title=f"BETTER station {config.name}",
        version=__version__,
        description="A BETTER station: federated genomics where only policy-checked aggregates leave.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=config.server.max_request_mib << 20)
    bearer = HTTPBearer(auto_error=False, description="a token from `better station token`")

    @app.middleware("http")
    async def audit_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        if request.url.path not in _UNAUDITED:
            principal = getattr(request.state, "principal", None)
            detail = {
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "ms": round(1000 * (time.perf_counter() - start), 1),
                "client": request.client.host if request.client else None,
            }
            actor = principal.user if principal else "anonymous"
            await _in_thread(audit.append, actor, "http", detail)
        return response

    config_path = Path(station_dir) / CONFIG_FILE

    def current_config() -> StationConfig:
        """station.toml as it is now: tokens added or a policy edited take effect without a restart."""
        try:
            mtime = config_path.stat().st_mtime_ns
        except OSError:
            return live.config
        if mtime != live.mtime:
            try:
                fresh = read_config(Path(station_dir))
            except BetterError as exc:  # a half-edited file: keep serving with the last good one
                log.warning("station.toml not reloaded: %s", exc)
            else:
                apply_config(fresh)
            live.mtime = mtime
        return live.config

    def apply_config(new: StationConfig) -> None:
        live.config = new
        manager.config = new
        limiter.per_minute = new.policy.rate_limit_per_minute

    def caller(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        principal = authenticate(creds.credentials if creds else None, current_config().tokens)
        if principal is None:
            raise HTTPException(
                401,
                "a valid bearer token is needed (Authorization: Bearer <token> from `better station token`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.state.principal = principal
        return principal

    def role(*allowed: str) -> Callable[..., Principal]:
        def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
            if principal.role not in allowed:
                raise HTTPException(
                    403, f"this route needs the {' or '.join(allowed)} role; your token is {principal.role}"
                )
            return principal

        return check

    Researcher = Annotated[Principal, Depends(role("researcher"))]
    Admin = Annotated[Principal, Depends(role("admin"))]
    Anyone = Annotated[Principal, Depends(role("researcher", "admin"))]

    # -- errors: a clear message, never a traceback -----------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "invalid")}
            for e in exc.errors()[:20]
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(PolicyRefusalError)
    async def refused(_: Request, exc: PolicyRefusalError) -> JSONResponse:
        return JSONResponse({"detail": {"rule": exc.rule, "message": str(exc)}}, status_code=403)

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(BetterError)
    async def bad_input(_: Request, exc: BetterError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal error in the station; its administrator can see the log"}, 500)

    # -- open -------------------------------------------------------------------------------------------
    @app.get("/health", tags=["open"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/service-info", tags=["open"])
    def service_info() -> dict[str, Any]:
        """GA4GH service-info."""
        return {
            "id": f"org.better.station.{config.name}",
            "name": f"BETTER station {config.name}",
            "type": {"group": "org.better", "artifact": "station", "version": str(WIRE_VERSION)},
            "organization": {"name": config.name, "url": "https://github.com/better-federation"},
            "version": __version__,
        }

    @app.get("/info", tags=["open"])
    def info() -> dict[str, Any]:
        """What this service is and speaks; the data it holds needs a token (``/station``)."""
        return {
            "name": config.name,
            "software": f"better {__version__}",
            "wire_version": WIRE_VERSION,
            "public_key": public_key,
            "agreement_key": manager.masking.public_text,
            "analyses": list(current_config().policy.allowed_analyses),
        }

    # -- researcher -------------------------------------------------------------------------------------
    @app.get("/station", tags=["researcher"], openapi_extra={"x-roles": ["researcher", "admin"]})
    def station(_: Anyone) -> dict[str, Any]:
        """Datasets, their variables and types, sample counts rounded per policy, and the policy."""
        policy: Policy = current_config().policy
        step = max(10, policy.min_cell_count)
        datasets = []
        for d in store.summary():
            ds = store.dataset(d["name"])
            schema = ds.phenotypes().schema
            if ds.kind == "reads":  # the span of its targets (or bins)
                positions = pl.from_arrow(ds.table("targets", ["chrom", "start", "end"]))
                assert isinstance(positions, pl.DataFrame)
                positions = positions.select("chrom", (pl.col("start") + 1).alias("pos"), pl.col("end"))
                extra = {"targets": positions.height}
            else:
                positions = pl.from_arrow(ds.variants(columns=["chrom", "pos"]))
                assert isinstance(positions, pl.DataFrame)
                positions = positions.with_columns(pl.col("pos").alias("end"))
                extra = {}
            spans = positions.group_by("chrom", maintain_order=True).agg(
                pl.col("pos").min().alias("lo"), pl.col("end").max().alias("hi")
            )
            datasets.append(
                {
                    "name": d["name"],
                    "kind": ds.kind,
                    **extra,
                    "samples_about": int(round(d["n_samples"] / step) * step),
                    "variants": int(d["n_variants"]),
                    "chromosomes": d["chromosomes"],
                    "spans": {c: [int(lo), int(hi)] for c, lo, hi in spans.iter_rows()},
                    "source_sha256": d["source_sha256"],
                    "variables": {
                        f.name: _kind(str(f.type)) for f in schema if f.name not in ("sample_id", "sample_index")
                    },
                }
            )
        return {
            "name": config.name,
            "software": f"better {__version__}",
            "public_key": public_key,
            "agreement_key": manager.masking.public_text,
            "datasets": datasets,
            "policy": policy.model_dump(),
            "count_rounding": step,
            "audit": {k: v for k, v in manager.query_audit.describe().items() if k in ("scope", "group")},
            "audit_log": f"needs attention: {audit.damaged}" if audit.damaged else "ok",
        }

    @app.post("/tasks", status_code=202, tags=["researcher"], openapi_extra={"x-roles": ["researcher"]})
    async def submit(request: TaskRequest, who: Researcher) -> TaskStatus:
        """Submit one round of an analysis; poll ``/tasks/{id}`` and fetch ``/tasks/{id}/result``."""
        limiter.check(who.user)
        record = await _in_thread(manager.submit, who.user, request)
        return TaskStatus(**record.describe())

    @app.get("/tasks", tags=["researcher"], openapi_extra={"x-roles": ["researcher"]})
    def tasks(who: Researcher) -> list[TaskStatus]:
        """Your tasks at this station."""
        return [TaskStatus(**t.describe()) for t in manager.of_user(who.user)]

    @app.get("/tasks/{task_id}", tags=["researcher"], openapi_extra={"x-roles": ["researcher"]})
    def task(task_id: TaskId, who: Researcher) -> TaskStatus:
        """Status and progress of one of your tasks."""
        return TaskStatus(**manager.get(who.user, task_id).describe())

    @app.get(
        "/tasks/{task_id}/result",
        tags=["researcher"],
        openapi_extra={"x-roles": ["researcher"]},
        response_class=Response,
        responses={200: {"content": {ARROW_STREAM: {}}, "description": "the released statistics, Arrow IPC"}},
    )
    def result(task_id: TaskId, who: Researcher) -> Response:
        """The released statistics of a finished task, as an Arrow IPC stream."""
        record: TaskRecord = manager.get(who.user, task_id)
        if record.status != "done" or record.outcome is None:
            raise HTTPException(409, f"task {task_id} is {record.status}; results exist only for done tasks")
        return Response(record.outcome.payload, media_type=ARROW_STREAM)

    @app.delete("/tasks/{task_id}", tags=["researcher"], openapi_extra={"x-roles": ["researcher"]})
    def cancel(task_id: TaskId, who: Researcher) -> TaskStatus:
        """Cancel one of your tasks (finished tasks stay as they are)."""
        return TaskStatus(**manager.cancel(who.user, task_id).describe())

    # -- admin ------------------------------------------------------------------------------------------
    @app.get("/admin/audit", tags=["admin"], openapi_extra={"x-roles": ["admin"]})
    def audit_rows(
        _: Admin,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Audit rows after ``after``, oldest first."""
        return audit.rows(after, limit)

    @app.get("/admin/audit/verify", tags=["admin"], openapi_extra={"x-roles": ["admin"]})
    def audit_verify(_: Admin) -> dict[str, Any]:
        """Check the hash chain of the audit log."""
        v = audit.verify()
        return {"ok": v.ok, "rows": v.rows, "head_seq": v.head_seq, "head_hash": v.head_hash, "problem": v.problem}

    @app.get("/admin/approvals", tags=["admin"], openapi_extra={"x-roles": ["admin"]})
    def approvals(_: Admin) -> list[dict[str, Any]]:
        """Tasks waiting for approval."""
        return manager.pending()

    @app.post("/admin/approvals/{task_id}", tags=["admin"], openapi_extra={"x-roles": ["admin"]})
    def decide(task_id: TaskId, decision: Decision, who: Admin) -> dict[str, Any]:
        """Approve or reject a waiting task."""
        return manager.decide(task_id, decision.decision == "approve", who.user, decision.reason)

    @app.get("/admin/policy", tags=["admin"], openapi_extra={"x-roles": ["admin"]})
    def get_policy(_: Admin) -> Policy:
        """The policy in force."""
        policy: Policy = current_config().policy
        return policy

    @app.put("/admin/policy", tags=["admin"], openapi_extra={"x-roles": ["admin"]})
    def put_policy(policy: Policy, who: Admin) -> Policy:
        """Replace the policy (written to station.toml, in force at once)."""
        new = current_config().model_copy(update={"policy": policy})
        write_config(Path(station_dir), new)
        apply_config(new)
        live.mtime = config_path.stat().st_mtime_ns
        audit.append(who.user, "policy.set", policy.model_dump())
        return policy

    return app


def _kind(arrow_type: str) -> str:
    if arrow_type.startswith(("int", "uint")):
        return "integer"
    if arrow_type in ("float", "double", "halffloat"):
        return "number"
    if arrow_type in ("string", "large_string"):
        return "text"
    return arrow_type


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work (catalog access) off the event loop."""
    import anyio

    return await anyio.to_thread.run_sync(lambda: fn(*args))


def check_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (the safe default for ``better station serve``)."""
    return host in ("127.0.0.1", "::1", "localhost")
