"""What wraps every route of the station server: the request size limit, the audit of each request, and
errors as clear JSON messages (never a traceback).
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from better.engine.errors import BetterError, NotFoundError
from better.station_api.audit import AuditLog
from better.station_api.policy import PolicyRefusalError
from better.station_api.server_state import in_thread

log = logging.getLogger("better.station")

#: Paths not written to the audit log: the health probe and the API's documentation.
UNAUDITED = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes, whether declared or streamed, with a 413.

    Parameters
    ----------
    app : ASGIApp
        The application it wraps.
    limit : int
        The largest request body accepted, in bytes.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(self.limit, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            await _too_large(self.limit, send)


class _BodyTooLargeError(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    body = (
        f'{{"detail":"request body over {limit} bytes; send fewer variants per task (a region) or raise '
        f'[server] max_request_mib in station.toml"}}'
    ).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class AuditRequests(BaseHTTPMiddleware):
    """Write every request but those to :data:`UNAUDITED` to the audit log: caller, route and outcome.

    Parameters
    ----------
    app : ASGIApp
        The application it wraps.
    audit : AuditLog
        The station's audit log.
    """

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        super().__init__(app)
        self.audit = audit

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Answer ``request``, then log it (the caller is the token's user, or ``anonymous``)."""
        start = time.perf_counter()
        response = await call_next(request)
        if request.url.path not in UNAUDITED:
            principal = getattr(request.state, "principal", None)
            detail = {
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "ms": round(1000 * (time.perf_counter() - start), 1),
                "client": request.client.host if request.client else None,
            }
            actor = principal.user if principal else "anonymous"
            await in_thread(self.audit.append, actor, "http", detail)
        return response


def add_error_handlers(app: FastAPI) -> None:
    """Answer errors with a JSON message that says what to fix.

    Invalid requests get 422 (at most 20 problems, each with where and what), policy refusals 403 with
    the rule, unknown datasets or tasks 404, other input errors 422, and anything unexpected 500 with a
    pointer to the server log (where the traceback goes).

    Parameters
    ----------
    app : FastAPI
        The station's application.
    """
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(PolicyRefusalError)(_refused)
    app.exception_handler(NotFoundError)(_not_found)
    app.exception_handler(BetterError)(_bad_input)
    app.exception_handler(Exception)(_internal)


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "invalid")}
        for e in exc.errors()[:20]
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _refused(_: Request, exc: PolicyRefusalError) -> JSONResponse:
    return JSONResponse({"detail": {"rule": exc.rule, "message": str(exc)}}, status_code=403)


async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _bad_input(_: Request, exc: BetterError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "internal error in the station; its administrator can see the log"}, 500)
