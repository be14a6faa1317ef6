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
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def plink_pca(cohort: Path, pcs: int, threads: int, work: Path, *mode: str) -> float:
    """Seconds ``plink2 --pca`` takes on the pooled file."""
    from gwas import timed_plink

    return timed_plink(
        *("--pfile", str(cohort / "dummy"), "--pca", str(pcs), *mode),
        *("--threads", str(threads), "--out", str(work / ("pca" + "".join(mode)))),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=OUT / "dummy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pcs", type=int, default=10)
    ap.add_argument("--skip-plink", action="store_true", help="only time BETTER")
    ap.add_argument("--station-threads", type=int, default=None, help="kernel threads per station (default --threads)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stations import served, station_stores

    from better.query.federation import Federation

    with served(station_stores(args.cohort), args.station_threads or args.threads) as clients:
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
