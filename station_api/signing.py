"""Signed provenance: each station signs (Ed25519) a manifest of every release.

A manifest says what was released and under what: the station, the task, a hash of the exact request
(the plan), a hash of the data's source file, a hash of the policy, the software version and a hash of
the released bytes. The coordinator keeps the manifests with the result; ``better verify`` checks them
against the stations' public keys pinned in the federation file, so a result can later be shown to come
from those stations, under those policies, and not to have been edited.

The station's key is ``station.key`` (PKCS#8 PEM, readable by its owner only), made by ``better station
init`` or on first start.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from better.engine.errors import StoreError
from better.wire.masking import canonical

KEY_FILE = "station.key"
PREFIX = "ed25519:"


K = TypeVar("K", Ed25519PrivateKey, X25519PrivateKey)


def load_or_create_pem_key(path: Path, kind: type[K]) -> K:
    """The private key in ``path`` (PKCS#8 PEM), of type ``kind``; made (mode 0600) if there is none yet."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise StoreError(f"{path}: not a PEM private key; move it away to have a new one made") from None
        if not isinstance(key, kind):
            raise StoreError(f"{path}: not an {kind.__name__.removesuffix('PrivateKey')} key")
        return key
    new = kind.generate()
    pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return new


def load_or_create_key(station: Path) -> Ed25519PrivateKey:
    """The station's signing key, created (mode 0600) if there is none yet."""
    return load_or_create_pem_key(station / KEY_FILE, Ed25519PrivateKey)  # type: ignore[type-abstract]


def public_key_text(key: Ed25519PrivateKey) -> str:
    """``ed25519:<base64 of the 32 raw bytes>``, as published in station info and pinned in federations."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def sign(key: Ed25519PrivateKey, manifest: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(canonical(manifest))).decode()


def verify(public_key: str, manifest: dict[str, Any], signature: str) -> bool:
    """Whether ``signature`` is the key's signature of ``manifest`` (False for any malformed input)."""
    if not public_key.startswith(PREFIX):
        return False
    try:
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key[len(PREFIX) :], validate=True))
        pub.verify(base64.b64decode(signature, validate=True), canonical(manifest))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
