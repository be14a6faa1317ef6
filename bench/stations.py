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
def served(
    paths: list[Path], threads: int, audit_scope: str = "auto", hub: Path | None = None
) -> Iterator[list[StationClient]]:
    """``better station serve`` for each store (named station0, station1, ...), default policy; yields
    clients with a fresh researcher token each. With ``hub`` (a directory), a hub is started there and the
    stations serve through it (pull mode), the clients reaching them sealed."""
    from better.hub.config import HubConfig
    from better.hub.config import write_config as write_hub_config
    from better.hub.queue import HubQueue
    from better.query.hub_link import HubLink, researcher_key
    from better.station_api.auth import new_token
    from better.station_api.config import Policy, Server, StationConfig, write_config
    from better.station_api.launch import hub_process, station_process
    from better.station_api.secure_agg import agreement_key_text, load_or_create_agreement_key
    from better.station_api.signing import load_or_create_key, public_key_text

    with ExitStack() as stack:
        link = None
        if hub is not None:
            hub.mkdir(parents=True, exist_ok=True)
            write_hub_config(hub, HubConfig())
            link = HubLink(stack.enter_context(hub_process(hub)), researcher_key(hub / "researcher.key"))
        clients = []
        for k, path in enumerate(paths):
            name = f"station{k}"
            token, record = new_token("bench", "researcher")
            policy = Policy(audit_scope=audit_scope)
            config = StationConfig(name=name, policy=policy, server=Server(threads=threads))
            write_config(path, config.model_copy(update={"tokens": [record]}))
            if link is None:
                url = stack.enter_context(station_process(path, threads=threads))
                clients.append(StationClient(name, url, token, timeout=1200))
                continue
            queue = HubQueue(hub)  # type: ignore[arg-type]
            credential = queue.enrol(name)
            queue.close()
            url = stack.enter_context(station_process(path, threads=threads, hub=link.url, credential=credential))
            keys = (public_key_text(load_or_create_key(path)), agreement_key_text(load_or_create_agreement_key(path)))
            link.keys[name] = keys
            clients.append(StationClient(name, url, token, timeout=1200, public_key=keys[0], hub=link))
        yield clients
