"""Open routes: liveness and what this service is (no token needed)."""

from typing import Any

from fastapi import APIRouter

from better.station_api import __version__
from better.station_api.routes.deps import State
from better.wire.arrays import WIRE_VERSION

router = APIRouter(tags=["open"])


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/service-info")
def service_info(state: State) -> dict[str, Any]:
    """GA4GH service-info."""
    return {
        "id": f"org.better.station.{state.name}",
        "name": f"BETTER station {state.name}",
        "type": {"group": "org.better", "artifact": "station", "version": str(WIRE_VERSION)},
        "organization": {"name": state.name, "url": "https://github.com/better-federation"},
        "version": __version__,
    }


@router.get("/info")
def info(state: State) -> dict[str, Any]:
    """What this service is and speaks; the data it holds needs a token (``/station``)."""
    return {
        "name": state.name,
        "software": f"better {__version__}",
        "wire_version": WIRE_VERSION,
        "public_key": state.public_key,
        "agreement_key": state.manager.masking.public_text,
        "analyses": list(state.config().policy.allowed_analyses),
    }
