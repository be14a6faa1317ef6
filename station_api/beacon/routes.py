"""``/beacon``: the station's GA4GH Beacon v2, on the station's own port and over the same store and policy.

Access levels map onto the station's tokens: no token is **PUBLIC** (variant queries over everyone, yes or
no only, where ``[beacon] public = true``), a ``beacon`` token is **REGISTERED** and a researcher's or an
admin's token **CONTROLLED** (both: yes/no and counts, filters, individuals, datasets). The framework's
documents (info, service-info, configuration, map, entry types) are open, as the station's ``/info`` is.
Every answer is computed by station tasks (:mod:`better.station_api.beacon.answers`); every request is
in the audit log. Any error is a Beacon error response with its HTTP status, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from better.engine.errors import BetterError, NotFoundError, StoreError
from better.station_api.auth import authenticate
from better.station_api.beacon import answers, documents
from better.station_api.beacon.requests import (
    GRANULARITIES,
    BeaconRequest,
    BeaconRequestError,
    from_body,
    from_query_string,
)
from better.station_api.config import StationConfig
from better.station_api.routes.catalog import variables
from better.station_api.routes.deps import server_state
from better.station_api.server_state import ServerState, in_thread

log = logging.getLogger("better.station")

router = APIRouter(prefix="/beacon", tags=["beacon"])
_OPEN = {"x-roles": [], "x-beacon": "open"}
_LEVELS = {"x-roles": [], "x-beacon": "public (if allowed), registered, controlled"}
_TOKEN = {"x-roles": [], "x-beacon": "registered, controlled"}


@dataclass(frozen=True)
class Caller:
    """Who asks: the user tasks run as, and the Beacon access level."""

    user: str
    level: str  # PUBLIC, REGISTERED or CONTROLLED
    #: Whom the rate limit counts (anonymous callers by address, not all as one), if not ``user``.
    limit_key: str | None = None


def _caller(request: Request, state: ServerState, needs_token: bool) -> Caller:
    header = request.headers.get("authorization")
    if header is None:
        if needs_token or not state.config().beacon.public:
            raise BeaconRequestError(
                "this needs a token (Authorization: Bearer <token>): a beacon, researcher or admin token "
                "from the station's administrator",
                401,
            )
        host = request.client.host if request.client else "unknown"
        return Caller("(public)", "PUBLIC", f"(public) {host}")
    scheme, _, token = header.partition(" ")
    principal = authenticate(token.strip(), state.config().tokens) if scheme.lower() == "bearer" else None
    if principal is None:
        raise BeaconRequestError("the bearer token is not valid at this station", 401)
    request.state.principal = principal
    return Caller(principal.user, "REGISTERED" if principal.role == "beacon" else "CONTROLLED")


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/beacon"


async def _respond(
    request: Request,
    work: Callable[[ServerState, BeaconRequest], Awaitable[dict[str, Any]]],
    variants: bool | None = None,
) -> JSONResponse:
    """Read the request (a query: ``variants`` says whether it may have variant parameters; None: a
    framework document, which reads none), run ``work``, and answer; any failure becomes a Beacon error."""
    state = server_state(request)
    parsed = BeaconRequest()
    try:
        if not state.config().beacon.enabled:
            raise BeaconRequestError("this station serves no Beacon ([beacon] enabled = false)", 404)
        if variants is None:
            pass
        elif request.method == "POST":
            parsed = from_body(await request.body(), variants)
        else:
            parsed = from_query_string({k: request.query_params.getlist(k) for k in request.query_params}, variants)
        return JSONResponse(await work(state, parsed))
    except BeaconRequestError as exc:
        status, message, headers = exc.status, str(exc), exc.headers
    except NotFoundError as exc:
        status, message, headers = 404, str(exc), {}
    except StoreError:  # (the store's own trouble, e.g. its catalog held by an ingest: not the caller's)
        log.exception("beacon request: the store")
        status, message, headers = 503, "the station's store is busy or unavailable; ask again later", {}
    except BetterError as exc:
        status, message, headers = 400, str(exc), {}
    except Exception:
        log.exception("beacon request failed")
        status, message, headers = 500, "internal error in the station; its administrator can see the log", {}
    if status == 401:
        headers = {**headers, "WWW-Authenticate": "Bearer"}
    return JSONResponse(documents.error(state.config(), parsed, status, message), status_code=status, headers=headers)


def _granularity(requested: str, level: str) -> str:
    """What may be returned: at most count (no records), at most yes or no at the public level."""
    most = "boolean" if level == "PUBLIC" else "count"
    return min(requested, most, key=GRANULARITIES.index)


# -- framework ------------------------------------------------------------------------------------------
#: The framework's documents: path, what it is, and how it is written (from the configuration and the
#: Beacon's base URL). Open to anyone, as the station's own /info is.
_FRAMEWORK: tuple[tuple[str, str, Callable[[StationConfig, str], dict[str, Any]]], ...] = (
    ("", "The Beacon's info: who runs it and what it is.", documents.info),
    ("/info", "The Beacon's info: who runs it and what it is.", documents.info),
    ("/service-info", "GA4GH service-info of the Beacon.", documents.service_info),
    ("/configuration", "Maturity, security levels and entry types.", lambda config, _: documents.configuration(config)),
    ("/map", "Where each entry type is served.", documents.beacon_map),
    ("/entry_types", "The entry types: genomic variants, individuals, datasets.",
     lambda config, _: documents.entry_types_document(config)),
)  # fmt: skip


def _framework_route(build: Callable[[StationConfig, str], dict[str, Any]]) -> Callable[..., Awaitable[JSONResponse]]:
    async def route(request: Request) -> JSONResponse:
        async def work(state: ServerState, _: BeaconRequest) -> dict[str, Any]:
            return build(state.config(), _base_url(request))

        return await _respond(request, work)

    return route


for _path, _summary, _build in _FRAMEWORK:
    router.add_api_route(
        _path,
        _framework_route(_build),
        methods=["GET"],
        openapi_extra=_OPEN,
        summary=_summary,
        operation_id=f"beacon{_path.replace('/', '_').replace('-', '_') or '_root'}",
    )
router.add_api_route("/", _framework_route(documents.info), methods=["GET"], include_in_schema=False)


@router.get("/filtering_terms", openapi_extra=_LEVELS)
async def beacon_filtering_terms(request: Request) -> JSONResponse:
    """The phenotype columns filters may use (names and kinds, no values); a token is needed unless the
    Beacon is public."""

    async def work(state: ServerState, _: BeaconRequest) -> dict[str, Any]:
        _caller(request, state, needs_token=False)
        return documents.filtering_terms(state.config(), await in_thread(_columns, state))

    return await _respond(request, work)


def _columns(state: ServerState) -> dict[str, str]:
    columns: dict[str, str] = {}
    for ds in answers.variant_datasets(state, ()):
        columns.update(variables(ds.phenotypes().schema))
    return columns


# -- answers --------------------------------------------------------------------------------------------
async def _variants(request: Request) -> JSONResponse:
    async def work(state: ServerState, parsed: BeaconRequest) -> dict[str, Any]:
        caller = _caller(request, state, needs_token=False)
        public = caller.level == "PUBLIC"
        if public and parsed.filters:
            raise BeaconRequestError("filters need a token: the public level asks about everyone", 401)
        got = await answers.variant_answers(state, caller.user, parsed, public, caller.limit_key)
        return _answer(state, parsed, "genomicVariant", caller, got)

    return await _respond(request, work, variants=True)


async def _individuals(request: Request) -> JSONResponse:
    async def work(state: ServerState, parsed: BeaconRequest) -> dict[str, Any]:
        caller = _caller(request, state, needs_token=True)
        got = await answers.individual_answers(state, caller.user, parsed, caller.limit_key)
        return _answer(state, parsed, "individual", caller, got)

    return await _respond(request, work, variants=False)


def _answer(
    state: ServerState, parsed: BeaconRequest, entity: str, caller: Caller, got: list[answers.DatasetAnswer]
) -> dict[str, Any]:
    summary = answers.answer_summary(got)
    granularity = _granularity(parsed.granularity, caller.level)
    info: dict[str, Any] = {"accessLevel": caller.level}
    if granularity == "count" and summary["total"] is None:
        granularity = "boolean"
        info["withheld"] = (
            "the count is withheld by the station's policy (it would describe fewer than min_cell_count "
            "people, alone or with earlier answers); the answer says only whether there are any"
        )
    info["datasets"] = [
        {"id": a.dataset, "exists": a.exists, **({"count": a.count} if granularity == "count" else {})} for a in got
    ]
    if caller.level == "PUBLIC":
        info["publicRule"] = "an allele seen fewer than min_minor_allele_count times answers no at the public level"
    return documents.answer(state.config(), parsed, entity, granularity, summary["exists"], summary["total"], info)


def _add_query_route(
    path: str, route: Callable[[Request], Awaitable[JSONResponse]], extra: dict[str, Any], summary: str
) -> None:
    """``path`` answered by ``route`` for GET (a query string) and POST (a Beacon request body)."""
    for method in ("GET", "POST"):
        name = f"beacon_{path.strip('/')}_{method.lower()}"
        router.add_api_route(path, route, methods=[method], openapi_extra=extra, summary=summary, operation_id=name)


_add_query_route(
    "/g_variants", _variants, _LEVELS, "Genomic variants: whether (and how many) the selected individuals carry"
)
_add_query_route("/individuals", _individuals, _TOKEN, "Individuals: whether (and how many) match the filters")


async def _datasets(request: Request) -> JSONResponse:
    async def work(state: ServerState, parsed: BeaconRequest) -> dict[str, Any]:
        _caller(request, state, needs_token=True)
        records = []
        for d in await in_thread(state.store.summary):
            if d["kind"] != "variants" or (parsed.datasets and d["name"] not in parsed.datasets):
                continue
            created = d["created_at"].isoformat() if hasattr(d["created_at"], "isoformat") else str(d["created_at"])
            records.append(
                {
                    "id": d["name"],
                    "name": d["name"],
                    "description": f"variants of {len(d['chromosomes'])} chromosome(s), with phenotypes",
                    "createDateTime": created,
                    "updateDateTime": created,
                }
            )
        return documents.collections(state.config(), parsed, records)

    return await _respond(request, work, variants=False)


_add_query_route("/datasets", _datasets, _TOKEN, "The station's datasets of variants (descriptions, not data)")
