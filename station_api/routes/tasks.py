"""A researcher's rounds: submit a task, follow it, fetch its released statistics, cancel it."""

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from better.station_api.routes.deps import Researcher, State, TaskId
from better.station_api.server_state import in_thread
from better.station_api.tasks import TaskRecord
from better.wire.arrays import ARROW_STREAM
from better.wire.messages import TaskRequest

router = APIRouter(tags=["researcher"])


# A task as its researcher sees it. (No docstring: it would be the schema's description.)
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


@router.post("/tasks", status_code=202, openapi_extra={"x-roles": ["researcher"]})
async def submit(request: TaskRequest, who: Researcher, state: State) -> TaskStatus:
    """Submit one round of an analysis; poll ``/tasks/{id}`` and fetch ``/tasks/{id}/result``."""
    state.limiter.check(who.user)
    record = await in_thread(state.manager.submit, who.user, request)
    return TaskStatus(**record.describe())


@router.get("/tasks", openapi_extra={"x-roles": ["researcher"]})
def tasks(who: Researcher, state: State) -> list[TaskStatus]:
    """Your tasks at this station."""
    return [TaskStatus(**t.describe()) for t in state.manager.of_user(who.user)]


@router.get("/tasks/{task_id}", openapi_extra={"x-roles": ["researcher"]})
async def task(
    task_id: TaskId,
    who: Researcher,
    state: State,
    wait: float = Query(0.0, ge=0.0, le=30.0, description="seconds to wait for the task to end before answering"),
) -> TaskStatus:
    """Status and progress of one of your tasks; with ``wait``, answered as soon as it ends (or after it)."""
    return TaskStatus(**(await state.manager.until_ended(who.user, task_id, wait)).describe())


@router.get(
    "/tasks/{task_id}/result",
    openapi_extra={"x-roles": ["researcher"]},
    response_class=Response,
    responses={200: {"content": {ARROW_STREAM: {}}, "description": "the released statistics, Arrow IPC"}},
)
def result(task_id: TaskId, who: Researcher, state: State) -> Response:
    """The released statistics of a finished task, as an Arrow IPC stream."""
    record: TaskRecord = state.manager.get(who.user, task_id)
    if record.status != "done" or record.outcome is None:
        raise HTTPException(409, f"task {task_id} is {record.status}; results exist only for done tasks")
    return Response(record.outcome.payload, media_type=ARROW_STREAM)


@router.delete("/tasks/{task_id}", openapi_extra={"x-roles": ["researcher"]})
def cancel(task_id: TaskId, who: Researcher, state: State) -> TaskStatus:
    """Cancel one of your tasks (finished tasks stay as they are)."""
    return TaskStatus(**state.manager.cancel(who.user, task_id).describe())
