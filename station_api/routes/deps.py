"""The FastAPI dependencies the routers share: the server state, the caller, and the role a route needs.

A route takes ``who: Researcher`` (or ``Admin``, ``Anyone``) to require a bearer token of that role, and
``state: State`` for the station's shared state. No token or a bad one gives 401, the wrong role 403.
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at route definition time.

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from better.station_api.auth import Principal, authenticate
from better.station_api.server_state import ServerState

bearer = HTTPBearer(auto_error=False, description="a token from `better station token`")

#: A task id path parameter.
TaskId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="task id as returned on submission")]


def server_state(request: Request) -> ServerState:
    """The station's shared state (``app.state.station``).

    Parameters
    ----------
    request : Request
        The request being answered.

    Returns
    -------
    ServerState
        What :func:`better.station_api.app.create_app` opened.
    """
    state: ServerState = request.app.state.station
    return state


State = Annotated[ServerState, Depends(server_state)]


def caller(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """Who is calling, from the bearer token (checked against ``station.toml`` as it is now).

    Parameters
    ----------
    request : Request
        The request; the principal is kept on its state for the audit log.
    creds : HTTPAuthorizationCredentials or None
        The ``Authorization: Bearer`` header, if any.

    Returns
    -------
    Principal
        The token's user and role.

    Raises
    ------
    HTTPException
        401 when there is no token or it is not valid here.
    """
    principal = authenticate(creds.credentials if creds else None, server_state(request).config().tokens)
    if principal is None:
        raise HTTPException(
            401,
            "a valid bearer token is needed (Authorization: Bearer <token> from `better station token`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    return principal


def role(*allowed: str) -> Callable[..., Principal]:
    """A dependency that admits callers with one of the ``allowed`` roles.

    Parameters
    ----------
    *allowed : str
        The roles admitted (``researcher``, ``admin``).

    Returns
    -------
    Callable
        The dependency: the caller, or 403 naming the role needed.
    """

    def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        if principal.role not in allowed:
            raise HTTPException(
                403, f"this route needs the {' or '.join(allowed)} role; your token is {principal.role}"
            )
        return principal

    return check


Researcher = Annotated[Principal, Depends(role("researcher"))]
Admin = Annotated[Principal, Depends(role("admin"))]
Anyone = Annotated[Principal, Depends(role("researcher", "admin"))]
