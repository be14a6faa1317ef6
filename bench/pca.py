"""Federated PCA against PLINK 2's ``--pca`` on the pooled file, same threads, as a ratio.

The cohort of bench/gwas.py (10,000 samples x 50,000 variants from ../shared/bench/make-dummy-cohort.sh,
split 50/30/20 into three station stores) is served by three ``better station serve`` processes; the
coordinator runs ``PCA 10 AS bench_pc`` through them with secure aggregation (the default with three
stations), from the query to the eigenvalue table with the scores stored at the stations. PLINK 2 runs
``--pca 10`` (exact: GRM and full eigendecomposition) and ``--pca 10 approx`` (randomized) on the pooled
.pgen with the same threads. The dummy cohort has no population structure: its top eigenvalues are close
together, the hardest case for an iterative method (the table shows the rounds and residuals).

Usage::

    bash ../shared/bench/make-dummy-cohort.sh bench/out/dummy      # once
    python bench/pca.py [--cohort bench/out/dummy] [--threads 2] [--pcs 10] [--skip-plink]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def plink_pca(cohort: Path, pcs: int, threads: int, work: Path, *mode: str) -> float:
    """Seconds ``plink2 --pca`` takes on the pooled file."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            *("plink2", "--pfile", str(cohort / "dummy"), "--pca", str(pcs), *mode),
            *("--threads", str(threads), "--out", str(work / ("pca" + "".join(mode)))),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=OUT / "dummy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pcs", type=int, default=10)
    ap.add_argument("--skip-plink", action="store_true", help="only time BETTER")
    ap.add_argument("--station-threads", type=int, default=None, help="kernel threads per station (default --threads)")
    args = ap.parse_args()

    from better.genomics.ingest import ingest_vcf
    from better.genomics.store import Store
    from better.query.federation import Federation
    from better.query.remote import StationClient
    from better.station_api.auth import new_token
    from better.station_api.config import Policy, Server, StationConfig, write_config
    from better.station_api.launch import station_process

    if not (args.cohort / "dummy.pgen").exists():
        raise SystemExit(f"no cohort in {args.cohort}: run bash ../shared/bench/make-dummy-cohort.sh {args.cohort}")
    for k in range(3):
        path = args.cohort / f"station{k}"
        if not (path / "catalog.duckdb").exists():
            ingest_vcf(Store.create(path), "d", str(args.cohort / f"st{k}.vcf.gz"), str(args.cohort / f"pheno{k}.tsv"))
    with ExitStack() as stack:
        clients = []
        for k in range(3):
            path = args.cohort / f"station{k}"
            token, record = new_token("bench", "researcher")
            threads = args.station_threads or args.threads
            config = StationConfig(name=f"station{k}", policy=Policy(), server=Server(threads=threads))
            write_config(path, config.model_copy(update={"tokens": [record]}))
            url = stack.enter_context(station_process(path, threads=threads))
            clients.append(StationClient(f"station{k}", url, token, timeout=1200))
        fed = Federation(clients, secure_aggregation="on")
        fed.query("PCA 2 ON 1:1-2000000")  # warm-up: the servers compile their kernels
        t0 = time.perf_counter()
        frame = fed.query(f"PCA {args.pcs} AS bench_pc")
        ours = time.perf_counter() - t0
    pca = fed.structure.pca
    assert pca is not None
    print(frame)
    line = (
        f"federated PCA {args.pcs}, 3 stations over HTTP, secure aggregation: BETTER {ours:.1f} s "
        f"({pca.loadings.shape[0]} variants, {pca.rounds} rounds, "
        f"{'converged' if pca.converged else 'not converged'}, largest residual {pca.residuals.max():.1e})"
    )
    if not args.skip_plink:
        work = args.cohort / "plink_out"
        work.mkdir(exist_ok=True)
        exact = plink_pca(args.cohort, args.pcs, args.threads, work)
        approx = plink_pca(args.cohort, args.pcs, args.threads, work, "approx")
        line += (
            f" | plink2 --pca {exact:.1f} s, --pca approx {approx:.1f} s | ratio {ours / exact:.2f} exact, "
            f"{ours / approx:.2f} approx (goal < 1 against exact)"
        )
    print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
