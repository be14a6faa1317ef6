"""A station behind a firewall: it reaches out to a hub and never listens on a port.

``better station serve --hub URL`` runs the station's own application (:func:`~better.station_api.app.create_app`,
with its policy, query audit, approvals and audit log) in this process, without a server. It long-polls
the hub for sealed task envelopes, opens each (addressed to this station, signed, in date, never seen
before: :func:`better.wire.envelope.open_task`), hands the request inside to the application as if it
had come over HTTP, and posts the response back sealed to the researcher and signed. An envelope it will
not open is written to the audit log (``hub.refused``, with the reason) and answered by a signed refusal
that names the envelope's digest (a refusal of an envelope the hub altered answers no coordinator).
When the hub cannot be reached, it tries again with growing pauses (up to :data:`MAX_BACKOFF`), and on
reconnecting picks up every envelope that waited.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import functools
import json
import logging
import os
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from better.engine.errors import StoreError
from better.station_api.app import create_app
from better.station_api.server_state import ServerState
from better.station_api.signing import load_or_create_key
from better.wire.envelope import (
    MAX_FRAME_BYTES,
    Envelope,
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
from better.wire.signed_requests import sign_request, signed_call

log = logging.getLogger("better.station.pull")

SEEN_FILE = "hub_seen.txt"
#: Seconds a long-poll asks the hub to hold.
POLL_WAIT = 25.0
MAX_BACKOFF = 30.0
#: Envelopes handled at once (a status request may wait a few seconds for its task).
CONCURRENCY = 32
#: Largest delivery read from the hub (its envelopes together); a hub that sends more is cut off.
MAX_DELIVERY_BYTES = MAX_FRAME_BYTES + (1 << 20)
#: Bytes of envelopes being answered at once, beyond which the station takes no more until some are done.
MAX_IN_FLIGHT_BYTES = 1 << 30
#: Longest a reply is offered to a hub that cannot take it now, in seconds.
MAX_REPLY_RETRY = 3600.0
_METHODS = ("GET", "POST", "DELETE")
#: The request headers a sealed request may carry into the application; the rest are dropped.
_PASSED_HEADERS = ("authorization", "content-type", "accept")
_RETURNED_HEADERS = ("content-type", "retry-after")


class SeenIds:
    """The envelopes this station opened (by digest, with their expiry), in a file: each opens once.

    A line ``DIGEST EXPIRES`` is written (and synced) before the request runs, and ``DIGEST EXPIRES a``
    once its answer is with the hub. Entries past their expiry are forgotten when the file is read (an
    expired envelope is refused anyway). The file is locked while the station runs: two processes serving
    one station would each open the same envelope.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._guard = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(self._guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._guard.close()
            raise StoreError(f"{path.parent}: another process serves this station through a hub") from None
        now = time.time()
        #: digest -> (expiry, answered)
        self.earlier: dict[str, tuple[float, bool]] = {}
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split()  # a line cut short by a crash is skipped
                if len(parts) in (2, 3) and parts[1].isdigit() and float(parts[1]) >= now:
                    answered = len(parts) == 3 or self.earlier.get(parts[0], (0.0, False))[1]
                    self.earlier[parts[0]] = (float(parts[1]), answered)
        self._now: set[str] = set()
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write("".join(f"{d} {e:.0f}{' a' if a else ''}\n" for d, (e, a) in self.earlier.items()))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _sync_dir(path.parent)

    def close(self) -> None:
        """Release the file's lock (the process no longer serves the station)."""
        self._guard.close()

    def claim(self, digest: str, expires: float) -> str | None:
        """Record an envelope before its request runs; if it was opened before, why it is refused now:
        ``replayed`` (answered, or opened by this process), ``interrupted`` (opened before a restart, not
        answered: whether its request ran is unknown)."""
        with self._lock:
            if digest in self._now:
                return "replayed"
            if digest in self.earlier:
                return "replayed" if self.earlier[digest][1] else "interrupted"
            self._write(f"{digest} {expires:.0f}\n")
            self._now.add(digest)
            return None

    def answered(self, digest: str, expires: float) -> None:
        """Note that the answer to an envelope is with the hub."""
        with self._lock:
            self._write(f"{digest} {expires:.0f} a\n")

    def _write(self, line: str) -> None:
        with self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _request_parts(request: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """The method, path and headers of a sealed request, checked: a plain absolute path (no ``..``, no
    ``//``: what is audited is what runs), and only the headers the application may see."""
    method, path, headers = (request.get(k) for k in ("method", "path", "headers"))
    if method not in _METHODS or not isinstance(path, str) or not path.startswith("/") or len(path) > 2048:
        raise EnvelopeError("malformed", "the sealed request has no valid method and path")
    route = path.split("?", 1)[0]
    if "//" in route or "\\" in path or "%" in route or any(ord(c) < 33 or ord(c) > 126 for c in path):
        raise EnvelopeError("malformed", "the sealed request's path is not a plain path")
    if any(seg in (".", "..") for seg in route.split("/")):
        raise EnvelopeError("malformed", "the sealed request's path has dot segments")
    if not isinstance(headers, dict) or not all(isinstance(v, str) and len(v) < 8192 for v in headers.values()):
        raise EnvelopeError("malformed", "the sealed request's headers are not text")
    kept = {str(k).lower(): v for k, v in headers.items() if str(k).lower() in _PASSED_HEADERS}
    return str(method), path, kept


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
    verify : bool or ssl.SSLContext
        TLS verification for the hub: True (the system's CAs), or a context trusting ``--hub-ca``.
    """

    def __init__(self, station_dir: Path, hub_url: str, credential: str, verify: bool | ssl.SSLContext = True) -> None:
        self.seen = SeenIds(Path(station_dir) / SEEN_FILE)
        self.app = create_app(station_dir)
        self.state: ServerState = self.app.state.station
        self.name = self.state.name
        self.hub_url = hub_url.rstrip("/")
        self.credential = credential
        self.verify = verify
        self.signing: Ed25519PrivateKey = load_or_create_key(Path(station_dir))
        #: Envelopes being answered now (a second delivery of one, after its lease ran out, is ignored).
        self._in_flight: set[str] = set()
        self._in_flight_bytes = 0

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
        started, connected, backoff = True, False, 1.0  # started: this process holds no envelope yet
        while True:
            try:
                if not connected:
                    await self._send_card(hub, auth)
                    log.info("connected to hub %s", self.hub_url)
                    connected = True
                while self._in_flight_bytes > MAX_IN_FLIGHT_BYTES:  # bounded memory: answer some first
                    await asyncio.sleep(0.1)
                target = f"/v1/stations/{self.name}/messages?wait={POLL_WAIT:g}" + ("&fresh=1" if started else "")
                delivery = await self._delivery(hub, target, auth)
                started, backoff = False, 1.0
                for frame in split_frames(delivery):
                    await slots.acquire()
                    self._in_flight_bytes += len(frame)
                    task = asyncio.create_task(self._handle(hub, local, auth, frame))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(functools.partial(self._done, slots, len(frame)))
            except (httpx.TransportError, _HubRefusedError, EnvelopeError) as exc:
                connected = False
                log.warning("hub %s: %s; trying again in %.0f s", self.hub_url, _why(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _done(self, slots: asyncio.Semaphore, size: int, _: object) -> None:
        self._in_flight_bytes -= size
        slots.release()

    async def _delivery(self, hub: httpx.AsyncClient, target: str, auth: dict[str, str]) -> bytes:
        """One long-poll's envelopes, read up to :data:`MAX_DELIVERY_BYTES`."""
        headers = {**auth, **sign_request(self.signing, "GET", target, b"")}
        timeout = httpx.Timeout(POLL_WAIT + 15, connect=10.0)
        async with hub.stream("GET", target, headers=headers, timeout=timeout) as r:
            if r.status_code != 200:
                await r.aread()
                raise _HubRefusedError(r)
            chunks, seen = [], 0
            async for chunk in r.aiter_raw():
                seen += len(chunk)
                if seen > MAX_DELIVERY_BYTES:
                    raise EnvelopeError("malformed", f"the hub's delivery is over {MAX_DELIVERY_BYTES} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

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
            envelope = await asyncio.to_thread(decode, frame)
        except EnvelopeError as exc:  # the hub checks frames: this one came damaged
            await self._audit("hub.refused", {"reason": exc.reason, "detail": str(exc)})
            return
        digest = envelope.digest
        if digest in self._in_flight:  # delivered again while this process answers it
            return
        self._in_flight.add(digest)
        try:
            header = envelope.header
            expires = float(header.get("expires", 0)) if header["kind"] == "task" else 0.0
            try:
                opened = await asyncio.to_thread(open_task, envelope, self.name, self.state.manager.masking.key)
                why = self.seen.claim(digest, expires)
                if why is not None:
                    raise EnvelopeError(why, f"envelope {envelope.id} was opened before")
                response, body = await self._dispatch(local, opened)
                frame_out = await asyncio.to_thread(
                    lambda: encode(seal_reply(self.signing, self.name, opened, response, body))
                )
            except EnvelopeError as exc:
                detail = {"id": envelope.id, "from": header.get("from"), "to": header.get("to"), "reason": exc.reason}
                await self._audit("hub.refused", detail)
                frame_out = encode(refusal(self.signing, self.name, envelope, exc.reason))
            if await self._post_reply(hub, auth, envelope, frame_out, expires):
                self.seen.answered(digest, expires)
        finally:
            self._in_flight.discard(digest)

    async def _dispatch(self, local: httpx.AsyncClient, task: OpenedTask) -> tuple[dict[str, Any], bytes]:
        method, path, headers = _request_parts(task.request)
        audited = {"id": task.header["id"], "from": task.sender, "method": method, "path": path.split("?")[0]}
        await self._audit("hub.task", audited)
        try:
            r = await local.request(method, path, headers=headers, content=task.body or None)
        except Exception:  # the application answers its own errors; this is a fault in the relay itself
            log.exception("sealed request %s %s failed", method, path)
            detail = json.dumps({"detail": "internal error in the station; its administrator can see the log"})
            return {"status": 500, "headers": {"content-type": "application/json"}}, detail.encode()
        kept = {k: v for k, v in r.headers.items() if k.lower() in _RETURNED_HEADERS}
        return {"status": r.status_code, "headers": kept}, r.content

    async def _post_reply(
        self, hub: httpx.AsyncClient, auth: dict[str, str], task: Envelope, frame: bytes, expires: float
    ) -> bool:
        """Give the hub the reply; True once it holds it. A hub that refuses it for good (4xx) is told
        ``too_large`` for a reply over its limit; others are offered it again, up to :data:`MAX_REPLY_RETRY`."""
        target = f"/v1/messages/{task.id}/reply"
        give_up = min(expires, time.time() + MAX_REPLY_RETRY)
        pause = 1.0
        while True:
            try:
                r = await signed_call(hub, self.signing, "POST", target, frame, auth)
                if r.status_code == 204:
                    return True
                if r.status_code == 413:  # the answer is over the hub's limit: say so, signed
                    log.warning("the reply to %s is over the hub's limit (%d bytes)", task.id, len(frame))
                    frame = encode(refusal(self.signing, self.name, task, "too_large"))
                    continue
                if 400 <= r.status_code < 500:  # withdrawn, expired, or refused: final
                    log.warning("hub did not take the reply to %s: HTTP %d %s", task.id, r.status_code, r.text[:200])
                    return False
            except httpx.TransportError as exc:
                log.warning("reply to %s not delivered (%s); trying again", task.id, _why(exc))
            if time.time() > give_up:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_BACKOFF)

    async def _audit(self, action: str, detail: dict[str, Any]) -> None:
        await asyncio.to_thread(self.state.audit.append, "hub", action, detail)


class _HubRefusedError(Exception):
    def __init__(self, r: httpx.Response) -> None:
        super().__init__(f"HTTP {r.status_code}: {r.text[:300]}")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
