"""Imputed-data benchmark: ingest of a dosage VCF and a dosage linear GWAS, against PLINK 2 on the same
file and threads, as ratios.

The cohort (made once under bench/out/dosage_<samples>x<variants>/): ``plink2 --dummy`` with 1% missing
calls and a share of decimal dosages (``dosage-freq=``), positions 100 bp apart, exported as a bgzipped
VCF with ``FORMAT/DS`` (``vcf-dosage=DS-force``), and covariates age, sex, pc1..pc4 and a quantitative
trait ``q`` drawn with a fixed seed.

- Ingest: ``better ingest --vcf pooled.vcf.gz`` (dosages found in the header) against
  ``plink2 --vcf pooled.vcf.gz dosage=DS --make-pgen``, each its own process; median of ``--repeat``.
- GWAS: the engine in-process over the ingested store (one station holding everyone: the sums are the
  same work however the people are split), with the covariates, against ``plink2 --pfile ... --glm
  hide-covar omit-ref`` on the ``.pgen`` PLINK 2 imported from the same VCF.

Usage::

    python bench/dosage.py [--samples 10000] [--variants 50000] [--threads 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import run, spread_positions, timed  # the ingest benchmark's helpers

OUT = Path(__file__).resolve().parent / "out"
COVARS = ["age", "sex", "pc1", "pc2", "pc3", "pc4"]


def make_cohort(samples: int, variants: int, threads: int) -> Path:
    """The dosage cohort's folder (made once): ``pooled.vcf.gz`` and ``pheno.tsv``."""
    d = OUT / f"dosage_{samples}x{variants}"
    if (d / "pooled.vcf.gz").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    common = ["--threads", str(threads)]
    dummy = ["plink2", "--dummy", str(samples), str(variants), "0.01", "acgt", "dosage-freq=0.4", "--seed", "5"]
    run([*dummy, "--make-pgen", "--out", str(d / "dummy"), *common])
    spread_positions(d / "dummy.pvar")
    export = ["plink2", "--pfile", str(d / "dummy"), "--export", "vcf", "bgz", "vcf-dosage=DS-force", "id-paste=iid"]
    run([*export, "--out", str(d / "pooled"), *common])
    psam = (d / "dummy.psam").read_text().splitlines()
    iid = psam[0].lstrip("#").split("\t").index("IID")
    ids = [line.split("\t")[iid] for line in psam[1:]]
    rng = np.random.default_rng(7)
    with open(d / "pheno.tsv", "w") as f:
        f.write("#IID\tq\t" + "\t".join(COVARS) + "\n")
        for iid in ids:
            age, sex = rng.normal(55, 10), int(rng.integers(1, 3))
            pcs = rng.normal(size=4)
            f.write(f"{iid}\t{rng.normal():.5f}\t{age:.1f}\t{sex}\t" + "\t".join(f"{x:.5f}" for x in pcs) + "\n")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--variants", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    d = make_cohort(args.samples, args.variants, args.threads)
    vcf = d / "pooled.vcf.gz"
    print(f"cohort: {vcf} ({vcf.stat().st_size / 2**20:.0f} MiB)", flush=True)

    # -- ingest ------------------------------------------------------------------------------------------
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads))
    better = [sys.executable, "-m", "better.cli"]
    ours, theirs = [], []
    station = d / "station"
    for _ in range(args.repeat):
        if station.exists():
            import shutil

            shutil.rmtree(station)
        run([*better, "station", "init", "--station", str(station), "--name", "bench"])
        ingest = [*better, "ingest", "--station", str(station), "--dataset", "d", "--vcf", str(vcf)]
        ours.append(timed([*ingest, "--phenotypes", str(d / "pheno.tsv"), "--threads", str(args.threads)], env))
        plink = ["plink2", "--vcf", str(vcf), "dosage=DS", "--make-pgen", "--out", str(d / "imported")]
        theirs.append(timed([*plink, "--threads", str(args.threads)]))
    b, p = statistics.median(s for s, _ in ours), statistics.median(s for s, _ in theirs)
    print(
        f"ingest : BETTER {b:6.2f} s (peak {max(m for _, m in ours):.0f} MiB) | plink2 --vcf dosage=DS --make-pgen "
        f"{p:6.2f} s (peak {max(m for _, m in theirs):.0f} MiB) | ratio {b / p:.2f} (goal <= 1.0)",
        flush=True,
    )

    # -- linear GWAS on dosages ----------------------------------------------------------------------------
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    from better.engine.accelerate import set_threads
    from better.engine.analyses.linear import LinearProtocol
    from better.engine.protocol import run_local
    from better.genomics.regions import Region
    from better.genomics.station_inputs import StationBlocks, build_design
    from better.genomics.store import Store

    set_threads(args.threads)
    ds = Store.open(station).dataset("d")
    assert ds.has_dosages
    design = build_design(ds, "q", COVARS)
    chrom = ds.variants(columns=["chrom"]).column("chrom")[0].as_py()
    run_local(LinearProtocol(), [(design, StationBlocks(ds, Region.parse(f"{chrom}:1-20000")))])  # compile
    t0 = time.perf_counter()
    res = run_local(LinearProtocol(), [(design, StationBlocks(ds))])
    b = time.perf_counter() - t0
    glm = ["plink2", "--pfile", str(d / "imported"), "--pheno", str(d / "pheno.tsv"), "--pheno-name", "q"]
    glm += ["--covar", str(d / "pheno.tsv"), "--covar-name", *COVARS, "--covar-variance-standardize"]
    glm += ["--glm", "hide-covar", "omit-ref", "--threads", str(args.threads), "--out", str(d / "glm")]
    p, _ = timed(glm)
    print(
        f"linear : BETTER {b:6.2f} s ({len(res['pos'])} variants) | plink2 --glm {p:6.2f} s | ratio {b / p:.2f} "
        "(goal <= 0.3)",
        flush=True,
    )


if __name__ == "__main__":
    main()
