"""Bearer tokens: created once, stored as salted hashes, checked in constant time.

A token reads ``btr_<id>_<secret>``. The 12-character ``id`` finds the record without trying every
hash; the 256-bit secret is stored only as ``sha256(salt || secret)`` (a slow password hash buys
nothing for a random 256-bit secret, and would let a flood of bad tokens stall the server).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from better.station_api.config import TokenRecord

_TOKEN = re.compile(r"^btr_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's user and role."""

    user: str
    role: str
    token_id: str


def new_token(user: str, role: str) -> tuple[str, TokenRecord]:
    """A fresh token (shown once) and the record to store for it."""
    token_id = "".join(secrets.choice(_ALPHABET) for _ in range(12))
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    record = TokenRecord(
        id=token_id,
        user=user,
        role=role,
        salt=salt,
        sha256=secret_digest(salt, secret),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return f"btr_{token_id}_{secret}", record


def authenticate(token: str | None, records: list[TokenRecord]) -> Principal | None:
    """The principal a presented token belongs to, or None (malformed, unknown or wrong secret)."""
    if token is None:
        return None
    m = _TOKEN.match(token)
    if m is None:
        return None
    token_id, secret = m.groups()
    for record in records:
        if hmac.compare_digest(record.id, token_id):
            if hmac.compare_digest(record.sha256, secret_digest(record.salt, secret)):
                return Principal(record.user, record.role, record.id)
            return None
    return None


def secret_digest(salt: str, secret: str) -> str:
    """What is stored of a secret (a station token, a hub credential): SHA-256 of salt and secret, hex."""
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()
