"""ingest-bam throughput against ``samtools flagstat`` plus ``samtools bedcov`` on the same files.

``better ingest-bam`` computes in one pass what those two commands give together (flagstat counters,
and depth per target), plus bases at >= 10x/20x/30x and the MAPQ histogram. The files: synthetic BAMs
from ``better synth --bam`` with 400 targets of 1 kb at about 60x, each merged with copies of itself
(``samtools merge``) into files of a few million reads. Both sides run single-threaded, one file after
the other; BETTER is timed in-process after a warm-up (kernels compiled), samtools as processes.

Usage::

    python bench/bam.py [--copies 8] [--files 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "bam"


def make_files(copies: int, files: int) -> tuple[list[Path], Path]:
    from better.genomics.synth import SynthConfig, synthesize
    from better.genomics.synth_bam import BamConfig, synthesize_bams

    cohort = OUT / "cohort"
    if not (cohort / "bam" / "targets.bed").exists():
        r = synthesize(SynthConfig(out=str(cohort), samples=60, variants=6000, stations=3, seed=5))
        synthesize_bams(
            cohort, list(r.stations), BamConfig(samples_per_station=1, targets=400, target_length=1000, depth=60)
        )
    bed = cohort / "bam" / "targets.bed"
    singles = sorted((cohort / "bam").glob("*/*.bam"))[:files]
    big = []
    for k, single in enumerate(singles):
        target = OUT / f"big{k}_x{copies}.bam"
        if not target.exists():
            subprocess.run(["samtools", "merge", "-f", "-o", str(target), *[str(single)] * copies], check=True)
            subprocess.run(["samtools", "index", str(target)], check=True)
        big.append(target)
    return big, bed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("samtools") is None:
        raise SystemExit("samtools is needed: apt-get install samtools")
    OUT.mkdir(parents=True, exist_ok=True)
    files, bed = make_files(args.copies, args.files)

    from better.engine.accelerate import set_threads
    from better.genomics.ingest_bam import ingest_bams
    from better.genomics.store import Store

    set_threads(1)
    reads = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.create(Path(tmp) / "station")
        ingest_bams(store, "warm", [str(files[0])], targets_bed=str(bed))  # compile the kernels
        ours = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            report = ingest_bams(store, "reads", [str(f) for f in files], targets_bed=str(bed))
            ours.append(time.perf_counter() - t0)
            reads = report.n_reads
    theirs = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for f in files:
            subprocess.run(["samtools", "flagstat", str(f)], check=True, capture_output=True)
            subprocess.run(["samtools", "bedcov", "-j", str(bed), str(f)], check=True, capture_output=True)
        theirs.append(time.perf_counter() - t0)
    a, b = statistics.median(ours), statistics.median(theirs)
    size = sum(f.stat().st_size for f in files) / 2**20
    print(
        f"ingest-bam: {len(files)} BAMs, {reads:,} reads, {size:.0f} MiB: BETTER {a:.2f} s ({reads / a / 1e6:.2f} M "
        f"reads/s) | samtools flagstat + bedcov {b:.2f} s | ratio {a / b:.2f} (goal <= 1.5; medians of {args.repeat})"
    )


if __name__ == "__main__":
    main()
