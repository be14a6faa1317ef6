"""``better station ...``: for a station's administrator. Create the station, hand out and revoke tokens,
serve its API, approve tasks, and read its audit log and query audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from better.cli.console import err, out
from better.engine.errors import BetterError

station_app = typer.Typer(help="Create and manage a station (a hospital's store).", no_args_is_help=True)


@station_app.command("init")
def station_init(
    station: Annotated[Path, typer.Option(help="station directory (created)")],
    name: Annotated[str, typer.Option(help="station name, e.g. milano")],
) -> None:
    """Create a station directory: store, catalog and station.toml with safe policy defaults."""
    from better.genomics.store import Store
    from better.station_api.config import CONFIG_FILE, StationConfig, check_station_name, read_config, write_config

    check_station_name(name)
    store = Store.create(station)
    from better.station_api.secure_agg import agreement_key_text, load_or_create_agreement_key
    from better.station_api.signing import load_or_create_key, public_key_text

    key = public_key_text(load_or_create_key(station))
    agreement = agreement_key_text(load_or_create_agreement_key(station))
    if (station / CONFIG_FILE).exists():
        existing = read_config(station)
        if existing.name != name:
            raise BetterError(f"{station}: already a station named {existing.name!r}; choose another directory")
        err.print(f"station {name!r} already initialised in {station}")
    else:
        write_config(station, StationConfig(name=name))
        err.print(f"station {name!r} created in {store.path}")
    err.print(f"signing key: {key} (give it to coordinators to pin as public_key in their federation file)")
    err.print(f"agreement key: {agreement} (pinned as agreement_key, for secure aggregation)")
    print(station)


@station_app.command("token")
def station_token(
    station: Annotated[Path, typer.Option(help="station directory")],
    user: Annotated[str | None, typer.Option(help="who the token is for (letters, digits, _ . @ -)")] = None,
    role: Annotated[
        str,
        typer.Option(
            help="researcher (submits tasks), admin (audit, approvals, policy) or beacon (the Beacon only, /beacon)"
        ),
    ] = ("researcher"),
    revoke: Annotated[
        str | None, typer.Option(help="revoke instead: the token with this id, or every token of this user")
    ] = None,
) -> None:
    """Create a token (printed once, alone on the last line; the station keeps only its hash), or revoke."""
    from better.genomics.store import Store
    from better.station_api.audit import AuditLog
    from better.station_api.auth import new_token
    from better.station_api.config import ROLES, read_config, write_config

    if revoke is not None:
        config = read_config(station)
        gone = [t for t in config.tokens if revoke in (t.id, t.user)]
        if not gone:
            raise BetterError(f"no token with id or user {revoke!r} at {station}")
        write_config(station, config.model_copy(update={"tokens": [t for t in config.tokens if t not in gone]}))
        for t in gone:
            AuditLog(Store.open(station)).append("admin-cli", "token.revoked", {"user": t.user, "id": t.id})
        err.print(f"revoked {len(gone)} token(s): {', '.join(f'{t.id} ({t.user})' for t in gone)}")
        return
    if user is None:
        raise BetterError("--user: who the token is for (or --revoke ID_OR_USER)")
    if role not in ROLES:
        raise BetterError(f"role {role!r}: use researcher, admin or beacon")
    config = read_config(station)
    try:
        token, record = new_token(user, role)
    except ValueError:
        raise BetterError(f"user {user!r}: use 1-64 letters, digits, '_', '.', '@' or '-'") from None
    write_config(station, config.model_copy(update={"tokens": [*config.tokens, record]}))
    AuditLog(Store.open(station)).append("admin-cli", "token.created", {"user": user, "role": role, "id": record.id})
    err.print(f"{role} token for {user} at station {config.name} (shown once; store it safely):")
    print(token)


@station_app.command("serve")
def station_serve(
    station: Annotated[Path, typer.Option(help="station directory")],
    host: Annotated[str, typer.Option(help="address to listen on; the default is this machine only")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8700,
    threads: Annotated[
        int | None, typer.Option(help="kernel threads (default: [server] threads, or all cores)")
    ] = None,
    hub: Annotated[
        str | None, typer.Option(help="serve through this hub instead: outbound only, no port is opened")
    ] = None,
    hub_credential_env: Annotated[
        str | None, typer.Option(help="environment variable holding the credential from `better hub enrol`")
    ] = None,
    hub_ca: Annotated[Path | None, typer.Option(help="CA bundle (PEM) that signed the hub's certificate")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate chain (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="and this private key (PEM)")] = None,
    allow_http: Annotated[
        bool, typer.Option(help="allow a plain http:// hub on another machine (a tunnel protects it)")
    ] = False,
) -> None:
    """Run the station's HTTP API (FastAPI under uvicorn), or with --hub serve it through a hub, until
    interrupted."""
    import logging

    from better.engine.accelerate import set_threads
    from better.station_api.config import read_config

    config = read_config(station)
    set_threads(threads or (config.server.threads or None))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if hub is not None:
        _serve_through_hub(station, hub, hub_credential_env, hub_ca, allow_http)
        return
    if hub_credential_env is not None or hub_ca is not None:
        raise BetterError("--hub-credential-env and --hub-ca go with --hub URL")
    import uvicorn

    from better.station_api.app import check_loopback, create_app

    certfile, keyfile = tls_options(tls_cert, tls_key)
    app_ = create_app(station)
    if not check_loopback(host) and not certfile:
        err.print(f"[yellow]listening on {host} without TLS: put a TLS proxy in front (docs/deployment.md)[/yellow]")
    scheme = "https" if certfile else "http"
    err.print(f"station {config.name} serving {scheme}://{host}:{port} (OpenAPI at /docs)")
    uvicorn.run(
        app_, host=host, port=port, log_level="warning", access_log=False, ssl_certfile=certfile, ssl_keyfile=keyfile
    )


def tls_options(cert: Path | None, key: Path | None) -> tuple[str | None, str | None]:
    """uvicorn's ``ssl_certfile`` and ``ssl_keyfile`` from ``--tls-cert``/``--tls-key`` (both or neither)."""
    if (cert is None) != (key is None):
        raise BetterError("--tls-cert and --tls-key go together (the certificate chain and its private key)")
    if cert is None or key is None:
        return None, None
    for path in (cert, key):
        if not path.is_file():
            raise BetterError(f"{path}: no such file")
    return str(cert), str(key)


def _serve_through_hub(station: Path, hub: str, credential_env: str | None, ca: Path | None, allow_http: bool) -> None:
    """``better station serve --hub``: the pull loop of :mod:`better.station_api.pull` until a signal."""
    import asyncio
    import os
    import signal

    from better.station_api.pull import HubStation
    from better.wire.signed_requests import plain_http_problem, tls_verify

    if credential_env is None:
        raise BetterError("--hub needs --hub-credential-env VAR, the variable holding `better hub enrol`'s credential")
    credential = os.environ.get(credential_env, "").strip()
    if not credential:
        raise BetterError(f"set the environment variable {credential_env} to the station's hub credential")
    problem = plain_http_problem(hub, allow_http, "the station's hub credential")
    if problem:
        raise BetterError(problem.replace("allow http", "pass --allow-http"))
    if ca is not None and not ca.is_file():
        raise BetterError(f"--hub-ca {ca}: no such file")
    import ssl

    try:
        verify = tls_verify(ca)
    except ssl.SSLError as exc:
        raise BetterError(f"--hub-ca {ca}: not a PEM CA bundle ({exc})") from None
    serving = HubStation(station, hub, credential, verify)
    err.print(f"station {serving.name} serving through hub {hub} (outbound only: no port is open here)")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serving.run(stop)

    asyncio.run(run())


@station_app.command("approve")
def station_approve(
    station: Annotated[Path, typer.Option(help="station directory")],
    task: Annotated[str | None, typer.Argument(help="task id; without one, list the waiting tasks")] = None,
    reject: Annotated[bool, typer.Option(help="reject instead of approving")] = False,
    reason: Annotated[str, typer.Option(help="why (kept in the audit log, shown to the researcher)")] = "",
) -> None:
    """Approve (or reject) a task waiting under ``approval = "manual"``; list them without a task id."""
    import json

    from better.genomics.store import Store
    from better.station_api.audit import AuditLog
    from better.station_api.config import read_config
    from better.station_api.tasks import decide_in_catalog, pending_in_catalog

    read_config(station)
    store = Store.open(station)
    if task is None:
        waiting = pending_in_catalog(store)
        err.print(f"{len(waiting)} task(s) waiting for approval at {station} (task, user, submitted, request):")
        for w in waiting:  # one line each, tab-separated, so that scripts can read it
            print("\t".join((w["task"], w["user"], w["submitted_at"], json.dumps(w["request"], sort_keys=True))))
        return
    if not decide_in_catalog(store, AuditLog(store), task, not reject, "admin-cli", reason):
        raise BetterError(f"no task {task} waits for approval at {station}; list them with `better station approve`")
    err.print(f"task {task} {'rejected' if reject else 'approved'}")


@station_app.command("audit")
def station_audit(
    station: Annotated[Path, typer.Option(help="station directory")],
    verify: Annotated[bool, typer.Option(help="check the hash chain; exit 1 if it is broken")] = False,
    tail: Annotated[int, typer.Option(help="show the last N rows")] = 20,
) -> None:
    """Show the audit log, or verify that no row was edited or deleted."""
    import json

    from better.genomics.store import Store
    from better.station_api.audit import AuditLog

    log_ = AuditLog(Store.open(station))
    if verify:
        v = log_.verify()
        if not v.ok:
            raise BetterError(f"audit log of {station} is BROKEN: {v.problem} ({v.rows} rows checked)")
        err.print(f"audit log intact: {v.rows} rows; head seq {v.head_seq}")
        print(v.head_hash)
        return
    last = log_.last_seq()
    table = Table(title=f"audit log of {station}")
    for c in ("seq", "time", "actor", "action", "detail"):
        table.add_column(c, overflow="fold")
    for r in log_.rows(max(0, last - tail), tail):
        table.add_row(str(r["seq"]), r["logged_at"], r["actor"], r["action"], json.dumps(r["detail"], sort_keys=True))
    out.print(table)


@station_app.command("audit-state")
def station_audit_state(station: Annotated[Path, typer.Option(help="station directory")]) -> None:
    """Show the query audit's record: its scope and group, the people and selections it holds."""
    from better.station_api.config import read_config
    from better.station_api.query_audit import QueryAudit

    read_config(station)  # a station directory, or a clear error
    state = QueryAudit(station).describe()
    table = Table(title=f"query audit of {station}", show_header=False)
    for key, value in state.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    out.print(table)
