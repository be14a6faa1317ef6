"""Sealed envelopes: a researcher's HTTP request to one station, and the station's answer, carried by a
hub that can route them but not read, alter or replay them.

A **task envelope** holds one HTTP request (method, path, the ``Authorization`` header with the
researcher's station token, the body). It is

- encrypted to the station: a fresh X25519 key pair per envelope, agreed with the station's pinned
  agreement key; HKDF-SHA256 (salt: the envelope id) gives a one-time ChaCha20-Poly1305 key, and the
  routing header is the AEAD's associated data, so a changed header does not open;
- signed by the researcher's Ed25519 key, over the header and a hash of the ciphertext, so the hub can
  check who queued it and the station who asked.

The **reply** is the HTTP response, encrypted under a second key from the same agreement (so only the
holder of the envelope's ephemeral key, the requesting coordinator, can open it), signed by the
station's Ed25519 key, and naming the envelope it answers by its digest (the hash of everything the
researcher signed, and the signature). A station that will not open an envelope sends a signed
**refusal** naming the envelope's digest instead. What is sealed is a JSON head (method, path and
headers; or status and headers) and the raw body after it, no base64.

Replay: an envelope carries a random id and an expiry; a station opens each envelope once
(:class:`better.station_api.pull.SeenIds`, by digest) and never one past its expiry. The frame on the wire is
``b"BTE1"``, the header's length (4 bytes) and canonical JSON, the signature's length (2 bytes) and the
signature, then the ciphertext.

Examples
--------
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
>>> researcher, station_sign, station_agree = (
...     Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), X25519PrivateKey.generate())
>>> task, secret = seal_task(researcher, "milano", x25519_text(station_agree), {"method": "GET", "path": "/info"})
>>> opened = open_task(decode(encode(task)), "milano", station_agree, now=task.header["issued"])
>>> opened.request["path"]
'/info'
>>> reply = seal_reply(station_sign, "milano", opened, {"status": 200}, b"ok")
>>> open_reply(decode(encode(reply)), task, secret, ed25519_text(station_sign))
({'status': 200}, b'ok')
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from better.wire.masking import canonical

MAGIC = b"BTE1"
VERSION = 1
#: Largest frame read, in bytes (the station's own request limit is below it).
MAX_FRAME_BYTES = 600 << 20
MAX_HEADER_BYTES = 16 << 10
#: Clock difference tolerated between the parties, in seconds.
CLOCK_SKEW = 300
#: Longest an envelope may live, in seconds (a station may be offline this long and still answer).
MAX_TTL = 7 * 24 * 3600
_NONCE = bytes(12)  # every key seals exactly one message
_ID_HEX = 32


class EnvelopeError(Exception):
    """An envelope that is refused; ``reason`` is one of :data:`REASONS` (``refused:<reason>`` when it is a
    station's signed refusal)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: Why an envelope is refused (what the station's audit log and its signed refusal say). ``interrupted``:
#: the station opened it before a restart and cannot tell whether its request ran; ``too_large``: the
#: answer was over the hub's limit.
REASONS = (
    "malformed",
    "misaddressed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "undecryptable",
    "replayed",
    "interrupted",
    "too_large",
)


@dataclass(frozen=True)
class Envelope:
    """One frame: the routing header (readable by the hub), the signature, the ciphertext."""

    header: dict[str, Any]
    signature: bytes
    ciphertext: bytes = b""

    @property
    def id(self) -> str:
        return str(self.header["id"])

    @cached_property
    def _ciphertext_hash(self) -> bytes:
        return hashlib.sha256(self.ciphertext).digest()

    def signed_bytes(self) -> bytes:
        """What the signature covers: the canonical header and the ciphertext's SHA-256."""
        return canonical(self.header) + self._ciphertext_hash

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the whole envelope as signed: what replies and refusals name, and what a station
        opens once."""
        return hashlib.sha256(self.signed_bytes() + self.signature).hexdigest()


# -- keys as text ------------------------------------------------------------------------------------------
def _public_text(prefix: str, pub: Ed25519PublicKey | X25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return prefix + base64.b64encode(raw).decode()


def ed25519_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """``ed25519:<base64 of the raw public key>``."""
    return _public_text("ed25519:", key.public_key() if isinstance(key, Ed25519PrivateKey) else key)


def x25519_text(key: X25519PrivateKey | X25519PublicKey) -> str:
    """``x25519:<base64 of the raw public key>``."""
    return _public_text("x25519:", key.public_key() if isinstance(key, X25519PrivateKey) else key)


def _raw_key(text: object, prefix: str, what: str) -> bytes:
    if not isinstance(text, str) or not text.startswith(prefix):
        raise EnvelopeError("malformed", f"{what} is not a {prefix}<base64> key")
    try:
        raw = base64.b64decode(text[len(prefix) :], validate=True)
    except ValueError:
        raise EnvelopeError("malformed", f"{what} is not valid base64") from None
    if len(raw) != 32:
        raise EnvelopeError("malformed", f"{what} is not 32 bytes")
    return raw


def ed25519_public(text: object, what: str = "signing key") -> Ed25519PublicKey:
    """The Ed25519 public key in ``text``; :class:`EnvelopeError` ``malformed`` otherwise."""
    return Ed25519PublicKey.from_public_bytes(_raw_key(text, "ed25519:", what))


def x25519_public(text: object, what: str = "agreement key") -> X25519PublicKey:
    """The X25519 public key in ``text``; :class:`EnvelopeError` ``malformed`` otherwise."""
    return X25519PublicKey.from_public_bytes(_raw_key(text, "x25519:", what))


def verify_signature(key_text: object, signature: bytes, data: bytes, what: str) -> None:
    """Check an Ed25519 signature; :class:`EnvelopeError` ``bad_signature`` if it does not hold."""
    try:
        ed25519_public(key_text, what).verify(signature, data)
    except InvalidSignature:
        raise EnvelopeError("bad_signature", f"the signature on {what} does not verify") from None


# -- the frame ---------------------------------------------------------------------------------------------
def encode(envelope: Envelope) -> bytes:
    """The envelope as one frame of bytes."""
    head = canonical(envelope.header)
    signature = envelope.signature
    return b"".join(
        (MAGIC, struct.pack(">I", len(head)), head, struct.pack(">H", len(signature)), signature, envelope.ciphertext)
    )


def decode(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Envelope:
    """Read a frame; anything malformed or oversized is an :class:`EnvelopeError` ``malformed``."""
    header, at = _read_header(frame, max_bytes)
    return Envelope(header, frame[at : at + 64], frame[at + 64 :])


def read_header(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """The checked header of a frame, without copying its ciphertext (what a hub routes by)."""
    return _read_header(frame, max_bytes)[0]


def _read_header(frame: bytes, max_bytes: int) -> tuple[dict[str, Any], int]:
    """The checked header of a frame, and where its 64-byte signature starts."""
    if len(frame) > max_bytes:
        raise EnvelopeError("malformed", f"the envelope is {len(frame)} bytes, over the limit of {max_bytes}")
    if len(frame) < 10 or frame[:4] != MAGIC:
        raise EnvelopeError("malformed", "not a sealed envelope (it must start with BTE1)")
    (n,) = struct.unpack(">I", frame[4:8])
    if n > MAX_HEADER_BYTES or 8 + n + 2 > len(frame):
        raise EnvelopeError("malformed", "the envelope's header length is out of bounds")
    header = _json_object(frame[8 : 8 + n], "the envelope's header")
    if canonical(header) != frame[8 : 8 + n]:
        raise EnvelopeError("malformed", "the envelope's header is not canonical JSON")
    (s,) = struct.unpack(">H", frame[8 + n : 10 + n])
    if s != 64 or 10 + n + s > len(frame):
        raise EnvelopeError("malformed", "the envelope's signature is not 64 bytes")
    _check_header(header)
    return header, 10 + n


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise EnvelopeError("malformed", f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise EnvelopeError("malformed", f"{what} is not a JSON object")
    return value


_FIELDS: dict[str, dict[str, type]] = {
    "task": {"v": int, "kind": str, "id": str, "to": str, "from": str, "issued": int, "expires": int, "ephemeral": str},
    "reply": {"v": int, "kind": str, "id": str, "station": str, "to": str, "task": str},
    "refusal": {"v": int, "kind": str, "id": str, "station": str, "to": str, "task": str, "reason": str},
}


def _check_header(header: dict[str, Any]) -> None:
    kind = header.get("kind")
    fields = _FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None or set(header) != set(fields):
        raise EnvelopeError("malformed", "the envelope's header is not a task, reply or refusal header")
    for name, kind in fields.items():
        value = header[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and len(value) > 200):
            raise EnvelopeError("malformed", f"the envelope's header field {name!r} is not a valid {kind.__name__}")
        if isinstance(value, int) and not 0 <= value < 2**40:
            raise EnvelopeError("malformed", f"the envelope's header field {name!r} is out of range")
    if header["v"] != VERSION:
        raise EnvelopeError("malformed", f"envelope version {header['v']} (this software reads {VERSION})")
    if len(header["id"]) != _ID_HEX or any(c not in "0123456789abcdef" for c in header["id"]):
        raise EnvelopeError("malformed", "the envelope id is not 32 hexadecimal digits")


# -- what is sealed: a JSON head and raw bytes -------------------------------------------------------------
def _pack(meta: dict[str, Any], body: bytes) -> bytes:
    head = canonical(meta)
    return struct.pack(">I", len(head)) + head + body


def _unpack(plain: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    if len(plain) < 4:
        raise EnvelopeError("malformed", f"{what} is cut short")
    (n,) = struct.unpack(">I", plain[:4])
    if n > MAX_HEADER_BYTES or 4 + n > len(plain):
        raise EnvelopeError("malformed", f"{what} has a head out of bounds")
    return _json_object(plain[4 : 4 + n], what), plain[4 + n :]


# -- keys of one envelope ----------------------------------------------------------------------------------
def _keys(shared: bytes, envelope_id: str) -> tuple[bytes, bytes]:
    """The task key and the reply key of one envelope."""
    salt = bytes.fromhex(envelope_id)

    def derive(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=label).derive(shared)

    return derive(b"better hub task v1"), derive(b"better hub reply v1")


def _agree(mine: X25519PrivateKey, peer: X25519PublicKey) -> bytes:
    try:
        return mine.exchange(peer)
    except ValueError:  # a low-order point: no secret
        raise EnvelopeError("undecryptable", "the agreement key gives no shared secret") from None


# -- task --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplySecret:
    """What the coordinator keeps to open the reply to one envelope (never sent)."""

    key: bytes


def seal_task(
    researcher: Ed25519PrivateKey,
    station: str,
    agreement_key: str,
    request: dict[str, Any],
    body: bytes = b"",
    ttl: float = 3600.0,
    now: float | None = None,
) -> tuple[Envelope, ReplySecret]:
    """Seal ``request`` (JSON: method, path, headers) and its ``body`` to ``station``, whose X25519 key is
    ``agreement_key`` (``x25519:...``). Returns the envelope and the secret that opens its reply."""
    issued = int(time.time() if now is None else now)
    ephemeral = X25519PrivateKey.generate()
    envelope_id = secrets.token_hex(16)
    header: dict[str, Any] = {
        "v": VERSION,
        "kind": "task",
        "id": envelope_id,
        "to": station,
        "from": ed25519_text(researcher),
        "issued": issued,
        "expires": issued + int(min(max(ttl, 1.0), MAX_TTL)),
        "ephemeral": x25519_text(ephemeral),
    }
    peer = x25519_public(agreement_key, f"station {station}'s agreement key")
    task_key, reply_key = _keys(_agree(ephemeral, peer), envelope_id)
    sealed = ChaCha20Poly1305(task_key).encrypt(_NONCE, _pack(request, body), canonical(header))
    unsigned = Envelope(header, b"", sealed)
    return Envelope(header, researcher.sign(unsigned.signed_bytes()), sealed), ReplySecret(reply_key)


@dataclass(frozen=True)
class OpenedTask:
    """A task envelope a station opened: the request, its body, who signed it, and the key for the reply."""

    header: dict[str, Any]
    request: dict[str, Any]
    body: bytes
    reply_key: bytes
    #: The envelope's :attr:`Envelope.digest`, which the reply names.
    digest: str

    @property
    def sender(self) -> str:
        return str(self.header["from"])


def check_task(envelope: Envelope, now: float | None = None) -> None:
    """What anyone can check of a task envelope without its key: the header and the researcher's signature.

    The hub runs this on every envelope it queues; the station again before it opens one.
    """
    header = envelope.header
    if header["kind"] != "task":
        raise EnvelopeError("malformed", "not a task envelope")
    verify_signature(header["from"], envelope.signature, envelope.signed_bytes(), "the task envelope")
    t = time.time() if now is None else now
    if header["expires"] < t:
        raise EnvelopeError("expired", f"the envelope expired {int(t - header['expires'])} s ago")
    if header["issued"] > t + CLOCK_SKEW:
        raise EnvelopeError("not_yet_valid", "the envelope is issued in the future (check the clocks)")
    if header["expires"] - header["issued"] > MAX_TTL:
        raise EnvelopeError("malformed", f"the envelope lives longer than {MAX_TTL} s")


def open_task(envelope: Envelope, station: str, agreement: X25519PrivateKey, now: float | None = None) -> OpenedTask:
    """Open a task envelope at ``station``: addressed here, signed, in date, and decrypting.

    Raises
    ------
    EnvelopeError
        With the reason (the caller audits it, and answers with a signed refusal if the signature held).
    """
    if envelope.header["kind"] != "task":
        raise EnvelopeError("malformed", "not a task envelope")
    if envelope.header["to"] != station:
        raise EnvelopeError("misaddressed", f"the envelope is addressed to {envelope.header['to']!r}, not {station!r}")
    check_task(envelope, now)
    ephemeral = x25519_public(envelope.header["ephemeral"], "the envelope's ephemeral key")
    task_key, reply_key = _keys(_agree(agreement, ephemeral), envelope.id)
    try:
        plain = ChaCha20Poly1305(task_key).decrypt(_NONCE, envelope.ciphertext, canonical(envelope.header))
    except InvalidTag:
        raise EnvelopeError("undecryptable", "the envelope does not open with this station's key") from None
    request, body = _unpack(plain, "the sealed request")
    return OpenedTask(envelope.header, request, body, reply_key, envelope.digest)


# -- reply -------------------------------------------------------------------------------------------------
def seal_reply(
    signing: Ed25519PrivateKey, station: str, task: OpenedTask, response: dict[str, Any], body: bytes = b""
) -> Envelope:
    """Seal ``response`` (JSON: status, headers) and its ``body`` to the coordinator that sent ``task``,
    signed by the station."""
    header = {
        "v": VERSION,
        "kind": "reply",
        "id": task.header["id"],
        "station": station,
        "to": task.sender,
        "task": task.digest,
    }
    sealed = ChaCha20Poly1305(task.reply_key).encrypt(_NONCE, _pack(response, body), canonical(header))
    unsigned = Envelope(header, b"", sealed)
    return Envelope(header, signing.sign(unsigned.signed_bytes()), sealed)


def refusal(signing: Ed25519PrivateKey, station: str, task: Envelope, reason: str) -> Envelope:
    """A signed refusal of the envelope ``task`` (nothing sealed), naming it by its digest: a refusal of an
    envelope the hub altered names the altered one, which no coordinator sent."""
    answer = {
        "v": VERSION,
        "kind": "refusal",
        "id": task.id,
        "station": station,
        "to": str(task.header.get("from", "")),
        "task": task.digest,
        "reason": reason,
    }
    unsigned = Envelope(answer, b"")
    return Envelope(answer, signing.sign(unsigned.signed_bytes()))


def open_reply(
    envelope: Envelope, task: Envelope, secret: ReplySecret, station_key: str
) -> tuple[dict[str, Any], bytes]:
    """The response (head and body) in a station's reply to ``task``, checked against the station's pinned
    signing key.

    Raises
    ------
    EnvelopeError
        A reply that is not the named station's answer to this very envelope; for a refusal, ``reason`` is
        ``refused:<the station's reason>``.
    """
    header = envelope.header
    station = task.header["to"]
    if header["kind"] not in ("reply", "refusal"):
        raise EnvelopeError("malformed", "not a reply envelope")
    if (header["id"], header["station"], header["to"], header["task"]) != (
        task.id,
        station,
        task.header["from"],
        task.digest,
    ):
        raise EnvelopeError("misaddressed", f"the reply is not station {station}'s answer to envelope {task.id}")
    verify_signature(station_key, envelope.signature, envelope.signed_bytes(), f"station {station}'s reply")
    if header["kind"] == "refusal":
        reason = header["reason"] if header["reason"] in REASONS else "malformed"
        raise EnvelopeError(f"refused:{reason}", f"station {station} refused the sealed request ({reason})")
    try:
        plain = ChaCha20Poly1305(secret.key).decrypt(_NONCE, envelope.ciphertext, canonical(header))
    except InvalidTag:
        raise EnvelopeError(
            "undecryptable", f"station {station}'s reply does not open with this request's key"
        ) from None
    return _unpack(plain, "the sealed response")
