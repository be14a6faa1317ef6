"""``station.toml``: a station's name and disclosure-control policy, with safe defaults.

Tokens are added by ``better station token`` and stored only as salted hashes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import StoreError

CONFIG_FILE = "station.toml"
ANALYSES = ("count", "freq", "hwe", "gwas_linear", "gwas_logistic")


class Policy(BaseModel):
    """What may leave the station. Every value errs on the side of the patient."""

    model_config = ConfigDict(extra="forbid")

    min_cell_count: int = Field(5, ge=1, description="counts below this are withheld")
    min_minor_allele_count: int = Field(5, ge=0, description="local MAC needed for per-variant statistics")
    allowed_analyses: list[str] = Field(default_factory=lambda: list(ANALYSES))
    max_variants_per_task: int = Field(1_000_000, ge=1)
    rate_limit_per_minute: int = Field(60, ge=1)
    approval: Literal["auto", "manual"] = "auto"


class StationConfig(BaseModel):
    """The whole of ``station.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    policy: Policy = Field(default_factory=lambda: Policy())
    tokens: list[dict[str, str]] = Field(default_factory=list)


def write_config(station: Path, config: StationConfig) -> Path:
    """Write ``station.toml`` (atomically, via a temporary file)."""
    path = station / CONFIG_FILE
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(config.model_dump()))
    tmp.replace(path)
    return path


def read_config(station: Path) -> StationConfig:
    """Read and validate ``station.toml``, naming the bad key on error."""
    path = station / CONFIG_FILE
    if not path.is_file():
        raise StoreError(
            f"{station}: no {CONFIG_FILE}; create the station with "
            f"`better station init --station {station} --name NAME`"
        )
    try:
        return StationConfig.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise StoreError(f"{path}: not valid TOML ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StoreError(f"{path}: {where}: {first['msg']}") from None


def check_station_name(name: str) -> str:
    """Refuse names that cannot serve as identifiers in federation files and outputs."""
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", name):
        raise StoreError(f"station name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter")
    return name
