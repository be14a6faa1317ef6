"""Secure aggregation at a station: its key-agreement key, its masks, and replay protection.

Each station's X25519 agreement key is in its ``/info`` and pinned in the federation file; every pair of
stations in a round derives the pair's mask for that round from their shared secret
(:mod:`better.wire.masking`, the arithmetic the coordinator shares: it adds the masked payloads with
:func:`~better.wire.masking.unmask_sum`). A station never masks twice under the same context
(:class:`ContextRegistry`): two different releases under one mask would give away their difference.
"""

from __future__ import annotations

import base64
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from better.engine.errors import InputError
from better.station_api.signing import load_or_create_pem_key
from better.wire.masking import context_digest, mask_words, pair_key

AGREEMENT_KEY_FILE = "agreement.key"
PREFIX = "x25519:"


# -- keys ------------------------------------------------------------------------------------------------
def load_or_create_agreement_key(station: Path) -> X25519PrivateKey:
    """The station's X25519 key-agreement key, created (mode 0600) if there is none yet."""
    return load_or_create_pem_key(station / AGREEMENT_KEY_FILE, X25519PrivateKey)  # type: ignore[type-abstract]


def agreement_key_text(key: X25519PrivateKey) -> str:
    """``x25519:<base64 of the 32 raw public bytes>``."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def parse_agreement_key(text: str, where: str = "agreement key") -> X25519PublicKey:
    """The public key in ``x25519:<base64>`` form; an :class:`InputError` naming ``where`` otherwise."""
    try:
        if not text.startswith(PREFIX):
            raise ValueError
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
        if len(raw) != 32:
            raise ValueError
        return X25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise InputError(
            f"{where}: {text[:60]!r} is not an X25519 key of the form x25519:<base64 of 32 bytes>"
        ) from None


# -- the round's context ---------------------------------------------------------------------------------
def shared_secret(mine: X25519PrivateKey, peer_text: str, who: str) -> bytes:
    """The X25519 secret this station shares with a peer, from the peer's ``x25519:...`` key.

    A key of low order (all zeros, say) gives no secret: an :class:`InputError` naming ``who``.
    """
    peer = parse_agreement_key(peer_text, who)
    try:
        return mine.exchange(peer)
    except ValueError:
        raise InputError(
            f"{who}: the agreement key {peer_text[:60]!r} gives no shared secret; it is not a usable "
            "X25519 key (pin the key the station's /info shows)"
        ) from None


@dataclass(frozen=True)
class StationSecrets:
    """What a station masks with: its name and key-agreement key."""

    name: str
    key: X25519PrivateKey

    @property
    def public_text(self) -> str:
        return agreement_key_text(self.key)

    def mask(
        self,
        arrays: dict[str, np.ndarray],
        session: str,
        round_no: int,
        participants: list[tuple[str, str]],
        purpose: str = "release",
    ) -> dict[str, np.ndarray]:
        """``arrays`` as masked fixed-point words (``int64 (..., 2)``), plus their layout.

        ``participants`` are ``(name, agreement key)``, this station among them; ``purpose`` as in
        :func:`context_digest`.
        """
        context = context_digest(session, round_no, participants, purpose)
        keys = {
            peer: pair_key(shared_secret(self.key, text, f"participant {peer}"), context)
            for peer, text in participants
            if peer != self.name
        }
        return mask_words(arrays, self.name, keys)


# -- replay protection at the station -------------------------------------------------------------------
class ContextRegistry:
    """The round contexts a station has masked under, kept in a file; a second use is refused.

    Each line is a context digest (hex). The file only grows by one line per secure round.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        if path.exists():
            self._seen = {line.strip() for line in path.read_text().splitlines() if line.strip()}

    def seen(self, digest_hex: str) -> bool:
        """Whether a context was recorded before."""
        with self._lock:
            return digest_hex in self._seen

    def claim(self, digest_hex: str) -> bool:
        """Record a context; False if it was used before."""
        with self._lock:
            if digest_hex in self._seen:
                return False
            with self.path.open("a") as f:
                f.write(digest_hex + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._seen.add(digest_hex)
            return True
