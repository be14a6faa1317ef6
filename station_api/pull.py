"""A station behind a firewall: it reaches out to a hub and never listens on a port.

``better station serve --hub URL`` runs the station's own application (:func:`~better.station_api.app.create_app`,
with its policy, query audit, approvals and audit log) in this process, without a server. It long-polls
the hub for sealed task envelopes, opens each (addressed to this station, signed, in date, never seen
before: :func:`better.wire.envelope.open_task`), hands the request inside to the application as if it
had come over HTTP, and posts the response back sealed to the researcher and signed. An envelope it will
not open is written to the audit log (``hub.refused``, with the reason) and answered by a signed refusal.
When the hub cannot be reached, it tries again with growing pauses (up to :data:`MAX_BACKOFF`), and on
reconnecting picks up every envelope that waited.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from better.station_api.app import create_app
from better.station_api.server_state import ServerState
from better.station_api.signing import load_or_create_key
from better.wire.envelope import (
    EnvelopeError,
    OpenedTask,
    decode,
    ed25519_text,
    encode,
    open_task,
    refusal,
    seal_reply,
)
from better.wire.masking import canonical
from better.wire.signed_requests import signed_call

log = logging.getLogger("better.station.pull")

SEEN_FILE = "hub_seen.txt"
#: Seconds a long-poll asks the hub to hold.
POLL_WAIT = 25.0
MAX_BACKOFF = 30.0
#: Envelopes handled at once (a status request may wait a few seconds for its task).
CONCURRENCY = 32
_METHODS = ("GET", "POST", "DELETE")
#: The request headers a sealed request may carry into the application; the rest are dropped.
_PASSED_HEADERS = ("authorization", "content-type", "accept")
_RETURNED_HEADERS = ("content-type", "retry-after")


class SeenIds:
    """The envelope ids this station opened, with their expiry, in a file: an id opens once.

    Ids past their expiry are forgotten when the file is read (an expired envelope is refused anyway).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        now = time.time()
        self._seen: dict[str, float] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and float(parts[1]) >= now:
                    self._seen[parts[0]] = float(parts[1])
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{i} {e:.0f}\n" for i, e in self._seen.items()))
        tmp.replace(path)

    def claim(self, envelope_id: str, expires: float) -> bool:
        """Record an id (synced to disk before the request runs); False if it was opened before."""
        with self._lock:
            if envelope_id in self._seen:
                return False
            with self.path.open("a") as f:
                f.write(f"{envelope_id} {expires:.0f}\n")
                f.flush()
                os.fsync(f.fileno())
            self._seen[envelope_id] = expires
            return True


def split_frames(body: bytes) -> list[bytes]:
    """The frames of a hub's delivery (each a 4-byte big-endian length, then the frame)."""
    frames, at = [], 0
    while at + 4 <= len(body):
        (n,) = struct.unpack(">I", body[at : at + 4])
        frames.append(body[at + 4 : at + 4 + n])
        at += 4 + n
    if at != len(body):
        raise EnvelopeError("malformed", "the hub's delivery is cut short")
    return frames


def _request_parts(request: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes]:
    """The method, path, headers and body of a sealed request, checked."""
    method, path, headers, body = (request.get(k) for k in ("method", "path", "headers", "body"))
    if method not in _METHODS or not isinstance(path, str) or not path.startswith("/") or len(path) > 2048:
        raise EnvelopeError("malformed", "the sealed request has no valid method and path")
    if "://" in path or "\\" in path or any(ord(c) < 33 for c in path):
        raise EnvelopeError("malformed", "the sealed request's path is not a plain path")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise EnvelopeError("malformed", "the sealed request's headers are not text")
    try:
        raw = base64.b64decode(body or "", validate=True) if isinstance(body, str | type(None)) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise EnvelopeError("malformed", "the sealed request's body is not base64")
    kept = {k.lower(): v for k, v in headers.items() if k.lower() in _PASSED_HEADERS}
    return method, path, kept, raw


class HubStation:
    """One station serving through a hub.

    Parameters
    ----------
    station_dir : Path
        The station directory.
    hub_url : str
        The hub's base URL.
    credential : str
        The station's hub credential (``better hub enrol``).
    verify : bool or str
        TLS verification for the hub: True (system CAs), a CA bundle's path, or False (loopback tests).
    """

    def __init__(self, station_dir: Path, hub_url: str, credential: str, verify: bool | str = True) -> None:
        self.app = create_app(station_dir)
        self.state: ServerState = self.app.state.station
        self.name = self.state.name
        self.hub_url = hub_url.rstrip("/")
        self.credential = credential
        self.verify = verify
        self.signing: Ed25519PrivateKey = load_or_create_key(Path(station_dir))
        self.seen = SeenIds(Path(station_dir) / SEEN_FILE)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set: long-poll, open, answer; reconnect with backoff."""
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per long-poll
        self.state.start()
        self.state.audit.append("station", "hub.serve", {"hub": self.hub_url})
        limits = httpx.Limits(max_connections=CONCURRENCY + 4)
        local_transport = httpx.ASGITransport(app=self.app, client=("hub", 0))
        try:
            async with (
                httpx.AsyncClient(base_url=self.hub_url, verify=self.verify, limits=limits, timeout=60.0) as hub,
                httpx.AsyncClient(transport=local_transport, base_url="http://station", timeout=None) as local,
            ):
                poller = asyncio.create_task(self._poll(hub, local))
                stopped = asyncio.create_task(stop.wait())
                await asyncio.wait({poller, stopped}, return_when=asyncio.FIRST_COMPLETED)
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
        finally:
            self.state.stop()

    async def _poll(self, hub: httpx.AsyncClient, local: httpx.AsyncClient) -> None:
        auth = {"Authorization": f"Bearer {self.credential}"}
        slots = asyncio.Semaphore(CONCURRENCY)
        running: set[asyncio.Task[None]] = set()
        fresh, backoff = True, 1.0
        while True:
            try:
                if fresh:
                    await self._send_card(hub, auth)
                    log.info("connected to hub %s", self.hub_url)
                target = f"/v1/stations/{self.name}/messages?wait={POLL_WAIT:g}" + ("&fresh=1" if fresh else "")
                r = await signed_call(hub, self.signing, "GET", target, headers=auth, timeout=POLL_WAIT + 15)
                if r.status_code != 200:
                    raise _HubRefusedError(r)
                fresh, backoff = False, 1.0
                for frame in split_frames(r.content):
                    await slots.acquire()
                    task = asyncio.create_task(self._handle(hub, local, auth, frame))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _: slots.release())
            except (httpx.TransportError, _HubRefusedError, EnvelopeError) as exc:
                fresh = True
                log.warning("hub %s: %s; trying again in %.0f s", self.hub_url, _why(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _send_card(self, hub: httpx.AsyncClient, auth: dict[str, str]) -> None:
        card = {
            "name": self.name,
            "public_key": ed25519_text(self.signing),
            "agreement_key": self.state.manager.masking.public_text,
        }
        body = json.dumps(
            {"card": card, "signature": base64.b64encode(self.signing.sign(canonical(card))).decode()}
        ).encode()
        r = await signed_call(hub, self.signing, "POST", f"/v1/stations/{self.name}/card", body, auth)
        if r.status_code != 204:
            raise _HubRefusedError(r)

    async def _handle(
        self, hub: httpx.AsyncClient, local: httpx.AsyncClient, auth: dict[str, str], frame: bytes
    ) -> None:
        """Open one envelope, run its request, post the sealed reply (or the signed refusal)."""
        try:
            envelope = decode(frame)
        except EnvelopeError as exc:  # the hub checks frames: this one came damaged
            await self._audit("hub.refused", {"reason": exc.reason, "detail": str(exc)})
            return
        header = envelope.header
        try:
            opened = open_task(envelope, self.name, self.state.manager.masking.key)
            if not self.seen.claim(opened.header["id"], float(opened.header["expires"])):
                raise EnvelopeError("replayed", f"envelope {envelope.id} was opened before")
            reply = seal_reply(self.signing, self.name, opened, await self._dispatch(local, opened))
        except EnvelopeError as exc:
            detail = {"id": header.get("id"), "from": header.get("from"), "to": header.get("to"), "reason": exc.reason}
            await self._audit("hub.refused", detail)
            reply = refusal(self.signing, self.name, header, exc.reason)
        await self._post_reply(hub, auth, envelope.id, encode(reply), float(header.get("expires", 0)))

    async def _dispatch(self, local: httpx.AsyncClient, task: OpenedTask) -> dict[str, Any]:
        method, path, headers, body = _request_parts(task.request)
        await self._audit(
            "hub.task", {"id": task.header["id"], "from": task.sender, "method": method, "path": path.split("?")[0]}
        )
        try:
            r = await local.request(method, path, headers=headers, content=body or None)
        except Exception:  # the application answers its own errors; this is a fault in the relay itself
            log.exception("sealed request %s %s failed", method, path)
            detail = json.dumps({"detail": "internal error in the station; its administrator can see the log"})
            return {
                "status": 500,
                "headers": {"content-type": "application/json"},
                "body": base64.b64encode(detail.encode()).decode(),
            }
        kept = {k: v for k, v in r.headers.items() if k.lower() in _RETURNED_HEADERS}
        return {"status": r.status_code, "headers": kept, "body": base64.b64encode(r.content).decode()}

    async def _post_reply(
        self, hub: httpx.AsyncClient, auth: dict[str, str], envelope_id: str, frame: bytes, expires: float
    ) -> None:
        pause = 1.0
        while True:
            try:
                r = await signed_call(hub, self.signing, "POST", f"/v1/messages/{envelope_id}/reply", frame, auth)
                if r.status_code in (204, 404, 422):  # stored; or withdrawn or expired meanwhile; or refused
                    if r.status_code != 204:
                        log.warning("hub did not take the reply to %s: %s", envelope_id, r.text[:200])
                    return
            except httpx.TransportError as exc:
                log.warning("reply to %s not delivered (%s); trying again", envelope_id, _why(exc))
            if time.time() > expires:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_BACKOFF)

    async def _audit(self, action: str, detail: dict[str, Any]) -> None:
        await asyncio.to_thread(self.state.audit.append, "hub", action, detail)


class _HubRefusedError(Exception):
    def __init__(self, r: httpx.Response) -> None:
        super().__init__(f"HTTP {r.status_code}: {r.text[:300]}")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
