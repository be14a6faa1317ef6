"""Stored ALT dosages and their hard calls against plink2's import of the same VCF (DS, HDS and GP).

Reference commands (run by the test)::

    # split.vcf: t.vcf with multi-allelic records split as `bcftools norm -m-` does (plink2 v2.00a3.5
    # refuses multi-allelic dosages), by the test itself, since bcftools rewrites every number in float32
    # and writes a missing DS empty, which plink2 refuses
    plink2 --vcf split.vcf dosage=DS --vcf-half-call missing --set-all-var-ids @:#:$r:$a \\
        --make-pgen --out p
    plink2 --pfile p --export A include-alt --out p    # dosages, every sample and variant
    plink2 --pfile p --export ped --out p              # hard calls (--hard-call-threshold 0.1)

Every sample's dosage must equal plink2's to the unit (1/16384), and every hard call plink2's.
"""

from __future__ import annotations

import csv
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from better.genomics.ingest import ingest_vcf
from better.genomics.packing import unpack_genotypes
from better.genomics.store import Store
from tests.validation.conftest import needs

pytestmark = needs("plink2")

HEADER = """##fileformat=VCFv4.2
##contig=<ID=1>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allele depths">
"""
DECLARE = {
    "DS": '##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dosage">\n',
    "HDS": '##FORMAT=<ID=HDS,Number=2,Type=Float,Description="Haplotype ALT dosages">\n',
    "GP": '##FORMAT=<ID=GP,Number=G,Type=Float,Description="Genotype probabilities">\n',
}
#: Written as VCFs write numbers, and a few on plink2's rounding edges: 1/32768 (a tie of the units),
#: 1638 and 1639 units from 0 (the hard-call threshold), 17+ significant digits.
SPECIAL = ["0", "1", "2", "1e-3", ".5", "1E-1", "+0.75", "0.000030517578125", "0.10003", "1.89993", "0.1"]
SPECIAL += ["1.9", "0.30000000000000004", "0.123456789012345678", "2.000", "5e-1", "0.99994"]


def _number(rng: np.random.Generator, top: float) -> str:
    if rng.random() < 0.25:
        return str(rng.choice([s for s in SPECIAL if float(s) <= top]))
    decimals = int(rng.integers(1, 7))
    return f"{rng.uniform(0, top):.{decimals}f}"


def _gt(rng: np.random.Generator, n_alt: int) -> str:
    a, b = (str(x) for x in rng.integers(0, n_alt + 1, size=2))
    r = rng.random()
    if r < 0.04:
        return "."  # haploid for htslib and plink2 alike
    if r < 0.12:
        return a  # haploid
    if r < 0.17:
        return "./."
    if r < 0.20:
        return f"./{b}"  # a half-call (--vcf-half-call missing)
    return a + ("|" if rng.random() < 0.5 else "/") + b


def plink2_vcf(rng: np.random.Generator, field: str, n_samples: int, n_records: int) -> str:
    """GT first in FORMAT (plink2 reads GT only there), shortened fields, '.' values, haploid genotypes,
    multi-allelic DS records."""
    cols = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(f"s{i}" for i in range(n_samples))
    header = HEADER + DECLARE[field] + (DECLARE["DS"] if field == "HDS" else "") + cols + "\n"
    keys_of = {"DS": ["GT:DS", "GT:AD:DS", "GT:DS:AD", "GT"], "HDS": ["GT:HDS:DS", "GT:HDS", "GT:DS:HDS"]}
    keys_of["GP"] = ["GT:GP", "GT:AD:GP", "GT"]
    lines = []
    for i in range(n_records):
        fmt = str(rng.choice(keys_of[field]))
        n_alt = int(rng.choice([1, 1, 1, 2, 3])) if field == "DS" else 1
        samples = []
        for _ in range(n_samples):
            gt = _gt(rng, n_alt)
            haploid = "/" not in gt and "|" not in gt
            parts = []
            for key in fmt.split(":"):
                if key == "GT":
                    parts.append(gt)
                elif key == "AD":
                    parts.append(",".join(str(x) for x in rng.integers(0, 30, size=n_alt + 1)))
                elif key == "DS":
                    values = [
                        _number(rng, 1.0 if haploid else 2.0) if rng.random() < 0.92 else "." for _ in range(n_alt)
                    ]
                    parts.append("." if rng.random() < 0.08 else ",".join(values))
                elif key == "HDS":
                    r = rng.random()
                    pair = f"{_number(rng, 1.0)},{_number(rng, 1.0)}"
                    parts.append("." if r < 0.1 else ".,." if r < 0.15 else _number(rng, 1.0) if r < 0.3 else pair)
                else:
                    size = 2 if haploid else 3
                    probs = [_number(rng, 1.0) for _ in range(size)]
                    r = rng.random()
                    parts.append("." if r < 0.08 else ",".join(["0"] * size) if r < 0.12 else ",".join(probs))
            keep = len(parts) if rng.random() < 0.9 else int(rng.integers(1, len(parts) + 1))
            samples.append(":".join(parts[:keep]))
        alts = ",".join("CGT"[:n_alt])
        lines.append(f"1\t{1000 + 10 * i}\t.\tA\t{alts}\t.\tPASS\t.\t{fmt}\t" + "\t".join(samples) + "\n")
    return header + "".join(lines)


def split_records(text: str) -> str:
    """Split multi-allelic records into one per ALT allele as ``bcftools norm -m-`` does, keeping every
    value's text: GT alleles other than ALT ``k`` become 0, DS (Number=A) keeps its ``k``-th value, AD
    (Number=R) the REF and ``k``-th."""
    out = []
    for line in text.splitlines(keepends=True):
        cols = line.rstrip("\n").split("\t")
        if line.startswith("#") or "," not in cols[4]:
            out.append(line)
            continue
        alts, keys = cols[4].split(","), cols[8].split(":")
        for k, alt in enumerate(alts, start=1):
            samples = []
            for sample in cols[9:]:
                parts = sample.split(":")
                for i, key in enumerate(keys[: len(parts)]):
                    values = parts[i].split(",")
                    if key == "GT":
                        parts[i] = re.sub(r"\d+", lambda m, k=k: "1" if int(m.group()) == k else "0", parts[i])
                    elif key == "DS" and parts[i] != ".":
                        parts[i] = values[k - 1]
                    elif key == "AD" and parts[i] != ".":
                        parts[i] = f"{values[0]},{values[k]}"
                samples.append(":".join(parts))
            out.append("\t".join([*cols[:4], alt, *cols[5:9], *samples]) + "\n")
    return "".join(out)


def plink2(*args: str) -> None:
    subprocess.run(["plink2", *args, "--threads", "2"], check=True, capture_output=True)


def plink2_reference(vcf: Path, field: str, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """plink2's ALT dosage units and hard calls ``(variants, samples)`` of the split VCF."""
    split = out.parent / "split.vcf"
    split.write_text(split_records(vcf.read_text()))
    ids = ["--set-all-var-ids", "@:#:$r:$a", "--new-id-max-allele-len", "10"]
    plink2("--vcf", str(split), f"dosage={field}", "--vcf-half-call", "missing", *ids, "--make-pgen", "--out", str(out))
    plink2("--pfile", str(out), "--export", "A", "include-alt", "--out", str(out))
    plink2("--pfile", str(out), "--export", "ped", "--out", str(out))
    with open(f"{out}.raw") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    names = rows[0][6:]
    printed = np.array([r[6:] for r in rows[1:]]).T  # variants x samples
    units = np.empty(printed.shape, dtype=np.int64)
    for v, name in enumerate(names):  # "1:1000:A:G_A(/G)": the counted allele, then the other
        ref, alt = name.split("_")[0].split(":")[2:4]
        counted = name.rsplit("_", 1)[1].split("(/")[0]
        assert counted in (ref, alt), name
        for s, x in enumerate(printed[v]):
            u = 65535 if x == "NA" else math.floor(float(x) * 16384 + 0.5)
            units[v, s] = u if counted == alt or u == 65535 else 32768 - u
    with open(f"{out}.pvar") as f:
        alts = [line.split("\t")[4] for line in f if not line.startswith("#")]
    calls = []
    with open(f"{out}.ped") as f:
        for line in f:
            alleles = line.split()[6:]
            calls.append(
                [
                    3 if alleles[2 * v] == "0" else (alleles[2 * v] == alt) + (alleles[2 * v + 1] == alt)
                    for v, alt in enumerate(alts)
                ]
            )
    return units, np.array(calls).T


@pytest.mark.parametrize("field", ["DS", "HDS", "GP"])
def test_dosages__equal_plink2_import(field: str, tmp_path: Path, store: Store) -> None:
    vcf = tmp_path / "t.vcf"
    vcf.write_text(plink2_vcf(np.random.default_rng(5), field, n_samples=120, n_records=300))
    want_units, want_calls = plink2_reference(vcf, field, tmp_path / "p")
    report = ingest_vcf(store, "d", str(vcf), dosage=field)
    assert report.dosage_field == field
    ds = Store.open(store.path).dataset("d")
    table = pq.read_table(ds.variants_path, columns=["dosages", "genotypes"])
    n = ds.n_samples
    units = np.frombuffer(b"".join(table.column("dosages").to_pylist()), dtype="<u2").reshape(-1, n)
    packed = np.frombuffer(b"".join(table.column("genotypes").to_pylist()), dtype=np.uint8).reshape(units.shape[0], -1)
    calls = unpack_genotypes(packed, n)
    assert units.shape == want_units.shape
    bad = np.argwhere(units != want_units)
    assert bad.size == 0, f"{len(bad)} dosages differ, first (variant, sample) {bad[:5].tolist()}"
    assert (units != 65535).mean() > 0.5 and (units % 16384 != 0).mean() > 0.3  # mostly real dosages
    np.testing.assert_array_equal(calls, want_calls)
