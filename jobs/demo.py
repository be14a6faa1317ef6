"""``better demo``: the whole product on the synthetic default, on this machine.

Generates the cohort (three hospitals), sets up three stations with the default policy and fresh tokens,
starts them as real HTTP servers on loopback ports, runs a batch GWAS job (``ldl`` linear and ``case``
logistic) through them, and compares the top hits with the simulation's truth. Nothing leaves loopback.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.genomics.synth import SynthConfig, synthesize
from better.jobs.gwas import JobResult, Progress, run_job
from better.station_api.auth import new_token
from better.station_api.config import StationConfig, write_config
from better.station_api.launch import station_processes
from better.station_api.secure_agg import agreement_key_text, load_or_create_agreement_key
from better.station_api.signing import load_or_create_key, public_key_text

COVARIATES = ["age", "sex", "pc1", "pc2", "pc3", "pc4"]


@dataclass
class DemoResult:
    job: JobResult
    truth: pl.DataFrame
    seconds: float


def run_demo(out: Path, say: Callable[[str], None], progress: Progress | None = None) -> DemoResult:
    """Run the demo in ``out`` (reusing a cohort and stations made by an earlier run there)."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cohort_dir = out / "cohort"
    # The synthetic defaults: 1% missing genotypes (varying by variant), a few missing phenotypes.
    config = SynthConfig(out=str(cohort_dir))
    if (cohort_dir / "cohort.json").exists() and json.loads((cohort_dir / "cohort.json").read_text())[
        "config"
    ] == json.loads(json.dumps(asdict(config))):
        say(f"cohort: reusing {cohort_dir}")
        stations = json.loads((cohort_dir / "cohort.json").read_text())["stations"]
    else:
        say("cohort: simulating 2,000 people at three hospitals (msprime)")
        stations = list(synthesize(config, on_step=say).stations)
    tokens = []
    paths = []
    for name in stations:
        path = out / "stations" / name
        if not (path / "catalog.duckdb").exists() or "cohort" not in {d["name"] for d in Store.open(path).summary()}:
            store = Store.create(path)
            rep = ingest_vcf(store, "cohort", str(cohort_dir / f"{name}.vcf.gz"), str(cohort_dir / f"{name}.pheno.tsv"))
            say(f"station {name}: {rep.n_samples} samples, {rep.n_variants} variants indexed")
        token, record = new_token("demo", "researcher")
        write_config(path, StationConfig(name=name, tokens=[record]))  # the default policy
        tokens.append(token)
        paths.append(path)
    t1 = time.perf_counter()
    compile_kernels(paths[0], COVARIATES)
    say(f"kernels: compiled once for the three stations in {time.perf_counter() - t1:.1f} s (then cached)")
    say("stations: starting three servers on 127.0.0.1")
    with station_processes(paths, threads=1) as urls:
        fed = out / "federation.toml"
        # The stations' keys, pinned: signing keys for `better verify`, agreement keys for the masks.
        pins = [
            (public_key_text(load_or_create_key(p)), agreement_key_text(load_or_create_agreement_key(p))) for p in paths
        ]
        fed.write_text(
            'secure_aggregation = "on"\n\n'
            + "".join(
                f'[[station]]\nname = "{n}"\nurl = "{u}"\ntoken = "{t}"\n'
                f'public_key = "{pk}"\nagreement_key = "{ak}"\n\n'
                for n, u, t, (pk, ak) in zip(stations, urls, tokens, pins, strict=True)
            )
        )
        fed.chmod(0o600)
        job = out / "job.toml"
        job.write_text(
            'federation = "federation.toml"\nout = "gwas"\ntitle = "BETTER demo: federated GWAS of ldl and case"\n'
            f"covariates = {json.dumps(COVARIATES)}\n"
            'variants = "maf >= 0.01"\nadjust_station = true\nchunk_bp = 500000\n\n'
            '[[phenotype]]\nname = "ldl"\nmodel = "linear"\n\n[[phenotype]]\nname = "case"\nmodel = "logistic"\n'
        )
        say(f"gwas: {job} (ldl linear, case logistic; covariates {', '.join(COVARIATES)} and station)")
        result = run_job(job, progress)
    truth = pl.read_csv(cohort_dir / "truth.tsv", separator="\t", schema_overrides={"chrom": pl.String})
    return DemoResult(result, truth, time.perf_counter() - t0)


def compile_kernels(station: Path, covariates: list[str]) -> None:
    """Run each round of the demo's GWAS once at ``station``, in this process, over a small region, so that
    Numba compiles its kernels once and caches them: three station processes started together would
    otherwise each compile the same kernels at once, on as many cores as there are: 3 times the CPU."""
    from better.engine.design import KEY_COLUMNS
    from better.query.remote import Model, to_request
    from better.station_api.config import Policy
    from better.station_api.runner import DatasetCache, compute, prepare
    from better.wire.masking import mask_words, unmask_sum

    datasets, policy = DatasetCache(Store.open(station)), Policy()
    dataset = datasets("cohort")
    first = dataset.variants(columns=["chrom", "pos"]).slice(0, 200)
    region = (f"{first['chrom'][0]}:{first['pos'][0]}-{first['pos'][-1]}",)
    linear = Model("cohort", "gwas_linear", "ldl", tuple(covariates), regions=region)
    logistic = Model("cohort", "gwas_logistic", "case", tuple(covariates), binary=True, regions=region)

    def run(task: dict[str, Any], model: Model) -> dict[str, np.ndarray]:
        return compute(prepare(datasets, to_request(task, model, 0, 1), policy)).result

    run({"kind": "counts", "groups": 2}, logistic)
    run({"kind": "linear"}, linear)
    k = 1 + len(covariates)
    score = run({"kind": "logistic_score", "beta": np.zeros(k)}, logistic)
    keys = {f"key_{c}": np.asarray(score[f"key_{c}"][:2]) for c in KEY_COLUMNS}
    rows = int(keys["key_pos"].shape[0])
    newton = {"beta": np.zeros((rows, k + 1)), "inv": np.tile(np.eye(k + 1), (rows, 1, 1))}
    newton |= {"firth": np.arange(rows) % 2 == 1, "loglik": np.ones(rows, dtype=bool)}  # Newton and Firth
    if rows:
        run({"kind": "logistic_newton", **keys, **newton}, logistic)
    # secure aggregation's fixed-point words: masked at each station (one adds the pair's stream, one
    # subtracts it), added and decoded by the coordinator
    pair = {"a": {"b": bytes(32)}, "b": {"a": bytes(32)}}
    masked = [mask_words({"x": np.zeros(2)}, own, keys_of) for own, keys_of in pair.items()]
    unmask_sum(masked, list(pair))


def truth_table(result: DemoResult) -> pl.DataFrame:
    """Each simulated causal variant beside what the federated GWAS found for it (effects as beta for
    ldl, log odds ratio for case)."""
    rows = []
    for trait in result.truth["trait"].unique(maintain_order=True).to_list():
        glm = result.job.out / f"{trait}.glm.{'linear' if trait == 'ldl' else 'logistic'}"
        found = pl.read_csv(glm, separator="\t", infer_schema=False)
        for r in result.truth.filter(pl.col("trait") == trait).iter_rows(named=True):
            hit = found.filter((pl.col("POS") == str(r["pos"])) & (pl.col("ALT") == r["alt"]))
            rec = hit.row(0, named=True) if hit.height else {}
            rows.append(
                {
                    "trait": trait,
                    "variant": f"{r['chrom']}:{r['pos']} {r['ref']}>{r['alt']}",
                    "true effect": r["effect"],
                    "estimate": _effect(rec),
                    "P": rec.get("P", "-"),
                    "found": _verdict(rec),
                }
            )
    return pl.DataFrame(rows)


def _effect(rec: dict[str, str]) -> str | float:
    """BETA, or log(OR) for a logistic row: the scale the simulation's effects are on."""
    try:
        return float(rec["BETA"]) if "BETA" in rec else math.log(float(rec["OR"]))
    except (KeyError, ValueError):
        return rec.get("BETA", rec.get("OR", "not tested"))


def _verdict(rec: dict[str, str]) -> str:
    if not rec:
        return "filtered (maf)"
    if rec.get("P") == "withheld":
        return "withheld by a station"
    try:
        p = float(rec["P"])
    except (KeyError, ValueError):
        return rec.get("ERRCODE", "-")
    return "genome-wide" if p < 5e-8 else ("suggestive" if p < 1e-5 else "not significant")
