"""Sealed messages between the stations of a round, carried by the coordinator, which cannot read them.

Some decisions need totals over every station that the coordinator must not see: the people behind each
variant's statistics (a total of 1 to 4 withholds it) and the query audit's counts
(:mod:`better.station_api.query_audit`). In a **sealed** round each station masks those counts for secure
aggregation (so that no other station learns its own numbers, only their sum), then encrypts the masked
words once per peer with AES-256-GCM under a key only the two of them hold (X25519 and HKDF-SHA256, bound
to the round's context and to the direction, sender to recipient). The coordinator hands each station the
blobs addressed to it; the station decrypts them, checks that every participant sent one, adds them to
its own words (the masks cancel) and decides on the totals before it releases anything.

The coordinator can drop, reorder or replay blobs, but not read, alter or forge one: a blob that does not
decrypt under the pair's key for this round, or a participant whose blob is missing, stops the round.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from better.engine.errors import InputError
from better.station_api.secure_agg import StationSecrets, shared_secret
from better.wire.arrays import decode_arrays, encode_arrays

_NONCE = bytes(12)  # every key seals one message: the key is unique to (round, sender, recipient)
#: Largest sealed blob accepted, in bytes of base64 text.
MAX_BLOB_CHARS = 128 << 20


def _key(secrets: StationSecrets, peer_key: str, context: bytes, sender: str, recipient: str) -> bytes:
    shared = shared_secret(secrets.key, peer_key, f"participant {sender if sender != secrets.name else recipient}")
    info = f"better sealed v1 {sender}>{recipient}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=context, info=info).derive(shared)


def seal(
    secrets: StationSecrets,
    participants: list[tuple[str, str]],
    context: bytes,
    header: dict[str, Any],
    arrays: dict[str, np.ndarray],
) -> dict[str, str]:
    """The blob (base64) for each other participant: ``header`` (JSON) and ``arrays`` (already masked)."""
    head = json.dumps(header, sort_keys=True).encode()
    body = struct.pack(">I", len(head)) + head + encode_arrays(arrays, None, compress=False)
    out = {}
    for name, key in participants:
        if name == secrets.name:
            continue
        aead = AESGCM(_key(secrets, key, context, secrets.name, name))
        out[name] = base64.b64encode(aead.encrypt(_NONCE, body, context)).decode()
    return out


def unseal(
    secrets: StationSecrets, sender: str, sender_key: str, context: bytes, blob: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and masked arrays of a blob ``sender`` sealed to this station for this round."""
    what = f"the sealed message from station {sender}"
    if len(blob) > MAX_BLOB_CHARS:
        raise InputError(f"{what} is over {MAX_BLOB_CHARS} characters")
    try:
        raw = base64.b64decode(blob, validate=True)
        body = AESGCM(_key(secrets, sender_key, context, sender, secrets.name)).decrypt(_NONCE, raw, context)
    except (binascii.Error, ValueError, InvalidTag):
        raise InputError(
            f"{what} does not open with the key this station shares with it for this round: it was altered, "
            "is from another round, or is not from that station"
        ) from None
    (n,) = struct.unpack(">I", body[:4])
    try:
        header = json.loads(body[4 : 4 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{what} has an unreadable header") from None
    if not isinstance(header, dict):
        raise InputError(f"{what} has an unreadable header")
    return header, decode_arrays(body[4 + n :], what)
