"""The hub's HTTP API: a relay that stations reach out to, so that no station opens an inbound port.

Researchers queue sealed task envelopes for a station and long-poll for the sealed replies; stations
long-poll for their envelopes and post their replies. Every call is signed by the caller's Ed25519 key
(:mod:`better.wire.signed_requests`); a station also presents the credential ``better hub enrol`` gave
it, and its first signed call binds its signing key, which every later call and reply must match. The
hub checks each envelope's header and researcher signature before it queues it, and each reply's
station signature before it stores it; it cannot open either (:mod:`better.wire.envelope`).

Routes (all under ``/v1`` but ``/health`` and ``/info``):

=========================================  ============  ==============================================
``GET /v1/stations``                       researcher    enrolled stations, their signed cards, backlog
``POST /v1/stations/{name}/messages``      researcher    queue a task envelope (``wait``: and its reply)
``GET /v1/messages/{id}/reply?wait=S``     researcher    the reply frame (200), or 204 after S seconds
``DELETE /v1/messages/{id}``               researcher    withdraw a task, or acknowledge its reply
``POST /v1/stations/{name}/card``          station       the station's keys, signed by itself
``GET /v1/stations/{name}/messages``       station       its envelopes (``wait``, ``fresh``), framed
``POST /v1/messages/{id}/reply``           station       the reply frame to one envelope
=========================================  ============  ==============================================
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from better.hub.config import HubConfig, read_config
from better.hub.queue import HubQueue, Quotas
from better.station_api import __version__
from better.wire.envelope import Envelope, EnvelopeError, check_task, decode, read_header, verify_signature
from better.wire.masking import canonical
from better.wire.signed_requests import check_fresh, verify_request

log = logging.getLogger("better.hub")
T = TypeVar("T")
STATION_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
MESSAGE_ID = r"^[0-9a-f]{32}$"
SWEEP_SECONDS = 30.0


class HubState:
    """The running hub: its config, its queue and the long-polls waiting on it."""

    def __init__(self, hub_dir: Path) -> None:
        self.dir = Path(hub_dir)
        self.config: HubConfig = read_config(self.dir)
        self.queue = HubQueue(self.dir)
        limits = self.config.limits
        self.quotas = Quotas(
            limits.max_waiting_per_station, limits.max_waiting_mib_per_station << 20, limits.max_waiting_per_researcher
        )
        self._station_events: dict[str, asyncio.Event] = {}
        self._reply_events: dict[str, asyncio.Event] = {}

    @property
    def max_bytes(self) -> int:
        return self.config.limits.max_message_mib << 20

    @property
    def max_task_bytes(self) -> int:
        return self.config.limits.max_task_mib << 20

    def wake_station(self, station: str) -> None:
        self._station_events.setdefault(station, asyncio.Event()).set()

    def wake_reply(self, message_id: str) -> None:
        event = self._reply_events.get(message_id)
        if event is not None:
            event.set()

    async def poll(self, events: dict[str, asyncio.Event], key: str, check: Callable[[], T], wait: float) -> T:
        """``check()`` (in a thread) until it gives something truthy, woken by ``events[key]``, for ``wait`` s."""
        deadline = time.monotonic() + wait
        try:
            while True:
                event = events.setdefault(key, asyncio.Event())
                event.clear()
                found = await anyio.to_thread.run_sync(check)
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            if events is self._reply_events:
                events.pop(key, None)

    def reply_frame(self, message_id: str) -> bytes | None:
        path = self.queue.reply_path(message_id)
        try:
            return None if path is None else path.read_bytes()
        except FileNotFoundError:  # acknowledged meanwhile
            return None


def create_app(hub_dir: Path) -> FastAPI:
    """The hub's FastAPI application over the hub directory ``hub_dir``.

    Parameters
    ----------
    hub_dir : Path
        A directory made by ``better hub init``.

    Returns
    -------
    FastAPI
        The application; its :class:`HubState` is on ``app.state.hub``.
    """
    state = HubState(hub_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        removed = state.queue.clean_up()
        state.queue.log(
            "hub", "hub.start", {"software": __version__, "waiting": state.queue.counts(), "removed": removed}
        )
        sweeper = asyncio.create_task(_sweep(state))
        yield
        sweeper.cancel()
        state.queue.log("hub", "hub.stop", {})
        state.queue.close()

    app = FastAPI(title="BETTER hub", version=__version__, lifespan=lifespan, description=__doc__)
    app.state.hub = state

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal error in the hub; its administrator can see the log"}, 500)

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        """What this service is."""
        return {"service": "better-hub", "software": f"better {__version__}", "researchers": state.config.researchers}

    # -- researchers ---------------------------------------------------------------------------------------
    @app.get("/v1/stations")
    async def stations(request: Request) -> list[dict[str, Any]]:
        """The enrolled stations and the cards they signed (their keys, as they state them)."""
        await _researcher(state, request, b"")
        found = await anyio.to_thread.run_sync(state.queue.directory)
        return [{"name": s["name"], "card": s["card"]} for s in found]

    @app.post("/v1/stations/{name}/messages", status_code=202, response_model=None)
    async def submit(
        request: Request,
        name: str = _name(),
        wait: float = Query(0.0, ge=0.0, le=120.0, description="wait this long for the reply (200) before 202"),
    ) -> Response | dict[str, str]:
        """Queue a sealed task envelope for station ``name``; with ``wait``, answer with its reply if it comes."""
        key = await _researcher_preflight(state, request)
        body = await _body(request, state.max_task_bytes)
        await _researcher_signature(request, body)
        try:
            envelope = await anyio.to_thread.run_sync(lambda: _checked_task(body, name, key, state.max_task_bytes))
        except EnvelopeError as exc:
            await _event(state, key, "message.refused", {"station": name, "reason": exc.reason})
            raise HTTPException(422, f"envelope refused ({exc.reason}): {exc}") from None
        expires = float(envelope.header["expires"])
        why = await anyio.to_thread.run_sync(
            lambda: state.queue.enqueue(envelope.id, name, key, expires, body, state.quotas)
        )
        if why is not None:
            await _event(state, key, "message.refused", {"station": name, "reason": why, "id": envelope.id})
            status = {"unknown_station": 404, "duplicate": 409, "queue_full": 503, "sender_quota": 429}[why]
            detail = {
                "unknown_station": f"no station {name!r} is enrolled at this hub (better hub enrol --station {name})",
                "duplicate": f"envelope {envelope.id} was queued before; a replayed envelope is refused",
                "queue_full": f"station {name} has too many tasks waiting; try again later",
                "sender_quota": "you have too many tasks waiting at this hub; wait for their replies",
            }[why]
            raise HTTPException(status, detail)
        state.wake_station(name)
        if wait > 0:
            wait = min(wait, state.config.limits.max_wait_seconds)
            frame = await state.poll(state._reply_events, envelope.id, lambda: state.reply_frame(envelope.id), wait)
            if frame is not None:
                return Response(frame, media_type="application/octet-stream", headers={"X-Better-Id": envelope.id})
        return {"id": envelope.id}

    @app.get("/v1/messages/{message_id}/reply")
    async def reply(
        request: Request, message_id: str = _message_id(), wait: float = Query(0.0, ge=0.0, le=120.0)
    ) -> Response:
        """The sealed reply to one of your envelopes (200), or 204 if none came within ``wait`` seconds."""
        key = await _researcher(state, request, b"")
        await _own(state, message_id, key)
        wait = min(wait, state.config.limits.max_wait_seconds)
        frame = await state.poll(state._reply_events, message_id, lambda: state.reply_frame(message_id), wait)
        if frame is None:
            return Response(status_code=204)
        return Response(frame, media_type="application/octet-stream")

    @app.delete("/v1/messages/{message_id}")
    async def withdraw(request: Request, message_id: str = _message_id()) -> dict[str, str]:
        """Withdraw a task not yet answered, or acknowledge a reply (the hub forgets both)."""
        key = await _researcher(state, request, b"")
        await _own(state, message_id, key)
        await anyio.to_thread.run_sync(lambda: state.queue.remove(message_id, key, "message.removed"))
        return {"id": message_id, "status": "removed"}

    # -- stations ------------------------------------------------------------------------------------------
    @app.post("/v1/stations/{name}/card", status_code=204)
    async def card(request: Request, name: str = _name()) -> Response:
        """The station states its keys (signed with its signing key); coordinators check them against the
        signing key they pinned."""
        station = await _station_preflight(state, request)
        body = await _body(request, 64 << 10)
        _, key = await _station(state, request, station, name, body)
        try:
            doc = json.loads(body)
            signed = doc["card"]
            if not isinstance(signed, dict) or signed.get("name") != name or signed.get("public_key") != key:
                raise ValueError
            verify_signature(key, base64.b64decode(doc["signature"], validate=True), canonical(signed), "the card")
        except (ValueError, KeyError, TypeError, RecursionError, EnvelopeError):
            raise HTTPException(
                422, "the card must be {card: {name, public_key, agreement_key}, signature} signed by the station"
            ) from None
        await anyio.to_thread.run_sync(lambda: state.queue.set_card(name, doc))
        return Response(status_code=204)

    @app.get("/v1/stations/{name}/messages")
    async def deliveries(
        request: Request,
        name: str = _name(),
        wait: float = Query(0.0, ge=0.0, le=120.0),
        fresh: bool = Query(False, description="the station just started: its earlier leases end"),
    ) -> Response:
        """The station's waiting envelopes, each as a 4-byte big-endian length and the frame."""
        station = await _station_preflight(state, request)
        await _station(state, request, station, name, b"")
        limits = state.config.limits

        def lease(fresh: bool = False) -> bytes:
            found = state.queue.lease(name, limits.lease_seconds, limits.max_delivery_mib << 20, fresh)
            frames = []
            for d in found:
                with contextlib.suppress(FileNotFoundError):  # withdrawn meanwhile
                    frames.append(d.path.read_bytes())
            return b"".join(struct.pack(">I", len(f)) + f for f in frames)

        body = await anyio.to_thread.run_sync(lambda: lease(fresh))
        if not body:
            body = await state.poll(state._station_events, name, lease, min(wait, limits.max_wait_seconds))
        return Response(body, media_type="application/octet-stream")

    @app.post("/v1/messages/{message_id}/reply", status_code=204)
    async def answer(request: Request, message_id: str = _message_id()) -> Response:
        """The station's sealed reply (or signed refusal) to one of its envelopes. The signed request already
        shows the station sent these bytes; the coordinator checks the reply's own signature."""
        station = await _station_preflight(state, request)
        body = await _body(request, state.max_bytes)
        station, _ = await _station(state, request, station, None, body)
        try:
            header = read_header(body, state.max_bytes)
            if header["kind"] not in ("reply", "refusal") or header["id"] != message_id:
                raise EnvelopeError("misaddressed", "not a reply to this message")
            if header["station"] != station:
                raise EnvelopeError("misaddressed", "a reply in another station's name")
        except EnvelopeError as exc:
            await _event(state, station, "reply.refused", {"id": message_id, "reason": exc.reason})
            raise HTTPException(422, f"reply refused ({exc.reason}): {exc}") from None
        if not await anyio.to_thread.run_sync(lambda: state.queue.reply(message_id, station, body)):
            raise HTTPException(404, f"no task {message_id} of station {station} waits for a reply")
        state.wake_reply(message_id)
        return Response(status_code=204)

    return app


def _checked_task(body: bytes, station: str, key: str, max_bytes: int) -> Envelope:
    """A task envelope the hub will queue for ``station``: well formed, addressed there, signed by ``key``."""
    envelope = decode(body, max_bytes)
    if envelope.header["kind"] != "task" or envelope.header["to"] != station:
        raise EnvelopeError("misaddressed", f"the envelope is not a task addressed to {station!r}")
    if envelope.header["from"] != key:
        raise EnvelopeError("bad_signature", "the envelope is signed by another key than the request")
    check_task(envelope)
    return envelope


def _name() -> Any:
    from fastapi import Path as PathParam

    return PathParam(pattern=STATION_NAME)


def _message_id() -> Any:
    from fastapi import Path as PathParam

    return PathParam(pattern=MESSAGE_ID)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is None:
        raise HTTPException(411, "a Content-Length is needed")
    if not (declared.isascii() and declared.isdigit()) or int(declared) > limit:
        raise HTTPException(413, f"request body over {limit} bytes (hub.toml [limits] max_message_mib)")
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise HTTPException(413, f"request body over {limit} bytes (hub.toml [limits] max_message_mib)")
        chunks.append(chunk)
    return b"".join(chunks)


def _target(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def _verified(request: Request, body: bytes) -> str:
    """:func:`verify_request` (hashing a large body in a thread: the event loop serves the others meanwhile)."""
    target = _target(request)
    if len(body) < 1 << 20:
        return verify_request(request.headers, request.method, target, body)
    return await anyio.to_thread.run_sync(lambda: verify_request(request.headers, request.method, target, body))


def _unauthenticated(request: Request, reason: str) -> None:
    """Refusals before anyone is authenticated go to the log, not the database (a flood costs no writes)."""
    log.warning("refused %s %s: %s", request.method, request.url.path, reason)


async def _researcher_preflight(state: HubState, request: Request) -> str:
    """The key of a researcher's request, checked as far as it can be before its body is read."""
    try:
        key = check_fresh(request.headers)
    except EnvelopeError as exc:
        _unauthenticated(request, exc.reason)
        raise HTTPException(401, f"request signature refused: {exc}") from None
    if state.config.researchers == "enrolled" and key not in state.config.researcher_keys.values():
        _unauthenticated(request, "not_enrolled")
        raise HTTPException(403, "this hub relays only for enrolled researcher keys (better hub enrol --researcher)")
    return key


async def _researcher(state: HubState, request: Request, body: bytes) -> str:
    key = await _researcher_preflight(state, request)
    await _researcher_signature(request, body)
    return key


async def _researcher_signature(request: Request, body: bytes) -> None:
    """The signature of a researcher's request, once its body is read (the key passed the preflight)."""
    try:
        await _verified(request, body)
    except EnvelopeError as exc:
        _unauthenticated(request, exc.reason)
        raise HTTPException(401, f"request signature refused: {exc}") from None


async def _station_preflight(state: HubState, request: Request) -> str:
    """The station a request's credential belongs to (before its body is read)."""
    auth = request.headers.get("authorization", "")
    credential = auth[7:] if auth.lower().startswith("bearer ") else ""
    station = await anyio.to_thread.run_sync(lambda: state.queue.station_for(credential)) if credential else None
    if station is None:
        _unauthenticated(request, "bad_credential")
        raise HTTPException(401, "a station's hub credential is needed (Authorization: Bearer, from better hub enrol)")
    try:
        check_fresh(request.headers)
    except EnvelopeError as exc:
        _unauthenticated(request, exc.reason)
        raise HTTPException(401, f"request signature refused: {exc}") from None
    return station


async def _station(state: HubState, request: Request, station: str, name: str | None, body: bytes) -> tuple[str, str]:
    """The station calling and its signing key: its signature, its bound key, and (``name``) its route."""
    try:
        key = await _verified(request, body)
    except EnvelopeError as exc:
        await _event(state, station, "request.refused", {"path": request.url.path, "reason": exc.reason})
        raise HTTPException(401, f"request signature refused: {exc}") from None
    if not await anyio.to_thread.run_sync(lambda: state.queue.bind_key(station, key)):
        await _event(state, station, "request.refused", {"path": request.url.path, "reason": "key_mismatch"})
        raise HTTPException(
            403, f"station {station} is bound to another signing key at this hub; enrol it again to rebind"
        )
    if name is not None and station != name:
        await _event(state, station, "request.refused", {"path": request.url.path, "reason": "other_station"})
        raise HTTPException(403, f"this credential is station {station}'s, not {name}'s")
    return station, key


async def _own(state: HubState, message_id: str, key: str) -> None:
    sender = await anyio.to_thread.run_sync(lambda: state.queue.sender(message_id))
    if sender is None or sender != key:  # another key's message is as unknown as a missing one
        raise HTTPException(404, f"no message {message_id} of yours at this hub (acknowledged, withdrawn or expired)")


async def _event(state: HubState, who: str, action: str, detail: dict[str, Any]) -> None:
    await anyio.to_thread.run_sync(lambda: state.queue.log(who, action, detail))


async def _sweep(state: HubState) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            await anyio.to_thread.run_sync(lambda: state.queue.expire(state.config.limits.reply_ttl_seconds))
        except Exception:  # the sweep must not stop the hub
            log.exception("expiry sweep failed")
