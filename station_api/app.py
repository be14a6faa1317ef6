"""The station's HTTP API (FastAPI): what a hospital runs so that analyses can come to its data.

Open routes: ``/health`` and service metadata (``/service-info``, ``/info``, the OpenAPI document).
Everything else needs a bearer token; researchers submit tasks and read their own results, admins read
the audit log, decide approvals and set the policy. Every request but the health probe and the docs
is written to the audit log, with the caller, the route and the outcome.

:func:`create_app` only assembles: the shared state (:mod:`better.station_api.server_state`), the
middleware and error handlers (:mod:`better.station_api.middleware`) and one router per audience
(:mod:`better.station_api.routes`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from better.station_api import __version__
from better.station_api.beacon import routes as beacon
from better.station_api.middleware import AuditRequests, BodyLimit, add_error_handlers
from better.station_api.routes import admin, catalog, info, tasks
from better.station_api.server_state import ServerState
from better.wire.signed_requests import LOOPBACK


def create_app(station_dir: Path) -> FastAPI:
    """The FastAPI application of a station.

    Parameters
    ----------
    station_dir : Path
        The station directory (a store with ``station.toml``).

    Returns
    -------
    FastAPI
        The application, its :class:`~better.station_api.server_state.ServerState` on ``app.state.station``.
    """
    state = ServerState(station_dir)
    app = FastAPI(
        title=f"BETTER station {state.name}",
        version=__version__,
        description="A BETTER station: federated genomics where only policy-checked aggregates leave.",
        lifespan=_lifespan,
    )
    app.state.station = state
    # The last added runs first: the audit sees every answer, the size limit's 413 included.
    app.add_middleware(BodyLimit, limit=state.config().server.max_request_mib << 20)
    app.add_middleware(AuditRequests, audit=state.audit)
    add_error_handlers(app)
    for router in (info.router, catalog.router, tasks.router, admin.router, beacon.router):
        app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.station
    state.start()
    yield
    state.stop()


def check_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (the safe default for ``better station serve``).

    Parameters
    ----------
    host : str
        The address ``better station serve`` is to listen on.

    Returns
    -------
    bool
        True for 127.0.0.1, ::1 and localhost.
    """
    return host in LOOPBACK
