"""The ``better`` command line. Every verb is scriptable: results on stdout, messages on stderr, and a
failure exits non-zero with a one-paragraph message (never a traceback)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from better.engine.errors import BetterError

if TYPE_CHECKING:
    import polars as pl

    from better.query.federation import Federation

app = typer.Typer(
    help="BETTER: federated genomics. The analysis travels to the data; only aggregates come back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
station_app = typer.Typer(help="Create and manage a station (a hospital's store).", no_args_is_help=True)
store_app = typer.Typer(help="Inspect a station's store.", no_args_is_help=True)
federation_app = typer.Typer(help="Write the researcher's federation file.", no_args_is_help=True)
app.add_typer(station_app, name="station")
app.add_typer(store_app, name="store")
app.add_typer(federation_app, name="federation")

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
    fully_called: Annotated[float, typer.Option(help="share of variants with no missing genotype")] = 0.0,
    missing_rates: Annotated[
        str, typer.Option(help="variable: each variant's missing rate around 1% (sequencing); uniform: 1% everywhere")
    ] = "variable",
    bam: Annotated[bool, typer.Option(help="also simulate indexed BAMs of some samples per station")] = False,
    bam_samples: Annotated[int, typer.Option(help="samples per station that get a BAM")] = 6,
) -> None:
    """Generate a synthetic cohort split across stations (msprime genealogies, traits with known causes)."""
    from better.genomics.synth import SynthConfig, synthesize
    from better.genomics.synth_bam import BamConfig, synthesize_bams

    t0 = time.perf_counter()
    r = synthesize(
        SynthConfig(
            out=str(out_dir),
            stations=stations,
            samples=samples,
            variants=variants,
            seed=seed,
            fully_called=fully_called,
            missing_rates=missing_rates,
        ),
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
    if bam:
        where = synthesize_bams(r.out, list(r.stations), BamConfig(samples_per_station=bam_samples))
        err.print(f"BAMs: {where}/STATION/SAMPLE.bam (+ .bai), reference.fa, targets.bed")
    print(r.out)


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
    role: Annotated[str, typer.Option(help="researcher (submits tasks) or admin (audit, approvals, policy)")] = (
        "researcher"
    ),
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
        raise BetterError(f"role {role!r}: use researcher or admin")
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
) -> None:
    """Run the station's HTTP API (FastAPI under uvicorn) until interrupted."""
    import logging

    import uvicorn

    from better.engine.accelerate import set_threads
    from better.station_api.app import check_loopback, create_app
    from better.station_api.config import read_config

    config = read_config(station)
    set_threads(threads or (config.server.threads or None))
    app_ = create_app(station)
    if not check_loopback(host):
        err.print(f"[yellow]listening on {host}: reachable from the network; put TLS in front of it[/yellow]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    err.print(f"station {config.name} serving http://{host}:{port} (OpenAPI at /docs)")
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


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


@federation_app.command("add")
def federation_add(
    name: Annotated[str, typer.Argument(help="the station's name, as its /info says")],
    url: Annotated[str, typer.Argument(help="the station's URL, e.g. http://127.0.0.1:8701")],
    token_env: Annotated[
        str | None, typer.Option(help="environment variable that will hold the token (keeps it out of the file)")
    ] = None,
    token: Annotated[str | None, typer.Option(help="the token itself, written into the file (mode 0600)")] = None,
    federation: Annotated[Path, typer.Option(help="federation file to create or add to")] = Path("federation.toml"),
    pin: Annotated[bool, typer.Option(help="pin the station's signing and agreement keys from its /info")] = True,
) -> None:
    """Add a station to the federation file (created if missing), pinning its keys as it reports them now."""
    from better.query.federation import add_station

    entry = add_station(federation, name, url, token_env=token_env, token=token, pin=pin)
    pinned = [k for k in ("public_key", "agreement_key") if k in entry]
    err.print(
        f"{federation}: station {name} at {url}"
        + (f"; pinned {' and '.join(pinned)} (check them with the station's administrator)" if pinned else "")
    )


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


@app.command()
def ingest(
    station: Annotated[Path, typer.Option(help="station directory")],
    dataset: Annotated[str, typer.Option(help="dataset name (replaced if it exists, only on success)")],
    vcf: Annotated[Path, typer.Option(help=".vcf, .vcf.gz or .bcf, sorted by position")],
    phenotypes: Annotated[Path | None, typer.Option(help="tab-separated table, sample ID first")] = None,
    threads: Annotated[int | None, typer.Option(help="parser threads (default: all cores)")] = None,
) -> None:
    """Index a VCF/BCF (and phenotypes) into the station's store."""
    from better.engine.accelerate import set_threads
    from better.genomics.ingest import ingest_vcf
    from better.genomics.store import Store
    from better.station_api.config import read_config

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


@app.command("ingest-bam")
def ingest_bam(
    station: Annotated[Path, typer.Option(help="station directory")],
    dataset: Annotated[str, typer.Option(help="dataset name (replaced if it exists, only on success)")],
    bam: Annotated[list[Path], typer.Option(help="coordinate-sorted, indexed BAM or CRAM, one per sample; repeat")],
    targets: Annotated[Path | None, typer.Option(help="BED of capture targets (default: fixed-size bins)")] = None,
    reference: Annotated[Path | None, typer.Option(help="reference FASTA (needed for CRAM)")] = None,
    phenotypes: Annotated[Path | None, typer.Option(help="tab-separated table, sample ID first")] = None,
    sample_map: Annotated[Path | None, typer.Option(help="FILE<TAB>SAMPLE_ID lines, instead of read groups")] = None,
    bin_size: Annotated[int, typer.Option(help="bin length in bases when there is no BED")] = 100_000,
    min_mapq: Annotated[int, typer.Option(help="reads below this mapping quality do not count towards depth")] = 0,
    more: Annotated[list[Path] | None, typer.Argument(help="more files: `--bam a.bam b.bam` works too")] = None,
) -> None:
    """Index aligned reads: per sample flagstat metrics, MAPQ histogram, depth per target or bin."""
    from better.genomics.ingest_bam import ingest_bams
    from better.genomics.store import Store
    from better.station_api.config import read_config

    read_config(station)
    store = Store.open(station)
    bam = [*bam, *(more or [])]
    with _progress() as progress:
        task = progress.add_task("ingest-bam", total=len(bam))

        def on_file(k: int, path: str) -> None:
            progress.update(task, completed=k, description=f"ingest-bam {Path(path).name}")

        report = ingest_bams(
            store,
            dataset,
            [str(b) for b in bam],
            targets_bed=str(targets) if targets else None,
            reference=str(reference) if reference else None,
            phenotypes=str(phenotypes) if phenotypes else None,
            sample_map=str(sample_map) if sample_map else None,
            bin_size=bin_size,
            min_mapq=min_mapq,
            on_file=on_file,
        )
        progress.update(task, completed=len(bam))
    err.print(
        f"dataset [bold]{dataset}[/bold] (reads): {report.n_samples} samples, {report.n_reads:,} reads, "
        f"{report.n_targets} targets, {report.n_phenotyped} with phenotypes, in {report.seconds:.1f} s"
    )


@store_app.command("info")
def store_info(station: Annotated[Path, typer.Option(help="station directory")]) -> None:
    """Summarise a station's datasets: counts, chromosomes, phenotype columns and provenance."""
    from better.genomics.store import Store
    from better.station_api.config import read_config

    config = read_config(station)
    rows = Store.open(station).summary()
    table = Table(title=f"station {config.name} ({station})")
    for c in ("dataset", "kind", "samples", "records", "variants", "phenotyped", "chromosomes", "source sha256"):
        table.add_column(c)
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
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
    with _bars("rounds", transient=True) as progress:
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
    if fed.recording is not None and out_file is not None:
        from better.query.replay import releases_path, write_releases

        write_releases(releases_path(out_file), text, fed.dataset, fed.secure_aggregation, fed.answered, fed.recording)
    err.print(f"[dim]{result_summary(frame, fed)} in {time.perf_counter() - t0:.1f} s[/dim]")


def result_summary(frame: pl.DataFrame, fed: Federation) -> str:
    """One line: rows, who answered, and how many rows each rule withheld."""
    from better.query.withholding import summary

    line = f"{frame.height} row(s) from {', '.join(fed.answered)}"
    if "WITHHELD" in frame.columns and frame["WITHHELD"].any():
        by_rule = summary(frame["WITHHELD_BY"].to_list()) if "WITHHELD_BY" in frame.columns else {}
        rules = ", ".join(f"{n} by {rule}" for rule, n in by_rule.items())
        line += f"; {int(frame['WITHHELD'].sum())} withheld ({rules}; see docs/privacy.md)"
    return line


@app.command()
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


def _bars(unit: str, transient: bool) -> Progress:
    """Progress bars on stderr counting ``unit`` (hidden when stderr is not a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal,
    )


def _job_progress() -> tuple[Progress, object]:
    from better.query.gwas_job import Progress as JobProgress

    bars = _bars("chunks", transient=False)
    state: dict[str, TaskID] = {}

    def start(n: int) -> None:
        state["t"] = bars.add_task("gwas", total=n)

    def chunk(i: int, region: str, reused: bool) -> None:
        bars.update(state["t"], completed=i + 1, description=f"gwas {region}{' (done before)' if reused else ''}")

    return bars, JobProgress(start, chunk)


@app.command()
def gwas(job: Annotated[Path, typer.Argument(help="the job file (TOML); see docs/gwas-jobs.md")]) -> None:
    """Run (or resume) a batch GWAS job: summary statistics, GWAS-SSF, plots, top hits and a report."""
    from better.query.gwas_job import run_job

    bars, progress = _job_progress()
    with bars:
        result = run_job(job, progress)  # type: ignore[arg-type]
    for name, lam in result.lambdas.items():
        err.print(f"{name}: λGC {lam:.3f}; " + ", ".join(f.name for f in result.files[name]))
    err.print(f"report: {result.out / 'report.html'} ({result.seconds:.1f} s; {result.chunks_reused} chunk(s) reused)")
    print(result.out / "report.html")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="working folder")] = Path("better-demo"),
) -> None:
    """The main job on the synthetic default: three stations as HTTP servers, a federated GWAS, a report."""
    from better.query.demo import run_demo, truth_table

    bars, progress = _job_progress()
    with bars:
        result = run_demo(out_dir, lambda m: err.print(f"[dim]{m}[/dim]"), progress)  # type: ignore[arg-type]
    for name, top in result.job.tops.items():
        t = Table(title=f"top hits: {name} (λGC {result.job.lambdas[name]:.3f})")
        cols = [c for c in top.columns if c in ("#CHROM", "POS", "ID", "A1", "BETA", "OR", "P", "A1_FREQ")]
        for c in cols:
            t.add_column(c)
        for r in top.head(8).select(cols).iter_rows():
            t.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in r])
        out.print(t)
    truth = Table(title="the simulation's causal variants, and what the federated GWAS found")
    frame = truth_table(result)
    for c in frame.columns:
        truth.add_column(c)
    for r in frame.iter_rows():
        truth.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in r])
    out.print(truth)
    err.print(f"report: {result.job.out / 'report.html'}; demo finished in {result.seconds:.1f} s")


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


if __name__ == "__main__":
    main()
