"""The data verbs, for whoever prepares a station's data: ``better synth`` (a synthetic cohort),
``better synth-store`` (a large synthetic dataset written straight into a store), ``better ingest`` and
``better ingest-bam`` (index files into a station's store) and ``better store info``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from better.cli.console import err, out, progress_bars

store_app = typer.Typer(help="Inspect a station's store.", no_args_is_help=True)


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
    dosages: Annotated[
        bool,
        typer.Option(
            help="write imputed-style VCFs, as an imputation server does: GT:DS:GP, INFO R2 and IMPUTED/TYPED, "
            "multi-allelic sites split into biallelic records (phenotypes unchanged)"
        ),
    ] = False,
    gp: Annotated[
        bool, typer.Option("--gp/--no-gp", help="with --dosages: also write GP (genotype posteriors)")
    ] = True,
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
            dosages=dosages,
            gp=gp,
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
        f"truth in truth.tsv{'; imputation quality in imputation.tsv' if dosages else ''}; "
        f"{time.perf_counter() - t0:.1f} s"
    )
    if bam:
        where = synthesize_bams(r.out, list(r.stations), BamConfig(samples_per_station=bam_samples))
        err.print(f"BAMs: {where}/STATION/SAMPLE.bam (+ .bai), reference.fa, targets.bed")
    print(r.out)


def synth_store(
    station: Annotated[Path, typer.Option(help="station directory (made a station if it is not one yet)")],
    dataset: Annotated[str, typer.Option(help="dataset name (replaced if it exists, only on success)")] = "cohort",
    samples: Annotated[int, typer.Option(help="samples in the dataset")] = 10_000,
    variants: Annotated[int, typer.Option(help="variants in the dataset")] = 10_000,
    seed: Annotated[int, typer.Option(help="seed of the samples; the same seeds give the same bytes")] = 1,
    sites_seed: Annotated[
        int | None,
        typer.Option(help="seed of the variants and their causes (default: --seed); stations sharing it federate"),
    ] = None,
    chromosomes: Annotated[int, typer.Option(help="the variants lie on autosomes 1 to this")] = 22,
    id_prefix: Annotated[str, typer.Option(help="sample IDs: this prefix and a number")] = "S",
    name: Annotated[
        str | None, typer.Option(help="the station's name, if the directory is not a station yet (default: its name)")
    ] = None,
    truth: Annotated[Path | None, typer.Option(help="also write the causal variants here, as truth.tsv")] = None,
    threads: Annotated[int | None, typer.Option(help="generator threads (default: all cores)")] = None,
) -> None:
    """Generate a large synthetic dataset straight into a station's store, without VCF text (population
    structure, Hardy-Weinberg genotypes, the phenotypes of `better synth`; see docs/store.md)."""
    from better.engine.accelerate import set_threads
    from better.engine.errors import InputError
    from better.genomics.store import Store
    from better.genomics.synth_store import SynthStoreConfig, synth_store, write_truth
    from better.station_api.config import CONFIG_FILE, StationConfig, check_station_name, read_config, write_config

    cfg = SynthStoreConfig(
        dataset=dataset,
        samples=samples,
        variants=variants,
        seed=seed,
        sites_seed=sites_seed,
        chromosomes=chromosomes,
        id_prefix=id_prefix,
    )
    cfg.validate()
    if (station / CONFIG_FILE).exists():
        existing = read_config(station).name
        if name is not None and name != existing:
            raise InputError(f"{station}: already a station named {existing!r}; leave out --name or choose another")
        store = Store.open(station)
    else:  # as `better station init` makes one
        station_name = check_station_name(name or station.resolve().name)
        store = Store.create(station)
        write_config(station, StationConfig(name=station_name))
        err.print(f"station {station_name!r} created in {station}")
    set_threads(threads)
    with progress_bars("variants") as progress:
        task = progress.add_task(f"synth-store {dataset}", total=variants)
        report = synth_store(
            store, cfg, on_progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
    if truth is not None:
        write_truth(truth, report.truth)
    err.print(
        f"dataset [bold]{dataset}[/bold]: {report.n_samples} samples, {report.n_variants} variants on "
        f"{', '.join(report.chromosomes)}, {len(report.truth)} causal variants"
        f"{f' (in {truth})' if truth is not None else ''}, in {report.seconds:.1f} s"
    )


def ingest(
    station: Annotated[Path, typer.Option(help="station directory")],
    dataset: Annotated[str, typer.Option(help="dataset name (replaced if it exists, only on success)")],
    vcf: Annotated[Path | None, typer.Option(help=".vcf, .vcf.gz or .bcf, sorted by position")] = None,
    bfile: Annotated[str | None, typer.Option(help="PLINK 1 fileset PREFIX (.bed/.bim/.fam; A1 = ALT)")] = None,
    pfile: Annotated[str | None, typer.Option(help="PLINK 2 fileset PREFIX (.pgen/.pvar/.psam), dosages kept")] = None,
    bgen: Annotated[Path | None, typer.Option(help="BGEN v1.2/v1.3 file; dosages from its probabilities")] = None,
    sample: Annotated[Path | None, typer.Option(help="the --bgen's .sample file (default: its own sample IDs)")] = None,
    bgen_ref: Annotated[str, typer.Option(help="the --bgen's REF: first (plink2 ref-first) or last")] = "first",
    phenotypes: Annotated[Path | None, typer.Option(help="tab-separated table, sample ID first")] = None,
    threads: Annotated[int | None, typer.Option(help="parser threads (default: all cores)")] = None,
    dosage: Annotated[
        str, typer.Option(help="FORMAT field of ALT dosages: auto (DS, else HDS, else GP), DS, HDS, GP or none")
    ] = "auto",
) -> None:
    """Index variants (and phenotypes) into the station's store: a VCF/BCF, a PLINK 1 or 2 fileset, or a BGEN."""
    from better.engine.accelerate import set_threads
    from better.engine.errors import InputError
    from better.genomics.ingest import ingest_variants, vcf_source
    from better.genomics.store import Store, check_dataset_name
    from better.station_api.config import read_config

    given = [f"--{n}" for n, v in (("vcf", vcf), ("bfile", bfile), ("pfile", pfile), ("bgen", bgen)) if v is not None]
    if len(given) != 1:
        raise InputError(
            ("no variant file given" if not given else f"{' and '.join(given)} given together")
            + "; give exactly one of --vcf FILE, --bfile PREFIX, --pfile PREFIX or --bgen FILE"
        )
    if (sample is not None or bgen_ref != "first") and bgen is None:
        raise InputError("--sample and --bgen-ref go with --bgen")
    read_config(station)
    store = Store.open(station)
    set_threads(threads)
    check_dataset_name(dataset)
    with progress_bars("bytes") as progress:
        name = (vcf or bgen or Path(str(bfile or pfile))).name
        task = progress.add_task(f"ingest {name}", total=None)
        if vcf is not None:
            source = vcf_source(
                str(vcf),
                dosage=dosage,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        elif bfile is not None:
            from better.genomics.plink_files import bed_source

            source = bed_source(bfile)
        elif pfile is not None:
            from better.genomics.plink_files import pgen_source

            source = pgen_source(pfile)
        else:
            from better.genomics.bgen import bgen_source

            source = bgen_source(str(bgen), str(sample) if sample else None, ref=bgen_ref)
        report = ingest_variants(store, dataset, source, str(phenotypes) if phenotypes else None)
    err.print(
        f"dataset [bold]{dataset}[/bold]: {report.n_samples} samples, {report.n_records} {source.format} records -> "
        f"{report.n_variants} variants ({report.n_multiallelic_records} multi-allelic records split) "
        f"on {', '.join(report.chromosomes) or 'no chromosome'} in {report.seconds:.1f} s"
    )
    if source.dosages:
        field = source.details.get("dosage_field")
        where = f"FORMAT/{field}" if field else f"from the {source.format} file"
        err.print(f"dosages: {where} (analysed on dosages; hard calls follow them, as PLINK 2 makes them)")
    if phenotypes is not None:
        msg = f"phenotypes: {report.n_phenotyped} of {report.n_samples} samples matched"
        if report.n_phenotype_rows_unmatched:
            msg += f"; {report.n_phenotype_rows_unmatched} phenotype rows match no sample and were left out"
        err.print(msg)


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
    with progress_bars("files") as progress:
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
    store = Store.open(station)
    rows = store.summary()
    table = Table(title=f"station {config.name} ({station})")
    for c in ("dataset", "kind", "samples", "records", "variants", "phenotyped", "chromosomes", "source sha256"):
        table.add_column(c)
    for r in rows:
        dosages = r["kind"] == "variants" and store.dataset(r["name"]).has_dosages
        table.add_row(
            r["name"],
            r["kind"] + (" (dosages)" if dosages else ""),
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


@store_app.command("plot-pcs")
def store_plot_pcs(
    station: Annotated[Path, typer.Option(help="station directory")],
    dataset: Annotated[str, typer.Option(help="the dataset the scores were stored for")],
    name: Annotated[str, typer.Option(help="the name the PCA stored them under (PCA ... AS name)")] = "pc",
    color_by: Annotated[str | None, typer.Option(help="a phenotype column to colour the people by")] = None,
    out_file: Annotated[Path, typer.Option("--out", help="the PNG to write")] = Path("pcs.png"),
) -> None:
    """Plot this station's own people on PC1 and PC2 (their stored scores): a picture for the station's
    staff, made where the scores are; the scores never leave the station."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from better.engine.errors import InputError
    from better.genomics.store import Store

    table = Store.open(station).dataset(dataset).phenotypes()
    first, second = f"{name}1", f"{name}2"
    if second not in table.column_names:
        raise InputError(f"dataset {dataset!r} has no stored {first} and {second}; run PCA 2 (or more) ... AS {name}")
    x = np.array(table.column(first).to_pylist(), dtype=float)
    y = np.array(table.column(second).to_pylist(), dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if color_by is not None:
        if color_by not in table.column_names:
            raise InputError(f"dataset {dataset!r} has no column {color_by!r}")
        groups = [str(v) for v in table.column(color_by).to_pylist()]
        for g in sorted(set(groups)):
            at = np.array([v == g for v in groups])
            ax.scatter(x[at], y[at], s=6, label=g)
        ax.legend(title=color_by, fontsize=7, markerscale=2)
    else:
        ax.scatter(x, y, s=6, color="#1f4e79")
    ax.set_xlabel(first)
    ax.set_ylabel(second)
    ax.set_title(f"{dataset}: {int(np.isfinite(x).sum())} people of this station")
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    out.print(f"wrote {out_file}")
