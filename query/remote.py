"""Talk to stations over HTTP: one task round trip per station, the stations in parallel.

:class:`Model` is what a query asks of every station (dataset, analysis, model, filters);
:func:`to_request` turns an engine task plus the model into the wire request for one station;
:class:`StationClient` submits it, polls and fetches the Arrow result; :func:`run_remote` drives an
engine protocol over a list of stations, round by round.

A round's calls run at most :attr:`Slots.limit` at a time (the federation file's
``max_concurrent_stations``), a station's timeout counting from its turn; :func:`gather_stations` keeps
what became of each station (:class:`Outcome`), and a round that some station did not answer fails with a
:class:`RoundError` naming every station's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar, cast

import httpx
import numpy as np

from better.engine import finals
from better.engine.analyses import round_kind
from better.engine.design import KEY_COLUMNS
from better.engine.errors import BetterError, InputError
from better.engine.protocol import Protocol, Result, Task
from better.query.finished import FinishedRows
from better.query.hub_link import HubLink, mounts
from better.query.secure import SecureSession
from better.query.withholding import WithheldBy
from better.station_api.finishing import MAX_STEPS
from better.wire.arrays import decode_arrays, encode_state
from better.wire.masking import unmask_sum
from better.wire.messages import Adjust, Condition, Exchange, Secure, TaskRequest

T = TypeVar("T")
#: Seconds a station holds a task status request open while the task runs (progress shows this often).
STATUS_WAIT = 2.0
#: Station tasks a coordinator has in flight at once, unless the federation file says otherwise.
MAX_CONCURRENT_STATIONS = 16
#: Seconds the stations still working on a round get to end once another has failed it (so that the error
#: can say what became of them) before they are stopped.
SETTLE_SECONDS = 1.0

#: Why a station did not answer: the kinds of :class:`StationError`.
Failure = Literal["timed out", "refused", "unreachable", "failed"]


def open_client(stations: list[StationClient], **kw: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that reaches ``stations``: directly, or through their hub (sealed)."""
    link = next((s.hub for s in stations if s.hub is not None), None)
    verify = next((s.verify for s in stations), True)
    return httpx.AsyncClient(verify=verify, mounts=mounts(link), **kw)


class StationError(BetterError):
    """A station refused or failed a task; the message names the station and its reason.

    ``dropout``: the station did not answer (unreachable, too slow, its task failed or was cancelled),
    as opposed to refusing the task. ``state`` says which (:data:`Failure`); by default ``"failed"`` for a
    dropout, else ``"refused"``.
    """

    def __init__(
        self,
        station: str,
        message: str,
        status: int | None = None,
        dropout: bool = False,
        rule: str | None = None,
        state: Failure | None = None,
    ) -> None:
        super().__init__(f"station {station}: {message}")
        self.station = station
        #: The reason alone, without the station's name.
        self.reason = message
        self.status = status
        self.dropout = dropout
        #: The policy rule of a refusal (``"query_audit"``, ``"audit_busy"``, ...), else None.
        self.rule = rule
        self.state: Failure = state or ("failed" if dropout else "refused")
        #: Every station that did not answer (one here; several in a :class:`RoundError`).
        self.failed: list[StationError] = [self]


@dataclass
class Outcome:
    """What became of one station in one round of calls (:func:`gather_stations`).

    ``state``: ``"waiting"`` (for its turn), ``"working"``, ``"answered"``, one of :data:`Failure`,
    ``"stopped"`` (still working when another station failed the round) or ``"not asked"`` (the round
    failed before its turn).
    """

    station: str
    state: str = "waiting"
    #: Seconds it waited for its turn (a free slot).
    waited: float = 0.0
    #: Seconds from its turn to its answer, failure or stop.
    seconds: float = 0.0
    #: When it answered or failed (``time.monotonic``), or None.
    ended: float | None = None
    error: StationError | None = None

    def describe(self, above: str | None = None) -> str:
        """The state in words, e.g. ``answered in 0.4 s`` or ``timed out after 600.0 s: ...``; a reason equal
        to ``above`` (one already shown) is written ``as above``."""
        reason = self.error.reason if self.error is not None else ""
        if reason and reason == above:
            reason = "as above"
        if self.state == "answered":
            text = f"answered in {self.seconds:.1f} s"
        elif self.state == "timed out":
            text = f"timed out after {self.seconds:.1f} s: {reason}"
        elif self.error is not None:
            text = reason if reason.startswith(self.state) else f"{self.state}: {reason}"
        elif self.state == "stopped":
            text = f"stopped after {self.seconds:.1f} s: still working when the round failed"
        elif self.state in ("waiting", "not asked"):
            text = "not asked: the round failed before its turn"
        else:
            text = self.state
        if self.waited >= 0.05:
            text += f" (after {self.waited:.1f} s waiting for its turn)"
        return text


@dataclass
class Answers:
    """Who answered one round of calls: ``what`` (e.g. ``the linear round``) and each station's outcome."""

    what: str
    outcomes: list[Outcome]
    #: Station calls allowed at once (``max_concurrent_stations``).
    limit: int

    def roster(self, above: str | None = None) -> str:
        """Every station and its state, a line each, under a heading naming the round (a reason equal to
        ``above``, already shown, as ``as above``). Its only numbers are seconds and the bound: the reasons
        are the stations' own words."""
        width = max(len(o.station) for o in self.outcomes)
        at_once = f" (at most {self.limit} stations at once)" if len(self.outcomes) > self.limit else ""
        lines = [f"who answered {self.what}{at_once}:"]
        lines += [f"  {o.station:<{width}}  {o.describe(above)}" for o in self.outcomes]
        return "\n".join(lines)


#: How to fix each kind of failure, for the end of a :class:`RoundError`.
_FIXES: dict[str, str] = {
    "timed out": "raise its timeout (seconds per task) in the federation file, or ask the station why it is slow",
    "unreachable": "check that the station runs and that its url in the federation file is right",
    "refused": "the reason above says what the station's policy or the request lacks",
    "failed": "the station's log says why (ask its administrator)",
}


class RoundError(StationError):
    """A round that one or more stations did not answer: the first failure, then every station's state.

    ``station``, ``status``, ``state`` and ``rule`` are the first failure's (what a lone
    :class:`StationError` would carry); ``dropout`` is true when every station that failed dropped out (none
    refused); ``failed`` lists every failure, ``answers`` every station's outcome.
    """

    def __init__(self, answers: Answers, failed: list[StationError]) -> None:
        first = failed[0]
        super().__init__(
            first.station,
            first.reason,
            first.status,
            dropout=all(e.dropout for e in failed),
            rule=first.rule,
            state=first.state,
        )
        self.failed = failed
        self.answers = answers
        #: The first failure's message, as a lone :class:`StationError` would say it.
        self.headline = str(first)
        fixes = []
        for state, fix in _FIXES.items():
            names = [e.station for e in failed if e.state == state]
            if names:
                fixes.append(f"\nfix ({', '.join(names)}: {state}): {fix}")
        self.roster = answers.roster(first.reason) + "".join(fixes)
        self.args = (f"{self.headline}\n{self.roster}",)


def answers_summary(log: list[Answers], stations: list[StationClient] | None = None) -> list[str]:
    """A line per station over the rounds in ``log``: what it answered, how fast, how long it waited for its
    turns; with ``stations``, also the bytes sent to it and received from it, e.g.
    ``milano: answered 9 of 9 call(s), median 0.25 s, longest 1.10 s, 0.03 MB sent to it, 2.10 MB received``.
    """
    names = list(dict.fromkeys(o.station for a in log for o in a.outcomes))
    sizes = {s.name: (s.sent_bytes, s.received_bytes) for s in stations or []}
    lines = []
    for name in names:
        outcomes = [o for a in log for o in a.outcomes if o.station == name]
        took = [o.seconds for o in outcomes if o.state == "answered"]
        line = f"{name}: answered {len(took)} of {len(outcomes)} call(s)"
        if took:
            line += f", median {statistics.median(took):.2f} s, longest {max(took):.2f} s"
        waited = sum(o.waited for o in outcomes)
        if waited >= 0.05:
            line += f", {waited:.1f} s waiting for its turns"
        if name in sizes:
            line += f", {sizes[name][0] / 1e6:.2f} MB sent to it, {sizes[name][1] / 1e6:.2f} MB received"
        other = {o.state for o in outcomes} - {"answered"}
        if other:
            counts = [f"{sum(o.state == state for o in outcomes)} {state}" for state in sorted(other)]
            line += "; " + ", ".join(counts)
        lines.append(line)
    return lines


class Slots:
    """At most ``limit`` station calls in flight at once, over every round and stage of a query.

    A call holds its slot from submitting a task to downloading its result, and waits for nothing else
    while it holds it (a sealed round's seals and openings are separate calls), so rounds cannot wait for
    each other in a circle. Make one per event loop (a semaphore belongs to the loop it first waits in).
    """

    def __init__(self, limit: int = MAX_CONCURRENT_STATIONS) -> None:
        if limit < 1:
            raise InputError(f"max_concurrent_stations = {limit}: allow at least one station call at a time")
        self.limit = limit
        self._free = asyncio.Semaphore(limit)
        #: Calls in flight now, and the most there were at once.
        self.busy = 0
        self.most = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot (waiting for a free one first)."""
        async with self._free:
            self.busy += 1
            self.most = max(self.most, self.busy)
            try:
                yield
            finally:
                self.busy -= 1


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
    task: Task,
    model: Model,
    station_index: int,
    n_stations: int,
    secure: Secure | None = None,
    exchange: Exchange | None = None,
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
        exchange=exchange,
    )


@dataclass(frozen=True)
class Release:
    """One release a station made for a query: the request it answered and the bytes it sent back."""

    station: str
    task: str
    request: dict[str, Any]
    #: None for sealed messages relayed to peers (a seal, a finishing step): the table does not depend on
    #: them, and their manifests are signed all the same.
    payload: bytes | None

    @property
    def phase(self) -> str | None:
        exchange = self.request.get("exchange")
        return str(exchange["phase"]) if isinstance(exchange, dict) and exchange.get("phase") else None


@dataclass
class Recording:
    """What a query received, as it came: each station's ``/station`` answer and its releases."""

    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    releases: list[Release] = field(default_factory=list)

    def forget(self, station: str, tasks: list[str]) -> None:
        """Drop releases whose round was given back (its seals were never opened)."""
        gone = set(tasks)
        self.releases = [r for r in self.releases if not (r.station == station and r.task in gone)]


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
    #: Where to keep every release as it came (for ``better verify``), or None.
    recording: Recording | None = None
    #: TLS verification: True (the system's CAs), or a context trusting the federation file's ``ca_file``.
    verify: bool | ssl.SSLContext = True
    #: The hub this station is reached through (its URL is then ``hub://NAME``), or None (direct).
    hub: HubLink | None = None
    #: Bytes of the requests sent to the station and of its answers (bodies, over every call).
    sent_bytes: int = 0
    received_bytes: int = 0

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _call(self, client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
        """One HTTP call within this station's timeout, retried on connection errors (not on answers: a
        refusal is final; not on a station that accepted the connection and then said nothing)."""
        kw.setdefault("timeout", httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)))
        for attempt in range(self.retries + 1):
            try:
                r = await client.request(method, self.url.rstrip("/") + path, headers=self._headers(), **kw)
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
                raise StationError(
                    self.name,
                    f"no answer to {method} {path} within {self.timeout:g} s (the federation file's timeout)",
                    dropout=True,
                    state="timed out",
                ) from None
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise StationError(
                        self.name,
                        f"unreachable at {self.url} ({type(exc).__name__}: {exc})",
                        dropout=True,
                        state="unreachable",
                    ) from None
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            self.sent_bytes += int(r.request.headers.get("content-length", 0))
            self.received_bytes += len(r.content)
            return r
        raise AssertionError("unreachable")

    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code < 400:
            return
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        rule = None
        if isinstance(detail, dict) and "rule" in detail:
            rule = str(detail["rule"])
            detail = f"refused by its policy ({rule}): {detail.get('message', '')}"
        elif isinstance(detail, list):
            detail = "; ".join(f"{d.get('where', '?')}: {d.get('problem', d)}" for d in detail if isinstance(d, dict))
        raise StationError(
            self.name,
            f"{what} failed with HTTP {r.status_code}: {detail}",
            r.status_code,
            dropout=r.status_code >= 500,
            rule=rule,
            state="failed" if r.status_code >= 500 else "refused",
        )

    async def run(
        self,
        client: httpx.AsyncClient,
        request: TaskRequest,
        on_progress: Callable[[float], None] | None = None,
        submitted: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Submit ``request``, wait for it, and return the released arrays.

        The task's id is appended to ``submitted`` as soon as the station accepts it.
        """
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
        if submitted is not None:
            submitted.append(task_id)
        while True:
            wait = max(0.0, min(STATUS_WAIT, deadline - time.monotonic()))
            r = await self._call(client, "GET", f"/tasks/{task_id}?wait={wait:.2f}")
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
                error = str(status.get("error") or "")
                refused = status["status"] == "rejected" or error.startswith("refused")
                rule = (
                    error[len("refused by policy (") :].split(")", 1)[0]
                    if error.startswith("refused by policy (")
                    else None
                )
                raise StationError(
                    self.name,
                    f"task {status['status']}: {error or 'no reason given'}",
                    dropout=not refused,
                    rule=rule,
                )
            if time.monotonic() > deadline:
                await self._call(client, "DELETE", f"/tasks/{task_id}")
                raise StationError(
                    self.name, f"no answer within {self.timeout:g} s (task cancelled)", dropout=True, state="timed out"
                )
        r = await self._call(client, "GET", f"/tasks/{task_id}/result")
        self._check(r, "result download")
        self.timings.append(time.perf_counter() - t0)
        arrays = decode_arrays(r.content, f"result from station {self.name}")
        if self.recording is not None:
            relayed = "blob" in arrays  # messages sealed to the other stations
            payload = None if relayed else r.content
            self.recording.releases.append(Release(self.name, task_id, request.model_dump(mode="json"), payload))
        return arrays

    async def station_info(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """``GET /station``: the datasets, their variables and the policy."""
        r = await self._call(client, "GET", "/station")
        self._check(r, "station info")
        info: dict[str, Any] = r.json()
        if self.recording is not None:
            self.recording.info[self.name] = info
        return info

    async def give_back(self, client: httpx.AsyncClient, tasks: list[str]) -> None:
        """Cancel seals whose round will not be opened, so that the station frees its audit at once."""
        if self.recording is not None:
            self.recording.forget(self.name, tasks)
        for task_id in tasks:
            with contextlib.suppress(httpx.HTTPError):  # the station frees it after a while anyway
                await client.request(
                    "DELETE", f"{self.url.rstrip('/')}/tasks/{task_id}", headers=self._headers(), timeout=10.0
                )


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


async def gather_stations(
    calls: Sequence[tuple[str, Callable[[], Awaitable[T]]]],
    slots: Slots,
    what: str,
    log: list[Answers] | None = None,
    order: Sequence[int] | None = None,
) -> list[T]:
    """Run one call per station, at most ``slots.limit`` at a time, and return their results in order.

    ``calls`` are ``(station name, call)``; a call starts when it gets a slot, so its station's timeout
    counts from its turn, not from the round's start. ``order`` (indices into ``calls``) is the order in
    which they take their turns (default: as given). When a station fails, no further station is asked,
    those still working get :data:`SETTLE_SECONDS` to end and are then stopped, and a :class:`RoundError`
    names every station's state (a lone :class:`StationError` with a single station; other errors as they
    are). ``log`` receives the round's :class:`Answers`, whether it failed or not.
    """
    if not calls:
        return []
    outcomes = [Outcome(name) for name, _ in calls]
    failures: list[StationError] = []
    stop = asyncio.Event()

    async def one(i: int) -> T | None:
        outcome = outcomes[i]
        asked = time.monotonic()
        async with slots.slot():
            turn = time.monotonic()
            outcome.waited = turn - asked
            if stop.is_set():
                outcome.state = "not asked"
                return None
            outcome.state = "working"
            try:
                result = await calls[i][1]()
            except StationError as exc:
                outcome.state, outcome.error = exc.state, exc
                failures.append(exc)
                stop.set()
                raise
            except asyncio.CancelledError:
                outcome.state = "stopped"
                raise
            except BaseException:
                outcome.state = "failed"
                stop.set()
                raise
            finally:
                outcome.ended = time.monotonic()
                outcome.seconds = outcome.ended - turn
            outcome.state = "answered"
            return result

    tasks = {i: asyncio.ensure_future(one(i)) for i in (range(len(calls)) if order is None else order)}
    try:
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
        working = [t for t in tasks.values() if not t.done()]
        if working:  # a station failed: those at work get a moment to end, so that the error can say how
            await asyncio.wait(working, timeout=SETTLE_SECONDS)
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    answers = Answers(what, outcomes, slots.limit)
    if log is not None:
        log.append(answers)
    for t in tasks.values():
        error = None if t.cancelled() else t.exception()
        if error is not None and not isinstance(error, StationError):
            raise error  # not a station's answer: a malformed result, a bug
    if failures:
        if len(calls) == 1:
            raise failures[0]
        raise RoundError(answers, failures) from None
    return [cast("T", tasks[i].result()) for i in range(len(calls))]


async def run_remote_async(
    protocol: Protocol,
    stations: list[StationClient],
    model: Model,
    on_round: Callable[[int, str, float], None] | None = None,
    on_results: Callable[[list[dict[str, np.ndarray]]], None] | None = None,
    secure: SecureSession | None = None,
    withheld_by: WithheldBy | None = None,
    finished: FinishedRows | None = None,
    slots: Slots | None = None,
    log: list[Answers] | None = None,
) -> dict[str, np.ndarray]:
    """Drive ``protocol`` over ``stations``: each round goes to every station, ``slots.limit`` at a time.

    ``on_results(results)`` sees what came back in the clear (with ``secure``, only the variant lists),
    ``on_round(round, kind, seconds)`` is called as each round ends. With ``secure``, every station
    masks its release and the protocol receives only their sum. ``withheld_by`` collects the rules that
    withheld rows; ``finished``, the results of rows the stations finished themselves (the protocol sees
    those rows as withheld). ``slots`` bounds the station calls in flight (shared with whatever else runs
    beside this protocol; default: its own, :data:`MAX_CONCURRENT_STATIONS`); ``log`` receives who answered
    each round (:class:`Answers`).
    """
    slots = slots if slots is not None else Slots()
    limits = httpx.Limits(max_connections=4 * max(1, min(len(stations), slots.limit)))
    timeout = httpx.Timeout(max(s.timeout for s in stations), connect=10.0)
    n = len(stations)
    audited = False  # a sealed round of this protocol audited its selection: later null rounds need none
    async with open_client(stations, limits=limits, timeout=timeout) as client:

        def run_at(
            requests: list[TaskRequest], ids: list[list[str]] | None = None
        ) -> list[tuple[str, Callable[[], Awaitable[Result]]]]:
            """Each station's call of its request (its accepted task ids into ``ids[i]``)."""
            return [
                (s.name, partial(s.run, client, r, submitted=None if ids is None else ids[i]))
                for i, (s, r) in enumerate(zip(stations, requests, strict=True))
            ]

        async def give_back(held: list[list[str]]) -> None:
            """Hand back the tasks in ``held`` (each station's), a slot each."""

            async def one(s: StationClient, ids: list[str]) -> None:
                async with slots.slot():
                    await s.give_back(client, ids)

            await asyncio.gather(*(one(s, ids) for s, ids in zip(stations, held, strict=True) if ids))

        async def everywhere(
            task: Task, spec: Secure | None = None, exchange: Exchange | None = None, what: str | None = None
        ) -> list[Result]:
            requests = [to_request(task, model, i, n, spec, exchange) for i in range(n)]
            return await gather_stations(run_at(requests), slots, what or f"the {task['kind']} round", log)

        async def seal_everywhere(task: Task, lock: bool) -> tuple[Secure, list[Result], list[list[str]], list[float]]:
            """Seals at every station, under a fresh round. A station whose audit is busy with another
            query's seal makes this one give back its seals and try again after a random pause (with a new
            round: a round's masks are never used twice), so two queries never hold each other up. Also
            returns each station's seal ids and when it sealed."""
            assert secure is not None
            deadline = time.monotonic() + max(s.timeout for s in stations)
            sealed_log = log if log is not None else []
            while True:
                spec = secure.next_round()
                requests = [to_request(task, model, i, n, spec, Exchange(phase="seal", lock=lock)) for i in range(n)]
                seals: list[list[str]] = [[] for _ in stations]
                what = f"the seal of the {task['kind']} round"
                try:
                    found = await gather_stations(run_at(requests, seals), slots, what, sealed_log)
                    ended = [o.ended if o.ended is not None else 0.0 for o in sealed_log[-1].outcomes]
                    return spec, found, seals, ended
                except StationError as exc:
                    await give_back(seals)
                    if exc.rule != "audit_busy" or time.monotonic() > deadline:
                        raise
                await asyncio.sleep(random.uniform(0.1, 1.5))

        async def sealed_round(task: Task) -> tuple[Secure, list[Result]]:
            """A sealed round; run again (fresh masks) when the stations ask for it: a station's new sets
            need every station to hold its audit, or a station caught up with its peers' audit records."""
            for attempt in range(4):
                try:
                    return await seal_and_open(task, lock=attempt > 0)
                except StationError as exc:
                    if exc.rule not in ("audit_lock", "audit_resync") or attempt == 3:
                        raise
            raise AssertionError("unreachable")

        async def seal_and_open(task: Task, lock: bool) -> tuple[Secure, list[Result]]:
            """Seal at every station, hand each the others' messages, open: the masked releases."""
            assert secure is not None
            names = [s.name for s in stations]
            async with secure.sealing:  # one sealed round of a session at a time
                spec, seals, seal_ids, ended = await seal_everywhere(task, lock)
                # those that sealed first hold their audit longest: they are opened first
                order = sorted(range(n), key=lambda i: ended[i])
                opened: list[list[str]] = [[] for _ in stations]
                try:
                    blobs: dict[str, dict[str, str]] = {name: {} for name in names}
                    for sender, arrays in zip(names, seals, strict=True):
                        sent = zip(arrays["recipient"].tolist(), arrays["blob"].tolist(), strict=True)
                        for recipient, blob in sent:
                            if recipient not in blobs:
                                raise StationError(sender, f"sealed a message to {recipient!r}, not in this round")
                            blobs[recipient][sender] = blob
                    openings = [
                        to_request(task, model, i, n, spec, Exchange(phase="open", blobs=blobs[name])).model_copy(
                            update={"state": None}
                        )
                        for i, name in enumerate(names)
                    ]
                    what = f"the opening of the {task['kind']} round"
                    return spec, await gather_stations(run_at(openings, opened), slots, what, log, order)
                except BaseException:
                    # a station that never got its opening still holds the seal: give it back
                    await give_back([[] if ids else seal_ids[i] for i, ids in enumerate(opened)])
                    raise

        async def finish_rows(task: Task, spec: Secure, rows: np.ndarray, shared: dict[str, np.ndarray]) -> None:
            """Relay the finishing steps of the rows the stations finish, until they release the results."""
            names = [s.name for s in stations]
            kind = str(task["kind"])
            test = getattr(protocol, "test", None)  # a logistic fit's test, which the finished rows get too
            blobs: dict[str, dict[str, str]] = {name: {} for name in names}
            for _ in range(MAX_STEPS):
                requests = [
                    to_request(
                        task, model, i, n, spec, Exchange(phase="finish", blobs=blobs[name], test=test)
                    ).model_copy(update={"state": None})
                    for i, name in enumerate(names)
                ]
                out = await gather_stations(run_at(requests), slots, f"a finishing step of the {kind} round", log)
                if "blob" not in out[0]:
                    sums = round_kind(kind).finishing
                    assert sums is not None
                    done = finals.decode(sums.model, unmask_sum(out, names))
                    if finished is not None:
                        finished.add({c: shared[c][rows] for c in KEY_COLUMNS}, done)
                    return
                blobs = {name: {} for name in names}
                for sender, arrays in zip(names, out, strict=True):
                    for recipient, blob in zip(arrays["recipient"].tolist(), arrays["blob"].tolist(), strict=True):
                        blobs.setdefault(recipient, {})[sender] = blob
            raise StationError(names[0], "the stations did not finish their rows within the steps allowed")

        async def key_lists(kind: str) -> list[Result]:
            found = await everywhere({"kind": kind}, what=f"the {kind} round (each station's rows)")
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
                shared = None
                kind_spec = round_kind(str(task["kind"]))
                if kind_spec.shared is not None:
                    keys_round = kind_spec.shared.keys_round
                    scope = (model.dataset, model.regions, model.pass_only, keys_round)
                    shared = await secure.shared_rows(scope, partial(key_lists, keys_round), kind_spec.shared.columns)
                    task = {**task, **{f"key_{c}": v for c, v in shared.items()}}
                sealed: Secure | None = None
                if kind_spec.sealed == "always" or (kind_spec.sealed == "first" and not audited):
                    sealed, masked = await sealed_round(task)
                    audited = True
                else:
                    masked = await everywhere(task, secure.next_round())
                total = unmask_sum(masked, [s.name for s in stations])
                if shared is not None:
                    total.update({f"key_{c}": v for c, v in shared.items()})
                    rows = np.asarray(total.pop("finish", np.zeros(0, dtype=bool)), dtype=bool)
                    if sealed is not None and rows.any():
                        await finish_rows(task, sealed, rows, shared)
                results = [total]
            if withheld_by is not None:
                withheld_by.add(results, task)
            if protocol.rounds == 0 and not round_kind(str(task["kind"])).whole_count:
                _refuse_empty(results)
            protocol.receive(results)
            if on_round is not None:
                on_round(protocol.rounds, str(task["kind"]), time.perf_counter() - t0)
    return protocol.result()


def _refuse_empty(results: list[Result]) -> None:
    """A selection that matches nobody at any station is a clear error, not a table of zeros."""
    sizes = [
        int(r["n"]) if "n" in r else int(np.asarray(r["group_size"]).sum())
        for r in results
        if "n" in r or "group_size" in r
    ]
    if sizes and sum(sizes) == 0:
        raise InputError(
            "the selection matches no sample at any station (check the WHERE conditions against the data's "
            "coding, e.g. sex is 1/2 in PLINK files, and that the phenotype and covariates are not all missing)"
        )


def run_remote(protocol: Protocol, stations: list[StationClient], model: Model) -> dict[str, np.ndarray]:
    """Synchronous :func:`run_remote_async`."""
    return asyncio.run(run_remote_async(protocol, stations, model))
