"""TOML files read into pydantic models: ``station.toml``, federation files and job files, one way.

Every failure becomes an :class:`~better.engine.errors.InputError` that names the file, the key or line,
and what is wrong with it; never a traceback. The station reads its ``station.toml`` with it, and the
coordinator and the jobs (layers above) their federation and job files.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from better.engine.errors import InputError

M = TypeVar("M", bound=BaseModel)


def read_toml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The TOML document in ``path``, as a dict.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for the message when it is missing (e.g. ``"federation file"``).

    Returns
    -------
    dict
        The document.

    Raises
    ------
    InputError
        ``PATH: no such WHAT`` when the file is missing; ``PATH: not valid TOML (REASON at line L,
        column C)`` when it does not parse.

    Examples
    --------
    >>> read_toml("/nonexistent.toml", "job file")
    Traceback (most recent call last):
    ...
    better.engine.errors.InputError: /nonexistent.toml: no such job file
    """
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: no such {what}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML ({exc})") from None


def validate(model: type[M], doc: dict[str, Any], path: str | os.PathLike[str]) -> M:
    """``doc`` checked as ``model``; the first problem is named by its key path.

    Parameters
    ----------
    model
        The pydantic model the document must satisfy.
    doc
        The document, as read by :func:`read_toml` (or about to be written).
    path
        The file the document is from (or for), named in the message.

    Returns
    -------
    M
        The validated model.

    Raises
    ------
    InputError
        ``PATH: KEY.PATH: WHAT IS WRONG`` for the first key that does not fit.

    Examples
    --------
    >>> from pydantic import BaseModel
    >>> class Job(BaseModel):
    ...     chunk_bp: int
    >>> validate(Job, {"chunk_bp": "many"}, "job.toml")
    Traceback (most recent call last):
    ...
    better.engine.errors.InputError: job.toml: chunk_bp: Input should be a valid integer...
    """
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InputError(f"{Path(path)}: {where}: {first['msg']}") from None


def load_toml(path: str | os.PathLike[str], model: type[M], what: str) -> M:
    """Read ``path`` (:func:`read_toml`) and check it as ``model`` (:func:`validate`): the parameters and
    errors are theirs.

    Examples
    --------
    >>> from better.station_api.config import StationConfig
    >>> load_toml("/nonexistent/station.toml", StationConfig, "station.toml")
    Traceback (most recent call last):
    ...
    better.engine.errors.InputError: /nonexistent/station.toml: no such station.toml
    """
    return validate(model, read_toml(path, what), path)
