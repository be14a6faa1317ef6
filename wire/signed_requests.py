"""HTTP requests to a hub signed with the caller's Ed25519 key.

Stations and researchers both sign every call they make to a hub: the key (``X-Better-Key``), the time
(``X-Better-Time``, unix seconds) and the signature (``X-Better-Signature``) of
``METHOD \\n PATH?QUERY \\n TIME \\n SHA-256(body)``. The hub checks the signature and the clock; a
station's key must also be the one its enrolment is bound to.

Examples
--------
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.generate()
>>> headers = sign_request(key, "POST", "/v1/x?wait=1", b"body", now=1000)
>>> verify_request(headers, "POST", "/v1/x?wait=1", b"body", now=1010) == headers["X-Better-Key"]
True
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import time
from collections.abc import Mapping

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from better.wire.envelope import CLOCK_SKEW, EnvelopeError, ed25519_public, ed25519_text, verify_signature

KEY, TIME, SIGNATURE = "X-Better-Key", "X-Better-Time", "X-Better-Signature"
#: Host names of this machine: plain http to them crosses no network.
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _message(method: str, target: str, stamp: str, body: bytes) -> bytes:
    return f"{method.upper()}\n{target}\n{stamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def sign_request(
    key: Ed25519PrivateKey, method: str, target: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers that sign a request for ``target`` (path and query) with ``body``."""
    stamp = str(int(time.time() if now is None else now))
    signature = base64.b64encode(key.sign(_message(method, target, stamp, body))).decode()
    return {KEY: ed25519_text(key), TIME: stamp, SIGNATURE: signature}


def check_fresh(headers: Mapping[str, str], now: float | None = None) -> str:
    """The caller's key if the signing headers are there, well formed and within the clock skew (before
    the body is read; :func:`verify_request` checks the signature after).

    Raises
    ------
    EnvelopeError
        ``malformed`` or ``expired``.
    """
    found = {h: headers.get(h) for h in (KEY, TIME, SIGNATURE)}
    missing = [h for h, v in found.items() if not v]
    if missing:
        raise EnvelopeError("malformed", f"unsigned request: {', '.join(missing)} missing")
    stamp = str(found[TIME])
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise EnvelopeError("malformed", f"{TIME} is not unix seconds")
    t = time.time() if now is None else now
    if abs(int(stamp) - t) > CLOCK_SKEW:
        raise EnvelopeError("expired", f"{TIME} is {int(t) - int(stamp)} s from the hub's clock (at most {CLOCK_SKEW})")
    ed25519_public(found[KEY], KEY)
    return str(found[KEY])


def verify_request(headers: Mapping[str, str], method: str, target: str, body: bytes, now: float | None = None) -> str:
    """The caller's key (``ed25519:...``) if the headers sign this request within the clock skew.

    Raises
    ------
    EnvelopeError
        ``malformed`` (headers missing), ``expired`` (clock) or ``bad_signature``.
    """
    key = check_fresh(headers, now)
    try:
        signature = base64.b64decode(str(headers.get(SIGNATURE)), validate=True)
    except ValueError:
        raise EnvelopeError("malformed", f"{SIGNATURE} is not base64") from None
    verify_signature(key, signature, _message(method, target, str(headers.get(TIME)), body), "the request")
    return key


async def signed_call(
    client: httpx.AsyncClient,
    key: Ed25519PrivateKey,
    method: str,
    target: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
    max_bytes: int = 600 << 20,
) -> httpx.Response:
    """One signed call to a hub: ``target`` is the path and query below the client's base URL (what is
    signed, so that a reverse proxy may put the hub under a prefix). The answer is read up to ``max_bytes``
    (more is a :class:`httpx.DecodingError`: no hub answer is that large)."""
    if len(body) < 1 << 20:
        signature = sign_request(key, method, target, body)
    else:  # hashing a large body off the event loop
        signature = await asyncio.to_thread(sign_request, key, method, target, body)
    signed = {**(headers or {}), **signature}
    limit = httpx.Timeout(timeout, connect=10.0) if timeout is not None else client.timeout
    async with client.stream(method, target, content=body or None, headers=signed, timeout=limit) as r:
        chunks, seen = [], 0
        async for chunk in r.aiter_bytes():
            seen += len(chunk)
            if seen > max_bytes:
                raise httpx.DecodingError(
                    f"the answer to {method} {target} is over {max_bytes} bytes", request=r.request
                )
            chunks.append(chunk)
    kept = [(k, v) for k, v in r.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(r.status_code, headers=kept, content=b"".join(chunks), request=r.request)


def tls_verify(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """What ``httpx`` verifies servers with: the system's CAs (True), or only the CA bundle ``ca_file``."""
    return True if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def plain_http_problem(url: str, allow_http: bool = False, what: str = "") -> str | None:
    """Why ``url`` should not be used (None if it may): plain http is for this machine only, unless allowed.

    Examples
    --------
    >>> plain_http_problem("https://hub.example.org") is None, plain_http_problem("http://127.0.0.1:8800") is None
    (True, True)
    >>> plain_http_problem("http://10.1.2.3:8800")[:40]
    'http://10.1.2.3:8800: plain http to anot'
    """
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"{url}: not an http(s) URL"
    if parsed.scheme == "http" and parsed.host not in LOOPBACK and not allow_http:
        return (
            f"{url}: plain http to another machine lets anyone on the path read {what or 'tokens and results'}; "
            "use https (docs/deployment.md), or allow http if a tunnel already protects it"
        )
    return None
