"""Talk to stations over HTTP: one task round trip per station, all stations in parallel.

:class:`Model` is what a query asks of every station (dataset, analysis, model, filters);
:func:`to_request` turns an engine task plus the model into the wire request for one station;
:class:`StationClient` submits it, polls and fetches the Arrow result; :func:`run_remote` drives an
engine protocol over a list of stations, round by round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import httpx
import numpy as np

from engine.errors import BetterError
from engine.frame import FRAMES
from engine.protocol import Protocol, Result, Task
from query.secure import SecureSession
from station_api.secure_agg import unmask_sum
from station_api.wire import Adjust, Condition, Secure, TaskRequest, decode_arrays, encode_state

T = TypeVar("T")


class StationError(BetterError):
    """A station refused or failed a task; the message names the station and its reason.

    ``dropout``: the station did not answer (unreachable, too slow, its task failed or was cancelled),
    as opposed to refusing the task.
    """

    def __init__(self, station: str, message: str, status: int | None = None, dropout: bool = False) -> None:
        super().__init__(f"station {station}: {message}")
        self.station = station
        self.status = status
        self.dropout = dropout


@dataclass(frozen=True)
class Model:
    """What every station is asked: dataset, analysis and the model's inputs."""

    dataset: str
    analysis: str
    phenotype: str | None = None
    covariates: tuple[str, ...] = ()
    binary: bool = False
    where: tuple[Condition, ...] = ()
    regions: tuple[str, ...] = ()
    adjust_station: bool = False
    label: str | None = None
    pass_only: bool = False


def to_request(
    task: Task, model: Model, station_index: int, n_stations: int, secure: Secure | None = None
) -> TaskRequest:
    """The wire request carrying engine ``task`` to station ``station_index`` of ``n_stations``."""
    state = {k: np.asarray(v) for k, v in task.items() if k not in ("kind", "groups")}
    n_rows = int(state["key_pos"].shape[0]) if "key_pos" in state else None
    return TaskRequest(
        dataset=model.dataset,
        analysis=model.analysis,
        kind=task["kind"],
        phenotype=model.phenotype,
        covariates=list(model.covariates),
        binary=model.binary,
        groups=int(task.get("groups", 1)),
        where=list(model.where),
        regions=list(model.regions),
        adjust=Adjust(index=station_index, count=n_stations) if model.adjust_station else None,
        pass_only=model.pass_only,
        state=encode_state(state, n_rows) if state else None,
        label=model.label,
        secure=secure,
    )


@dataclass
class StationClient:
    """One station: its name, URL and token."""

    name: str
    url: str
    token: str
    timeout: float = 600.0
    retries: int = 2
    public_key: str | None = None
    #: The station's X25519 key for secure aggregation, as pinned in the federation file.
    agreement_key: str | None = None
    timings: list[float] = field(default_factory=list)
    #: Signed manifests of the releases this client received: {"station", "manifest", "signature"}.
    manifests: list[dict[str, Any]] = field(default_factory=list)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _call(self, client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
        """One HTTP call, retried on connection errors (not on answers: a refusal is final)."""
        for attempt in range(self.retries + 1):
            try:
                return await client.request(method, self.url.rstrip("/") + path, headers=self._headers(), **kw)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise StationError(
                        self.name, f"unreachable at {self.url} ({type(exc).__name__}: {exc})", dropout=True
                    ) from None
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code < 400:
            return
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        if isinstance(detail, dict) and "rule" in detail:
            detail = f"refused by its policy ({detail['rule']}): {detail.get('message', '')}"
        elif isinstance(detail, list):
            detail = "; ".join(f"{d.get('where', '?')}: {d.get('problem', d)}" for d in detail if isinstance(d, dict))
        raise StationError(
            self.name, f"{what} failed with HTTP {r.status_code}: {detail}", r.status_code, dropout=r.status_code >= 500
        )

    async def run(
        self, client: httpx.AsyncClient, request: TaskRequest, on_progress: Callable[[float], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Submit ``request``, wait for it, and return the released arrays."""
        t0 = time.perf_counter()
        body = request.model_dump(mode="json", exclude_none=True)
        deadline = time.monotonic() + self.timeout
        while True:
            r = await self._call(client, "POST", "/tasks", json=body)
            wait = float(r.headers.get("Retry-After", "1")) if r.status_code == 429 else 0.0
            if not wait or time.monotonic() + wait > deadline:
                break
            await asyncio.sleep(wait)  # over the station's rate limit: it says when to come back
        self._check(r, f"{request.kind} task")
        task_id = r.json()["id"]
        pause = 0.005
        while True:
            r = await self._call(client, "GET", f"/tasks/{task_id}")
            self._check(r, "task status")
            status = r.json()
            if on_progress is not None:
                on_progress(float(status.get("progress", 0.0)))
            if status["status"] == "done":
                self.manifests.append(
                    {"station": self.name, "manifest": status.get("manifest"), "signature": status.get("signature")}
                )
                break
            if status["status"] in ("failed", "cancelled", "rejected", "expired"):
                refused = status["status"] == "rejected" or str(status.get("error", "")).startswith("refused")
                raise StationError(
                    self.name,
                    f"task {status['status']}: {status.get('error') or 'no reason given'}",
                    dropout=not refused,
                )
            if time.monotonic() > deadline:
                await self._call(client, "DELETE", f"/tasks/{task_id}")
                raise StationError(self.name, f"no answer within {self.timeout:.0f} s (task cancelled)", dropout=True)
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)
        r = await self._call(client, "GET", f"/tasks/{task_id}/result")
        self._check(r, "result download")
        self.timings.append(time.perf_counter() - t0)
        return decode_arrays(r.content, f"result from station {self.name}")


async def gather_or_cancel(*aws: Awaitable[T]) -> list[T]:
    """``asyncio.gather``, but when one fails the others are cancelled and awaited before the error is
    raised: no request is left running against a connection pool that is closing."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def run_remote_async(
    protocol: Protocol,
    stations: list[StationClient],
    model: Model,
    on_round: Callable[[int, str, float], None] | None = None,
    on_results: Callable[[list[dict[str, np.ndarray]]], None] | None = None,
    secure: SecureSession | None = None,
) -> dict[str, np.ndarray]:
    """Drive ``protocol`` over ``stations``: each round goes to every station at once.

    ``on_results(results)`` sees what came back in the clear (with ``secure``, only the variant lists),
    ``on_round(round, kind, seconds)`` is called as each round ends. With ``secure``, every station
    masks its release and the protocol receives only their sum.
    """
    limits = httpx.Limits(max_connections=4 * max(1, len(stations)))
    timeout = httpx.Timeout(max(s.timeout for s in stations), connect=10.0)
    n = len(stations)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def everywhere(task: Task, spec: Secure | None = None) -> list[Result]:
            requests = [to_request(task, model, i, n, spec) for i in range(n)]
            return await gather_or_cancel(*(s.run(client, r) for s, r in zip(stations, requests, strict=True)))

        async def key_lists(kind: str) -> list[Result]:
            found = await everywhere({"kind": kind})
            if on_results is not None:
                on_results(found)
            return found

        while (task := protocol.next_task()) is not None:
            t0 = time.perf_counter()
            if secure is None:
                results = await everywhere(task)
                if on_results is not None:
                    on_results(results)
            else:
                frame = None
                spec = FRAMES.get(str(task["kind"]))
                if spec is not None:
                    scope = (model.dataset, model.regions, model.pass_only, spec.keys_round)
                    frame = await secure.frame(scope, partial(key_lists, spec.keys_round), spec.columns)
                    task = {**task, **{f"key_{c}": v for c, v in frame.items()}}
                masked = await everywhere(task, secure.next_round())
                total = unmask_sum(masked, [s.name for s in stations])
                if frame is not None:
                    total.update({f"key_{c}": v for c, v in frame.items()})
                results = [total]
            protocol.receive(results)
            if on_round is not None:
                on_round(protocol.rounds, str(task["kind"]), time.perf_counter() - t0)
    return protocol.result()


def run_remote(protocol: Protocol, stations: list[StationClient], model: Model) -> dict[str, np.ndarray]:
    """Synchronous :func:`run_remote_async`."""
    return asyncio.run(run_remote_async(protocol, stations, model))
