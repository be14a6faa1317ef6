"""The coordinator's side of a hub: every HTTP call to a station becomes a sealed envelope relayed by it.

:class:`HubTransport` is an ``httpx`` transport mounted for ``hub://STATION/...`` URLs, so that
:class:`~better.query.remote.StationClient` speaks to a station behind a hub exactly as to one it
reaches directly: the same routes, tokens, refusals and results. Each request is sealed to the station's
pinned agreement key and signed with the researcher's key (:func:`better.wire.envelope.seal_task`),
queued at the hub, and its reply long-polled, checked against the station's pinned signing key and
opened. A hub that is restarting is waited for, within the request's timeout; a request that times out
is withdrawn from the hub's queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from better.engine.errors import InputError
from better.station_api.signing import load_or_create_pem_key
from better.wire.envelope import (
    Envelope,
    EnvelopeError,
    decode,
    encode,
    open_reply,
    seal_task,
    verify_signature,
)
from better.wire.masking import canonical
from better.wire.signed_requests import signed_call

log = logging.getLogger("better.query.hub")

SCHEME = "hub"
#: Seconds one reply long-poll asks the hub to hold.
REPLY_WAIT = 20.0
#: Where the researcher's signing key lives unless the federation file or BETTER_RESEARCHER_KEY says.
DEFAULT_KEY = Path("~/.config/better/researcher.key")


def researcher_key(path: str | os.PathLike[str] | None = None) -> Ed25519PrivateKey:
    """The researcher's Ed25519 signing key: ``path``, else ``$BETTER_RESEARCHER_KEY``, else
    ``~/.config/better/researcher.key``; made (mode 0600) on first use."""
    chosen = Path(path or os.environ.get("BETTER_RESEARCHER_KEY") or DEFAULT_KEY).expanduser()
    chosen.parent.mkdir(parents=True, exist_ok=True)
    return load_or_create_pem_key(chosen, Ed25519PrivateKey)  # type: ignore[type-abstract]


@dataclass
class HubLink:
    """A federation's hub: its URL, TLS verification, the researcher's key and each station's pinned keys."""

    url: str
    key: Ed25519PrivateKey
    verify: bool | ssl.SSLContext = True
    #: station name -> (signing key ``ed25519:...``, agreement key ``x25519:...``), as pinned or learned.
    keys: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def client(self, **kw: Any) -> httpx.AsyncClient:
        """A client for the hub's own routes."""
        return httpx.AsyncClient(base_url=self.url.rstrip("/"), verify=self.verify, **kw)

    async def check_reachable(self) -> None:
        """One call to the hub before any to the stations: a certificate that does not verify, or a hub that
        is not there, is one clear error (not one per station, each cancelling the others midway).

        Raises
        ------
        InputError
            The hub's certificate does not verify, or nothing answers at its URL.
        """
        async with self.client(timeout=30.0) as hub:
            try:
                await hub.get("/health")
            except httpx.TransportError as exc:
                if _certificate_refused(exc):
                    raise InputError(
                        f"hub {self.url}: its TLS certificate does not verify ({exc}); set ca_file in the federation "
                        "file to the CA that signed it"
                    ) from None
                log.warning("hub %s does not answer yet (%s); the stations' timeouts apply", self.url, exc)

    async def learn_keys(self) -> list[str]:
        """Fill in agreement keys the federation file does not pin from the cards the stations gave the hub,
        each checked against the station's pinned signing key (a hub cannot put its own key in a card
        without the station's signing key). Returns a note for each station whose key came from a card.

        Raises
        ------
        InputError
            A station whose signing key is not pinned (the hub would be trusted with everything), or whose
            card is missing or does not verify under the pinned key.
        """
        await self.check_reachable()
        unpinned = [n for n, (pub, _) in self.keys.items() if pub is None]
        if unpinned:
            raise InputError(
                f"station(s) {', '.join(unpinned)}: through a hub, each station's signing key must be pinned "
                '(public_key = "ed25519:..." in the federation file, as `better station init` prints it at the '
                "station); the hub cannot be trusted to tell it"
            )
        missing = [n for n, (_, agree) in self.keys.items() if agree is None]
        if not missing:
            return []
        async with self.client(timeout=30.0) as hub:
            try:
                r = await signed_call(hub, self.key, "GET", "/v1/stations")
            except httpx.TransportError as exc:
                raise InputError(f"hub {self.url} is unreachable ({type(exc).__name__}: {exc})") from None
        if r.status_code != 200:
            raise InputError(f"hub {self.url} refused the station list: {_hub_said(r)}")
        try:
            cards = {d.get("name"): d.get("card") for d in r.json() if isinstance(d, dict)}
        except (ValueError, TypeError, AttributeError):
            raise InputError(f"hub {self.url} sent an unreadable station list") from None
        notes = []
        for name in missing:
            pinned = self.keys[name][0]
            assert pinned is not None
            card = _checked_card(cards.get(name), name, pinned)
            if card is None:
                raise InputError(
                    f"station {name}: its agreement key is not pinned and the hub {self.url} has no card signed by "
                    "its pinned signing key (has the station connected to the hub?); pin agreement_key"
                )
            self.keys[name] = (pinned, card)
            notes.append(f"station {name}: agreement key not pinned; used the one it signed for the hub ({card})")
        return notes


def _checked_card(doc: Any, name: str, signing_key: str) -> str | None:
    """The agreement key in a station's card from the hub's directory, if the card is ``name``'s and signed
    by ``signing_key``; else None."""
    if not isinstance(doc, dict) or not isinstance(doc.get("card"), dict):
        return None
    card = doc["card"]
    if card.get("name") != name or card.get("public_key") != signing_key:
        return None
    try:
        signature = base64.b64decode(str(doc.get("signature")), validate=True)
        verify_signature(signing_key, signature, canonical(card), "card")
    except (EnvelopeError, ValueError):
        return None
    agreement = card.get("agreement_key")
    return agreement if isinstance(agreement, str) and agreement.startswith("x25519:") else None


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a connection failed on the server's certificate (no use trying again)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _response(request: httpx.Request, status: int, detail: Any) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, request=request)


def _hub_said(r: httpx.Response) -> str:
    """What a hub answered, quoted as the hub's words and cut short (it is not the station's)."""
    text = r.text[:200].replace("\n", " ")
    return f"HTTP {r.status_code} from the hub: {text!r}"


class HubTransport(httpx.AsyncBaseTransport):
    """Relays ``hub://STATION/PATH`` requests through the hub as sealed envelopes (one per request)."""

    def __init__(self, link: HubLink) -> None:
        self.link = link
        self._hub: httpx.AsyncClient | None = None
        self._acks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        if self._acks:
            await asyncio.gather(*self._acks, return_exceptions=True)
        if self._hub is not None:
            await self._hub.aclose()
            self._hub = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        station = request.url.host
        pub, agree = self.link.keys.get(station, (None, None))
        if pub is None or agree is None:
            raise httpx.ConnectError(
                f"no keys for station {station} (pin them in the federation file)", request=request
            )
        if self._hub is None:
            self._hub = self.link.client(limits=httpx.Limits(max_connections=64))
        budget = float(request.extensions.get("timeout", {}).get("read") or 600.0)
        deadline = time.monotonic() + budget
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
        inner = {"method": request.method, "path": request.url.raw_path.decode("ascii"), "headers": headers}
        envelope, secret = seal_task(self.link.key, station, agree, inner, await request.aread(), ttl=budget + 60)
        try:
            frame = await self._exchange(request, station, envelope, deadline, budget)
        except BaseException:
            self._acknowledge(envelope.id)  # withdrawn: the station will not run it later
            raise
        self._acknowledge(envelope.id)  # the hub forgets the reply once read
        if isinstance(frame, httpx.Response):
            return frame
        try:
            response, body = await asyncio.to_thread(lambda: open_reply(decode(frame), envelope, secret, pub))
            status = int(response["status"])
            kept = {str(k): str(v) for k, v in dict(response.get("headers") or {}).items()}
        except EnvelopeError as exc:
            if exc.reason.startswith("refused:"):
                return _response(request, 403, {"rule": "sealed_envelope", "message": str(exc)})
            return _response(request, 502, f"the hub relayed a reply that is not station {station}'s answer ({exc})")
        except (KeyError, ValueError, TypeError):
            return _response(request, 502, f"station {station}'s sealed response is unreadable")
        return httpx.Response(status, headers=kept, content=body, request=request)

    async def _exchange(
        self, request: httpx.Request, station: str, envelope: Envelope, deadline: float, budget: float
    ) -> bytes | httpx.Response:
        """Queue the envelope and wait for its reply frame (or an error response), within ``deadline``."""
        hub, key = self._hub, self.link.key
        assert hub is not None
        first = f"/v1/stations/{station}/messages?wait={REPLY_WAIT:g}"
        r = await self._call(
            request, deadline, lambda t: signed_call(hub, key, "POST", first, encode(envelope), timeout=t)
        )
        if r.status_code == 200:
            return r.content
        if r.status_code not in (202, 409):  # 409: a retried submission the hub had already queued
            return _response(request, 502, f"the hub did not queue the request to station {station}: {_hub_said(r)}")
        target = f"/v1/messages/{envelope.id}/reply"
        while True:
            if time.monotonic() >= deadline:
                raise httpx.ReadTimeout(f"no reply through the hub within {budget:g} s", request=request)
            wait = max(0.0, min(REPLY_WAIT, deadline - time.monotonic()))
            r = await self._call(
                request, deadline, lambda t, w=wait: signed_call(hub, key, "GET", f"{target}?wait={w:.1f}", timeout=t)
            )
            if r.status_code == 200:
                return r.content
            if r.status_code != 204:
                return _response(request, 502, f"the hub lost the request to station {station}: {_hub_said(r)}")

    async def _call(self, request: httpx.Request, deadline: float, call: Any) -> httpx.Response:
        """``call(timeout)`` until it answers, waiting out a hub that restarts; the whole call (a slow hub
        included) ends by ``deadline``."""
        pause = 0.2
        while True:
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(remaining, 0.01)):
                    response: httpx.Response = await call(REPLY_WAIT + 15)
                return response
            except httpx.DecodingError:
                return _response(request, 502, "the hub answered with more bytes than any envelope holds")
            except TimeoutError:
                raise httpx.ReadTimeout("no answer through the hub in time", request=request) from None
            except httpx.TransportError as exc:
                if time.monotonic() + pause > deadline or _certificate_refused(exc):
                    raise httpx.ConnectError(f"hub {self.link.url} unreachable: {exc}", request=request) from None
                log.warning("hub %s unreachable (%s); trying again", self.link.url, type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _acknowledge(self, envelope_id: str) -> None:
        """Tell the hub to forget an envelope and its reply, without waiting for it."""
        if self._hub is None:
            return
        hub, key = self._hub, self.link.key

        async def ack() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the hub lets it expire
                await signed_call(hub, key, "DELETE", f"/v1/messages/{envelope_id}", timeout=10.0)

        task = asyncio.ensure_future(ack())
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)


def mounts(link: HubLink | None) -> dict[str, httpx.AsyncBaseTransport]:
    """The ``mounts`` of an ``httpx.AsyncClient`` that reaches stations behind ``link``'s hub."""
    return {} if link is None else {f"{SCHEME}://": HubTransport(link)}
