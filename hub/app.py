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
``POST /v1/stations/{name}/messages``      researcher    queue a task envelope (body: the frame)
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
from better.hub.queue import HubQueue
from better.station_api import __version__
from better.wire.envelope import EnvelopeError, check_task, decode, verify_signature
from better.wire.masking import canonical
from better.wire.signed_requests import verify_request

log = logging.getLogger("better.hub")
T = TypeVar("T")
STATION_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
MESSAGE_ID = r"^[0-9a-f]{32}$"
#: Envelopes handed to a station in one answer at most.
BATCH = 16
SWEEP_SECONDS = 30.0


class HubState:
    """The running hub: its config, its queue and the long-polls waiting on it."""

    def __init__(self, hub_dir: Path) -> None:
        self.dir = Path(hub_dir)
        self.config: HubConfig = read_config(self.dir)
        self.queue = HubQueue(self.dir)
        self._station_events: dict[str, asyncio.Event] = {}
        self._reply_events: dict[str, asyncio.Event] = {}

    @property
    def max_bytes(self) -> int:
        return self.config.limits.max_message_mib << 20

    def wake_station(self, station: str) -> None:
        self._station_events.setdefault(station, asyncio.Event()).set()

    def wake_reply(self, message_id: str) -> None:
        self._reply_events.setdefault(message_id, asyncio.Event()).set()

    async def poll(self, events: dict[str, asyncio.Event], key: str, check: Callable[[], T], wait: float) -> T:
        """``check()`` (in a thread) until it gives something truthy, woken by ``events[key]``, for ``wait`` s."""
        deadline = time.monotonic() + wait
        while True:
            event = events.setdefault(key, asyncio.Event())
            event.clear()
            found = await anyio.to_thread.run_sync(check)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)


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
        state.queue.log("hub", "hub.start", {"software": __version__, "waiting": state.queue.counts()})
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
        """The enrolled stations, the keys they state (signed by themselves) and how many tasks wait."""
        await _researcher(state, request, b"")
        return await anyio.to_thread.run_sync(state.queue.directory)

    @app.post("/v1/stations/{name}/messages", status_code=202)
    async def submit(request: Request, name: str = _name()) -> dict[str, str]:
        """Queue a sealed task envelope for station ``name``."""
        body = await _body(request, state.max_bytes)
        key = await _researcher(state, request, body)
        try:
            envelope = decode(body, state.max_bytes)
            if envelope.header.get("to") != name:
                raise EnvelopeError(
                    "misaddressed", f"the envelope is addressed to {envelope.header.get('to')!r}, not {name!r}"
                )
            check_task(envelope)
            if envelope.header["from"] != key:
                raise EnvelopeError("bad_signature", "the envelope is signed by another key than the request")
        except EnvelopeError as exc:
            await _refuse(state, key, "message.refused", {"station": name, "reason": exc.reason})
            raise HTTPException(422, f"envelope refused ({exc.reason}): {exc}") from None
        why = await anyio.to_thread.run_sync(
            lambda: state.queue.enqueue(
                envelope.id,
                name,
                key,
                float(envelope.header["expires"]),
                body,
                state.config.limits.max_waiting_per_station,
            )
        )
        if why is not None:
            await _refuse(state, key, "message.refused", {"station": name, "reason": why, "id": envelope.id})
            status = {"unknown_station": 404, "duplicate": 409, "queue_full": 503}[why]
            detail = {
                "unknown_station": f"no station {name!r} is enrolled at this hub (better hub enrol --station {name})",
                "duplicate": f"envelope {envelope.id} was queued before; a replayed envelope is refused",
                "queue_full": f"station {name} has too many tasks waiting; try again later",
            }[why]
            raise HTTPException(status, detail)
        state.wake_station(name)
        return {"id": envelope.id}

    @app.get("/v1/messages/{message_id}/reply")
    async def reply(
        request: Request, message_id: str = _message_id(), wait: float = Query(0.0, ge=0.0, le=120.0)
    ) -> Response:
        """The sealed reply to one of your envelopes (200), or 204 if none came within ``wait`` seconds."""
        key = await _researcher(state, request, b"")
        await _own(state, message_id, key)
        wait = min(wait, state.config.limits.max_wait_seconds)
        frame = await state.poll(state._reply_events, message_id, lambda: state.queue.fetch_reply(message_id), wait)
        state._reply_events.pop(message_id, None)
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
        """The station states its keys (signed with its signing key); coordinators may read them here."""
        body = await _body(request, 64 << 10)
        _, key = await _station(state, request, name, body)
        try:
            doc = json.loads(body)
            signed = doc["card"]
            if not isinstance(signed, dict) or signed.get("name") != name or signed.get("public_key") != key:
                raise ValueError
            verify_signature(key, base64.b64decode(doc["signature"], validate=True), canonical(signed), "the card")
        except (ValueError, KeyError, TypeError, EnvelopeError):
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
        await _station(state, request, name, b"")
        limits = state.config.limits
        first = await anyio.to_thread.run_sync(lambda: state.queue.lease(name, limits.lease_seconds, BATCH, fresh))
        found = first or await state.poll(
            state._station_events,
            name,
            lambda: state.queue.lease(name, limits.lease_seconds, BATCH),
            min(wait, limits.max_wait_seconds),
        )
        body = b"".join(struct.pack(">I", len(d.frame)) + d.frame for d in found)
        return Response(body, media_type="application/octet-stream", headers={"X-Better-Count": str(len(found))})

    @app.post("/v1/messages/{message_id}/reply", status_code=204)
    async def answer(request: Request, message_id: str = _message_id()) -> Response:
        """The station's sealed reply (or signed refusal) to one of its envelopes."""
        body = await _body(request, state.max_bytes)
        station, _ = await _station_by_credential(state, request, body)
        try:
            envelope = decode(body, state.max_bytes)
            if envelope.header["kind"] not in ("reply", "refusal") or envelope.id != message_id:
                raise EnvelopeError("misaddressed", "not a reply to this message")
            if envelope.header["station"] != station:
                raise EnvelopeError("misaddressed", "a reply in another station's name")
            bound = await anyio.to_thread.run_sync(lambda: state.queue.signing_key(station))
            verify_signature(bound, envelope.signature, envelope.signed_bytes(), "the reply")
        except EnvelopeError as exc:
            await _refuse(state, station, "reply.refused", {"id": message_id, "reason": exc.reason})
            raise HTTPException(422, f"reply refused ({exc.reason}): {exc}") from None
        if not await anyio.to_thread.run_sync(lambda: state.queue.reply(message_id, station, body)):
            raise HTTPException(404, f"no task {message_id} of station {station} waits for a reply")
        state.wake_reply(message_id)
        return Response(status_code=204)

    return app


def _name() -> Any:
    from fastapi import Path as PathParam

    return PathParam(pattern=STATION_NAME)


def _message_id() -> Any:
    from fastapi import Path as PathParam

    return PathParam(pattern=MESSAGE_ID)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
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


async def _signed(state: HubState, request: Request, body: bytes, who: str) -> str:
    try:
        return verify_request(request.headers, request.method, _target(request), body)
    except EnvelopeError as exc:
        await _refuse(state, who, "request.refused", {"path": request.url.path, "reason": exc.reason})
        raise HTTPException(401, f"request signature refused: {exc}") from None


async def _researcher(state: HubState, request: Request, body: bytes) -> str:
    key = await _signed(state, request, body, "researcher")
    if state.config.researchers == "enrolled" and key not in state.config.researcher_keys.values():
        await _refuse(state, key, "request.refused", {"path": request.url.path, "reason": "not_enrolled"})
        raise HTTPException(403, "this hub relays only for enrolled researcher keys (better hub enrol --researcher)")
    return key


async def _station_by_credential(state: HubState, request: Request, body: bytes) -> tuple[str, str]:
    """The station calling and its signing key: its credential, its signature, its bound key."""
    auth = request.headers.get("authorization", "")
    credential = auth[7:] if auth.lower().startswith("bearer ") else ""
    station = await anyio.to_thread.run_sync(lambda: state.queue.station_for(credential)) if credential else None
    if station is None:
        await _refuse(state, "station", "request.refused", {"path": request.url.path, "reason": "bad_credential"})
        raise HTTPException(401, "a station's hub credential is needed (Authorization: Bearer, from better hub enrol)")
    key = await _signed(state, request, body, station)
    if not await anyio.to_thread.run_sync(lambda: state.queue.bind_key(station, key)):
        await _refuse(
            state, station, "request.refused", {"path": request.url.path, "reason": "key_mismatch", "key": key}
        )
        raise HTTPException(
            403, f"station {station} is bound to another signing key at this hub; enrol it again to rebind"
        )
    return station, key


async def _station(state: HubState, request: Request, name: str, body: bytes) -> tuple[str, str]:
    station, key = await _station_by_credential(state, request, body)
    if station != name:
        await _refuse(state, station, "request.refused", {"path": request.url.path, "reason": "other_station"})
        raise HTTPException(403, f"this credential is station {station}'s, not {name}'s")
    return station, key


async def _own(state: HubState, message_id: str, key: str) -> None:
    sender = await anyio.to_thread.run_sync(lambda: state.queue.sender(message_id))
    if sender is None:
        raise HTTPException(
            404, f"no message {message_id} at this hub (answered and acknowledged, withdrawn or expired)"
        )
    if sender != key:
        await _refuse(state, key, "request.refused", {"id": message_id, "reason": "not_sender"})
        raise HTTPException(403, f"message {message_id} was queued by another researcher key")


async def _refuse(state: HubState, who: str, action: str, detail: dict[str, Any]) -> None:
    await anyio.to_thread.run_sync(lambda: state.queue.log(who, action, detail))


async def _sweep(state: HubState) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            await anyio.to_thread.run_sync(lambda: state.queue.expire(state.config.limits.reply_ttl_seconds))
        except Exception:  # the sweep must not stop the hub
            log.exception("expiry sweep failed")
