"""The arithmetic of secure aggregation's masks, which stations and coordinator share.

Every pair of stations ``(a, b)`` in a round shares a secret from X25519 key agreement
(:mod:`better.station_api.secure_agg` holds the keys). From it, HKDF-SHA256 derives a key for this round
alone: the salt is a digest of the round's *context* (:func:`context_digest`: the query's random session
id, the round number and the list of participants with their keys). AES-256 in counter mode turns that
key into a stream of 128-bit words (:func:`keystream`), the pair's mask. The station whose name sorts
first adds the mask, the other subtracts it (:func:`mask_words`); all arithmetic is on fixed-point
numbers modulo 2^128 (:mod:`better.engine.fixedpoint`), so in the sum over all participants every mask
cancels exactly (:func:`unmask_sum`), while one station's masked words are uniformly distributed to
anyone who lacks the secrets it shares with all the others.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from better.engine import fixedpoint
from better.engine.errors import InputError
from better.engine.kernels.words import add_into, subtract_into

#: The field of a masked payload that says each array's original type ("name:f", ":i" or ":b").
LAYOUT_FIELD = "sa_layout"
_INFO = b"better secure aggregation v1 pair mask"
#: Words of a release masked at a time (512 KiB of stream per chunk, whatever the number of peers).
CHUNK_WORDS = 1 << 15


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that is signed and hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


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
    out = np.empty((words, 2), dtype=np.uint64)
    _Streams([key]).apply(out, lambda _k, chunk, stream: np.copyto(chunk, stream))
    return out


class _Streams:
    """Pair keys' AES-256-CTR streams, made a chunk at a time into one reused buffer.

    Applying every key's stream to a chunk of words before moving on keeps that chunk in cache while all
    the streams go into it, and holds one chunk of stream (:data:`CHUNK_WORDS`) whatever the number of
    keys. The words are exactly those of one AES-256-CTR encryption of zeros per key.
    """

    def __init__(self, keys: list[bytes]) -> None:
        self._encryptors = [Cipher(algorithms.AES(k), modes.CTR(bytes(16))).encryptor() for k in keys]
        self._zeros = bytes(16 * CHUNK_WORDS)
        self._buffer = bytearray(16 * CHUNK_WORDS + 15)  # update_into wants room for a block more

    def apply(self, words: np.ndarray, step: Callable[[int, np.ndarray, np.ndarray], object]) -> None:
        """``step(k, chunk, stream)`` for each chunk of ``words`` ``(n, 2)`` and each key ``k`` in turn, with
        the next words of key ``k``'s stream."""
        for start in range(0, words.shape[0], CHUNK_WORDS):
            chunk = words[start : start + CHUNK_WORDS]
            size = 16 * chunk.shape[0]
            for k, encryptor in enumerate(self._encryptors):
                written = encryptor.update_into(memoryview(self._zeros)[:size], self._buffer)
                assert written == size  # counter mode: every byte in comes out at once
                stream = np.frombuffer(self._buffer, dtype=np.dtype("<u8"), count=2 * chunk.shape[0])
                step(k, chunk, stream.reshape(-1, 2))


def pair_key(shared: bytes, context: bytes) -> bytes:
    """The 32-byte mask key two stations share for one round, from their X25519 secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=context, info=_INFO).derive(shared)


def mask_words(arrays: dict[str, np.ndarray], own: str, pair_keys: dict[str, bytes]) -> dict[str, np.ndarray]:
    """``arrays`` as masked fixed-point words (``int64 (..., 2)``), plus their layout.

    ``pair_keys``: the round's key shared with each other participant (:func:`pair_key`); ``own`` is this
    station's name, which decides whether it adds or subtracts each pair's mask.
    """
    names = sorted(arrays)
    values = [np.asarray(arrays[n]) for n in names]
    # every field's words in one buffer, masked in place, chunk by chunk: each chunk gets every peer's stream
    words = fixedpoint.encode(np.concatenate([v.reshape(-1).astype(np.float64) for v in values]))
    peers = list(pair_keys)
    adds = [own < peer for peer in peers]

    def apply(k: int, chunk: np.ndarray, stream: np.ndarray) -> None:
        (add_into if adds[k] else subtract_into)(chunk, stream)

    if peers:
        _Streams([pair_keys[p] for p in peers]).apply(words, apply)
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
