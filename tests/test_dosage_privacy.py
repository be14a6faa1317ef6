"""Disclosure rules on a dataset with dosages: people are counted on the genotypes nearest the dosages for
what is computed on dosages, on the hard calls for what is computed on hard calls, on both for FREQ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from better.engine.analyses.counts import CountsProtocol
from better.engine.analyses.linear import LinearProtocol
from better.genomics.dosage import hard_calls, to_units
from better.genomics.ingest import VariantSource, ingest_variants
from better.genomics.store import Store
from better.genomics.vcf_batches import build_batch
from better.query.remote import Model, to_request
from better.station_api.config import Policy
from better.station_api.exchange import later_rules
from better.station_api.policy import withheld_rows
from better.station_api.runner import prepare, run_task
from better.wire.arrays import decode_arrays

N = 40


def dosage_store(root: Path, dosages: np.ndarray) -> Any:
    """A station store holding one dataset ``d`` with these ``(variants, N)`` dosages and a phenotype."""
    units = to_units(dosages)
    packed, counts = hard_calls(units)
    m = units.shape[0]
    batch = build_batch(
        N,
        chrom=["1"] * m,
        pos=np.arange(m) + 100,
        ident=[f"v{i}" for i in range(m)],
        ref=["A"] * m,
        alt=["G"] * m,
        qual=[None] * m,
        filt=["PASS"] * m,
        info=["R2=0.9"] * m,
        record=np.arange(m),
        alt_index=np.ones(m),
        counts=counts,
        packed=packed,
        dosages=units,
    )
    samples = [f"s{i}" for i in range(N)]
    pheno = root / "pheno.tsv"
    rng = np.random.default_rng(1)
    pheno.write_text("sample_id\ty\n" + "".join(f"{s}\t{rng.normal():.4f}\n" for s in samples))
    store = Store.create(root / "station")
    (root / "made.bin").write_bytes(b"made by the test")  # what the catalog hashes as the source
    source = VariantSource(str(root / "made.bin"), "test", samples, [(batch, np.arange(m))], dosages=True)
    ingest_variants(store, "d", source, str(pheno))
    return store.dataset("d")


def run(dataset: Any, task: dict[str, Any], model: Model, policy: Policy) -> dict[str, np.ndarray]:
    prepared = prepare(lambda _: dataset, to_request(task, model, 0, 1), policy)
    return decode_arrays(run_task(prepared, policy).payload)


@pytest.fixture()
def uncertain(tmp_path: Path) -> Any:
    """Variant 0: one person with dosage 0.6 (no hard call: 0.4 from any genotype), everyone else 0.
    Variant 1: twenty people at 1.0, the rest 0 (common). Variant 2: the minor allele in 8 hard calls.
    Variant 3: one person at 0.4 (nearest genotype hom-ref), everyone else 0. Variant 4: one person at 1.6,
    everyone else 2 (the REF side). Variant 5: one at 0.4 and a cloud of 0.01s (no nearest carrier)."""
    d = np.zeros((6, N))
    d[0, 0] = 0.6
    d[1, :20] = 1.0
    d[2, :8] = 1.02
    d[3, 5] = 0.4
    d[4] = 2.0
    d[4, 7] = 1.6
    d[5, 3] = 0.4
    d[5, 10:30] = 0.01
    return dosage_store(tmp_path, d)


def test_dataset__reads_its_dosages_back(uncertain: Any) -> None:
    (block,) = list(uncertain.blocks())
    assert uncertain.has_dosages and block.dosages is not None
    assert block.dosages[0, 0] == round(0.6 * 16384) and block.dosages[2, 0] == round(1.02 * 16384)
    assert (block.packed[0] == 0b11).sum() == 1  # person 0's hard call is missing at variant 0


def test_freq__withholds_a_dosage_sum_over_one_uncertain_carrier(uncertain: Any) -> None:
    """Its hard calls say nobody carries the allele; its nearest genotypes say one person does."""
    policy = Policy(min_cell_count=5, min_minor_allele_count=5)
    got = run(uncertain, {"kind": "counts", "groups": 1}, Model("d", "freq"), policy)
    assert got["withheld"].tolist() == [True, False, False, True, True, True]
    assert got["dose_alt"][0].sum() == 0 and got["counts"][0].sum() == 0  # nothing of it leaves
    assert "dosage_people" not in got  # the nearest genotypes stay at the station
    proto = CountsProtocol()
    proto.receive([got])
    res = proto.result()
    assert np.isnan(res["ALT_FREQS"][0]) and res["ALT_FREQS"][1] == pytest.approx(0.25)


def test_linear__judges_the_people_its_dosage_sums_cover(uncertain: Any) -> None:
    policy = Policy(min_cell_count=5, min_minor_allele_count=5)
    model = Model("d", "gwas_linear", "y", ())
    got = run(uncertain, LinearProtocol().next_task() or {}, model, policy)
    # a person at 0.4 among zeros would be read back from gy / sqrt(gg): withheld, as at 0.6, 1.6 among 2s
    # (the REF side, through the totals) and 0.4 in a cloud of 0.01s
    assert got["withheld"].tolist() == [True, False, False, True, True, True]
    assert (got["gy"][[0, 3, 4, 5]] == 0).all() and (got["cg"][[0, 3, 4, 5]] == 0).all()


def test_two_views__a_row_either_view_withholds_is_withheld() -> None:
    policy = Policy(min_cell_count=5, min_minor_allele_count=5)
    hard = np.array([[[39, 0, 0, 1]], [[30, 10, 0, 0]]])  # hard calls: nothing rare
    nearest = np.array([[[39, 1, 0, 0]], [[30, 10, 0, 0]]])  # nearest genotypes: one carrier in row 0
    both = np.concatenate([hard, nearest], axis=-1)
    assert withheld_rows("counts", both, policy)["minor_allele_count"].tolist() == [True, False]
    assert withheld_rows("counts", hard, policy)["minor_allele_count"].tolist() == [False, False]


def test_later_rounds__take_the_view_they_compute_on() -> None:
    """PCA and LD pruning read hard calls: they take the hard-call view of the counts round's people."""
    policy = Policy(min_cell_count=5, min_minor_allele_count=5)
    hard = np.array([[[36, 0, 0, 4]]])  # 4 people lack a hard call: LD pairs must withhold the row
    nearest = np.array([[[36, 4, 0, 0]]])  # but every one of them has a dosage
    rules = later_rules("counts", {"minor_allele_count": np.array([True])}, np.concatenate([hard, nearest], -1), policy)
    assert rules["missing_genotypes"].tolist() == [True]
    assert rules["minor_allele_count"].tolist() == [True]


def test_batch__imputation_r2_comes_from_info(uncertain: Any) -> None:
    table = uncertain.variants(columns=["imputation_r2"])
    assert table.column("imputation_r2").to_pylist() == pytest.approx([0.9] * 6)
    assert pa.types.is_float32(table.schema.field("imputation_r2").type)
