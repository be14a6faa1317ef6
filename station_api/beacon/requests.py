"""A Beacon v2 request, read from a GET query string or a POST body, every field checked.

Everything here comes from anyone on the network: each value is bounded, an unknown parameter is an error
(a misspelt ``alternateBase`` silently ignored would answer another question), and every error says which
parameter is wrong and how to write it. Filters are alphanumeric filters over the datasets' phenotype
columns: ``{"id": "age", "operator": ">", "value": "60"}`` in a POST body, ``age>60`` in a GET query.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from better.engine.errors import InputError
from better.genomics.allele_query import AlleleQuery
from better.wire.messages import MAX_CONDITIONS

#: What a Beacon's default granularity is, and the order granularities come in.
GRANULARITIES = ("boolean", "count", "record")
#: Largest POST body a Beacon request may have.
MAX_BODY_BYTES = 64 << 10
#: Variant parameters of the Beacon model this Beacon answers, and those it knows but does not answer.
VARIANT_PARAMETERS = (
    "referenceName",
    "start",
    "end",
    "referenceBases",
    "alternateBases",
    "variantType",
    "assemblyId",
    "variantMinLength",
    "variantMaxLength",
)
UNSUPPORTED_PARAMETERS = ("geneId", "aminoacidChange", "genomicAlleleShortForm", "mateName")
#: Parameters of the request itself (not of the query).
REQUEST_PARAMETERS = (
    "requestedGranularity",
    "filters",
    "skip",
    "limit",
    "includeResultsetResponses",
    "testMode",
    "datasetIds",
    "requestedSchemas",
)
#: GET parameters that take several values (repeated, or separated by commas).
LISTS = ("start", "end", "filters", "datasetIds")
_OPERATORS = {"=": "=", "!": "!=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_FILTER_TEXT = re.compile(r"^(?P<id>[A-Za-z_][A-Za-z0-9_.-]{0,63})(?P<op>!=|<=|>=|=|!|<|>)(?P<value>.{1,256})$")
_DATASET = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class BeaconRequestError(InputError):
    """A request this Beacon cannot read; answered as a Beacon error with ``status``."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass(frozen=True)
class Filter:
    """An alphanumeric filter: phenotype column, operator (``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``),
    value as sent (text; a numeric column reads it as a number)."""

    column: str
    op: str
    value: str


@dataclass(frozen=True)
class BeaconRequest:
    """A request as this Beacon understood it, and what it echoes in ``receivedRequestSummary``."""

    granularity: str = "boolean"
    filters: tuple[Filter, ...] = ()
    variant: AlleleQuery | None = None
    assembly: str | None = None
    datasets: tuple[str, ...] = ()
    skip: int = 0
    limit: int = 10
    include: str = "HIT"
    test_mode: bool = False
    #: The request parameters and filters as received (for the summary), JSON values.
    parameters: dict[str, Any] = field(default_factory=dict)
    raw_filters: tuple[str, ...] = ()

    def summary(self, api_version: str) -> dict[str, Any]:
        """The response's ``meta.receivedRequestSummary``."""
        out: dict[str, Any] = {
            "apiVersion": api_version,
            "requestedSchemas": [],
            "pagination": {"skip": self.skip, "limit": self.limit},
            "requestedGranularity": self.granularity,
            "includeResultsetResponses": self.include,
        }
        if self.raw_filters:
            out["filters"] = list(self.raw_filters)
        if self.parameters:
            out["requestParameters"] = {"g_variant": self.parameters}
        if self.test_mode:
            out["testMode"] = True
        return out


def from_query_string(params: Mapping[str, list[str]], variants: bool) -> BeaconRequest:
    """Read a GET request's query string (each name with its values).

    Parameters
    ----------
    params : Mapping[str, list[str]]
        Every query parameter and its values (a repeated name has several).
    variants : bool
        Whether the endpoint takes variant parameters (``/g_variants``).

    Returns
    -------
    BeaconRequest
        The request.

    Raises
    ------
    BeaconRequestError
        An unknown parameter, or a value that cannot be read.
    """
    values: dict[str, Any] = {}
    for name, given in params.items():
        if len(given) != 1 and name not in LISTS:
            raise BeaconRequestError(f"query parameter {name!r} is given {len(given)} times; give it once")
        values[name] = [p for g in given for p in g.split(",") if p != ""] if name in LISTS else given[0]
    request = {k: v for k, v in values.items() if k in REQUEST_PARAMETERS}
    query = {k: v for k, v in values.items() if k not in REQUEST_PARAMETERS}
    return _build(request, query, variants)


def from_body(body: bytes, variants: bool) -> BeaconRequest:
    """Read a POST request's JSON body (``{"meta": ..., "query": {"requestParameters": ..., "filters":
    ..., "requestedGranularity": ..., "pagination": ...}}``).

    Parameters
    ----------
    body : bytes
        The request body (an empty body is a request without parameters).
    variants : bool
        Whether the endpoint takes variant parameters.

    Returns
    -------
    BeaconRequest
        The request.

    Raises
    ------
    BeaconRequestError
        A body that is not such JSON, or any field that cannot be read.
    """
    if len(body) > MAX_BODY_BYTES:
        raise BeaconRequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
    if not body.strip():
        return _build({}, {}, variants)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # (JSONDecodeError and UnicodeDecodeError are ValueErrors, as are
        # integers of more than 4300 digits)
        raise BeaconRequestError("the body is not JSON: send a Beacon request body {meta, query}") from None
    if not isinstance(doc, dict):
        raise BeaconRequestError("the body must be a JSON object with meta and query")
    unknown = set(doc) - {"meta", "query", "$schema"}
    if unknown:
        raise BeaconRequestError(f"unknown field(s) in the body: {', '.join(sorted(unknown))}; use meta and query")
    query = doc.get("query", {})
    if not isinstance(query, dict):
        raise BeaconRequestError("query must be an object")
    known = {"requestParameters", "filters", "requestedGranularity", "pagination", "includeResultsetResponses"}
    unknown = set(query) - known - {"testMode"}
    if unknown:
        raise BeaconRequestError(f"unknown field(s) in query: {', '.join(sorted(unknown))}")
    parameters = query.get("requestParameters", {})
    if isinstance(parameters, list):  # some clients send a one-element list
        parameters = parameters[0] if len(parameters) == 1 and isinstance(parameters[0], dict) else None
    if not isinstance(parameters, dict):
        raise BeaconRequestError("query.requestParameters must be an object")
    pagination = query.get("pagination", {})
    if not isinstance(pagination, dict):
        raise BeaconRequestError("query.pagination must be an object with skip and limit")
    request = {
        k: v
        for k, v in {
            "requestedGranularity": query.get("requestedGranularity"),
            "filters": query.get("filters"),
            "skip": pagination.get("skip"),
            "limit": pagination.get("limit"),
            "includeResultsetResponses": query.get("includeResultsetResponses"),
            "testMode": query.get("testMode"),
        }.items()
        if v is not None
    }
    parameters = dict(parameters)
    if "datasetIds" in parameters:
        request["datasetIds"] = parameters.pop("datasetIds")
    if isinstance(parameters.get("datasets"), dict):
        request["datasetIds"] = parameters.pop("datasets").get("datasetIds", [])
    return _build(request, parameters, variants)


def _build(request: dict[str, Any], query: dict[str, Any], variants: bool) -> BeaconRequest:
    allowed = VARIANT_PARAMETERS if variants else ()
    for name in query:
        if name in UNSUPPORTED_PARAMETERS and variants:
            raise BeaconRequestError(f"{name} queries are not supported by this Beacon; query by position")
        if name not in allowed:
            hint = f"; this endpoint takes {', '.join(allowed + REQUEST_PARAMETERS)}"
            raise BeaconRequestError(f"unknown parameter {str(name)[:64]!r}{hint}")
    granularity = _text(request, "requestedGranularity", 16) or "boolean"
    if granularity not in GRANULARITIES:
        raise BeaconRequestError(f"requestedGranularity: one of {', '.join(GRANULARITIES)}")
    include = _text(request, "includeResultsetResponses", 8) or "HIT"
    if include not in ("ALL", "HIT", "MISS", "NONE"):
        raise BeaconRequestError("includeResultsetResponses: one of ALL, HIT, MISS, NONE")
    raw_filters = request.get("filters", [])
    if not isinstance(raw_filters, list) or len(raw_filters) > MAX_CONDITIONS:
        raise BeaconRequestError(f"filters: a list of at most {MAX_CONDITIONS} filters")
    filters = tuple(_filter(f) for f in raw_filters)
    datasets = request.get("datasetIds", [])
    if isinstance(datasets, str):
        datasets = [datasets]
    if (
        not isinstance(datasets, list)
        or len(datasets) > 64
        or not all(isinstance(d, str) and _DATASET.match(d) for d in datasets)
    ):
        raise BeaconRequestError(
            "datasetIds: up to 64 dataset ids (letters, digits, _ or -), as /beacon/datasets lists"
        )
    variant = _variant(query) if variants and query else None
    assembly = _text(query, "assemblyId", 64)
    return BeaconRequest(
        granularity=granularity,
        filters=filters,
        variant=variant,
        assembly=assembly,
        datasets=tuple(dict.fromkeys(datasets)),
        skip=_integer(request, "skip", 0, 0, 10**9),
        limit=_integer(request, "limit", 10, 0, 10**6),
        include=include,
        test_mode=_boolean(request, "testMode"),
        parameters=_echo(variant, assembly),
        raw_filters=tuple(f"{f.column}{f.op}{f.value}" for f in filters),
    )


def _echo(variant: AlleleQuery | None, assembly: str | None) -> dict[str, Any]:
    """The variant parameters as understood (for the summary): checked values only, never raw input."""
    if variant is None:
        return {}
    out: dict[str, Any] = {"referenceName": variant.reference_name, "start": list(variant.start)}
    for name, value in (
        ("end", list(variant.end) or None),
        ("referenceBases", variant.reference_bases),
        ("alternateBases", variant.alternate_bases),
        ("variantType", variant.variant_type),
        ("variantMinLength", variant.min_length),
        ("variantMaxLength", variant.max_length),
        ("assemblyId", assembly),
    ):
        if value is not None:
            out[name] = value
    return out


def _variant(query: dict[str, Any]) -> AlleleQuery:
    name = _text(query, "referenceName", 64)
    if name is None or "start" not in query:
        raise BeaconRequestError(
            "a variant query needs referenceName and start (0-based), with alternateBases, or with end for a range"
        )
    try:
        return AlleleQuery(
            reference_name=name,
            start=_positions(query, "start"),
            end=_positions(query, "end") if "end" in query else (),
            reference_bases=_text(query, "referenceBases", 1000),
            alternate_bases=_text(query, "alternateBases", 1000),
            variant_type=_text(query, "variantType", 64),
            min_length=_integer(query, "variantMinLength", None, 0, 2**62),
            max_length=_integer(query, "variantMaxLength", None, 0, 2**62),
        )
    except BeaconRequestError:
        raise
    except InputError as exc:
        raise BeaconRequestError(str(exc)) from None


def _positions(query: dict[str, Any], name: str) -> tuple[int, ...]:
    raw = query[name]
    items = raw if isinstance(raw, list) else [raw]
    if not 1 <= len(items) <= 2:
        raise BeaconRequestError(f"{name}: one or two 0-based positions")
    out = []
    for item in items:
        value = _as_int(item)
        if value is None or not 0 <= value < 2**62:
            raise BeaconRequestError(f"{name}: {str(item)[:32]!r} is not a 0-based position (a whole number from 0)")
        out.append(value)
    return tuple(out)


def _as_int(item: object) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, str) and re.fullmatch(r"[0-9]{1,19}", item.strip()):
        return int(item)
    return None


def _integer(d: dict[str, Any], name: str, default: int | None, low: int, high: int) -> Any:
    if name not in d:
        return default
    value = _as_int(d[name])
    if value is None or not low <= value <= high:
        raise BeaconRequestError(f"{name}: a whole number from {low} to {high}")
    return value


def _text(d: dict[str, Any], name: str, longest: int) -> str | None:
    if name not in d or d[name] is None:
        return None
    value = d[name]
    if not isinstance(value, str) or not 0 < len(value) <= longest or not _printable(value):
        raise BeaconRequestError(f"{name}: printable text of 1 to {longest} characters")
    return value


def _printable(text: str) -> bool:
    """Text that can be echoed back: printable, and valid UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return text.isprintable()


def _boolean(d: dict[str, Any], name: str) -> bool:
    value = d.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise BeaconRequestError(f"{name}: true or false")


def _filter(item: object) -> Filter:
    """One filter from a POST object or a GET ``idOPvalue`` text."""
    if isinstance(item, str):
        m = _FILTER_TEXT.match(item.strip())
        if m is None:
            raise BeaconRequestError(
                f"filter {item[:64]!r}: this Beacon filters on phenotype columns, written column<op>value "
                "(e.g. age>60, sex=1; op one of = ! < <= > >=); /beacon/filtering_terms lists the columns"
            )
        column, op, value = m["id"], m["op"], m["value"]
    elif isinstance(item, dict):
        unknown = set(item) - {"id", "operator", "value", "scope", "includeDescendantTerms", "similarity"}
        column, op, value = item.get("id"), item.get("operator", "="), item.get("value")
        if unknown or not isinstance(column, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", column):
            raise BeaconRequestError(
                'a filter is {"id": COLUMN, "operator": OP, "value": VALUE} over a phenotype column '
                "(/beacon/filtering_terms lists them)"
            )
        if value is None:
            raise BeaconRequestError(
                f"filter {column!r}: this Beacon has no ontology or custom filters; give an operator and a value"
            )
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or len(str(value)) > 256:
            raise BeaconRequestError(f"filter {column!r}: the value is text or a number (up to 256 characters)")
        value = str(value)
        if not isinstance(op, str) or op not in _OPERATORS:
            raise BeaconRequestError(f"filter {column!r}: operator one of = ! < <= > >=")
    else:
        raise BeaconRequestError("a filter is a text (column<op>value) or an object {id, operator, value}")
    if not _printable(value):
        raise BeaconRequestError(f"filter {column!r}: the value must be printable text")
    if "%" in value:
        raise BeaconRequestError(f"filter {column!r}: wildcards (%) are not supported; give the exact value")
    return Filter(column, _OPERATORS[op], value)
