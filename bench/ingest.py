"""Ingest benchmark: ``better ingest`` against ``plink2 --vcf FILE --make-pgen`` on the same file and threads.

Makes (once, under bench/out/) the issue's cohort: ``plink2 --dummy`` 10,000 samples x 50,000 variants
with 1% missing calls and valid positions, exported as a bgzipped VCF; plus a quarter-size file to show
that peak memory does not grow with the number of variants. Each tool runs as its own process; wall
time is the median of ``--repeat`` runs, peak memory the child's maximum RSS.

Usage::

    python bench/ingest.py [--samples 10000] [--variants 50000] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def make_vcf(samples: int, variants: int, threads: int) -> Path:
    """A bgzipped dummy VCF like ../shared/bench/make-dummy-cohort.sh makes (cached)."""
    d = OUT / f"dummy_{samples}x{variants}"
    vcf = d / "pooled.vcf.gz"
    if vcf.exists():
        return vcf
    d.mkdir(parents=True, exist_ok=True)
    run(
        [
            "plink2",
            "--dummy",
            str(samples),
            str(variants),
            "0.01",
            "acgt",
            "--seed",
            "3",
            "--make-pgen",
            "--out",
            str(d / "dummy"),
            "--threads",
            str(threads),
        ]
    )
    spread_positions(d / "dummy.pvar")
    run(
        [
            "plink2",
            "--pfile",
            str(d / "dummy"),
            "--export",
            "vcf",
            "bgz",
            "id-paste=iid",
            "--out",
            str(d / "pooled"),
            "--threads",
            str(threads),
        ]
    )
    return vcf


def spread_positions(pvar: Path) -> None:
    """Give ``plink2 --dummy``'s variants valid, distinct positions, 100 bp apart (it writes them all at 0)."""
    lines = pvar.read_text().splitlines()
    k = 0
    with open(pvar, "w") as f:
        for line in lines:
            if not line.startswith("#"):
                cols = line.split("\t")
                cols[1] = str(1000 + 100 * k)
                k += 1
                line = "\t".join(cols)
            f.write(line + "\n")


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode() if proc.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024


def better_ingest(vcf: Path, threads: int, work: Path) -> tuple[float, float]:
    station = work / f"station-{time.monotonic_ns()}"
    better = [sys.executable, "-m", "better.cli"]
    run([*better, "station", "init", "--station", str(station), "--name", "bench"])
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    result = timed(
        [
            *better,
            "ingest",
            "--station",
            str(station),
            "--dataset",
            "d",
            "--vcf",
            str(vcf),
            "--threads",
            str(threads),
        ],
        env=env,
    )
    shutil.rmtree(station)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--variants", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("plink2") is None:
        raise SystemExit("plink2 is needed: apt-get install plink2")
    vcf = make_vcf(args.samples, args.variants, args.threads)
    small = make_vcf(args.samples, max(1, args.variants // 4), args.threads)
    print(
        f"file: {vcf} ({vcf.stat().st_size / 1e6:.0f} MB), {args.samples} samples x {args.variants} variants, "
        f"{args.threads} threads"
    )
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        work = Path(tmp)
        better_ingest(small, args.threads, work)  # warm the Numba cache and the page cache
        ours = [better_ingest(vcf, args.threads, work) for _ in range(args.repeat)]
        plink = [
            timed(
                [
                    "plink2",
                    "--vcf",
                    str(vcf),
                    "--make-pgen",
                    "--out",
                    str(work / f"p{i}"),
                    "--threads",
                    str(args.threads),
                ]
            )
            for i in range(args.repeat)
        ]
        ours_small = better_ingest(small, args.threads, work)
    t_ours = statistics.median(t for t, _ in ours)
    t_plink = statistics.median(t for t, _ in plink)
    print(
        f"better ingest      : {t_ours:6.2f} s (runs: {', '.join(f'{t:.2f}' for t, _ in ours)}), "
        f"peak {max(m for _, m in ours):.0f} MiB"
    )
    print(
        f"plink2 --make-pgen : {t_plink:6.2f} s (runs: {', '.join(f'{t:.2f}' for t, _ in plink)}), "
        f"peak {max(m for _, m in plink):.0f} MiB"
    )
    print(f"ratio better/plink2: {t_ours / t_plink:.2f}  (goal <= 1.0)")
    print(
        f"peak memory, {args.variants // 4} vs {args.variants} variants: {ours_small[1]:.0f} MiB vs "
        f"{max(m for _, m in ours):.0f} MiB"
    )


if __name__ == "__main__":
    main()
