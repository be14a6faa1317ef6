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
holder of the envelope's ephemeral key, the requesting coordinator, can open it) and signed by the
station's Ed25519 key. A station that will not open an envelope sends a signed **refusal** instead.

Replay: an envelope carries a random id and an expiry; a station opens each id once
(:class:`better.station_api.pull.SeenIds`) and never one past its expiry. The frame on the wire is
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
>>> reply = seal_reply(station_sign, "milano", opened, {"status": 200, "body": "b2s="})
>>> open_reply(decode(encode(reply)), task, secret, ed25519_text(station_sign))["status"]
200
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
import time
from dataclasses import dataclass, field
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
    """An envelope that is refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: Why an envelope is refused (what the station's audit log and its signed refusal say).
REASONS = ("malformed", "misaddressed", "expired", "not_yet_valid", "bad_signature", "undecryptable", "replayed")


@dataclass(frozen=True)
class Envelope:
    """One frame: the routing header (readable by the hub), the signature, the ciphertext."""

    header: dict[str, Any]
    signature: bytes
    ciphertext: bytes = b""
    #: Filled by :func:`decode`: the frame as it came.
    size: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        return str(self.header["id"])

    def signed_bytes(self) -> bytes:
        """What the signature covers: the canonical header and the ciphertext's SHA-256."""
        return canonical(self.header) + hashlib.sha256(self.ciphertext).digest()


# -- keys as text ------------------------------------------------------------------------------------------
def ed25519_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """``ed25519:<base64 of the raw public key>``."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return (
        "ed25519:"
        + base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    )


def x25519_text(key: X25519PrivateKey | X25519PublicKey) -> str:
    """``x25519:<base64 of the raw public key>``."""
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return (
        "x25519:"
        + base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    )


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
    return b"".join(
        (
            MAGIC,
            struct.pack(">I", len(head)),
            head,
            struct.pack(">H", len(envelope.signature)),
            envelope.signature,
            envelope.ciphertext,
        )
    )


def decode(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Envelope:
    """Read a frame; anything malformed or oversized is an :class:`EnvelopeError` ``malformed``."""
    if len(frame) > max_bytes:
        raise EnvelopeError("malformed", f"the envelope is {len(frame)} bytes, over the limit of {max_bytes}")
    if len(frame) < 10 or frame[:4] != MAGIC:
        raise EnvelopeError("malformed", "not a sealed envelope (it must start with BTE1)")
    (n,) = struct.unpack(">I", frame[4:8])
    if n > MAX_HEADER_BYTES or 8 + n + 2 > len(frame):
        raise EnvelopeError("malformed", "the envelope's header length is out of bounds")
    try:
        header = json.loads(frame[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EnvelopeError("malformed", "the envelope's header is not JSON") from None
    if not isinstance(header, dict) or canonical(header) != frame[8 : 8 + n]:
        raise EnvelopeError("malformed", "the envelope's header is not canonical JSON of an object")
    (s,) = struct.unpack(">H", frame[8 + n : 10 + n])
    if 10 + n + s > len(frame):
        raise EnvelopeError("malformed", "the envelope's signature length is out of bounds")
    envelope = Envelope(header, frame[10 + n : 10 + n + s], frame[10 + n + s :], size=len(frame))
    _check_header(envelope.header)
    return envelope


_FIELDS = {
    "task": {"v": int, "kind": str, "id": str, "to": str, "from": str, "issued": int, "expires": int, "ephemeral": str},
    "reply": {"v": int, "kind": str, "id": str, "station": str, "to": str},
    "refusal": {"v": int, "kind": str, "id": str, "station": str, "to": str, "reason": str},
}


def _check_header(header: dict[str, Any]) -> None:
    fields = _FIELDS.get(header.get("kind"))  # type: ignore[arg-type]
    if fields is None or set(header) != set(fields):
        raise EnvelopeError("malformed", "the envelope's header is not a task, reply or refusal header")
    for name, kind in fields.items():
        value = header[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and len(value) > 200):
            raise EnvelopeError("malformed", f"the envelope's header field {name!r} is not a valid {kind.__name__}")
    if header["v"] != VERSION:
        raise EnvelopeError("malformed", f"envelope version {header['v']} (this software reads {VERSION})")
    if len(header["id"]) != _ID_HEX or any(c not in "0123456789abcdef" for c in header["id"]):
        raise EnvelopeError("malformed", "the envelope id is not 32 hexadecimal digits")


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
    ttl: float = 3600.0,
    now: float | None = None,
) -> tuple[Envelope, ReplySecret]:
    """Seal ``request`` (JSON) to ``station``, whose X25519 key is ``agreement_key`` (``x25519:...``).

    Returns the envelope and the secret that opens its reply.
    """
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
    task_key, reply_key = _keys(
        _agree(ephemeral, x25519_public(agreement_key, f"station {station}'s agreement key")), envelope_id
    )
    body = ChaCha20Poly1305(task_key).encrypt(_NONCE, canonical(request), canonical(header))
    unsigned = Envelope(header, b"", body)
    return Envelope(header, researcher.sign(unsigned.signed_bytes()), body), ReplySecret(reply_key)


@dataclass(frozen=True)
class OpenedTask:
    """A task envelope a station opened: the request, who signed it, and the key for the reply."""

    header: dict[str, Any]
    request: dict[str, Any]
    reply_key: bytes

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
        With the reason (the caller audits it and sends a signed refusal).
    """
    if envelope.header.get("to") != station:
        raise EnvelopeError(
            "misaddressed", f"the envelope is addressed to {envelope.header.get('to')!r}, not {station!r}"
        )
    check_task(envelope, now)
    ephemeral = x25519_public(envelope.header["ephemeral"], "the envelope's ephemeral key")
    task_key, reply_key = _keys(_agree(agreement, ephemeral), envelope.id)
    try:
        plain = ChaCha20Poly1305(task_key).decrypt(_NONCE, envelope.ciphertext, canonical(envelope.header))
    except InvalidTag:
        raise EnvelopeError("undecryptable", "the envelope does not open with this station's key") from None
    try:
        request = json.loads(plain)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EnvelopeError("malformed", "the sealed request is not JSON") from None
    if not isinstance(request, dict):
        raise EnvelopeError("malformed", "the sealed request is not a JSON object")
    return OpenedTask(envelope.header, request, reply_key)


# -- reply -------------------------------------------------------------------------------------------------
def seal_reply(signing: Ed25519PrivateKey, station: str, task: OpenedTask, response: dict[str, Any]) -> Envelope:
    """Seal ``response`` (JSON) to the coordinator that sent ``task``, signed by the station."""
    header = {"v": VERSION, "kind": "reply", "id": task.header["id"], "station": station, "to": task.sender}
    body = ChaCha20Poly1305(task.reply_key).encrypt(_NONCE, canonical(response), canonical(header))
    unsigned = Envelope(header, b"", body)
    return Envelope(header, signing.sign(unsigned.signed_bytes()), body)


def refusal(signing: Ed25519PrivateKey, station: str, header: dict[str, Any], reason: str) -> Envelope:
    """A signed refusal of the envelope with ``header`` (nothing sealed: the station could not open it)."""
    sender = header.get("from")
    answer = {
        "v": VERSION,
        "kind": "refusal",
        "id": str(header.get("id")),
        "station": station,
        "to": sender if isinstance(sender, str) else "",
        "reason": reason,
    }
    unsigned = Envelope(answer, b"")
    return Envelope(answer, signing.sign(unsigned.signed_bytes()))


def open_reply(envelope: Envelope, task: Envelope, secret: ReplySecret, station_key: str) -> dict[str, Any]:
    """The response in a station's reply to ``task``, checked against the station's pinned signing key.

    Raises
    ------
    EnvelopeError
        A reply that is not the named station's answer to this task; for a refusal, ``reason`` is the
        station's reason (``refused:<why>``).
    """
    header = envelope.header
    station = task.header["to"]
    if header["id"] != task.id or header["station"] != station or header["to"] != task.header["from"]:
        raise EnvelopeError("misaddressed", f"the reply is not station {station}'s answer to envelope {task.id}")
    verify_signature(station_key, envelope.signature, envelope.signed_bytes(), f"station {station}'s reply")
    if header["kind"] == "refusal":
        reason = header["reason"] if header["reason"] in REASONS else "malformed"
        raise EnvelopeError(f"refused:{reason}", f"station {station} refused the sealed request ({reason})")
    if header["kind"] != "reply":
        raise EnvelopeError("malformed", "not a reply envelope")
    try:
        plain = ChaCha20Poly1305(secret.key).decrypt(_NONCE, envelope.ciphertext, canonical(header))
    except InvalidTag:
        raise EnvelopeError(
            "undecryptable", f"station {station}'s reply does not open with this request's key"
        ) from None
    response = json.loads(plain)
    if not isinstance(response, dict):
        raise EnvelopeError("malformed", "the sealed response is not a JSON object")
    return response
