from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from better.engine.errors import InputError, NotFoundError
from better.genomics.ingest import ingest_vcf
from better.genomics.packing import unpack_genotypes
from better.genomics.regions import Region
from better.genomics.selection import Condition
from better.genomics.store import Store


@pytest.fixture
def ingested(store: Store, small_cohort: Path) -> Store:
    ingest_vcf(store, "milano", str(small_cohort / "milano.vcf.gz"), str(small_cohort / "milano.pheno.tsv"))
    return store


def test_blocks__region_equals_filtered_whole(ingested: Store) -> None:
    ds = ingested.dataset("milano")
    allv = ds.variants()
    pos = allv.column("pos").to_numpy()
    lo, hi = int(pos[100]), int(pos[250])
    region = Region.parse(f"22:{lo}-{hi}")
    blocks = list(ds.blocks(region, max_variants=32))
    got = np.concatenate([b.variants.column("pos").to_numpy() for b in blocks])
    assert got.tolist() == pos[(pos >= lo) & (pos <= hi)].tolist()
    whole = np.concatenate([unpack_genotypes(b.packed, ds.n_samples) for b in ds.blocks()])
    part = np.concatenate([unpack_genotypes(b.packed, ds.n_samples) for b in blocks])
    assert np.array_equal(part, whole[(pos >= lo) & (pos <= hi)])
    assert max(b.n_variants for b in blocks) <= 32


def test_blocks__other_chromosome_is_empty(ingested: Store) -> None:
    assert list(ingested.dataset("milano").blocks(Region.parse("X"))) == []


def test_station_blocks__targeted_rounds_equal_the_full_pass(ingested: Store) -> None:
    from better.genomics.station_inputs import StationBlocks

    ds = ingested.dataset("milano")
    source = StationBlocks(ds, max_variants=64)
    full = list(source(None))
    keys = {c: np.concatenate([b.keys[c] for b in full]) for c in ("chrom", "pos", "ref", "alt")}
    packed = np.concatenate([b.packed for b in full])
    pick = np.random.default_rng(3).choice(len(packed), 12, replace=False)
    targets = {c: v[pick] for c, v in keys.items()}
    targets["alt"] = np.append(targets["alt"][:-1], "<NOT-HERE>")  # a variant this station lacks

    def check(targets: dict, rows: np.ndarray) -> None:
        got = list(source(targets))
        got_keys = list(zip(*(np.concatenate([b.keys[c] for b in got]).tolist() for c in keys), strict=True))
        got_rows = np.concatenate([b.packed for b in got])
        assert len(got_keys) >= len(rows)
        index = {k: i for i, k in enumerate(got_keys)}
        for r in rows:
            assert np.array_equal(got_rows[index[tuple(keys[c].tolist()[r] for c in keys)]], packed[r])

    check(targets, pick[:-1])  # reads the store
    check(targets, pick[:-1])  # served from memory
    check({c: v[:5] for c, v in targets.items()}, pick[:5])  # a subset: from memory too
    source.dataset = None  # type: ignore[assignment]  # proves the last two never touched the store
    check({c: v[:3] for c, v in targets.items()}, pick[:3])


def test_sample_mask__phenotype_filter(ingested: Store, small_cohort: Path) -> None:
    ds = ingested.dataset("milano")
    mask = ds.sample_mask([Condition("age", ">", 60), Condition("sex", "=", 1)])
    import csv

    with open(small_cohort / "milano.pheno.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    want = [r["age"] != "NA" and float(r["age"]) > 60 and r["sex"] == "1" for r in rows]
    assert mask.tolist() == want
    assert ds.sample_mask([Condition("smoking", "in", ("never", "former"))]).sum() == sum(
        r["smoking"] in ("never", "former") for r in rows
    )


def test_sample_mask__errors_suggest(ingested: Store) -> None:
    ds = ingested.dataset("milano")
    with pytest.raises(NotFoundError, match="did you mean 'age'"):
        ds.sample_mask([Condition("agee", ">", 1)])
    with pytest.raises(InputError, match="holds text"):
        ds.sample_mask([Condition("smoking", ">", 1)])


def test_catalog__views_and_provenance(ingested: Store, small_cohort: Path) -> None:
    src = small_cohort / "milano.vcf.gz"
    with ingested.catalog(read_only=True) as con:
        n = con.execute("SELECT count(*) FROM variants_milano").fetchone()[0]
        sha = con.execute("SELECT source_sha256 FROM ingests WHERE source_kind = 'variants'").fetchone()[0]
        ph = con.execute("SELECT count(*) FROM phenotypes_milano WHERE ldl IS NOT NULL").fetchone()[0]
    assert n == ingested.dataset("milano").variants().num_rows
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest()
    assert 0 < ph <= ingested.dataset("milano").n_samples
    summary = ingested.summary()[0]
    assert summary["name"] == "milano" and summary["chromosomes"] == ["22"]
    assert summary["phenotype_columns"]["smoking"] == "string"


def test_row_groups__bounded_and_prunable(store: Store, small_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    import better.genomics.ingest as ing

    monkeypatch.setattr(ing, "ROW_GROUP_MAX_ROWS", 100)
    ingest_vcf(store, "pooled", str(small_cohort / "pooled.vcf.gz"), chunk_bytes=10_000)
    meta = pq.ParquetFile(store.dataset("pooled").variants_path).metadata
    assert meta.num_row_groups > 1
    assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups))
    stats = meta.row_group(0).column(1).statistics
    assert stats is not None and stats.has_min_max


def test_region_parse() -> None:
    r = Region.parse("chr22:1,000-2,000")
    assert (r.chrom, r.start, r.end, str(r)) == ("chr22", 999, 2000, "chr22:1000-2000")
    assert str(Region.parse("22:5")) == "22:5-5"
    for bad in ("22:0-5", "22:9-5", "22:a-b", ""):
        with pytest.raises(InputError):
            Region.parse(bad)


def test_unknown_dataset_suggests(ingested: Store) -> None:
    with pytest.raises(NotFoundError, match="did you mean 'milano'"):
        ingested.dataset("milan")


def test_dataset_without_phenotypes(store: Store, small_cohort: Path) -> None:
    ingest_vcf(store, "g", str(small_cohort / "barcelona.vcf.gz"))
    ds = store.dataset("g")
    assert ds.phenotypes().num_rows == 0
    assert ds.sample_mask().all()
    assert ds.samples().column("has_phenotypes").to_pylist() == [False] * ds.n_samples
    assert isinstance(ds.samples(), pa.Table)
