"""Every genotype read back from the store equals what cyvcf2 reports for the same record."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from better.genomics.ingest import ingest_vcf
from better.genomics.packing import unpack_genotypes
from better.genomics.store import Store
from better.genomics.vcf import open_vcf
from tests.conftest import bgzip, write_text
from tests.reference import cyvcf2_rows
from tests.zoo import ZOO


def stored_rows(store: Store, name: str) -> list[dict]:
    ds = store.dataset(name)
    rows = []
    for block in ds.blocks(max_variants=7):
        codes = unpack_genotypes(block.packed, ds.n_samples)
        for meta, c in zip(block.variants.to_pylist(), codes, strict=True):
            rows.append({**meta, "codes": c.tolist()})
    return rows


def assert_matches_reference(rows: list[dict], reference: list[dict]) -> None:
    assert len(rows) == len(reference)
    for got, want in zip(rows, reference, strict=True):
        for key in ("chrom", "pos", "id", "ref", "alt", "alt_index"):
            assert got[key] == want[key], (key, got, want)
        assert got["codes"] == want["codes"], (got["chrom"], got["pos"], got["alt"])
        c = np.array(want["codes"], dtype=int)
        assert [got["n_hom_ref"], got["n_het"], got["n_hom_alt"], got["n_missing"]] == [
            int((c == k).sum()) for k in range(4)
        ]


@pytest.mark.parametrize("case", sorted(ZOO))
@pytest.mark.parametrize("compressed", [False, True])
def test_ingest__zoo_matches_cyvcf2(case: str, compressed: bool, store: Store, tmp_path: Path) -> None:
    path = write_text(tmp_path / f"{case}.vcf", ZOO[case])
    if compressed:
        path = bgzip(path, tmp_path / f"{case}.vcf.gz")
    ingest_vcf(store, "zoo", str(path))
    assert_matches_reference(stored_rows(store, "zoo"), cyvcf2_rows(str(path)))


def test_ingest__synthetic_cohort_matches_cyvcf2(small_cohort: Path, store: Store) -> None:
    vcf = small_cohort / "pooled.vcf.gz"
    report = ingest_vcf(store, "pooled", str(vcf), chunk_bytes=50_000)
    reference = cyvcf2_rows(str(vcf))
    assert report.n_variants == len(reference)
    assert report.n_multiallelic_records == sum(r["alt_index"] == 2 for r in reference)
    assert_matches_reference(stored_rows(store, "pooled"), reference)


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 1 << 20])
def test_text_reader__chunk_size_does_not_change_output(small_cohort: Path, chunk_bytes: int) -> None:
    vcf = str(small_cohort / "barcelona.vcf.gz")
    _, big = open_vcf(vcf, chunk_bytes=1 << 26)
    _, small = open_vcf(vcf, chunk_bytes=chunk_bytes)
    import pyarrow as pa

    a = pa.Table.from_batches([b for b, _ in big])
    b = pa.Table.from_batches([b for b, _ in small])
    assert a.equals(b)


def test_bcf__cyvcf2_reader_equals_text_reader(small_cohort: Path, tmp_path: Path, store: Store) -> None:
    import pysam

    src = small_cohort / "nijmegen.vcf.gz"
    bcf = tmp_path / "nijmegen.bcf"
    with pysam.VariantFile(str(src)) as vin, pysam.VariantFile(str(bcf), "wb", header=vin.header) as vout:
        for rec in vin:
            vout.write(rec)
    ingest_vcf(store, "text", str(src))
    ingest_vcf(store, "bcf", str(bcf))
    text, binary = stored_rows(store, "text"), stored_rows(store, "bcf")
    assert len(text) == len(binary)
    for a, b in zip(text, binary, strict=True):
        assert {k: v for k, v in a.items() if k != "qual"} == {k: v for k, v in b.items() if k != "qual"}
        assert a["qual"] == pytest.approx(b["qual"]) if a["qual"] is not None else b["qual"] is None


def test_zoo_multiallelic__info_split_like_bcftools(store: Store, tmp_path: Path) -> None:
    ingest_vcf(store, "m", str(write_text(tmp_path / "m.vcf", ZOO["multiallelic"])))
    v = store.dataset("m").variants().to_pylist()
    assert [r["info"] for r in v[:2]] == ["AC=1;AD=5,6;DP=10", "AC=2;AD=5,7;DP=10"]
    assert [r["alt"] for r in v] == ["C", "G", "A", "ATT", "ATTT"]
    assert [r["record"] for r in v] == [0, 0, 1, 1, 1]
    assert v[2]["filter"] == "LowQual" and v[2]["qual"] is None and v[2]["id"] is None


REAL_WORLD = """##fileformat=VCFv4.2
##contig=<ID=22>
##INFO=<ID=GL,Number=G,Type=Float,Description="genotype likelihoods">
##INFO=<ID=AC,Number=A,Type=Integer,Description="ALT count">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=PL,Number=G,Type=Integer,Description="Phred likelihoods">
#CHROM	POS	ID	REF	ALT	QUAL	FILTER	INFO	FORMAT	a	b	c
22	100	.	A	G,T	.	.	GL=0,1,2,3,4,5;AC=1,2	GT	0|1	1|2	0/0
22	200	.	C	G	.	.	.	PL	0,10,100	10,0,100	.,.,.
22	300	.	C	A	.	.	.	GT:PL	0/1:0,1,2	1/1:3,4,5	./.:.
"""


@pytest.mark.validation
def test_real_world_records__gt_less_and_number_g_as_bcftools_reads_them(store: Store, tmp_path: Path) -> None:
    """A record without GT (PL only, as bcftools mpileup writes) has every genotype missing, in VCF and BCF
    alike; a Number=G INFO field is split as ``bcftools norm -m-`` splits it."""
    import shutil
    import subprocess

    if shutil.which("bcftools") is None and not os.environ.get("BETTER_REQUIRE_TOOLS"):
        pytest.skip("bcftools is needed")
    src = write_text(tmp_path / "r.vcf", REAL_WORLD)
    bcf = tmp_path / "r.bcf"
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(src)], check=True)
    split = subprocess.run(["bcftools", "norm", "-m-", str(src)], capture_output=True, text=True, check=True).stdout
    query = subprocess.run(
        ["bcftools", "query", "-f", "%POS\t%ALT\t%INFO/GL[\t%GT]\n", "-"], input=split, capture_output=True, text=True
    ).stdout.splitlines()
    code = {"0|0": 0, "0/0": 0, "0|1": 1, "1|0": 1, "0/1": 1, "1|1": 2, "1/1": 2, ".": 3, "./.": 3}
    want = [(int(f[0]), f[1], f[2], [code[g] for g in f[3:]]) for f in (line.split("\t") for line in query)]
    for name, path in (("text", src), ("bcf", bcf)):
        ingest_vcf(store, name, str(path))
        rows = stored_rows(store, name)
        got = [(r["pos"], r["alt"], (r["info"] or ".").split("GL=")[-1].split(";")[0], r["codes"]) for r in rows]
        assert got == want, name


def test_vcf44_prefix_phasing__reads_as_the_unprefixed_genotype(store: Store, tmp_path: Path) -> None:
    plain = REAL_WORLD.replace("VCFv4.2", "VCFv4.4")
    prefixed = plain.replace("0|1\t1|2", "|0|1\t/1|2")
    ingest_vcf(store, "plain", str(write_text(tmp_path / "p.vcf", plain)))
    ingest_vcf(store, "prefixed", str(write_text(tmp_path / "q.vcf", prefixed)))
    assert [r["codes"] for r in stored_rows(store, "prefixed")] == [r["codes"] for r in stored_rows(store, "plain")]
