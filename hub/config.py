"""``hub.toml``: how a hub runs, and which researchers it relays for."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from better.engine.errors import StoreError
from better.station_api.tomlfile import load_toml

CONFIG_FILE = "hub.toml"

SigningKey = Annotated[str, StringConstraints(pattern=r"^ed25519:[A-Za-z0-9+/]{43}=$")]


class Limits(BaseModel):
    """Bounds on what the hub accepts and keeps."""

    model_config = ConfigDict(extra="forbid")

    max_message_mib: int = Field(512, ge=1, le=590, description="largest reply accepted")
    max_task_mib: int = Field(
        260, ge=1, le=590, description="largest task envelope accepted (a station takes requests up to 256 MiB)"
    )
    max_delivery_mib: int = Field(64, ge=1, le=590, description="envelopes handed to a station in one answer")
    max_waiting_per_station: int = Field(2000, ge=1, le=1_000_000, description="tasks queued for one station")
    max_waiting_mib_per_station: int = Field(4096, ge=1, description="bytes of tasks queued for one station")
    max_waiting_per_researcher: int = Field(1000, ge=1, le=1_000_000, description="tasks one key has waiting")
    lease_seconds: int = Field(120, ge=5, le=3600, description="a task handed to a station is queued again after")
    reply_ttl_seconds: int = Field(86_400, ge=60, description="replies nobody fetched are deleted after this")
    max_wait_seconds: int = Field(30, ge=1, le=120, description="longest a long-poll is held open")
    max_connections: int = Field(1000, ge=10, le=100_000, description="connections served at once")


class HubConfig(BaseModel):
    """The whole of ``hub.toml``."""

    model_config = ConfigDict(extra="forbid")

    researchers: Literal["open", "enrolled"] = Field(
        "open",
        description="open: any researcher key may queue tasks (the stations decide, by their tokens, sealed inside); "
        "enrolled: only the keys in [researcher_keys]",
    )
    researcher_keys: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")], SigningKey] = Field(
        default_factory=dict, description='name = ed25519 key, for researchers = "enrolled"'
    )
    limits: Limits = Field(default_factory=lambda: Limits())


def write_config(hub: Path, config: HubConfig) -> Path:
    """Write ``hub.toml`` atomically."""
    path = hub / CONFIG_FILE
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(config.model_dump()))
    tmp.replace(path)
    return path


def read_config(hub: Path) -> HubConfig:
    """Read and validate ``hub.toml``, naming the bad key on error."""
    path = hub / CONFIG_FILE
    if not path.is_file():
        raise StoreError(f"{hub}: no {CONFIG_FILE}; create the hub with `better hub init --hub {hub}`")
    return load_toml(path, HubConfig, CONFIG_FILE)
