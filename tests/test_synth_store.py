"""``better synth-store``: a synthetic dataset written straight into a store, laid out as an ingest lays
one out, with the genotypes its model intends, readable by every analysis, deterministic, and committed
only whole."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from better.engine.analyses.counts import CountsProtocol
from better.engine.analyses.linear import LinearProtocol
from better.engine.design import Design
from better.engine.errors import InputError, StoreError
from better.engine.protocol import run_local
from better.genomics import synth_store as ss
from better.genomics.phenotypes import match_samples, read_phenotypes
from better.genomics.schema import SAMPLES_SCHEMA, variants_schema
from better.genomics.station_inputs import StationBlocks, build_design
from better.genomics.store import DATASETS, Store
from better.genomics.synth_store import SynthStoreConfig, SynthStoreReport, synth_store
from tests.servers import better

SMALL = SynthStoreConfig(dataset="big", samples=1500, variants=1200, seed=5, chromosomes=3)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, SynthStoreReport]:
    store = Store.create(tmp_path_factory.mktemp("synth-store") / "station")
    return store, synth_store(store, SMALL, chunk=100)


@pytest.fixture
def small(made: tuple[Store, SynthStoreReport]) -> Store:
    return made[0]


def reference_codes(packed: np.ndarray, n: int) -> np.ndarray:
    """Slow, plain NumPy decoding of the 2-bit layout (sample ``i``: byte ``i // 4``, bits ``2 (i % 4)``)."""
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
    return ((packed[:, :, None] >> shifts) & 3).reshape(packed.shape[0], -1)[:, :n].astype(np.int8)


def stored_codes(store: Store, name: str) -> np.ndarray:
    ds = store.dataset(name)
    table = pq.read_table(ds.variants_path, columns=["genotypes"])
    packed = np.frombuffer(b"".join(table.column("genotypes").to_pylist()), dtype=np.uint8)
    return reference_codes(packed.reshape(table.num_rows, -1), ds.n_samples)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_synth_store__laid_out_as_an_ingest(small: Store) -> None:
    store = Store.open(small.path)
    ds = store.dataset("big")
    n, m = SMALL.samples, SMALL.variants
    assert pq.read_schema(ds.variants_path).remove_metadata() == variants_schema(n)
    assert pq.read_schema(ds.path / "samples.parquet").remove_metadata() == SAMPLES_SCHEMA
    info = store.summary()[0]
    assert (info["name"], info["kind"], info["n_samples"], info["n_variants"], info["n_records"]) == (
        "big",
        "variants",
        n,
        m,
        m,
    )
    assert info["chromosomes"] == ["1", "2", "3"] and info["n_phenotyped"] == n
    assert info["source_sha256"] == ss.config_sha256(SMALL)
    v = ds.variants()
    chrom = np.array(v.column("chrom").to_pylist(), dtype=int)
    pos = v.column("pos").to_numpy()
    assert np.all(np.diff(chrom) >= 0) and np.all((np.diff(pos) > 0) | (np.diff(chrom) > 0)), "sorted, distinct"
    assert v.column("id").null_count == 0 and len(set(v.column("id").to_pylist())) == m
    assert v.column("record").to_pylist() == list(range(m)) and set(v.column("alt_index").to_pylist()) == {1}
    assert all(r != a for r, a in zip(v.column("ref").to_pylist(), v.column("alt").to_pylist(), strict=True))
    assert set(v.column("filter").to_pylist()) == {"PASS", "LowQual"} and 0 < v.column("qual").null_count < m
    meta = pq.ParquetFile(ds.variants_path).metadata
    for g in range(meta.num_row_groups):  # row groups never span two chromosomes (statistics prune regions)
        stats = meta.row_group(g).column(0).statistics
        assert stats.has_min_max and stats.min == stats.max
    codes = stored_codes(store, "big")
    counts = np.stack([(codes == c).sum(axis=1) for c in range(4)], axis=1)
    stored = np.stack([v.column(c).to_numpy() for c in ("n_hom_ref", "n_het", "n_hom_alt", "n_missing")], axis=1)
    assert np.array_equal(counts, stored)
    ac, an = counts[:, 1] + 2 * counts[:, 2], 2 * (n - counts[:, 3])
    assert v.column("info").to_pylist() == [f"AC={a};AN={t}" for a, t in zip(ac, an, strict=True)]
    with store.catalog() as con:  # the admin's SQL views read the files
        assert con.execute("SELECT count(*) FROM variants_big").fetchone()[0] == m
        assert con.execute("SELECT count(*) FROM phenotypes_big WHERE ldl IS NULL").fetchone()[0] > 0


def test_synth_store__phenotypes_are_those_an_ingest_of_their_tsv_gives(small: Store, tmp_path: Path) -> None:
    ds = small.dataset("big")
    stored = ds.phenotypes()
    assert stored.column_names == [
        "sample_id",
        "sample_index",
        *("age", "sex", "bmi", "smoking", "pc1", "pc2", "pc3", "pc4", "ldl", "case"),
    ]
    tsv = tmp_path / "pheno.tsv"
    names = [c for c in stored.column_names if c != "sample_index"]
    rows = zip(*(stored.column(c).to_pylist() for c in names), strict=True)
    tsv.write_text(
        "\t".join(names) + "\n" + "".join("\t".join("NA" if x is None else str(x) for x in r) + "\n" for r in rows)
    )
    ingested, unmatched = match_samples(read_phenotypes(str(tsv)), ds.samples().column("sample_id").to_pylist(), "x")
    assert unmatched == 0 and ingested.equals(stored)
    assert {c: stored.column(c).null_count > 0 for c in ("age", "ldl", "case", "sex", "pc1")} == {
        "age": True,
        "ldl": True,
        "case": True,
        "sex": False,
        "pc1": False,
    }
    assert set(stored.column("case").drop_null().to_pylist()) == {0, 1}
    assert set(stored.column("sex").to_pylist()) == {1, 2}
    assert set(stored.column("smoking").to_pylist()) == {"never", "former", "current"}


def test_synth_store__genotypes_follow_the_model(small: Store) -> None:
    """Hardy-Weinberg within each deme at its Balding-Nichols frequency, the missing rate, the spectrum
    and the differentiation of the demes, as intended."""
    sites = ss._sites(SMALL)
    cohort = ss._cohort(SMALL, sites)
    codes = stored_codes(small, "big")
    called = codes != 3
    assert 0.005 < (~called).mean() < 0.02, "about 1% missing genotypes"
    alt = np.where(called, codes, 0).sum(axis=1) / (2 * called.sum(axis=1))
    assert 0.35 < (alt < 0.01).mean() < 0.65 and (alt < 0.01).mean() > (alt > 0.99).mean(), "many rare variants"
    z_alt, z_het = [], []
    for d in range(len(ss.DEME_SHARES)):
        cols = cohort.deme == d
        p = sites.deme_freq[:, d]
        c = called[:, cols].sum(axis=1)
        g = codes[:, cols]
        n_alt = np.where(g == 3, 0, g).sum(axis=1)
        n_het = (g == 1).sum(axis=1)
        ok = (p > 0.02) & (p < 0.98)
        z_alt.append((n_alt - 2 * c * p)[ok] / np.sqrt(2 * c * p * (1 - p))[ok])
        q = 2 * p * (1 - p)
        z_het.append((n_het - c * q)[ok] / np.sqrt(c * q * (1 - q))[ok])
    for z in (np.concatenate(z_alt), np.concatenate(z_het)):
        assert z.size > 500 and abs(z.mean()) < 0.15 and 0.85 < z.std() < 1.15 and np.abs(z).max() < 5.5
    # Fst between demes 0 and 2: E[(p0 - p2)^2] = p (1 - p) (F0 + F2), plus the sampling of each
    f = [np.where(called[:, cohort.deme == d], codes[:, cohort.deme == d], 0).sum(axis=1) for d in (0, 2)]
    n_d = [2 * called[:, cohort.deme == d].sum(axis=1) for d in (0, 2)]
    p0, p2 = f[0] / n_d[0], f[1] / n_d[1]
    common = (sites.alt_freq > 0.05) & (sites.alt_freq < 0.95)
    pbar = (p0 + p2)[common] / 2
    fst = ((p0 - p2)[common] ** 2).sum() / (pbar * (1 - pbar)).sum()
    assert 0.6 * (ss.DEME_FST[0] + ss.DEME_FST[2]) < fst < 1.6 * (ss.DEME_FST[0] + ss.DEME_FST[2])


def test_synth_store__freq_on_the_store_equals_a_plain_decode(small: Store) -> None:
    ds = small.dataset("big")
    n = ds.n_samples
    everyone = Design(C=np.ones((n, 1)), y=np.zeros(n), include=np.ones(n, dtype=bool), names=("intercept",))
    res = run_local(CountsProtocol(groups=1), [(everyone, StationBlocks(ds, max_variants=256))])
    codes = stored_codes(small, "big")
    called = (codes != 3).sum(axis=1)
    want = np.where(codes == 3, 0, codes).sum(axis=1) / (2 * called)
    assert np.asarray(res["pos"]).tolist() == ds.variants().column("pos").to_pylist()
    np.testing.assert_allclose(np.asarray(res["ALT_FREQS"], dtype=float), want, rtol=1e-12)
    assert np.asarray(res["OBS_CT"]).tolist() == (2 * called).tolist()


def test_synth_store__linear_gwas_finds_the_causal_variants(made: tuple[Store, SynthStoreReport]) -> None:
    store, report = made
    ds = store.dataset("big")
    design = build_design(ds, "ldl", ["age", "sex", "pc1", "pc2"])
    res = run_local(LinearProtocol(), [(design, StationBlocks(ds))])
    keys = zip(np.asarray(res["chrom"]).tolist(), np.asarray(res["pos"]).tolist(), strict=True)
    p = dict(zip(keys, np.asarray(res["P"], dtype=float).tolist(), strict=True))
    causal = [t for t in report.truth if t["trait"] == "ldl"]
    assert len(causal) == SMALL.n_causal_ldl
    assert sum(p[(t["chrom"], t["pos"])] < 1e-6 for t in causal) >= len(causal) - 1
    values = np.asarray(res["P"], dtype=float)
    assert np.nanmedian(values) > 0.3, "the other variants are null"


def test_synth_store__same_seed_same_bytes_whatever_the_chunks(tmp_path: Path) -> None:
    cfg = SynthStoreConfig(dataset="d", samples=203, variants=500, seed=9, chromosomes=2)
    runs = []
    for name, chunk in (("a", None), ("b", 37), ("c", 1)):
        store = Store.create(tmp_path / name)
        synth_store(store, cfg, chunk=chunk)
        runs.append(store.dataset("d"))
    for table in ("variants", "samples", "phenotypes"):
        hashes = {sha256(ds.path / f"{table}.parquet") for ds in runs}
        assert len(hashes) == 1, table
    other = Store.create(tmp_path / "other")
    synth_store(other, SynthStoreConfig(dataset="d", samples=203, variants=500, seed=10, sites_seed=9, chromosomes=2))
    mine, theirs = runs[0], other.dataset("d")
    keys = ["chrom", "pos", "id", "ref", "alt"]
    assert mine.variants(columns=keys).equals(theirs.variants(columns=keys)), "one sites seed: the same variants"
    assert not np.array_equal(stored_codes(Store(tmp_path / "a"), "d"), stored_codes(other, "d"))


def test_synth_store__an_error_midway_leaves_the_old_dataset(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "st")
    cfg = SynthStoreConfig(dataset="d", samples=100, variants=400, seed=1, chromosomes=2)
    synth_store(store, cfg)
    before = {p.name: sha256(p) for p in store.dataset("d").path.iterdir()}

    def stop(done: int, total: int) -> None:
        if done >= 150:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth_store(store, SynthStoreConfig(dataset="d", samples=100, variants=400, seed=2), chunk=50, on_progress=stop)
    assert {p.name: sha256(p) for p in store.dataset("d").path.iterdir()} == before
    assert [p.name for p in (store.path / DATASETS).iterdir()] == [store.dataset("d").path.name]
    with pytest.raises(KeyboardInterrupt):
        synth_store(store, SynthStoreConfig(dataset="new", samples=100, variants=400), chunk=50, on_progress=stop)
    assert store.dataset_names() == ["d"] and len(list((store.path / DATASETS).iterdir())) == 1


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from better.genomics.store import Store
    from better.genomics.synth_store import SynthStoreConfig, SynthStoreReport, synth_store

    def kill(done, total):
        if done >= 100:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = SynthStoreConfig(dataset="d", samples=64, variants=300, seed=4, chromosomes=2)
    synth_store(Store.open(sys.argv[1]), cfg, chunk=50, on_progress=kill)
    """
)


def test_synth_store__killed_midway_leaves_no_dataset(tmp_path: Path) -> None:
    station = tmp_path / "st"
    Store.create(station)
    killed = subprocess.run([sys.executable, "-c", CHILD, str(station)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = [p.name for p in (station / DATASETS).iterdir()]
    assert len(left) == 1 and left[0].startswith(".ingest-d-"), "it was writing"
    store = Store.open(station)
    assert store.dataset_names() == []
    store.clean_up()  # as a station does when it starts
    assert list((station / DATASETS).iterdir()) == []


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"samples": 5}, InputError, "--samples"),
        ({"variants": 10**9}, InputError, "--variants"),
        ({"chromosomes": 23}, InputError, "--chromosomes"),
        ({"seed": -1}, InputError, "--seed"),
        ({"id_prefix": "a b"}, InputError, "--id-prefix"),
        ({"dataset": "1bad"}, StoreError, "dataset name"),
    ],
)
def test_synth_store__refuses_a_bad_configuration(change: dict, error: type, match: str, tmp_path: Path) -> None:
    store = Store.create(tmp_path / "st")
    with pytest.raises(error, match=match):
        synth_store(store, SynthStoreConfig(**change))
    assert list((store.path / DATASETS).iterdir()) == []


def test_cli__synth_store_then_store_info(tmp_path: Path) -> None:
    st = tmp_path / "milano"
    truth = tmp_path / "truth.tsv"
    args = ["--station", str(st), "--dataset", "cohort", "--samples", "80", "--variants", "60", "--chromosomes", "2"]
    r = better("synth-store", *args, "--seed", "3", "--truth", str(truth))
    assert r.returncode == 0, r.stderr
    assert "station 'milano' created" in r.stderr and "80 samples, 60 variants" in r.stderr
    assert truth.read_text().splitlines()[0].split("\t") == [
        "trait",
        "chrom",
        "pos",
        "id",
        "ref",
        "alt",
        "alt_freq",
        "effect",
    ]
    r = better("store", "info", "--station", str(st))
    assert r.returncode == 0 and "cohort" in r.stdout and "ldl (double)" in r.stdout
