"""Validate documents against the vendored GA4GH Beacon v2 schemas (``tests/beacon_schemas``), offline.

The schemas are byte-for-byte copies from beacon-v2 v2.1.1 (see ``tests/beacon_schemas/README.md``). They
carry no ``$id``, so each file is registered under its own ``file:`` URI and its relative ``$ref``s resolve
next to it. A ``$ref`` to ``https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/<ref>/<path>`` is
served from the local copy of ``<path>``; any other reference that is not a vendored file is refused, so
validation never touches the network.

Formats: jsonschema's stock ``FormatChecker`` checks ``date-time`` and ``uri`` only when optional packages
(rfc3339-validator, rfc3987) happen to be installed, which would make the result depend on the environment.
This module checks exactly two formats itself, the same everywhere: ``date-time`` (RFC 3339: date, ``T``,
time, ``Z`` or a numeric offset) and ``uri`` (an absolute URI: a scheme, ``:``, no spaces or characters
RFC 3986 forbids). No upstream example fails on either. The other formats the schemas name
(``uri-template``, ``int32``) are not checked.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, ValidationError  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_ROOT = Path(__file__).resolve().parent / "beacon_schemas"
"""The vendored tree: ``framework/json/...`` and ``models/json/...`` as in the beacon-v2 repository."""

SCHEMA_DIRS = ("framework", "models")
"""The folders under ``SCHEMA_ROOT`` that hold schemas (``examples/`` holds instances, not schemas)."""

_BEACON_REMOTE = re.compile(
    r"^https://raw\.githubusercontent\.com/ga4gh-beacon/beacon-v2/[^/]+/(?P<path>(?:framework|models)/json/[^#?]+)$"
)

ALIASES = {
    # beacon-v2 v2.1.1 bug: models/json/beacon-v2-default-model/datasets/defaultSchema.json (and the other
    # entry models) refer to "../common/info.json", which the models tree lacks; the framework's info.json
    # is the schema meant (a free-form object).
    "models/json/beacon-v2-default-model/common/info.json": "framework/json/common/info.json",
}
"""Paths (relative to ``SCHEMA_ROOT``) that upstream ``$ref``s name but do not exist, and the file served."""

_RFC3339 = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<time>\d{2}:\d{2}:\d{2})(?:\.\d+)?(?:[Zz]|[+-](?P<oh>\d{2}):(?P<om>\d{2}))$"
)
_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]*$")

FORMAT_CHECKER = FormatChecker(formats=())
"""Checks ``date-time`` and ``uri`` (see the module docstring); every other format passes."""


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _RFC3339.fullmatch(value)
    if match is None:
        return False
    # A leap second (:60) is valid RFC 3339; datetime knows no such second.
    datetime.fromisoformat(f"{match['date']}T{match['time'].replace(':60', ':59')}")
    return match["oh"] is None or (int(match["oh"]) <= 23 and int(match["om"]) <= 59)


def _is_uri(value: object) -> bool:
    return not isinstance(value, str) or _ABSOLUTE_URI.fullmatch(value) is not None


FORMAT_CHECKER.checks("date-time", raises=ValueError)(_is_date_time)
FORMAT_CHECKER.checks("uri")(_is_uri)


class BeaconSchemaError(AssertionError):
    """An instance does not validate; the message lists every error, ``errors`` holds them."""

    def __init__(self, schema: str, errors: list[ValidationError]) -> None:
        self.schema = schema
        self.errors = errors
        lines = [f"{len(errors)} error(s) against {schema}:"]
        lines += [f"  at {_instance_path(error)}: {error.message}" for error in errors]
        super().__init__("\n".join(lines))


def _instance_path(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def schema_uri(schema: str) -> str:
    """The URI under which the vendored schema ``schema`` (a path relative to ``SCHEMA_ROOT``) is registered.

    Parameters
    ----------
    schema : str
        A path relative to ``SCHEMA_ROOT``, e.g. ``"framework/json/responses/beaconCountResponse.json"``.

    Returns
    -------
    str
        The file's ``file:`` URI.

    Raises
    ------
    FileNotFoundError
        When ``schema`` is not a vendored schema file.
    """
    return _vendored(schema).as_uri()


def _vendored(schema: str) -> Path:
    path = (SCHEMA_ROOT / schema).resolve()
    inside = path.is_relative_to(SCHEMA_ROOT) and path.relative_to(SCHEMA_ROOT).parts[0] in SCHEMA_DIRS
    if not (inside and path.is_file() and path.suffix == ".json"):
        raise FileNotFoundError(f"not a vendored Beacon schema: {schema!r} (under {SCHEMA_ROOT})")
    return path


def schema_files() -> list[str]:
    """Every vendored schema, as paths relative to ``SCHEMA_ROOT``, sorted."""
    return sorted(p.relative_to(SCHEMA_ROOT).as_posix() for d in SCHEMA_DIRS for p in (SCHEMA_ROOT / d).rglob("*.json"))


def _resource(path: Path) -> Resource[Any]:
    return DRAFT202012.create_resource(json.loads(path.read_text(encoding="utf-8")))


def local_path(uri: str) -> str | None:
    """The vendored schema that serves ``uri``, if any.

    Parameters
    ----------
    uri : str
        An absolute URI without fragment: a vendored file's ``file:`` URI, a path listed in ``ALIASES``, or
        ``https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/<any ref>/<path>``.

    Returns
    -------
    str or None
        The file's path relative to ``SCHEMA_ROOT``, or None when no vendored schema serves ``uri``.
    """
    relative: str | None = None
    remote = _BEACON_REMOTE.fullmatch(uri)
    if remote is not None:
        relative = remote["path"]
    elif uri.startswith(SCHEMA_ROOT.as_uri() + "/"):
        relative = uri.removeprefix(SCHEMA_ROOT.as_uri() + "/")
    if relative is None:
        return None
    try:
        return _vendored(ALIASES.get(relative, relative)).relative_to(SCHEMA_ROOT).as_posix()
    except FileNotFoundError:
        return None


def _retrieve(uri: str) -> Resource[Any]:
    """Serve a URI that the registry does not hold from its local copy (``local_path``); refuse any other."""
    relative = local_path(uri)
    if relative is None:
        raise LookupError(f"refusing to retrieve {uri!r}: not a vendored Beacon v2 schema (no network is used)")
    return _resource(SCHEMA_ROOT / relative)


@cache
def registry() -> Registry[Any]:
    """The registry of every vendored schema under its ``file:`` URI, with the offline retrieve function.

    Returns
    -------
    referencing.Registry
        Holds every file of ``schema_files()``; a remote beacon-v2 URI or an ``ALIASES`` path is served
        from the local copy on first use, and any other unknown URI raises ``referencing.exceptions.Unresolvable``.
    """
    resources = [(schema_uri(name), _resource(SCHEMA_ROOT / name)) for name in schema_files()]
    return Registry(retrieve=_retrieve).with_resources(resources)  # type: ignore[call-arg]


@cache
def _validator(schema: str) -> Any:
    return Draft202012Validator({"$ref": schema_uri(schema)}, registry=registry(), format_checker=FORMAT_CHECKER)


def validate(instance: object, schema: str) -> None:
    """Check ``instance`` against a vendored Beacon v2 schema, offline, reporting every error.

    Parameters
    ----------
    instance : object
        The decoded JSON document (e.g. ``response.json()``).
    schema : str
        A path relative to ``tests/beacon_schemas/``, e.g. ``"framework/json/responses/beaconCountResponse.json"``.

    Raises
    ------
    BeaconSchemaError
        An ``AssertionError`` whose message lists each error as its path in the instance (``$.meta.apiVersion``)
        and jsonschema's message; ``.errors`` holds the ``jsonschema.ValidationError`` objects.
    FileNotFoundError
        When ``schema`` is not a vendored schema.
    referencing.exceptions.Unresolvable
        When validation reaches a ``$ref`` that is neither vendored nor mapped (it is never fetched).

    Examples
    --------
    >>> try:
    ...     validate({"meta": {}, "error": {"errorCode": 404}}, "framework/json/responses/beaconErrorResponse.json")
    ... except BeaconSchemaError as error:
    ...     print(error)
    5 error(s) against framework/json/responses/beaconErrorResponse.json:
      at $.meta: 'apiVersion' is a required property
      at $.meta: 'beaconId' is a required property
      at $.meta: 'receivedRequestSummary' is a required property
      at $.meta: 'returnedGranularity' is a required property
      at $.meta: 'returnedSchemas' is a required property
    """
    errors = sorted(
        _validator(schema).iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message)
    )
    if errors:
        raise BeaconSchemaError(schema, errors)
