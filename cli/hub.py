"""``better hub ...``: for whoever runs a hub, the relay that stations behind firewalls reach out to
(docs/deployment.md). Create it, enrol stations (and researcher keys), serve it, see its queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from better.cli.console import err, out
from better.engine.errors import BetterError

hub_app = typer.Typer(help="Run a hub: the relay stations behind firewalls reach out to.", no_args_is_help=True)


@hub_app.command("init")
def hub_init(hub: Annotated[Path, typer.Option(help="hub directory (created)")]) -> None:
    """Create a hub directory: hub.toml (defaults) and the queue's database."""
    from better.hub.config import CONFIG_FILE, HubConfig, read_config, write_config
    from better.hub.queue import HubQueue

    hub.mkdir(parents=True, exist_ok=True)
    hub.chmod(0o700)
    if (hub / CONFIG_FILE).exists():
        read_config(hub)
        err.print(f"hub already initialised in {hub}")
    else:
        write_config(hub, HubConfig())
        err.print(f"hub created in {hub}; enrol stations with `better hub enrol --hub {hub} --station NAME`")
    HubQueue(hub).close()
    print(hub)


@hub_app.command("enrol")
def hub_enrol(
    hub: Annotated[Path, typer.Option(help="hub directory")],
    station: Annotated[str | None, typer.Option(help="the station's name (as in its station.toml)")] = None,
    researcher: Annotated[
        str | None, typer.Option(help='instead: a researcher name, for researchers = "enrolled" hubs')
    ] = None,
    key: Annotated[str | None, typer.Option(help="the researcher's key (ed25519:...)")] = None,
) -> None:
    """Enrol a station: its hub credential is printed once, alone on the last line (enrolling again replaces
    it). Or enrol a researcher's signing key."""
    from better.hub.config import read_config, write_config
    from better.hub.queue import HubQueue
    from better.station_api.config import check_station_name

    config = read_config(hub)
    if (station is None) == (researcher is None):
        raise BetterError("give --station NAME, or --researcher NAME --key ed25519:...")
    if researcher is not None:
        if key is None:
            raise BetterError("--researcher needs --key, the researcher's ed25519:... key")
        keys = {**config.researcher_keys, researcher: key}
        from better.station_api.tomlfile import validate

        validate(type(config), {**config.model_dump(), "researcher_keys": keys}, hub / "hub.toml")
        write_config(hub, config.model_copy(update={"researcher_keys": keys}))
        err.print(f"researcher {researcher} enrolled at hub {hub} ({key})")
        return
    assert station is not None
    check_station_name(station)
    queue = HubQueue(hub)
    try:
        credential = queue.enrol(station)
    finally:
        queue.close()
    err.print(f"hub credential for station {station} (shown once; give it to the station's administrator):")
    print(credential)


@hub_app.command("serve")
def hub_serve(
    hub: Annotated[Path, typer.Option(help="hub directory")],
    host: Annotated[str, typer.Option(help="address to listen on; the default is this machine only")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8800,
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate chain (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="and this private key (PEM)")] = None,
) -> None:
    """Run the hub until interrupted."""
    import logging

    import uvicorn

    from better.cli.station import tls_options
    from better.hub.app import create_app
    from better.station_api.app import check_loopback

    certfile, keyfile = tls_options(tls_cert, tls_key)
    app_ = create_app(hub)
    if not check_loopback(host) and not certfile:
        err.print(f"[yellow]listening on {host} without TLS: put a TLS proxy in front (docs/deployment.md)[/yellow]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    err.print(f"hub serving {'https' if certfile else 'http'}://{host}:{port}")
    # Long-polls are held open for up to [limits] max_wait_seconds: a stop does not wait for them.
    uvicorn.run(
        app_,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        limit_concurrency=app_.state.hub.config.limits.max_connections,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )


@hub_app.command("status")
def hub_status(
    hub: Annotated[Path, typer.Option(help="hub directory")],
    events: Annotated[int, typer.Option(help="show the last N events")] = 10,
) -> None:
    """The enrolled stations (keys bound, last seen, tasks waiting) and the last events."""
    import json
    import time

    from better.hub.config import read_config
    from better.hub.queue import HubQueue

    read_config(hub)
    queue = HubQueue(hub)
    try:
        table = Table(title=f"stations at hub {hub}")
        for c in ("station", "signing key", "last seen", "waiting"):
            table.add_column(c)
        for s in queue.directory():
            card = s["card"]["card"] if s["card"] else {}
            seen = "never" if s["last_seen"] is None else f"{time.time() - s['last_seen']:.0f} s ago"
            table.add_row(s["name"], str(card.get("public_key", "-")), seen, str(s["waiting"]))
        out.print(table)
        log = Table(title="last events")
        for c in ("seq", "who", "action", "detail"):
            log.add_column(c, overflow="fold")
        for e in queue.events(events):
            log.add_row(str(e["seq"]), e["who"][:20], e["action"], json.dumps(e["detail"], sort_keys=True))
        out.print(log)
    finally:
        queue.close()
