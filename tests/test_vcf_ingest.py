"""Every genotype read back from the store equals what cyvcf2 reports for the same record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genomics.ingest import ingest_vcf
from genomics.packing import unpack_genotypes
from genomics.store import Store
from genomics.vcf import open_vcf
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
