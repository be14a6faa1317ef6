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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from better.engine.errors import InputError
from better.station_api.signing import load_or_create_pem_key
from better.wire.envelope import EnvelopeError, decode, encode, open_reply, seal_task, verify_signature
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
    verify: bool | str = True
    #: station name -> (signing key ``ed25519:...``, agreement key ``x25519:...``), as pinned or learned.
    keys: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def client(self, **kw: Any) -> httpx.AsyncClient:
        """A client for the hub's own routes."""
        return httpx.AsyncClient(base_url=self.url.rstrip("/"), verify=self.verify, **kw)

    async def learn_keys(self) -> list[str]:
        """Fill in the keys the federation file does not pin from the hub's directory (each card signed by its
        station; a card whose signing key differs from a pinned one is refused). Returns a note for each
        station whose keys came from the hub."""
        missing = [n for n, (pub, agree) in self.keys.items() if pub is None or agree is None]
        if not missing:
            return []
        async with self.client(timeout=30.0) as hub:
            try:
                r = await signed_call(hub, self.key, "GET", "/v1/stations")
            except httpx.TransportError as exc:
                raise InputError(f"hub {self.url} is unreachable ({type(exc).__name__}: {exc})") from None
        if r.status_code != 200:
            raise InputError(f"hub {self.url} refused the station list: HTTP {r.status_code} {r.text[:200]}")
        cards = {d.get("name"): d.get("card") for d in r.json() if isinstance(d, dict)}
        notes = []
        for name in missing:
            pinned_pub, pinned_agree = self.keys[name]
            card = _checked_card(cards.get(name), name)
            if card is None:
                raise InputError(
                    f"station {name}: its keys are not pinned in the federation file and the hub {self.url} has none "
                    "yet (the station has not connected to it); pin public_key and agreement_key from the station's "
                    "administrator"
                )
            if pinned_pub is not None and card["public_key"] != pinned_pub:
                raise InputError(
                    f"station {name}: the hub lists the signing key {card['public_key']}, not the pinned {pinned_pub}"
                )
            self.keys[name] = (pinned_pub or card["public_key"], pinned_agree or card["agreement_key"])
            notes.append(
                f"station {name}: keys not pinned in the federation file; used those the hub lists "
                f"({card['public_key']})"
            )
        return notes


def _checked_card(doc: Any, name: str) -> dict[str, str] | None:
    """A station's self-signed card from the hub's directory, or None if it has none or it does not verify."""
    if not isinstance(doc, dict) or not isinstance(doc.get("card"), dict):
        return None
    card = doc["card"]
    try:
        verify_signature(
            card.get("public_key"), base64.b64decode(str(doc.get("signature")), validate=True), canonical(card), "card"
        )
    except (EnvelopeError, ValueError):
        return None
    if card.get("name") != name or not isinstance(card.get("agreement_key"), str):
        return None
    return {"public_key": str(card["public_key"]), "agreement_key": str(card["agreement_key"])}


def _response(request: httpx.Request, status: int, detail: Any) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, request=request)


class HubTransport(httpx.AsyncBaseTransport):
    """Relays ``hub://STATION/PATH`` requests through the hub as sealed envelopes (one per request)."""

    def __init__(self, link: HubLink) -> None:
        self.link = link
        self._hub: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
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
        timeouts = request.extensions.get("timeout", {})
        budget = float(timeouts.get("read") or 600.0)
        deadline = time.monotonic() + budget
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
        inner = {
            "method": request.method,
            "path": request.url.raw_path.decode("ascii"),
            "headers": headers,
            "body": base64.b64encode(await request.aread()).decode(),
        }
        envelope, secret = seal_task(self.link.key, station, agree, inner, ttl=budget + 60)
        hub = self._hub
        submitted = await self._retry(
            request,
            deadline,
            lambda: signed_call(hub, self.link.key, "POST", f"/v1/stations/{station}/messages", encode(envelope)),
        )
        if submitted.status_code not in (202, 409):  # 409: a retried submission the hub had already queued
            return _response(
                request, 502, f"the hub did not queue the request: HTTP {submitted.status_code} {submitted.text[:300]}"
            )
        target = f"/v1/messages/{envelope.id}/reply"
        try:
            while True:
                wait = max(0.0, min(REPLY_WAIT, deadline - time.monotonic()))
                r = await self._retry(
                    request,
                    deadline,
                    lambda w=wait: signed_call(hub, self.link.key, "GET", f"{target}?wait={w:.1f}", timeout=w + 15),
                )
                if r.status_code == 200:
                    break
                if r.status_code != 204:
                    return _response(request, 502, f"the hub lost the request: HTTP {r.status_code} {r.text[:300]}")
                if time.monotonic() >= deadline:
                    raise httpx.ReadTimeout(f"no reply through the hub within {budget:g} s", request=request)
        except BaseException:
            await self._withdraw(envelope.id)
            raise
        await self._withdraw(envelope.id)  # the hub forgets the reply once read
        try:
            response = open_reply(decode(r.content), envelope, secret, pub)
        except EnvelopeError as exc:
            if exc.reason.startswith("refused:"):
                return _response(request, 403, {"rule": "sealed_envelope", "message": str(exc)})
            return _response(request, 502, f"the hub relayed a reply that is not the station's ({exc})")
        try:
            body = base64.b64decode(str(response.get("body", "")), validate=True)
            status = int(response["status"])
        except (KeyError, ValueError, TypeError):
            return _response(request, 502, "the station's sealed response is unreadable")
        kept = {str(k): str(v) for k, v in dict(response.get("headers") or {}).items()}
        return httpx.Response(status, headers=kept, content=body, request=request)

    async def _retry(self, request: httpx.Request, deadline: float, call: Any) -> httpx.Response:
        """``call()`` until it answers, waiting out a hub that restarts, up to ``deadline``."""
        pause = 0.2
        while True:
            try:
                response: httpx.Response = await call()
                return response
            except httpx.TransportError as exc:
                if time.monotonic() + pause > deadline:
                    raise httpx.ConnectError(f"hub {self.link.url} unreachable: {exc}", request=request) from None
                log.warning("hub %s unreachable (%s); trying again", self.link.url, type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _withdraw(self, envelope_id: str) -> None:
        if self._hub is None:
            return
        with contextlib.suppress(httpx.HTTPError):  # the hub lets it expire
            await signed_call(self._hub, self.link.key, "DELETE", f"/v1/messages/{envelope_id}", timeout=10.0)


def mounts(link: HubLink | None) -> dict[str, httpx.AsyncBaseTransport]:
    """The ``mounts`` of an ``httpx.AsyncClient`` that reaches stations behind ``link``'s hub."""
    return {} if link is None else {f"{SCHEME}://": HubTransport(link)}
