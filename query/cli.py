"""The ``better`` command line. Every verb is scriptable: results on stdout, messages on stderr, and a
failure exits non-zero with a one-paragraph message (never a traceback)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from engine.errors import BetterError

app = typer.Typer(
    help="BETTER: federated genomics. The analysis travels to the data; only aggregates come back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
station_app = typer.Typer(help="Create and manage a station (a hospital's store).", no_args_is_help=True)
store_app = typer.Typer(help="Inspect a station's store.", no_args_is_help=True)
app.add_typer(station_app, name="station")
app.add_typer(store_app, name="store")

err = Console(stderr=True)
out = Console()


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    )


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("data/synthetic/cohort"),
    stations: Annotated[int, typer.Option(help="number of stations")] = 3,
    samples: Annotated[int, typer.Option(help="samples in the whole cohort")] = 2000,
    variants: Annotated[int, typer.Option(help="VCF records (sites) to simulate")] = 8000,
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same files")] = 42,
) -> None:
    """Generate a synthetic cohort split across stations (msprime genealogies, traits with known causes)."""
    from genomics.synth import SynthConfig, synthesize

    t0 = time.perf_counter()
    r = synthesize(
        SynthConfig(out=str(out_dir), stations=stations, samples=samples, variants=variants, seed=seed),
        on_step=lambda m: err.print(f"[dim]{m}[/dim]"),
    )
    table = Table(title=f"synthetic cohort in {r.out}")
    for c in ("station", "samples", "VCF", "phenotypes"):
        table.add_column(c)
    for name, size in zip(r.stations, r.station_sizes, strict=True):
        table.add_row(name, str(size), f"{name}.vcf.gz", f"{name}.pheno.tsv")
    table.add_row("pooled", str(sum(r.station_sizes)), "pooled.vcf.gz", "pooled.pheno.tsv (PLINK 2)")
    err.print(table)
    err.print(
        f"{r.n_records} records ({r.n_multiallelic} multi-allelic) -> {r.n_variants} biallelic variants; "
        f"truth in truth.tsv; {time.perf_counter() - t0:.1f} s"
    )
    print(r.out)


@station_app.command("init")
def station_init(
    station: Annotated[Path, typer.Option(help="station directory (created)")],
    name: Annotated[str, typer.Option(help="station name, e.g. milano")],
) -> None:
    """Create a station directory: store, catalog and station.toml with safe policy defaults."""
    from genomics.store import Store
    from station_api.config import CONFIG_FILE, StationConfig, check_station_name, read_config, write_config

    check_station_name(name)
    store = Store.create(station)
    if (station / CONFIG_FILE).exists():
        existing = read_config(station)
        if existing.name != name:
            raise BetterError(f"{station}: already a station named {existing.name!r}; choose another directory")
        err.print(f"station {name!r} already initialised in {station}")
    else:
        write_config(station, StationConfig(name=name))
        err.print(f"station {name!r} created in {store.path}")
    print(station)


@app.command()
def ingest(
    station: Annotated[Path, typer.Option(help="station directory")],
    dataset: Annotated[str, typer.Option(help="dataset name (replaced if it exists, only on success)")],
    vcf: Annotated[Path, typer.Option(help=".vcf, .vcf.gz or .bcf, sorted by position")],
    phenotypes: Annotated[Path | None, typer.Option(help="tab-separated table, sample ID first")] = None,
    threads: Annotated[int | None, typer.Option(help="parser threads (default: all cores)")] = None,
) -> None:
    """Index a VCF/BCF (and phenotypes) into the station's store."""
    from engine.accelerate import set_threads
    from genomics.ingest import ingest_vcf
    from genomics.store import Store
    from station_api.config import read_config

    read_config(station)
    store = Store.open(station)
    set_threads(threads)
    with _progress() as progress:
        task = progress.add_task(f"ingest {vcf.name}", total=None)
        report = ingest_vcf(
            store,
            dataset,
            str(vcf),
            str(phenotypes) if phenotypes else None,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    err.print(
        f"dataset [bold]{dataset}[/bold]: {report.n_samples} samples, {report.n_records} records -> "
        f"{report.n_variants} variants ({report.n_multiallelic_records} multi-allelic records split) "
        f"on {', '.join(report.chromosomes) or 'no chromosome'} in {report.seconds:.1f} s"
    )
    if phenotypes is not None:
        msg = f"phenotypes: {report.n_phenotyped} of {report.n_samples} samples matched"
        if report.n_phenotype_rows_unmatched:
            msg += f"; {report.n_phenotype_rows_unmatched} phenotype rows match no VCF sample and were left out"
        err.print(msg)


@store_app.command("info")
def store_info(station: Annotated[Path, typer.Option(help="station directory")]) -> None:
    """Summarise a station's datasets: counts, chromosomes, phenotype columns and provenance."""
    from genomics.store import Store
    from station_api.config import read_config

    config = read_config(station)
    rows = Store.open(station).summary()
    table = Table(title=f"station {config.name} ({station})")
    for c in ("dataset", "samples", "records", "variants", "phenotyped", "chromosomes", "source sha256"):
        table.add_column(c)
    for r in rows:
        table.add_row(
            r["name"],
            str(r["n_samples"]),
            str(r["n_records"]),
            str(r["n_variants"]),
            str(r["n_phenotyped"]),
            ",".join(r["chromosomes"]),
            (r["source_sha256"] or "")[:16],
        )
    out.print(table)
    for r in rows:
        columns = ", ".join(f"{k} ({v})" for k, v in r["phenotype_columns"].items()) or "none"
        out.print(f"{r['name']} phenotype columns: {columns}")
    p = config.policy
    out.print(
        f"policy: min_cell_count={p.min_cell_count} min_minor_allele_count={p.min_minor_allele_count} "
        f"approval={p.approval} analyses={','.join(p.allowed_analyses)}"
    )


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="working folder")] = Path("better-demo"),
) -> None:
    """The main job on the synthetic default: generate a cohort, set up one station per centre, ingest, summarise."""
    from genomics.ingest import ingest_vcf
    from genomics.store import Store
    from genomics.synth import SynthConfig, synthesize
    from station_api.config import StationConfig, write_config

    t0 = time.perf_counter()
    cohort = synthesize(SynthConfig(out=str(out_dir / "cohort")), on_step=lambda m: err.print(f"[dim]{m}[/dim]"))
    table = Table(title="BETTER demo: stations")
    for c in ("station", "samples", "variants", "phenotyped", "ingest s"):
        table.add_column(c)
    for name in cohort.stations:
        st = out_dir / "stations" / name
        store = Store.create(st)
        write_config(st, StationConfig(name=name))
        rep = ingest_vcf(store, "cohort", str(cohort.out / f"{name}.vcf.gz"), str(cohort.out / f"{name}.pheno.tsv"))
        table.add_row(name, str(rep.n_samples), str(rep.n_variants), str(rep.n_phenotyped), f"{rep.seconds:.2f}")
    out.print(table)
    err.print(
        f"demo finished in {time.perf_counter() - t0:.1f} s; inspect a station with "
        f"`better store info --station {out_dir / 'stations' / cohort.stations[0]}`"
    )


def main() -> None:
    """Entry point: run the app, turning BETTER errors into a message and exit status 1."""
    try:
        app()
    except BetterError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted; nothing was committed")
        sys.exit(130)


if __name__ == "__main__":
    main()
