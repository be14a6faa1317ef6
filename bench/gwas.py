"""GWAS benchmark: federated statistics (three stations) + combine + finalize, against ``plink2 --glm``.

Uses the issue's cohort from ../shared/bench/make-dummy-cohort.sh (10,000 samples x 50,000 variants,
split 50/30/20 into three stations), ingested once into three station stores under bench/out/. Times
the engine in-process (no HTTP) with the given threads, and PLINK 2 on the pooled .pgen with the same
threads and covariates (age sex pc1..pc4), as a ratio.

Usage::

    bash ../shared/bench/make-dummy-cohort.sh bench/out/dummy      # once
    python bench/gwas.py [--cohort bench/out/dummy] [--threads 2] [--tests linear,score,wald]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
COVARS = ["age", "sex", "pc1", "pc2", "pc3", "pc4"]


def timed_plink(*args: str) -> float:
    """Seconds one ``plink2`` command takes (its output is not shown)."""
    t0 = time.perf_counter()
    subprocess.run(["plink2", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def plink_time(cohort: Path, pheno: str, threads: int, work: Path) -> float:
    """Seconds ``plink2 --glm`` takes for ``pheno`` on the pooled file."""
    return timed_plink(
        *("--pfile", str(cohort / "dummy"), "--pheno", str(cohort / "pheno.tsv"), "--pheno-name", pheno),
        *("--covar", str(cohort / "pheno.tsv"), "--covar-name", *COVARS, "--covar-variance-standardize"),
        *("--glm", "hide-covar", "omit-ref", "--threads", str(threads), "--out", str(work / pheno)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=OUT / "dummy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tests", default="linear,score,wald")
    args = ap.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)

    from better.engine.accelerate import set_threads
    from better.engine.analyses.linear import LinearProtocol
    from better.engine.analyses.logistic import LogisticProtocol
    from better.engine.protocol import run_local
    from better.genomics.ingest import ingest_vcf
    from better.genomics.station_inputs import StationBlocks, build_design
    from better.genomics.store import Store

    set_threads(args.threads)
    if not (args.cohort / "dummy.pgen").exists():
        raise SystemExit(f"no cohort in {args.cohort}: run bash ../shared/bench/make-dummy-cohort.sh {args.cohort}")
    stores = []
    for k in range(3):
        path = args.cohort / f"station{k}"
        if not (path / "catalog.duckdb").exists():
            store = Store.create(path)
            ingest_vcf(store, "d", str(args.cohort / f"st{k}.vcf.gz"), str(args.cohort / f"pheno{k}.tsv"))
        stores.append(Store.open(path).dataset("d"))

    def stations(pheno: str, binary: bool) -> list:
        return [(build_design(ds, pheno, COVARS, binary=binary), StationBlocks(ds)) for ds in stores]

    work = args.cohort / "plink_out"
    work.mkdir(exist_ok=True)
    # Warm-up: compile the kernels on a small region so that timings measure the work, not the JIT.
    from better.genomics.regions import Region

    small = [
        (d, StationBlocks(ds, Region.parse("1:1-20000")))
        for (d, _), ds in zip(stations("cc", True), stores, strict=True)
    ]
    run_local(LinearProtocol(), small)
    run_local(LogisticProtocol(k=7), small)
    run_local(LogisticProtocol(k=7, test="score"), small)

    goals = {"linear": 0.25, "score": 0.25, "wald": 1.0}
    plink_cache: dict[str, float] = {}
    for test in args.tests.split(","):
        pheno = "q" if test == "linear" else "cc"
        t0 = time.perf_counter()
        if test == "linear":
            proto = LinearProtocol()
            res = run_local(proto, stations("q", False))
        else:
            proto = LogisticProtocol(k=7, test=test)
            res = run_local(proto, stations("cc", True))
        ours = time.perf_counter() - t0
        if pheno not in plink_cache:
            plink_cache[pheno] = plink_time(args.cohort, pheno, args.threads, work)
        theirs = plink_cache[pheno]
        print(
            f"{test:7s}: BETTER {ours:6.2f} s ({proto.rounds} rounds, {len(res['pos'])} variants) | "
            f"plink2 --glm {theirs:6.2f} s | ratio {ours / theirs:.2f} (goal <= {goals[test]})",
            flush=True,
        )


if __name__ == "__main__":
    main()
