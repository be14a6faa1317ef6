"""The researcher's verbs: ``better federation add`` (the federation file), ``better query``, ``better
verify`` (a result against the stations' signatures), ``better gwas`` (a batch job) and ``better demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from better.cli.console import err, out, progress_bars
from better.engine.errors import BetterError

if TYPE_CHECKING:
    import polars as pl

    from better.jobs.gwas import Progress as JobProgress
    from better.query.federation import Federation

federation_app = typer.Typer(help="Write the researcher's federation file.", no_args_is_help=True)


@federation_app.command("add")
def federation_add(
    name: Annotated[str, typer.Argument(help="the station's name, as its /info says")],
    url: Annotated[
        str | None, typer.Argument(help="the station's URL, e.g. http://127.0.0.1:8701 (none with --hub)")
    ] = None,
    token_env: Annotated[
        str | None, typer.Option(help="environment variable that will hold the token (keeps it out of the file)")
    ] = None,
    token: Annotated[str | None, typer.Option(help="the token itself, written into the file (mode 0600)")] = None,
    federation: Annotated[Path, typer.Option(help="federation file to create or add to")] = Path("federation.toml"),
    pin: Annotated[bool, typer.Option(help="pin the station's signing and agreement keys from its /info")] = True,
    hub: Annotated[
        str | None, typer.Option(help="the station is reached through this hub (the file's hub, if it has one)")
    ] = None,
    public_key: Annotated[
        str | None, typer.Option(help="through a hub: the station's signing key, as `better station init` printed it")
    ] = None,
) -> None:
    """Add a station to the federation file (created if missing), pinning its keys as it reports them now
    (from its /info, or from the card it signed for the hub)."""
    from better.query.federation import add_station

    entry = add_station(
        federation, name, url, token_env=token_env, token=token, pin=pin, hub=hub, public_key=public_key
    )
    pinned = [k for k in ("public_key", "agreement_key") if k in entry]
    err.print(
        f"{federation}: station {name} "
        + (f"at {url}" if url else "through the hub")
        + (f"; pinned {' and '.join(pinned)} (check them with the station's administrator)" if pinned else "")
    )


def query(
    text: Annotated[str, typer.Argument(help='the query, e.g. "GWAS LINEAR ldl ~ age + sex ON 22"')],
    federation: Annotated[Path, typer.Option(help="federation file: the stations and their tokens")] = Path(
        "federation.toml"
    ),
    fmt: Annotated[str, typer.Option("--format", help="table, tsv, json or parquet")] = "table",
    out_file: Annotated[Path | None, typer.Option("--out", help="write the result here (default: stdout)")] = None,
    allow_partial: Annotated[
        bool, typer.Option(help="if a station refuses or fails, run on the others and say so in the result")
    ] = False,
    secure_aggregation: Annotated[
        str | None,
        typer.Option(help="auto (on with 3+ stations), on or off; default: the federation file's setting"),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="per station: calls answered, seconds, turns waited, bytes")
    ] = False,
) -> None:
    """Run a query over the federation's stations (EXPLAIN QUERY shows the plan instead)."""
    from better.query.federation import Federation
    from better.query.output import write

    if fmt not in ("table", "tsv", "json", "parquet"):
        raise BetterError(f"--format {fmt}: use table, tsv, json or parquet")
    if fmt == "parquet" and out_file is None:
        raise BetterError("--format parquet needs --out FILE")
    fed = Federation.from_file(federation)
    fed.record_releases = out_file is not None and fmt in ("json", "parquet")  # for better verify
    if secure_aggregation is not None:
        if secure_aggregation not in ("auto", "on", "off"):
            raise BetterError(f"--secure-aggregation {secure_aggregation}: use auto, on or off")
        fed.secure_aggregation = secure_aggregation
    t0 = time.perf_counter()
    with progress_bars("rounds", transient=True) as progress:
        bars: dict[str, TaskID] = {}

        def on_round(stage: str, round_no: int, kind: str, n: int, _seconds: float) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=None)
            progress.update(bars[stage], description=f"{stage}: {kind} at {n} stations", completed=round_no)

        frame = fed.query(text, allow_partial=allow_partial, on_round=on_round)
    if "plan" in frame.columns and frame.width == 1:
        print("\n".join(frame["plan"].to_list()))
        return
    for note in fed.notes:
        err.print(f"[yellow]{note}[/yellow]")
    write(frame, fmt, out_file, fed.notes, out, fed.manifests)
    if verbose:
        for line in fed.who_answered():
            err.print(f"[dim]{line}[/dim]")
    if fed.structure.pca is not None:
        err.print(f"[dim]{structure_summary(fed)}[/dim]")
        if out_file is not None:
            from better.query.structure import weights_frame

            for suffix, weights in ((".weights.tsv", True), (".loadings.tsv", False)):
                path = out_file.with_name(out_file.name + suffix)
                weights_frame(fed.structure.pca, fed.structure.ids, weights).write_csv(path, separator="\t")
                err.print(f"[dim]wrote {path}[/dim]")
    if fed.recording is not None and out_file is not None:
        from better.query.replay import releases_path, write_releases

        write_releases(releases_path(out_file), text, fed.dataset, fed.secure_aggregation, fed.answered, fed.recording)
    err.print(f"[dim]{result_summary(frame, fed)} in {time.perf_counter() - t0:.1f} s[/dim]")


def structure_summary(fed: Federation) -> str:
    """How a PCA went: variants, rounds, convergence, the scores stored."""
    s = fed.structure
    assert s.pca is not None
    line = (
        f"PCA on {s.pca.loadings.shape[0]} variants ({s.variants} passed the filter"
        + (f", {s.pruned} pruned" if s.pruned else "")
        + f"); {s.pca.rounds} rounds, "
        + ("converged" if s.pca.converged else "NOT converged")
        + f" (largest relative residual {s.pca.residuals.max():.1e})"
    )
    if s.stored is not None:
        line += f"; scores stored for {s.stored} people"
    return line


def result_summary(frame: pl.DataFrame, fed: Federation) -> str:
    """One line: rows, who answered, and how many rows each rule withheld."""
    from better.query.withholding import summary

    line = f"{frame.height} row(s) from {', '.join(fed.answered)}"
    if "WITHHELD" in frame.columns and frame["WITHHELD"].any():
        by_rule = summary(frame["WITHHELD_BY"].to_list()) if "WITHHELD_BY" in frame.columns else {}
        rules = ", ".join(f"{n} by {rule}" for rule, n in by_rule.items())
        line += f"; {int(frame['WITHHELD'].sum())} withheld ({rules}; see docs/privacy.md)"
    return line


def verify(
    result: Annotated[
        Path, typer.Argument(help="a query result (--format json or parquet) or a job's provenance.json")
    ],
    federation: Annotated[Path, typer.Option(help="federation file with each station's pinned public_key")] = Path(
        "federation.toml"
    ),
) -> None:
    """Check a result: the stations' signatures on its manifests, and its table against the signed releases
    kept beside it (RESULT.releases); exit 1 if anything is missing or does not match."""
    from better.query.federation import Federation
    from better.query.provenance import read_manifests, verify_manifests
    from better.query.replay import verify_values

    keys = {s.name: s.public_key for s in Federation.from_file(federation).stations}
    manifests = read_manifests(result)
    problems, checked = verify_manifests(manifests, keys)
    rows = None
    if not problems:
        problems, rows = verify_values(result, manifests)
    if problems:
        raise BetterError(f"{result}: provenance does NOT verify:\n  " + "\n  ".join(problems))
    values = (
        f"; all {rows} row(s) are what the signed releases give"
        if rows is not None
        else " (a job's provenance: its tables are not checked)"
    )
    err.print(f"{result}: {checked} signed manifest(s) verified ({', '.join(sorted(keys))}){values}")


def _job_progress() -> tuple[Progress, JobProgress]:
    """Bars for a job's chunks, and the job's callbacks that move them."""
    from better.jobs.gwas import Progress as JobProgress

    bars = progress_bars("chunks")
    state: dict[str, TaskID] = {}

    def start(n: int) -> None:
        state["t"] = bars.add_task("gwas", total=n)

    def chunk(i: int, region: str, reused: bool) -> None:
        bars.update(state["t"], completed=i + 1, description=f"gwas {region}{' (done before)' if reused else ''}")

    return bars, JobProgress(start, chunk)


def gwas(job: Annotated[Path, typer.Argument(help="the job file (TOML); see docs/gwas-jobs.md")]) -> None:
    """Run (or resume) a batch GWAS job: summary statistics, GWAS-SSF, plots, top hits and a report."""
    from better.jobs.gwas import run_job

    bars, progress = _job_progress()
    with bars:
        result = run_job(job, progress)
    for name, lam in result.lambdas.items():
        err.print(f"{name}: λGC {lam:.3f}; " + ", ".join(f.name for f in result.files[name]))
    err.print(f"report: {result.out / 'report.html'} ({result.seconds:.1f} s; {result.chunks_reused} chunk(s) reused)")
    print(result.out / "report.html")


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="working folder")] = Path("better-demo"),
) -> None:
    """The main job on the synthetic default: three stations as HTTP servers, a federated GWAS, a report."""
    from better.jobs.demo import run_demo, truth_table

    bars, progress = _job_progress()
    with bars:
        result = run_demo(out_dir, lambda m: err.print(f"[dim]{m}[/dim]"), progress)
    for name, top in result.job.tops.items():
        t = Table(title=f"top hits: {name} (λGC {result.job.lambdas[name]:.3f})")
        cols = [c for c in top.columns if c in ("#CHROM", "POS", "ID", "A1", "BETA", "OR", "P", "A1_FREQ")]
        for c in cols:
            t.add_column(c)
        for r in top.head(8).select(cols).iter_rows():
            t.add_row(*_shown(r))
        out.print(t)
    truth = Table(title="the simulation's causal variants, and what the federated GWAS found")
    frame = truth_table(result)
    for c in frame.columns:
        truth.add_column(c)
    for r in frame.iter_rows():
        truth.add_row(*_shown(r))
    out.print(truth)
    err.print(f"report: {result.job.out / 'report.html'}; demo finished in {result.seconds:.1f} s")


def _shown(row: tuple[object, ...]) -> list[str]:
    """A row of the demo's tables on the terminal: numbers to 3 significant digits."""
    return [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
