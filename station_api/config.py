"""``station.toml``: a station's name and disclosure-control policy, with safe defaults.

Tokens are added by ``better station token`` and stored only as salted hashes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from better.engine.analyses import analyses
from better.engine.errors import StoreError
from better.station_api.tomlfile import load_toml
from better.wire.messages import AnalysisName

CONFIG_FILE = "station.toml"
ROLES = ("researcher", "admin", "beacon")


StationName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
AgreementKey = Annotated[str, StringConstraints(pattern=r"^x25519:[A-Za-z0-9+/]{43}=$")]


class Policy(BaseModel):
    """What may leave the station. Every value errs on the side of the patient."""

    model_config = ConfigDict(extra="forbid")

    min_cell_count: int = Field(5, ge=1, le=1000, description="no released combination may describe fewer people")
    min_minor_allele_count: int = Field(
        5, ge=0, le=1000, description="a variant's minor allele seen fewer times (but some) is withheld"
    )
    allowed_analyses: list[AnalysisName] = Field(default_factory=lambda: list(analyses()))
    max_variants_per_task: int = Field(1_000_000, ge=1, le=100_000_000)
    rate_limit_per_minute: int = Field(
        600,
        ge=1,
        le=100_000,
        description="task rounds per user per minute (a logistic GWAS takes about 10 to 60 rounds)",
    )
    approval: Literal["auto", "manual"] = "auto"
    min_cases: int = Field(5, ge=1, le=100_000, description="a binary trait needs this many cases (or none)")
    min_controls: int = Field(5, ge=1, le=100_000, description="and this many controls (or none)")
    min_samples_per_parameter: int = Field(
        10, ge=1, le=10_000, description="analysed samples needed per model parameter (covariates + genotype)"
    )
    differencing_guard: bool = Field(
        True,
        description="the query audit: refuse a sample set that, combined with every set this station released "
        "statistics over before (to anyone, over any dataset), would single out 1 to min_cell_count - 1 people",
    )
    audit_scope: Literal["auto", "local"] = Field(
        "auto",
        description="auto: under secure aggregation, audit over the people of the audit group (the stations of "
        "the first masked round, or secure_peers); local: over this station's people only",
    )
    finish_rows: bool = Field(
        False,
        description="under a pooled audit, finish variants where 1 to min_cell_count - 1 people of the group lack "
        "a call among the stations (only their results leave) instead of withholding them; the stations then see "
        "the group's sums over those few people. Every station of a round must allow it",
    )
    require_secure_aggregation: bool = Field(
        False, description="release statistics only masked for secure aggregation (never in the clear)"
    )
    min_secure_participants: int = Field(
        3, ge=2, le=64, description="stations a securely aggregated round needs, this one included"
    )
    secure_peers: dict[StationName, AgreementKey] = Field(
        default_factory=dict,
        max_length=64,
        description="if set, the only stations (name = agreement key) this station masks together with",
    )


class Server(BaseModel):
    """How ``better station serve`` runs."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(2, ge=1, le=64, description="tasks run at once (their kernels take turns)")
    threads: int = Field(0, ge=0, le=256, description="kernel threads; 0 uses every core")
    result_ttl_seconds: int = Field(3600, ge=1, description="finished results are deleted after this")
    max_request_mib: int = Field(256, ge=1, le=512, description="largest request body accepted")
    max_tasks_kept: int = Field(10_000, ge=10, description="task records held in memory at most")


class Beacon(BaseModel):
    """The station's GA4GH Beacon v2 (``/beacon``): who may ask, and what it says about itself."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="serve the Beacon under /beacon (its answers pass the policy)")
    public: bool = Field(
        False,
        description="answer variant queries without a token: yes or no only, over everyone, and an allele seen "
        "fewer than min_minor_allele_count times answers no (a rare allele would tell who is in the cohort)",
    )
    id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", description="beaconId; default org.better.station.NAME"
    )
    organization: str = Field("", max_length=200, description="the organization running the station, by name")
    description: str = Field("", max_length=2000)
    assembly: str | None = Field(
        None,
        max_length=64,
        description="the reference assembly of the datasets (GRCh38, GRCh37, ...); a query naming another one "
        "matches nothing. Unset: assemblyId is not checked",
    )
    production_status: Literal["DEV", "TEST", "PROD"] = "DEV"


class Executor(BaseModel):
    """Where the station's kernels run (``[executor]``): the server's own threads, or a Dask cluster.

    With ``kind = "dask"``, exactly one of ``scheduler`` (an existing cluster's address, started with
    ``dask scheduler`` and ``dask worker``) or ``workers`` (worker processes of a ``LocalCluster`` the
    station starts on its own machine). Every worker must read the store at the station's path.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["threads", "dask"] = Field("threads", description="threads: in the server (default); dask")
    scheduler: str | None = Field(
        None,
        pattern=r"^(tcp|tls|ucx|ws|wss)://[^\s/]{1,253}$",
        description="a Dask scheduler's address, e.g. tcp://10.0.0.5:8786",
    )
    workers: int | None = Field(None, ge=1, le=1024, description="worker processes of a LocalCluster")

    @model_validator(mode="after")
    def _one_cluster(self) -> Executor:
        if self.kind == "threads" and (self.scheduler is not None or self.workers is not None):
            raise ValueError('scheduler and workers are for kind = "dask"; kind = "threads" takes neither')
        if self.kind == "dask" and (self.scheduler is None) == (self.workers is None):
            raise ValueError('kind = "dask" needs exactly one of scheduler = "tcp://host:port" or workers = N')
        return self


class TokenRecord(BaseModel):
    """A token as stored: its public id, who holds it, and a salted SHA-256 of its secret part."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9]{12}$")
    user: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["researcher", "admin", "beacon"]
    salt: str
    sha256: str
    created: str


class StationConfig(BaseModel):
    """The whole of ``station.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    policy: Policy = Field(default_factory=lambda: Policy())
    server: Server = Field(default_factory=lambda: Server())
    beacon: Beacon = Field(default_factory=lambda: Beacon())
    executor: Executor = Field(default_factory=lambda: Executor())
    tokens: list[TokenRecord] = Field(default_factory=list)


def write_config(station: Path, config: StationConfig) -> Path:
    """Write ``station.toml`` (atomically, via a temporary file)."""
    path = station / CONFIG_FILE
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(config.model_dump(exclude_none=True)))
    tmp.chmod(0o600)  # token hashes are not secrets, but nobody else needs to read them
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
    return load_toml(path, StationConfig, CONFIG_FILE)


def check_station_name(name: str) -> str:
    """Refuse names that cannot serve as identifiers in federation files and outputs."""
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", name):
        raise StoreError(f"station name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter")
    return name
