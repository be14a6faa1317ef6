"""The benchmark cohort's three station stores, and serving them (shared by bench/federated.py and
bench/pca.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from better.query.remote import StationClient


def station_stores(cohort: Path) -> list[Path]:
    """The three station stores of ``cohort`` (dataset ``d``), ingested from its split VCFs the first time."""
    from better.genomics.ingest import ingest_vcf
    from better.genomics.store import Store

    if not (cohort / "dummy.pgen").exists():
        raise SystemExit(f"no cohort in {cohort}: run bash ../shared/bench/make-dummy-cohort.sh {cohort}")
    paths = []
    for k in range(3):
        path = cohort / f"station{k}"
        if not (path / "catalog.duckdb").exists():
            ingest_vcf(Store.create(path), "d", str(cohort / f"st{k}.vcf.gz"), str(cohort / f"pheno{k}.tsv"))
        paths.append(path)
    return paths


@contextmanager
def served(paths: list[Path], threads: int, audit_scope: str = "auto") -> Iterator[list[StationClient]]:
    """``better station serve`` for each store (named station0, station1, ...), default policy; yields
    clients with a fresh researcher token each."""
    from better.station_api.auth import new_token
    from better.station_api.config import Policy, Server, StationConfig, write_config
    from better.station_api.launch import station_process

    with ExitStack() as stack:
        clients = []
        for k, path in enumerate(paths):
            token, record = new_token("bench", "researcher")
            policy = Policy(audit_scope=audit_scope)
            config = StationConfig(name=f"station{k}", policy=policy, server=Server(threads=threads))
            write_config(path, config.model_copy(update={"tokens": [record]}))
            url = stack.enter_context(station_process(path, threads=threads))
            clients.append(StationClient(f"station{k}", url, token, timeout=1200))
        yield clients
