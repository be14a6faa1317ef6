"""The ``better`` command line, its verbs grouped by who types them: a station's administrator
(:mod:`better.cli.station`), whoever prepares a station's data (:mod:`better.cli.data`), and the
researcher (:mod:`better.cli.research`).

Every verb is scriptable: results on stdout, messages on stderr, and a failure exits non-zero with a
one-paragraph message (never a traceback).
"""

from __future__ import annotations

import os
import sys

import typer

from better.cli import data, hub, research, station
from better.cli.console import err
from better.engine.errors import BetterError

app = typer.Typer(
    help="BETTER: federated genomics. The analysis travels to the data; only aggregates come back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# The order here is the order `better --help` lists the verbs in.
app.command()(data.synth)
app.command("synth-store")(data.synth_store)
app.command()(data.ingest)
app.command("ingest-bam")(data.ingest_bam)
app.command()(research.query)
app.command()(research.verify)
app.command()(research.gwas)
app.command()(research.demo)
app.add_typer(station.station_app, name="station")
app.add_typer(hub.hub_app, name="hub")
app.add_typer(data.store_app, name="store")
app.add_typer(research.federation_app, name="federation")


#: Packages a lean station install leaves out, and the optional group (pyproject.toml) that brings each.
OPTIONAL_GROUPS = {
    "cbgen": "bgen",
    "lark": "coordinator",
    "msprime": "simulate",
    "matplotlib": "report",
    "yaml": "report",
}


def main() -> None:
    """Entry point: run the app, turning BETTER errors into a message and exit status 1.

    Exit statuses: 0 done; 1 a BETTER error (the message says what, where and how to fix it); 2 a usage
    error or a bug (an internal error, with its traceback under ``BETTER_DEBUG=1``); 130 interrupted.
    """
    try:
        app()
    except BetterError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted; nothing was committed")
        sys.exit(130)
    except ModuleNotFoundError as exc:  # a lean install (docs/station.md) leaves some groups out
        group = OPTIONAL_GROUPS.get((exc.name or "").partition(".")[0])
        if group is None or os.environ.get("BETTER_DEBUG"):
            raise
        err.print(
            f"[bold red]error:[/bold red] this command needs {exc.name}, which this install leaves out; "
            f"install it with: pip install 'better-genomics\\[{group}]'",  # an escaped bracket: not rich markup
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    except Exception as exc:  # a bug: say so plainly; the traceback is one variable away
        if os.environ.get("BETTER_DEBUG"):
            raise
        err.print(
            f"[bold red]internal error:[/bold red] {type(exc).__name__}: {exc}\n"
            "this is a bug in BETTER; rerun with BETTER_DEBUG=1 for the traceback and report it",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
