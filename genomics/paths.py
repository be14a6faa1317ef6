"""Input paths checked before they are opened: one message for each way a path is not a readable file."""

from __future__ import annotations

import os
import stat

from better.engine.errors import InputError


def input_file(path: str | os.PathLike[str], what: str = "file") -> str:
    """``path`` if it is a regular file that can be read; else an :class:`InputError` that says what it is.

    Examples
    --------
    >>> input_file("/nonexistent.vcf", "VCF")
    Traceback (most recent call last):
    ...
    better.engine.errors.InputError: /nonexistent.vcf: no such file; give the path of a VCF
    >>> input_file("/tmp", "VCF")
    Traceback (most recent call last):
    ...
    better.engine.errors.InputError: /tmp: a directory, not a VCF; give the path of the file inside it
    """
    p = os.fspath(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise InputError(f"{p}: no such file; give the path of a {what}") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{p}: a directory, not a {what}; give the path of the file inside it")
    if not stat.S_ISREG(mode):
        raise InputError(f"{p}: not a regular file (a device, pipe or socket); give the path of a {what} on disk")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: not readable by this user; check its permissions")
    return p
