"""What comes back under the default policy: coverage of FREQ, HWE and GWAS against PLINK 2 on the pooled file.

A realistic synthetic cohort (``better synth``: msprime, three stations about 55/27/18, a batch effect,
1% missing genotypes varying by variant, missing phenotypes) is served by three ``better station serve``
processes with the default policy and secure aggregation on. For each analysis the script prints the
share of PLINK 2's variants that came back (not withheld) among those the disclosure issue names (FREQ:
minor allele count >= 5; HWE: MAF >= 5%; GWAS: MAF >= 1%), how many rows each rule withheld, and the
largest difference from PLINK 2 in -log10 P among the rows that came back. For the GWAS it also prints
the share returned among the variants where none or 5 or more analysed people lack a call (PLINK 2's
OBS_CT): the others are withheld by default (``missing_genotypes``) and finished by the stations with
``--finish-rows`` (policy ``finish_rows`` at every station).

Usage::

    python bench/answers.py [--out bench/out/coverage] [--samples 3000] [--variants 8000] [--seed 1]
                            [--finish-rows] [--missing-rates uniform]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import polars as pl

OUT = Path(__file__).resolve().parent / "out" / "answers"
COVARS = "age + sex + pc1 + pc2"


def plink(*args: str) -> None:
    subprocess.run(["plink2", *args, "--threads", "2"], check=True, capture_output=True)


def references(cohort: Path, root: Path) -> None:
    """PLINK 2 on the pooled VCF (multi-allelic records split as BETTER stores them)."""
    split = root / "split.vcf.gz"
    subprocess.run(["bcftools", "norm", "-m-", str(cohort / "pooled.vcf.gz"), "-Oz", "-o", str(split)], check=True)
    pheno = str(cohort / "pooled.pheno.tsv")
    common = ["--vcf", str(split), "--vcf-half-call", "missing", "--pheno", pheno, "--covar", pheno]
    common += ["--covar-variance-standardize", "--covar-name", "age", "sex", "pc1", "pc2"]
    plink(*common, "--pheno-name", "ldl", "--glm", "hide-covar", "omit-ref", "--out", str(root / "lin"))
    plink(*common, "--pheno-name", "case", "--glm", "hide-covar", "--out", str(root / "log"))
    plink("--vcf", str(split), "--vcf-half-call", "missing", "--freq", "--out", str(root / "freq"))


def key_rows(frame: pl.DataFrame) -> dict[tuple, dict]:
    ref, alt = ("A1", "AX") if "AX" in frame.columns else ("REF", "ALT")
    return {(str(r["#CHROM"]), int(r["POS"]), r[ref], r[alt]): r for r in frame.iter_rows(named=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--variants", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--finish-rows", action="store_true", help="every station's policy allows finish_rows")
    ap.add_argument("--missing-rates", default="variable", help="variable (default) or uniform (1%% everywhere)")
    args = ap.parse_args()

    from better.genomics.ingest import ingest_vcf
    from better.genomics.store import Store
    from better.genomics.synth import SynthConfig, synthesize
    from better.query.federation import Federation
    from better.query.remote import StationClient
    from better.station_api.auth import new_token
    from better.station_api.config import Policy, StationConfig, write_config
    from better.station_api.launch import station_process

    root = args.out
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    r = synthesize(
        SynthConfig(
            out=str(root / "cohort"),
            samples=args.samples,
            variants=args.variants,
            seed=args.seed,
            missing_rates=args.missing_rates,
        )
    )
    references(r.out, root)
    clients = []
    with ExitStack() as stack:
        for name in r.stations:
            store = Store.create(root / "stations" / name)
            ingest_vcf(store, "c", str(r.out / f"{name}.vcf.gz"), str(r.out / f"{name}.pheno.tsv"))
            token, record = new_token("bench", "researcher")
            policy = Policy(finish_rows=args.finish_rows)
            write_config(store.path, StationConfig(name=name, policy=policy, tokens=[record]))
            url = stack.enter_context(station_process(store.path, threads=1))
            clients.append(StationClient(name, url, token, timeout=600))
        fed = Federation(clients, secure_aggregation="on")
        frames = {
            "FREQ": fed.query("FREQ"),
            "HWE": fed.query("HWE"),
            "GWAS LINEAR": fed.query(f"GWAS LINEAR ldl ~ {COVARS}"),
            "GWAS LOGISTIC": fed.query(f"GWAS LOGISTIC case ~ {COVARS}"),
        }
    afreq = pl.read_csv(root / "freq.afreq", separator="\t", infer_schema_length=0)
    freq = {}
    for p, o in zip(afreq.iter_rows(named=True), frames["FREQ"].iter_rows(named=True), strict=True):
        f, n = float(p["ALT_FREQS"]), int(p["OBS_CT"])
        freq[(o["#CHROM"], o["POS"], o["REF"], o["ALT"])] = (min(f, 1 - f), round(min(f, 1 - f) * n))
    wanted = {
        "FREQ": ("minor allele count >= 5", [k for k, (_, mac) in freq.items() if mac >= 5]),
        "HWE": ("MAF >= 5%", [k for k, (maf, _) in freq.items() if maf >= 0.05]),
        "GWAS LINEAR": ("MAF >= 1%", [k for k, (maf, _) in freq.items() if maf >= 0.01]),
        "GWAS LOGISTIC": ("MAF >= 1%", [k for k, (maf, _) in freq.items() if maf >= 0.01]),
    }
    refs = {"GWAS LINEAR": root / "lin.ldl.glm.linear", "GWAS LOGISTIC": root / "log.case.glm.logistic.hybrid"}
    sizes = dict(zip(r.stations, r.station_sizes, strict=True))
    print(f"cohort: {args.samples} samples, {len(freq)} variants, stations {sizes}")
    print(f"policy: default{' with finish_rows' if args.finish_rows else ''}; missing rates: {args.missing_rates}")
    print(
        f"{'query':<15}{'variants':>9}{'withheld':>10}  {'among':<24}{'returned':>9}  {'of those not 1-4 missing':>24}"
        "  max |d log10 P|  withheld by"
    )
    for name, frame in frames.items():
        rows = key_rows(frame)
        label, keys = wanted[name]
        back = sum(k in rows and not rows[k]["WITHHELD"] for k in keys) / max(len(keys), 1)
        by = Counter()
        if "WITHHELD_BY" in frame.columns:
            for text in frame.filter(pl.col("WITHHELD"))["WITHHELD_BY"].to_list():
                by.update(x for x in text.split(",") if x)
        dp, others = "", ""
        if name in refs:
            ref = key_rows(pl.read_csv(refs[name], separator="\t", infer_schema_length=0))
            full = max(int(ref[k]["OBS_CT"]) for k in keys if k in ref)
            plenty = [k for k in keys if k in ref and not 1 <= full - int(ref[k]["OBS_CT"]) <= 4]
            others = f"{sum(k in rows and not rows[k]['WITHHELD'] for k in plenty) / max(len(plenty), 1):.2%}"
            diffs = [
                abs(rows[k]["LOG10_P"] + np.log10(float(ref[k]["P"])))
                for k in keys
                if k in rows
                and not rows[k]["WITHHELD"]
                and ref.get(k, {}).get("ERRCODE") == "."
                and rows[k]["LOG10_P"] is not None
            ]
            dp = f"{max(diffs):.1e}" if diffs else "-"
        share = frame["WITHHELD"].mean()
        print(f"{name:<15}{frame.height:>9}{share:>10.1%}  {label:<24}{back:>9.2%}  {others:>24}  {dp:>15}  {dict(by)}")


if __name__ == "__main__":
    main()
