"""Real station servers on loopback ports for tests: set up a station, start `better station serve`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.station_api.auth import new_token
from better.station_api.config import Policy, Server, StationConfig, write_config
from better.station_api.launch import station_process


@dataclass(frozen=True)
class StationSetup:
    """A station directory and its tokens."""

    name: str
    path: Path
    researcher: str
    admin: str


def make_station(
    root: Path, name: str, cohort: Path, policy: Policy | None = None, server: Server | None = None
) -> StationSetup:
    """Create a station from the synthetic cohort's files for ``name`` and give it two tokens."""
    path = root / name
    store = Store.create(path)
    ingest_vcf(store, "cohort", str(cohort / f"{name}.vcf.gz"), str(cohort / f"{name}.pheno.tsv"))
    researcher, r_rec = new_token("ana", "researcher")
    admin, a_rec = new_token("boss", "admin")
    write_config(
        path,
        StationConfig(name=name, policy=policy or Policy(), server=server or Server(), tokens=[r_rec, a_rec]),
    )
    return StationSetup(name, path, researcher, admin)


@contextmanager
def serve(station: Path, threads: int = 1) -> Iterator[str]:
    """A station server on a free loopback port (one kernel thread: tests run side by side)."""
    with station_process(station, threads=threads) as url:
        yield url


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def better(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the ``better`` command line in a fresh interpreter (``env``: its environment; None: this one's)."""
    return subprocess.run(
        [sys.executable, "-m", "better.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
