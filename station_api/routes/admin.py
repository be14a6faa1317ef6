"""The administrator's routes: the audit log, approvals, and the policy."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from better.station_api.config import Policy
from better.station_api.routes.deps import Admin, State, TaskId

router = APIRouter(prefix="/admin", tags=["admin"])


# An administrator's decision on a waiting task. (No docstring: it would be the schema's description.)
class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: str = Field("", max_length=1000)


@router.get("/audit", openapi_extra={"x-roles": ["admin"]})
def audit_rows(
    _: Admin,
    state: State,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Audit rows after ``after``, oldest first."""
    return state.audit.rows(after, limit)


@router.get("/audit/verify", openapi_extra={"x-roles": ["admin"]})
def audit_verify(_: Admin, state: State) -> dict[str, Any]:
    """Check the hash chain of the audit log."""
    v = state.audit.verify()
    return {"ok": v.ok, "rows": v.rows, "head_seq": v.head_seq, "head_hash": v.head_hash, "problem": v.problem}


@router.get("/approvals", openapi_extra={"x-roles": ["admin"]})
def approvals(_: Admin, state: State) -> list[dict[str, Any]]:
    """Tasks waiting for approval."""
    return state.manager.pending()


@router.post("/approvals/{task_id}", openapi_extra={"x-roles": ["admin"]})
def decide(task_id: TaskId, decision: Decision, who: Admin, state: State) -> dict[str, Any]:
    """Approve or reject a waiting task."""
    return state.manager.decide(task_id, decision.decision == "approve", who.user, decision.reason)


@router.get("/policy", openapi_extra={"x-roles": ["admin"]})
def get_policy(_: Admin, state: State) -> Policy:
    """The policy in force."""
    policy: Policy = state.config().policy
    return policy


@router.put("/policy", openapi_extra={"x-roles": ["admin"]})
def put_policy(policy: Policy, who: Admin, state: State) -> Policy:
    """Replace the policy (written to station.toml, in force at once)."""
    state.set_policy(policy, who.user)
    return policy
