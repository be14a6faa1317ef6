"""``better gwas JOB.toml``: a batch GWAS over a federation, chunk by chunk, resumable, with a report.

The genome is cut into chunks (``chunk_bp`` bases of each chromosome the stations hold, or of the
regions asked for). For every chunk, the queries of all phenotypes go out together, so each station reads
that chunk's genotypes once for all of them (its block cache); each finished chunk is written to
``OUT/.chunks/`` by rename, so a job stopped midway resumes from the last finished chunk and writes the
same bytes as an uninterrupted run. At the end, per phenotype: ``PHENO.glm.linear`` or
``PHENO.glm.logistic``, GWAS-SSF ``PHENO.tsv.gz`` with ``PHENO.tsv.gz-meta.yaml``, Manhattan and QQ plots,
``PHENO.top_hits.tsv``, and one ``report.html`` for the job.

Every station release is signed; ``provenance.json`` holds the manifests of the whole job, for
``better verify``.

A job file::

    federation = "federation.toml"       # relative to the job file
    out = "gwas-out"
    covariates = ["age", "sex", "pc1", "pc2"]
    samples = "age >= 18"                # optional sample filter (the query language's WHERE)
    variants = "maf >= 0.01 AND call_rate >= 0.95"
    regions = ["22"]                     # optional; default every chromosome the stations hold
    adjust_station = false
    chunk_bp = 5000000
    annotation = "genes.bed"             # optional: nearest gene in the top hits

    [[phenotype]]
    name = "ldl"
    model = "linear"

    [[phenotype]]
    name = "case"
    model = "logistic"                    # test = "wald" (default), "score" or "firth"
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from better.engine.errors import InputError
from better.genomics.regions import WHOLE, Region
from better.genomics.tsv import write_tsv
from better.jobs import report
from better.jobs.report import Markup, join, render
from better.query.federation import Federation
from better.query.parser import parse
from better.query.planner import StationCatalog
from better.query.remote import gather_or_cancel
from better.query.withholding import summary as withheld_summary
from better.station_api.tomlfile import load_toml

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
FORMAT_VERSION = 1
#: Above this λGC, the report says what an inflated λGC means over a small region (its ``lambda_note``).
LAMBDA_NOTE_ABOVE = 1.1


class Phenotype(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    model: Literal["linear", "logistic"]
    test: Literal["wald", "score", "firth"] = "wald"


class PCAStep(BaseModel):
    """``[pca]``: principal components computed over the stations before the GWAS, used as covariates."""

    model_config = ConfigDict(extra="forbid")

    pcs: int = Field(10, ge=1, le=50)
    #: The scores are stored at the stations as covariates ``name1..namek``.
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,29}$")] = "pc"
    #: How many of them enter the models (default: all).
    use: int | None = Field(None, ge=1, le=50)
    #: The PCA's variant filter and LD pruning (the query language's WHERE and PRUNE).
    variants: str | None = "maf >= 0.01"
    prune: str | None = "50 5 0.1"

    def query(self, samples: str | None) -> str:
        where = " AND ".join(w for w in (samples, self.variants) if w)
        text = f"PCA {self.pcs}" + (f" WHERE {where}" if where else "")
        return text + (f" PRUNE {self.prune}" if self.prune else "") + f" AS {self.name}"

    def covariates(self) -> list[str]:
        return [f"{self.name}{i + 1}" for i in range(min(self.use or self.pcs, self.pcs))]


class JobSpec(BaseModel):
    """The job file, validated."""

    model_config = ConfigDict(extra="forbid")

    federation: str
    out: str = "gwas-out"
    title: str = "BETTER federated GWAS"
    phenotype: list[Phenotype] = Field(min_length=1, max_length=64)
    covariates: list[Name] = Field(min_length=1)
    samples: str | None = None
    variants: str | None = None
    regions: list[str] = Field(default_factory=list)
    adjust_station: bool = False
    chunk_bp: int = Field(5_000_000, ge=1000)
    annotation: str | None = None
    genome_assembly: str = "unknown"
    top: int = Field(20, ge=1, le=10_000)
    pca: PCAStep | None = None

    def model_covariates(self) -> list[str]:
        """The covariates of every model: those listed, then the PCs the job computes."""
        return list(self.covariates) + (self.pca.covariates() if self.pca else [])


@dataclass
class JobResult:
    """What a finished job wrote and how long its parts took."""

    out: Path
    files: dict[str, list[Path]]
    lambdas: dict[str, float]
    tops: dict[str, pl.DataFrame]
    seconds: float
    chunks_run: int
    chunks_reused: int
    round_seconds: dict[str, float] = field(default_factory=dict)


def load_job(path: str | os.PathLike[str]) -> tuple[JobSpec, Path]:
    """Read and check a job file; return it and the folder its relative paths start from."""
    p = Path(path)
    spec = load_toml(p, JobSpec, "job file")
    names = [ph.name for ph in spec.phenotype]
    if len(set(names)) != len(names):
        raise InputError(f"{p}: a phenotype is listed twice")
    return spec, p.resolve().parent


def query_text(spec: JobSpec, ph: Phenotype, region: str) -> str:
    """The query of one phenotype over one chunk."""
    where = " AND ".join(w for w in (spec.samples, spec.variants) if w)
    text = f"GWAS {ph.model.upper()} {ph.name} ~ {' + '.join(spec.model_covariates())} ON {region}"
    if where:
        text += f" WHERE {where}"
    if spec.adjust_station:
        text += " ADJUST station"
    if ph.model == "logistic" and ph.test != "wald":
        text += f" TEST {ph.test}"
    return text


def chunks_of(spec: JobSpec, catalogs: list[StationCatalog], dataset: str | None) -> list[str]:
    """Chunks of at most ``chunk_bp`` bases over the regions asked for (or everything the stations hold)."""
    spans: dict[str, list[int]] = {}
    for c in catalogs:
        name = c.dataset(dataset)
        for chrom, (lo, hi) in c.datasets[name].get("spans", {}).items():
            have = spans.setdefault(chrom, [lo, hi])
            have[0], have[1] = min(have[0], lo), max(have[1], hi)
    regions = [Region.parse(r) for r in spec.regions] or [Region(chrom) for chrom in spans]
    out = []
    for r in regions:
        if r.chrom not in spans:
            continue
        lo = max(r.first_pos, spans[r.chrom][0])
        hi = min(r.last_pos if r.end != WHOLE else spans[r.chrom][1], spans[r.chrom][1])
        start = lo - (lo - 1) % spec.chunk_bp  # chunk edges fall on multiples of chunk_bp, whatever the span
        while start <= hi:
            out.append(f"{r.chrom}:{max(start, lo)}-{min(start + spec.chunk_bp - 1, hi)}")
            start += spec.chunk_bp
    return out


class Progress:
    """Callbacks a caller may give :func:`run_job` (the CLI draws progress bars with them)."""

    def __init__(
        self,
        on_start: Callable[[int], None] | None = None,
        on_chunk: Callable[[int, str, bool], None] | None = None,
    ) -> None:
        self.on_start = on_start or (lambda n: None)
        self.on_chunk = on_chunk or (lambda i, region, reused: None)


@dataclass
class _Job:
    """A job under way: its spec, the folder its paths start from, its out folder, stations and chunks."""

    spec: JobSpec
    base: Path
    out: Path
    fed: Federation
    catalogs: list[StationCatalog]
    chunks: list[str]

    @property
    def parts(self) -> Path:
        """Where finished chunks are kept until the job's files are written."""
        return self.out / ".chunks"


@dataclass
class _Ran:
    """What running the chunks took: seconds per round kind, chunks computed now and reused."""

    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    computed: int = 0
    reused: int = 0


@dataclass
class _Written:
    """One phenotype's outputs: its files, λGC, top hits and section of the report."""

    files: list[Path]
    lambda_gc: float
    top: pl.DataFrame
    section: Markup


def run_job(path: str | os.PathLike[str], progress: Progress | None = None, fed: Federation | None = None) -> JobResult:
    """Run (or resume) the job in ``path``; see the module docstring for what it writes.

    Parameters
    ----------
    path
        The job file (TOML).
    progress
        Callbacks told of the chunks as they finish.
    fed
        The federation to run on (default: the one the job file names).

    Returns
    -------
    JobResult
        What the job wrote.
    """
    progress = progress or Progress()
    t0 = time.perf_counter()
    spec, base = load_job(path)
    fed = fed or Federation.from_file(base / spec.federation)
    out = (base / spec.out).resolve()
    (out / ".chunks").mkdir(parents=True, exist_ok=True)
    for ph in spec.phenotype:  # fail early, before any station works, on a query that cannot run
        parse(query_text(spec, ph, "1"))
    if spec.pca is not None:
        parse(spec.pca.query(spec.samples))
    catalogs = asyncio.run(fed.catalogs(fed.stations))
    chunks = chunks_of(spec, catalogs, fed.dataset)
    if not chunks:
        raise InputError("the job's regions hold no variants at any station")
    manifest = {
        "format": FORMAT_VERSION,
        "job": spec.model_dump(),
        "chunks": chunks,
        "stations": [s.name for s in fed.stations],
    }
    _check_manifest(out / "job.json", manifest)
    if not (out / ".created").exists():  # the metadata's date: the day the job started, not the day it ended
        (out / ".created").write_text(str(date.today()))
    job = _Job(spec, base, out, fed, catalogs, chunks)
    if spec.pca is not None:
        _principal_components(job, spec.pca)
    ran = _run_chunks(job, progress)
    return _finish(job, ran, t0)


def _run_chunks(job: _Job, progress: Progress) -> _Ran:
    """Compute every chunk not finished before, each written whole (by rename) as it ends."""
    ran = _Ran()
    progress.on_start(len(job.chunks))
    for i, region in enumerate(job.chunks):
        todo = [ph for ph in job.spec.phenotype if not _chunk_path(job.parts, ph.name, i).exists()]
        if todo:
            for station in job.fed.stations:
                station.manifests.clear()
            frames = asyncio.run(_chunk(job.fed, job.spec, todo, region, ran.timings))
            signed = job.parts / f"manifests.{i:05d}.{'+'.join(ph.name for ph in todo)}.json"
            signed.write_text(json.dumps(job.fed.manifests))  # before the chunk counts as done
            for ph, frame in zip(todo, frames, strict=True):
                target = _chunk_path(job.parts, ph.name, i)
                tmp = target.with_suffix(".tmp")
                frame.write_parquet(tmp)
                os.replace(tmp, target)  # a chunk is there whole or not at all
            ran.computed += 1
        else:
            ran.reused += 1
        progress.on_chunk(i, region, not todo)
    return ran


def _principal_components(job: _Job, step: PCAStep) -> None:
    """Compute the PCs (once: a resumed job finds ``pca.eigenval.tsv``) and store them at the stations;
    write the eigenvalues, the projection weights and a scree plot."""
    table = job.out / "pca.eigenval.tsv"
    if table.exists():
        return
    from better.query.structure import weights_frame

    frame = job.fed.query(step.query(job.spec.samples))
    pca = job.fed.structure.pca
    assert pca is not None
    weights_frame(pca, job.fed.structure.ids).write_csv(job.out / "pca.weights.tsv", separator="\t")
    (job.out / "pca.scree.png").write_bytes(report.scree(frame))
    tmp = table.with_suffix(".tmp")
    frame.write_csv(tmp, separator="\t")
    os.replace(tmp, table)  # last: its presence says the scores are stored


def _pca_section(job: _Job) -> Markup:
    """The report's section on the PCs (empty if the job computes none)."""
    step = job.spec.pca
    if step is None:
        return Markup()
    frame = pl.read_csv(job.out / "pca.eigenval.tsv", separator="\t")
    return render(
        "pca",
        pcs=step.pcs,
        name=step.name,
        used=", ".join(step.covariates()),
        query=step.query(job.spec.samples),
        table=report.html_table(frame),
        scree=report.img((job.out / "pca.scree.png").read_bytes(), "Scree plot"),
    )


def _chunk_path(parts: Path, phenotype: str, i: int) -> Path:
    return parts / f"{phenotype}.{i:05d}.parquet"


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, sort_keys=True, indent=1)
    if path.exists():
        if path.read_text() != text:
            raise InputError(
                f"{path.parent} holds the results of a different job (or of this one with other settings or "
                "stations); give the job another out folder, or delete that one to start again"
            )
        return
    path.write_text(text)


async def _chunk(
    fed: Federation, spec: JobSpec, todo: list[Phenotype], region: str, timings: dict[str, float]
) -> list[pl.DataFrame]:
    def on_round(stage: str, _round: int, kind: str, _n: int, seconds: float) -> None:
        timings[kind] += seconds

    async def one(ph: Phenotype) -> pl.DataFrame:
        return await fed.run(parse(query_text(spec, ph, region)), False, False, on_round)

    return await gather_or_cancel(*(one(ph) for ph in todo))


def _finish(job: _Job, ran: _Ran, t0: float) -> JobResult:
    """Write every phenotype's files, ``provenance.json`` and ``report.html`` from the finished chunks."""
    spec = job.spec
    genes = report.read_bed(job.base / spec.annotation) if spec.annotation else None
    written = {ph.name: _write_phenotype(job, ph, genes) for ph in spec.phenotype}
    manifests = [m for f in sorted(job.parts.glob("manifests.*.json")) for m in json.loads(f.read_text())]
    (job.out / "provenance.json").write_text(json.dumps({"provenance": manifests}, indent=1))
    files = {name: w.files for name, w in written.items()}
    files["provenance"] = [job.out / "provenance.json"]
    if spec.pca is not None:
        files["pca"] = [job.out / n for n in ("pca.eigenval.tsv", "pca.weights.tsv", "pca.scree.png")]
    seconds = time.perf_counter() - t0
    summary = render(
        "summary",
        phenotypes=", ".join(ph.name for ph in spec.phenotype),
        covariates=", ".join(spec.model_covariates()) + (" + station" if spec.adjust_station else ""),
        samples=spec.samples or "none",
        variants=spec.variants or "none",
        chunks=len(job.chunks),
        chunk_bp=f"{spec.chunk_bp:,}",
        stations=len(job.fed.stations),
    )
    sections = join([_pca_section(job), *(w.section for w in written.values()), _provenance(job, ran, seconds)])
    page = render("page", title=spec.title, summary=summary, sections=sections)
    (job.out / "report.html").write_text(page)
    return JobResult(
        job.out,
        files,
        {name: w.lambda_gc for name, w in written.items()},
        {name: w.top for name, w in written.items()},
        seconds,
        ran.computed,
        ran.reused,
        dict(ran.timings),
    )


def _write_phenotype(job: _Job, ph: Phenotype, genes: list[report.Gene] | None) -> _Written:
    """One phenotype's table, GWAS-SSF files, plots and top hits from its chunks, and its report section."""
    spec, out = job.spec, job.out
    frame = pl.concat([pl.read_parquet(_chunk_path(job.parts, ph.name, i)) for i in range(len(job.chunks))])
    glm = out / f"{ph.name}.glm.{ph.model}"
    report.write_glm(frame, glm)
    ssf = out / f"{ph.name}.tsv.gz"
    tested = report.tested(frame)
    report.write_ssf(
        frame,
        ph.model,
        ssf,
        {
            "date_metadata_last_modified": (out / ".created").read_text().strip(),
            "genome_assembly": spec.genome_assembly,
            "trait_description": [ph.name],
            "samples": [{"sample_size": int(tested["OBS_CT"].cast(pl.Int64).max() or 0) if tested.height else 0}],  # type: ignore[arg-type]
            "analysis_software": (
                f"BETTER {metadata.version('better-genomics')} "
                f"(federated {ph.model} regression over {len(job.fed.stations)} stations)"
            ),
            "effect_statistic": "beta" if ph.model == "linear" else "odds_ratio",
            "covariates": spec.model_covariates() + (["station"] if spec.adjust_station else []),
        },
    )
    man = report.manhattan(frame, f"{ph.name} ({ph.model})")
    qq_png, lam = report.qq(frame, ph.name)
    (out / f"{ph.name}.manhattan.png").write_bytes(man)
    (out / f"{ph.name}.qq.png").write_bytes(qq_png)
    top = report.top_hits(frame, spec.top, genes)
    write_tsv(out / f"{ph.name}.top_hits.tsv", top.columns, top.iter_rows())
    files = [glm, ssf, Path(f"{ssf}-meta.yaml"), out / f"{ph.name}.manhattan.png", out / f"{ph.name}.qq.png"]
    files.append(out / f"{ph.name}.top_hits.tsv")
    by_rule = withheld_summary(frame["WITHHELD_BY"].to_list()) if "WITHHELD_BY" in frame.columns else {}
    rules = "; ".join(f"{n} by {rule}" for rule, n in by_rule.items())
    query = query_text(spec, ph, job.chunks[0])
    section = render(
        "phenotype",
        name=ph.name,
        model=ph.model + (f", {ph.test}" if ph.model == "logistic" else ""),
        variants=frame.height,
        tested=tested.height,
        withheld=int(frame["WITHHELD"].sum()),
        rules=f" ({rules})" if rules else "",
        errors=int(((frame["ERRCODE"] != ".") & ~frame["WITHHELD"]).sum()),
        lambda_gc=f"{lam:.3f}",
        lambda_note=render("lambda_note") if lam > LAMBDA_NOTE_ABOVE else Markup(),
        manhattan=report.img(man, "Manhattan plot"),
        qq=report.img(qq_png, "QQ plot"),
        top_hits=report.html_table(top),
        query=query,
        plan=job.fed.explain(query),
    )
    return _Written(files, lam, top, section)


def _provenance(job: _Job, ran: _Ran, seconds: float) -> Markup:
    """The report's last section: each station's datasets, software and policy, and the run time."""
    rows = []
    for c, s in zip(job.catalogs, job.fed.stations, strict=True):
        for name, d in c.datasets.items():
            rows.append(
                {
                    "station": c.name,
                    "url": s.url,
                    "dataset": name,
                    "samples (about)": d.get("samples_about"),
                    "variants": d.get("variants"),
                    "data sha256": str(d.get("source_sha256") or "")[:16],
                    "software": c.software,
                    "policy": ", ".join(f"{k}={v}" for k, v in c.policy.items() if k != "allowed_analyses"),
                }
            )
    timing = pl.DataFrame({"round": list(ran.timings), "seconds": [round(v, 2) for v in ran.timings.values()]})
    return render(
        "provenance",
        stations=report.html_table(pl.DataFrame(rows)),
        seconds=f"{seconds:.1f}",
        computed=ran.computed,
        reused=ran.reused,
        chunks=len(job.chunks),
        timing=report.html_table(timing),
    )
