"""SHA-256 digests, the one way BETTER takes them: of bytes in memory, and of a file read in blocks.

Both give the lower-case hex digest that catalogs, manifests and provenance records carry.
"""

from __future__ import annotations

import hashlib
import os
import threading

#: Bytes read at a time by :func:`sha256_file`.
BLOCK = 1 << 22


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``.

    Parameters
    ----------
    data
        The bytes to hash.

    Returns
    -------
    str
        64 lower-case hex digits.

    Examples
    --------
    >>> sha256(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], block: int = BLOCK, stop: threading.Event | None = None) -> str:
    """Hex SHA-256 of a file, read ``block`` bytes at a time (never whole into memory).

    Parameters
    ----------
    path
        The file to hash.
    block
        Bytes read at a time.
    stop
        When given and set (by another thread), hashing stops early and the empty string is returned.

    Returns
    -------
    str
        64 lower-case hex digits, or ``""`` if ``stop`` was set before the end.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _ = f.write(b"abc"); f.flush()
    ...     sha256_file(f.name, block=2) == sha256(b"abc")
    True
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            if stop is not None and stop.is_set():
                return ""
            h.update(chunk)
    return h.hexdigest()
