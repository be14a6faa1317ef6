"""A new analysis is one module and a registry line: the toy ALLELE SUM (``tests/toy_analysis.py``) runs
through the station's wire model, task manager, policy and audit, and through secure aggregation's
shared rows, with no other change. Its results are checked against the station VCFs read by cyvcf2."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cyvcf2
import numpy as np
import pydantic
import pytest

from better.engine import analyses
from better.engine.design import Design
from better.engine.protocol import run_local
from better.genomics.ingest import ingest_vcf
from better.genomics.station_inputs import StationBlocks
from better.genomics.store import Store
from better.station_api.audit import AuditLog
from better.station_api.config import Policy, StationConfig
from better.station_api.tasks import TaskManager
from better.wire.arrays import decode_arrays, encode_state
from better.wire.messages import TaskRequest
from tests import toy_analysis
from tests.secure_local import run_secure_local

STATIONS = ("milano", "nijmegen", "barcelona")


@pytest.fixture
def registered() -> Iterator[None]:
    analyses.register(toy_analysis)
    yield
    analyses.unregister(toy_analysis)


@pytest.fixture
def stores(small_cohort: Path, tmp_path: Path, registered: None) -> list[Store]:
    out = []
    for name in STATIONS:
        store = Store.create(tmp_path / name)
        ingest_vcf(store, "cohort", str(small_cohort / f"{name}.vcf.gz"), str(small_cohort / f"{name}.pheno.tsv"))
        out.append(store)
    return out


def vcf_allele_sums(path: Path) -> dict[tuple[str, int, str, str], tuple[int, int]]:
    """ALT alleles and called samples per (chrom, pos, ref, alt), one ALT at a time, from the VCF itself."""
    out = {}
    for v in cyvcf2.VCF(str(path)):
        gt = np.array([g[:2] for g in v.genotypes])
        called = (gt >= 0).all(axis=1)
        for k, alt in enumerate(v.ALT, start=1):
            out[(v.CHROM, v.POS, v.REF, alt)] = (int((gt[called] == k).sum()), int(called.sum()))
    return out


def test_an_unregistered_analysis_is_refused_on_the_wire() -> None:
    with pytest.raises(pydantic.ValidationError, match="unknown analysis"):
        TaskRequest(dataset="cohort", analysis="allele_sum", kind="allele_sum")


def test_the_toy_analysis_runs_through_the_stations_task_manager(small_cohort: Path, stores: list[Store]) -> None:
    policy = Policy(allowed_analyses=[*analyses.analyses()])
    managers = [
        TaskManager(s, StationConfig(name=n, policy=policy), AuditLog(s)) for s, n in zip(stores, STATIONS, strict=True)
    ]
    try:
        protocol = toy_analysis.AlleleSumProtocol()
        while (task := protocol.next_task()) is not None:
            request = TaskRequest(dataset="cohort", analysis="allele_sum", kind=task["kind"])
            records = [m.submit("ana", request) for m in managers]
            deadline = time.monotonic() + 60
            while any(r.status not in ("done", "failed") for r in records):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert [r.status for r in records] == ["done"] * 3, [r.describe() for r in records]
            protocol.receive([decode_arrays(r.outcome.payload) for r in records])  # type: ignore[union-attr]
        got = protocol.result()
    finally:
        for m in managers:
            m.close()

    per_station = [vcf_allele_sums(small_cohort / f"{n}.vcf.gz") for n in STATIONS]
    keys = list(zip(got["chrom"].tolist(), got["pos"].tolist(), got["ref"].tolist(), got["alt"].tolist(), strict=True))
    assert set(keys) == set().union(*per_station)
    for i, key in enumerate(keys):
        sums = [s[key] for s in per_station if key in s]
        rare_here = any(0 < min(alt, 2 * called - alt) < policy.min_minor_allele_count for alt, called in sums)
        assert bool(got["WITHHELD"][i]) == rare_here, key  # the station's rule, judged on its own counts
        if not rare_here:
            assert got["ALT_CT"][i] == sum(alt for alt, _ in sums)
            assert got["CALLED_CT"][i] == sum(called for _, called in sums)
    assert 0 < int(got["WITHHELD"].sum()) < len(keys)


def test_the_toy_analysis_lays_its_rows_on_secure_aggregations_shared_rows(stores: list[Store]) -> None:
    stations = []
    for s in stores:
        ds = s.dataset("cohort")
        n = ds.n_samples
        stations.append(
            (
                Design(C=np.ones((n, 1)), y=np.zeros(n), include=np.ones(n, dtype=bool), names=("intercept",)),
                StationBlocks(ds),
            )
        )
    plain = run_local(toy_analysis.AlleleSumProtocol(), stations)
    masked = run_secure_local(toy_analysis.AlleleSumProtocol(), stations)
    for name in ("chrom", "pos", "ref", "alt", "ALT_CT", "CALLED_CT"):
        np.testing.assert_array_equal(masked[name], plain[name])


def test_a_kind_with_per_row_results_must_declare_how_they_are_judged() -> None:
    from better.engine.rounds import RoundKind, SharedRows

    shared = SharedRows("variant_keys", ("chrom", "pos", "ref", "alt"), {"alt": None})
    with pytest.raises(ValueError, match="needs rules and zeroed"):
        RoundKind("unjudged", toy_analysis.allele_sum_station, shared=shared)
    with pytest.raises(ValueError, match="needs rules and zeroed"):
        RoundKind(
            "unzeroed", toy_analysis.allele_sum_station, shared=shared, rules=("minor_allele_count",), judged_groups=1
        )


def test_untrusted_names_and_states_are_checked_whatever_the_kind() -> None:
    from better.engine.errors import InputError
    from better.station_api.runner import engine_task

    with pytest.raises(pydantic.ValidationError) as caught:
        TaskRequest(dataset="cohort", analysis="count", kind="nosuchkind")
    # errors are releases too: the message does not repeat the name (the server leaves pydantic's input out)
    assert "nosuchkind" not in caught.value.errors()[0]["msg"]
    with pytest.raises(pydantic.ValidationError):
        TaskRequest(dataset="cohort", analysis="count", kind="k" * 65)
    design = Design(C=np.ones((4, 1)), y=np.zeros(4), include=np.ones(4, dtype=bool), names=("intercept",))
    garbage = TaskRequest(dataset="cohort", analysis="count", kind="sample_count", state="!!!")
    with pytest.raises(InputError, match="base64"):  # a kind that reads no state still has it checked
        engine_task(garbage, design, 100)
    many = TaskRequest(
        dataset="cohort",
        analysis="pileup",
        kind="pileup",
        state=encode_state(
            {
                "key_chrom": np.array(["1"] * 300),
                "key_pos": np.arange(1, 301),
                "min_base_quality": np.array(13),
                "min_mapping_quality": np.array(0),
            },
            300,
        ),
    )
    with pytest.raises(InputError, match="1 to 256 rows, not 300"):
        engine_task(many, design, 1000)
