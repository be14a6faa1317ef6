"""End-to-end federated GWAS: three station servers on loopback, the query language, against PLINK 2.

The cohort of bench/gwas.py (10,000 samples x 50,000 variants from ../shared/bench/make-dummy-cohort.sh,
split 50/30/20 into three station stores) is served by three ``better station serve`` processes; the
coordinator runs ``GWAS LINEAR q ~ age + sex + pc1 + pc2 + pc3 + pc4`` through them (HTTP, Arrow IPC,
the policy, combine, finalize, the PLINK-style table), timed from the query to the table; then again with
the stations behind a hub (``better station serve --hub``: outbound only, every call a sealed envelope),
as a ratio to direct mode. PLINK 2 runs
``--glm`` on the pooled .pgen with the same threads. The query runs with secure aggregation (the default
with three stations) and without, to show what the masking costs. Stations share the machine's cores with each other:
each gets ``--threads`` kernel threads, and they work at the same time.

Usage::

    bash ../shared/bench/make-dummy-cohort.sh bench/out/dummy      # once
    python bench/federated.py [--cohort bench/out/dummy] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
QUERY = "GWAS LINEAR q ~ age + sex + pc1 + pc2 + pc3 + pc4"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=OUT / "dummy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gwas import plink_time
    from stations import served, station_stores

    from better.query.federation import Federation

    # Stations of an audit group answer only masked (docs/privacy.md), so the run in the clear uses copies
    # of the stores audited over their own people.
    masked = station_stores(args.cohort)
    plain = []
    for k, path in enumerate(masked):
        clear = args.cohort / f"clear{k}"
        if not (clear / "catalog.duckdb").exists():
            shutil.copytree(path, clear, ignore=shutil.ignore_patterns("audit", "serve.log", "secure_contexts.txt"))
        plain.append(clear)
    times: dict[str, list[float]] = {"masked": [], "hub": [], "plain": []}
    modes = [
        ("masked", masked, "auto", None),
        ("hub", masked, "auto", args.cohort / "hub"),
        ("plain", plain, "local", None),
    ]
    for mode, paths, scope, hub in modes:
        with served(paths, args.threads, scope, hub) as clients:
            fed = Federation(clients, secure_aggregation="off" if mode == "plain" else "on")
            fed.query(QUERY + " ON 1:1-200000")  # warm-up: the servers compile their kernels
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                frame = fed.query(QUERY)
                times[mode].append(time.perf_counter() - t0)
            assert fed.last_plan is not None and fed.last_plan.secure == (mode != "plain")
    ours = statistics.median(times["masked"])
    hubbed = statistics.median(times["hub"])
    clear = statistics.median(times["plain"])
    work = args.cohort / "plink_out"
    work.mkdir(exist_ok=True)
    theirs = plink_time(args.cohort, "q", args.threads, work)
    withheld = int(frame["WITHHELD"].sum())
    print(
        f"federated linear GWAS, 3 stations over HTTP: BETTER {ours:.2f} s with secure aggregation, "
        f"{clear:.2f} s without (medians of {args.repeat}; {frame.height} variants, {withheld} withheld by "
        f"policy) | plink2 --glm {theirs:.2f} s | ratio {ours / theirs:.2f} masked, {clear / theirs:.2f} plain "
        "(goal <= 0.5)"
    )
    print(
        f"through a hub (stations in pull mode, every call sealed): {hubbed:.2f} s | ratio to direct "
        f"{hubbed / ours:.2f} (goal <= 1.2); all runs: {times}"
    )


if __name__ == "__main__":
    main()
