"""Secure aggregation: stations mask their statistics so that the coordinator learns only their sum.

Every pair of stations ``(a, b)`` in a round shares a secret from X25519 key agreement (each station's
agreement key is in its ``/info`` and pinned in the federation file). From it, HKDF-SHA256 derives a key
for this round alone: the salt is a digest of the round's *context* (the query's random session id,
the round number and the list of participants with their keys). AES-256 in counter mode turns that key
into a stream of 128-bit words, the pair's mask. The station whose name sorts first adds the mask, the
other subtracts it; all arithmetic is on fixed-point numbers modulo 2^128
(:mod:`better.engine.fixedpoint`), so in the sum over all participants every mask cancels exactly, while one
station's masked words are uniformly distributed to anyone who lacks the secrets it shares with all
the others.

A station never masks twice under the same context (:class:`ContextRegistry`): two different releases
under one mask would give away their difference.

This module is shared: stations call :meth:`StationSecrets.mask`, the coordinator :func:`unmask_sum`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from better.engine import fixedpoint
from better.engine.errors import InputError
from better.engine.kernels.words import add_into, subtract_into
from better.station_api.signing import canonical, load_or_create_pem_key

AGREEMENT_KEY_FILE = "agreement.key"
PREFIX = "x25519:"
#: The field of a masked payload that says each array's original type ("name:f", ":i" or ":b").
LAYOUT_FIELD = "sa_layout"
_INFO = b"better secure aggregation v1 pair mask"


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
def context_digest(session: str, round_no: int, participants: list[tuple[str, str]], purpose: str = "release") -> bytes:
    """SHA-256 naming one round: the same bytes at every participant, different for every round.

    ``purpose`` separates the masks of a round's release from those of what its stations exchange among
    themselves before it (``"judge"``, :mod:`better.station_api.sealed`).
    """
    spec: dict[str, object] = {
        "v": 1,
        "session": session,
        "round": round_no,
        "participants": [list(p) for p in participants],
    }
    if purpose != "release":
        spec["purpose"] = purpose
    return hashlib.sha256(canonical(spec)).digest()


def keystream(key: bytes, words: int) -> np.ndarray:
    """``words`` uniform 128-bit words ``(words, 2)`` from AES-256-CTR under ``key`` (used once)."""
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return fixedpoint.from_bytes(enc.update(bytes(16 * words)) + enc.finalize(), (words,))


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


def pair_key(shared: bytes, context: bytes) -> bytes:
    """The 32-byte mask key two stations share for one round, from their X25519 secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=context, info=_INFO).derive(shared)


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
        names = sorted(arrays)
        values = [np.asarray(arrays[n]) for n in names]
        # every field's words in one buffer, masked in place: one pass per peer
        words = fixedpoint.encode(np.concatenate([v.reshape(-1).astype(np.float64) for v in values]))
        for peer_name, peer_text in participants:
            if peer_name == self.name:
                continue
            shared = shared_secret(self.key, peer_text, f"participant {peer_name}")
            stream = keystream(pair_key(shared, context), words.shape[0])
            (add_into if self.name < peer_name else subtract_into)(words, stream)
        out: dict[str, np.ndarray] = {}
        start = 0
        for name, v in zip(names, values, strict=True):
            out[name] = words[start : start + v.size].reshape((*v.shape, 2)).view(np.int64)
            start += v.size
        out[LAYOUT_FIELD] = np.array([f"{n}:{_type_code(np.asarray(arrays[n]))}" for n in names])
        return out


def _type_code(a: np.ndarray) -> str:
    if a.dtype.kind == "b":
        return "b"
    if a.dtype.kind in "iu":
        return "i"
    return "f"


# -- the coordinator's side ------------------------------------------------------------------------------
def unmask_sum(payloads: list[dict[str, np.ndarray]], stations: list[str]) -> dict[str, np.ndarray]:
    """Add the stations' masked payloads and decode the sum (the masks cancel).

    Integer arrays come back as ``int64``; a boolean array as "true at some station".
    """
    layouts = [_layout(p, s) for p, s in zip(payloads, stations, strict=True)]
    first = layouts[0]
    for layout, station in zip(layouts[1:], stations[1:], strict=True):
        if layout != first:
            raise InputError(
                f"station {station} released a differently laid out result than station {stations[0]}: "
                "the stations run different software versions or models"
            )
    out: dict[str, np.ndarray] = {}
    for name, (code, shape) in first.items():
        total = np.array(payloads[0][name], dtype=np.int64, order="C", copy=True).view(np.uint64)
        for p in payloads[1:]:
            add_into(total.reshape(-1, 2), np.ascontiguousarray(p[name]).view(np.uint64).reshape(-1, 2))
        value = fixedpoint.decode(total)
        if code == "b":
            out[name] = value > 0.5
        elif code == "i":
            out[name] = np.rint(value).astype(np.int64)
        else:
            out[name] = value
        assert out[name].shape == shape[:-1]
    return out


def _layout(payload: dict[str, np.ndarray], station: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each masked array's type code and shape, checked (the payload is untrusted)."""
    raw = payload.get(LAYOUT_FIELD)
    if raw is None or raw.ndim != 1 or raw.dtype.kind not in "UO":
        raise InputError(f"station {station}: a masked result without its layout")
    layout: dict[str, tuple[str, tuple[int, ...]]] = {}
    for entry in raw.tolist():
        name, _, code = str(entry).rpartition(":")
        a = payload.get(name)
        if code not in ("f", "i", "b") or a is None or a.dtype != np.int64 or a.ndim < 1 or a.shape[-1] != 2:
            raise InputError(f"station {station}: masked field {name!r} is malformed")
        layout[name] = (code, a.shape)
    if set(payload) != {*layout, LAYOUT_FIELD}:
        raise InputError(f"station {station}: a masked result with fields outside its layout")
    return layout


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


def participants_of(spec: Any) -> list[tuple[str, str]]:
    """``(name, agreement key)`` pairs of a request's ``secure`` block."""
    return [(p.name, p.agreement_key) for p in spec.participants]
