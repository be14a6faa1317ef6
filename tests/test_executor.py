"""Stations on Dask: each kind's split into pieces gives what the kind gives whole (any parts, in-process),
and a station whose ``[executor]`` is a Dask cluster answers exactly what the same station answers in its
own threads, also when a worker is killed in the middle of a piece."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from better.engine.analyses import round_kind
from better.engine.design import KEY_COLUMNS, Block, Design
from better.engine.pieces import run_in_pieces
from better.engine.protocol import GenotypeData
from better.genomics import ingest
from better.genomics.packing import pack_genotypes
from better.genomics.synth import SynthConfig, synthesize
from better.station_api.config import Executor, read_config, write_config
from tests.servers import better, make_station, serve

distributed = pytest.importorskip("distributed")

#: The kinds that run in pieces, and whether their pieces' sums make them exact only to rounding.
SPLIT_KINDS = {"counts": False, "linear": False, "logistic_score": False, "pca_product": True, "pca_scores": True}


# -- splits against the whole, in-process ----------------------------------------------------------------
@st.composite
def station_cases(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 40))
    m = draw(st.integers(1, 50))
    block = draw(st.integers(1, 12))
    p = rng.uniform(0.0, 1.0, m)
    p[rng.random(m) < 0.2] = 0.0  # monomorphic
    codes = rng.binomial(2, p[:, None], (m, n))
    codes[rng.random((m, n)) < draw(st.sampled_from([0.0, 0.02, 0.3]))] = 3
    codes[rng.random(m) < 0.1] = 3  # all missing
    keys = {"chrom": np.full(m, "22"), "pos": np.arange(m, dtype=np.int64) + 100, "ref": np.full(m, "A")}
    keys["alt"] = np.full(m, "G")
    dosages = None
    if draw(st.booleans()):  # imputed: dosages near the calls, 65535 where missing
        noisy = codes * 16384 + rng.integers(-3000, 3000, codes.shape)
        dosages = np.where(codes == 3, 65535, np.clip(noisy, 0, 32768)).astype(np.uint16)
    blocks = [
        Block(
            {c: keys[c][a : a + block] for c in KEY_COLUMNS},
            pack_genotypes(codes[a : a + block]),
            None if dosages is None else dosages[a : a + block],
        )
        for a in range(0, m, block)
    ]
    include = rng.random(n) < 0.85
    C = np.column_stack([np.ones(n), rng.normal(50, 10, n), rng.integers(0, 2, n)]) * include[:, None]
    y = np.where(include, rng.integers(0, 2, n), 0).astype(float)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(blocks) - 1)), max_size=4)))) if len(blocks) > 1 else []
    groups = np.split(np.arange(len(blocks)), cuts)
    for at in draw(st.lists(st.integers(0, len(groups)), max_size=2)):  # parts that read no variant
        groups.insert(at, np.array([], dtype=int))
    freq = np.clip(np.where(codes < 3, codes, 0).sum(axis=1) / np.maximum(2 * (codes < 3).sum(axis=1), 1), 0.05, 0.95)
    pca = {
        **{f"key_{c}": keys[c] for c in KEY_COLUMNS},
        "mean": 2 * freq,
        "scale": 1 / np.sqrt(2 * freq * (1 - freq)),
        "basis": rng.normal(size=(m, 2)),
    }
    tasks = {
        "counts": {"kind": "counts", "groups": 2},
        "linear": {"kind": "linear"},
        "logistic_score": {"kind": "logistic_score", "beta": np.array([-0.2, 0.01, 0.3])},
        "pca_product": {"kind": "pca_product", **pca},
        "pca_scores": {"kind": "pca_scores", **pca, "divisor": np.array([2.0, 3.0]), "name": np.array([""])},
    }
    design = Design(C, y, include, ("intercept", "age", "sex"))
    parts = [GenotypeData(design, lambda targets, b=[blocks[i] for i in g]: b) for g in groups]
    return {"whole": GenotypeData(design, lambda targets: blocks), "parts": parts, "tasks": tasks}


@settings(max_examples=20)
@given(station_cases())
def test_split__pieces_over_any_parts_give_the_whole(case: dict) -> None:
    for name, inexact in SPLIT_KINDS.items():
        kind, task = round_kind(name), case["tasks"][name]
        assert kind.split is not None
        whole = kind.execute(task, case["whole"])
        pieces = run_in_pieces(kind.split, task, case["parts"], case["whole"])
        assert set(pieces) == set(whole), name
        for key, expected in whole.items():
            got, expected = np.asarray(pieces[key]), np.asarray(expected)
            assert got.shape == expected.shape and got.dtype == expected.dtype, (name, key)
            if inexact:
                scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * scale, err_msg=f"{name} {key}")
            else:
                assert np.array_equal(got, expected, equal_nan=got.dtype.kind == "f"), (name, key)


def test_executor_config__kind_and_cluster_must_agree() -> None:
    assert Executor().kind == "threads"
    assert Executor(kind="dask", workers=2).workers == 2
    assert Executor(kind="dask", scheduler="tcp://10.0.0.5:8786").scheduler == "tcp://10.0.0.5:8786"
    for bad in (
        {"kind": "dask"},
        {"kind": "dask", "workers": 2, "scheduler": "tcp://h:1"},
        {"kind": "threads", "workers": 2},
        {"kind": "dask", "scheduler": "http://h:1"},
        {"kind": "dask", "workers": 0},
        {"kind": "spark"},
    ):
        with pytest.raises(ValidationError):
            Executor(**bad)


# -- live stations: threads against Dask -----------------------------------------------------------------
QUERIES = {
    "linear": "GWAS LINEAR ldl ~ age + sex + pc1",
    "logistic": "GWAS LOGISTIC case ~ age + sex",
    "freq": "FREQ WHERE sex = 1",
    "pca": "PCA 2 WHERE maf >= 0.05",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dask_cohort")
    synthesize(SynthConfig(out=str(out), samples=360, variants=800, stations=1, seed=11))
    return out


def station(root: Path, cohort: Path, executor: Executor, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A station of the cohort whose variants file has row groups of 100 rows (parts to spread)."""
    with monkeypatch.context() as m:
        m.setattr(ingest, "ROW_GROUP_MAX_ROWS", 100)
        st = make_station(root, "milano", cohort)
    config = read_config(st.path)
    write_config(st.path, config.model_copy(update={"executor": executor}))
    return st.path, st.researcher


@pytest.fixture(scope="module")
def federations(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The same station twice, served: in its own threads, and on a LocalCluster of 2 worker processes."""
    out = {}
    with ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        for label, executor in (("threads", Executor()), ("dask", Executor(kind="dask", workers=2))):
            root = tmp_path_factory.mktemp(label)
            path, token = station(root, cohort, executor, mp)
            url = stack.enter_context(serve(path))
            out[label] = root / "federation.toml"
            out[label].write_text(f'[[station]]\nname = "milano"\nurl = "{url}"\ntoken = "{token}"\n')
            out[f"{label}_station"] = path
        yield out


def query(federation: Path, q: str) -> dict:
    r = better("query", "--federation", str(federation), "--format", "json", q)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def pieces_released(station: Path) -> list[int]:
    rows = [json.loads(line) for line in (station / "audit.jsonl").read_text().splitlines()]
    return [json.loads(r["detail"]).get("pieces", 0) for r in rows if r["action"] == "task.released"]


def assert_same_table(a: dict, b: dict, rtol: float) -> None:
    assert a["columns"] == b["columns"] and len(a["rows"]) == len(b["rows"])
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        for x, y in zip(ra, rb, strict=True):
            if rtol and isinstance(x, float) and isinstance(y, float):
                assert y == pytest.approx(x, rel=rtol, abs=1e-300)
            else:
                assert x == y


@pytest.mark.parametrize("name", list(QUERIES))
def test_dask_station__answers_what_the_threads_station_answers(federations: dict[str, Path], name: str) -> None:
    before = len(pieces_released(federations["dask_station"]))
    threads = query(federations["threads"], QUERIES[name])
    dask = query(federations["dask"], QUERIES[name])
    assert threads["rows"], name
    assert_same_table(threads, dask, rtol=1e-12 if name == "pca" else 0.0)
    spread = pieces_released(federations["dask_station"])[before:]
    assert any(p > 1 for p in spread), spread  # the scan rounds ran in parts on the cluster
    assert not any(pieces_released(federations["threads_station"]))


def test_dask_station__a_region_in_one_row_group_runs_in_one_part(federations: dict[str, Path]) -> None:
    from better.genomics.store import Store

    pos = Store.open(federations["dask_station"]).dataset("cohort").variants(columns=["pos"]).column("pos")
    q = f"FREQ ON 22:{pos[5]}-{pos[40]}"  # inside the first row group (100 rows): one part, its piece the root
    before = len(pieces_released(federations["dask_station"]))
    threads, dask = query(federations["threads"], q), query(federations["dask"], q)
    assert len(threads["rows"]) >= 30
    assert_same_table(threads, dask, rtol=0.0)
    assert 1 in pieces_released(federations["dask_station"])[before:]


# -- a worker killed mid-piece ---------------------------------------------------------------------------
class KillFirstPiece(distributed.WorkerPlugin):
    """Kills its worker's process (SIGKILL) just after it starts the first piece of a round, once."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish == "executing" and "run_piece" in str(key) and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(key))
            threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGKILL)).start()


def test_dask_station__a_worker_killed_mid_piece_changes_nothing(
    federations: dict[str, Path], cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        marker = tmp_path / "killed"
        client.register_plugin(KillFirstPiece(str(marker)))
        path, token = station(tmp_path, cohort, Executor(kind="dask", scheduler=cluster.scheduler_address), monkeypatch)
        with serve(path) as url:
            federation = tmp_path / "federation.toml"
            federation.write_text(f'[[station]]\nname = "milano"\nurl = "{url}"\ntoken = "{token}"\n')
            got = query(federation, QUERIES["linear"])
        assert marker.exists()  # a worker did die in a piece
    assert_same_table(query(federations["threads"], QUERIES["linear"]), got, rtol=0.0)
    assert any(p > 1 for p in pieces_released(path))


# -- parts and waiting, without a cluster ----------------------------------------------------------------
def test_parts__whole_row_groups_in_order_within_each_region(cohort: Path, tmp_path: Path) -> None:
    from better.genomics.parts import dataset_parts
    from better.genomics.regions import Region
    from better.genomics.store import Store

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ingest, "ROW_GROUP_MAX_ROWS", 100)
        st = make_station(tmp_path, "milano", cohort)
    dataset = Store.open(st.path).dataset("cohort")
    every = dataset.row_groups()
    parts = dataset_parts(dataset, None, False, pieces=3)
    assert [g for p in parts for g in p.row_groups] == [g for g, _ in every]  # each once, in file order
    assert sum(p.rows for p in parts) == dataset.n_variants and 3 <= len(parts) < len(every)
    assert all(p.rows <= max(-(-dataset.n_variants // 3), max(n for _, n in every)) for p in parts)
    assert [p.row_groups for p in dataset_parts(dataset, None, False, pieces=1000)] == [(g,) for g, _ in every]
    pos = dataset.variants(columns=["pos"]).column("pos").to_numpy()
    region = Region.parse(f"22:{pos[250]}-{pos[420]}")
    inside = dataset_parts(dataset, [region], False, pieces=8)
    assert {g for p in inside for g in p.row_groups} == {2, 3, 4} and all(p.region == region for p in inside)


class FakeFuture:
    def __init__(self, polls: int, error: Exception | None = None) -> None:
        self.polls, self.error = polls, error

    def done(self) -> bool:
        self.polls -= 1
        return self.polls <= 0

    @property
    def status(self) -> str:
        return "error" if self.error else "finished"

    def result(self) -> None:
        if self.error:
            raise self.error


def test_wait__progress_per_part_a_cancel_an_error_or_no_workers_stop_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from better.engine.errors import StoreError
    from better.station_api import executor

    told: list[int] = []
    held = {"a": FakeFuture(3), "b": FakeFuture(1), "c": FakeFuture(2), "root": FakeFuture(10**6)}
    executor._wait(held, {"a": 10, "b": 20, "c": 30}, told.append)
    assert sorted(r for r in told if r) == [10, 20, 30] and list(held) == ["root"]  # done parts dropped

    class CancelledError(Exception):
        pass

    def cancel_after_two(rows: int) -> None:
        told.append(rows)
        if len(told) > 2:
            raise CancelledError

    told.clear()
    with pytest.raises(CancelledError):
        executor._wait({"a": FakeFuture(10**6)}, {"a": 5}, cancel_after_two)
    with pytest.raises(ValueError, match="bad piece"):
        executor._wait({"a": FakeFuture(1), "b": FakeFuture(1, ValueError("bad piece"))}, {"a": 1, "b": 1}, None)
    clock = iter(range(0, 10**6, 30))  # 30 s a poll: the cluster has had no worker for a minute at the 4th
    monkeypatch.setattr(executor.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(executor.time, "sleep", lambda seconds: None)
    with pytest.raises(StoreError, match="no workers"):
        executor._wait({"a": FakeFuture(10**6)}, {"a": 1}, None, lambda: 0)
