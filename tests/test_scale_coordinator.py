"""The coordinator with many stations: at most ``max_concurrent_stations`` calls in flight, a station's
timeout counted from its turn, an error that says what became of every station, sealed rounds that
complete under the bound, and masks that cancel over many stations."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from better.engine import fixedpoint
from better.engine.analyses.sample_count import SampleCountProtocol
from better.engine.errors import InputError
from better.query import federation as federation_module
from better.query import remote
from better.query.federation import Federation
from better.query.remote import Model, RoundError, Slots, StationClient, StationError, run_remote_async
from better.station_api.launch import station_processes
from better.wire.arrays import encode_arrays
from better.wire.masking import CHUNK_WORDS, keystream, mask_words, unmask_sum
from tests.secure_local import station_secrets
from tests.test_finishing import MISSING, ols, stations, write_cohort

CATALOG = {"datasets": [{"name": "d", "variables": {"age": "number"}, "samples": 10, "variants": 5}], "policy": {}}


@dataclass
class FakeStations:
    """Stations answering over ``httpx.MockTransport`` at ``http://NAME.test``: each answers a task after
    ``delay`` seconds, or is ``slow`` (never ends), ``refuses`` (403, a policy rule) or is ``down``."""

    delay: float = 0.05
    behaviour: dict[str, str] = field(default_factory=dict)
    #: tasks submitted and not yet fetched or cancelled, and the most there were at once
    open_tasks: int = 0
    most: int = 0
    started: dict[str, float] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def client(self, name: str, timeout: float = 30.0) -> StationClient:
        return StationClient(name, f"http://{name}.test", "token", timeout=timeout, retries=0)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host.removesuffix(".test")
        what = self.behaviour.get(name, "ok")
        path = request.url.path
        await asyncio.sleep(0.005)  # the network: every station of a round is asked before any answers
        if what == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if path == "/station":
            return httpx.Response(200, json=CATALOG)
        if request.method == "POST":
            if what == "refuses":
                detail = {"rule": "allowed_analyses", "message": "this station does not run count"}
                return httpx.Response(403, json={"detail": detail})
            task = f"{name}-{next(self.ids)}"
            self.started[task] = time.monotonic()
            self.open_tasks += 1
            self.most = max(self.most, self.open_tasks)
            return httpx.Response(202, json={"id": task})
        task = path.split("/")[2]
        if request.method == "DELETE":
            self._close(task)
            return httpx.Response(200, json={})
        if path.endswith("/result"):
            self._close(task)
            return httpx.Response(200, content=encode_arrays({"n": np.array(10)}))
        wait = float(request.url.params.get("wait", "0"))
        left = math.inf if what == "slow" else self.started[task] + self.delay - time.monotonic()
        await asyncio.sleep(max(0.0, min(wait, left)))
        done = left <= wait
        return httpx.Response(200, json={"status": "done" if done else "running", "progress": 0.5})

    def _close(self, task: str) -> None:
        if self.started.pop(task, None) is not None:
            self.open_tasks -= 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStations:
    stations_ = FakeStations()

    def open_client(_stations: list[StationClient], **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(stations_.handle), **kw)

    monkeypatch.setattr(remote, "open_client", open_client)
    monkeypatch.setattr(federation_module, "open_client", open_client)
    return stations_


def count(clients: list[StationClient], slots: Slots) -> dict[str, np.ndarray]:
    async def go() -> dict[str, np.ndarray]:
        return await run_remote_async(SampleCountProtocol(), clients, Model("d", "count"), slots=slots)

    return asyncio.run(go())


# -- the bound ---------------------------------------------------------------------------------------------
def test_bound__at_most_n_tasks_are_in_flight_and_every_station_answers(fake: FakeStations) -> None:
    clients = [fake.client(f"s{i:02d}") for i in range(12)]
    slots = Slots(4)
    assert count(clients, slots)["COUNT"].tolist() == [120]
    assert fake.most == slots.most == 4  # the bound was reached and never passed
    assert fake.open_tasks == 0


def test_bound__a_stations_timeout_counts_from_its_turn(fake: FakeStations) -> None:
    """One at a time, each station takes 0.3 s of its 0.5 s: the last starts 0.6 s after the round."""
    fake.delay = 0.3
    clients = [fake.client(f"s{i}", timeout=0.5) for i in range(3)]
    t0 = time.monotonic()
    assert count(clients, Slots(1))["COUNT"].tolist() == [30]
    assert time.monotonic() - t0 >= 0.9 and fake.most == 1


def test_bound__comes_from_the_federation_file(tmp_path: Path) -> None:
    entry = '[[station]]\nname = "a"\nurl = "http://127.0.0.1:1"\ntoken = "t"\n'
    path = tmp_path / "federation.toml"
    path.write_text("max_concurrent_stations = 4\n" + entry)
    assert Federation.from_file(path).max_concurrent_stations == 4
    path.write_text(entry)
    assert Federation.from_file(path).max_concurrent_stations == remote.MAX_CONCURRENT_STATIONS
    path.write_text("max_concurrent_stations = 0\n" + entry)
    with pytest.raises(InputError, match="max_concurrent_stations"):
        Federation.from_file(path)
    with pytest.raises(InputError, match="at least one"):
        Slots(0)


def test_federation__asks_in_turns_says_so_and_sums_up_who_answered(fake: FakeStations) -> None:
    fed = Federation([fake.client(f"s{i:02d}") for i in range(10)], secure_aggregation="off")
    fed.max_concurrent_stations = 3
    assert fed.query("COUNT")["COUNT"].to_list() == [100]
    assert fake.most == 3
    assert any("10 stations, at most 3 asked at once" in n for n in fed.notes)
    lines = fed.who_answered()
    assert len(lines) == 10 and all("answered 2 of 2 call(s)" in line for line in lines)  # /station, the round
    assert all("MB received" in line for line in lines)


# -- who answered ------------------------------------------------------------------------------------------
def test_failure__names_every_station_and_its_state(fake: FakeStations) -> None:
    fake.behaviour = {"slow": "slow", "strict": "refuses", "gone": "down"}
    clients = [fake.client("fine"), fake.client("slow", timeout=0.3), fake.client("strict"), fake.client("gone")]
    with pytest.raises(RoundError) as caught:
        count(clients, Slots(16))
    exc = caught.value
    text = str(exc)
    lines = dict(line.split(None, 1) for line in text.splitlines() if line.startswith("  "))
    reasons = {
        "slow": "timed out after 0.3 s: no answer within 0.3 s (task cancelled)",
        "strict": "refused: sample_count task failed with HTTP 403: refused by its policy (allowed_analyses)",
        "gone": "unreachable at http://gone.test (ConnectError: connection refused)",
    }
    as_above = {"slow": "timed out after 0.3 s", "strict": "refused", "gone": "unreachable"}
    assert lines["fine"].startswith("answered in")
    for name, reason in reasons.items():  # the first failure's reason is in the first line: "as above"
        assert lines[name].startswith(f"{as_above[name]}: as above" if name == exc.station else reason), lines[name]
    assert text.splitlines()[1] == "who answered the sample_count round:"
    assert "\nfix (slow: timed out): raise its timeout (seconds per task) in the federation file" in text
    assert "\nfix (gone: unreachable): check that the station runs" in text
    assert "\nfix (strict: refused): the reason above says" in text
    assert text.startswith(f"station {exc.station}: ")  # the first failure first, as a lone error says it
    assert sorted(e.station for e in exc.failed) == ["gone", "slow", "strict"]
    assert not exc.dropout  # one of them refused: not a dropout to restart without
    assert fake.open_tasks == 0  # the slow station's task was cancelled


def test_failure__stations_not_yet_asked_are_not_asked(fake: FakeStations) -> None:
    fake.behaviour = {"a": "down"}
    with pytest.raises(RoundError) as caught:
        count([fake.client(n) for n in ("a", "b", "c", "d")], Slots(1))
    states = {o.station: o.state for o in caught.value.answers.outcomes}
    assert states == {"a": "unreachable", "b": "not asked", "c": "not asked", "d": "not asked"}
    assert "not asked: the round failed before its turn" in str(caught.value)


def test_failure__one_station_is_a_plain_station_error(fake: FakeStations) -> None:
    fake.behaviour = {"a": "down"}
    with pytest.raises(StationError) as caught:
        count([fake.client("a")], Slots(4))
    assert not isinstance(caught.value, RoundError) and str(caught.value).startswith("station a: unreachable")


def test_partial__leaves_every_station_that_failed_out_at_once(fake: FakeStations) -> None:
    fake.behaviour = {"d": "down", "e": "down"}
    fed = Federation([fake.client(n) for n in "abcde"], secure_aggregation="off")
    frame = fed.query("COUNT", allow_partial=True)
    assert frame["COUNT"].to_list() == [30]
    assert [left.split(" ", 1)[0] for left in frame["LEFT_OUT"][0].split("; ")] == ["d", "e"]
    (note,) = fed.notes
    assert "the query ran again without station d and station e" in note
    assert "\n  a  answered in" in note and "\n  e  unreachable" in note
    assert fed.answered == ["a", "b", "c"]


# -- sealed rounds under the bound ---------------------------------------------------------------------------
@contextmanager
def served(root: Path, data: dict[str, Path]) -> Iterator[list[StationClient]]:
    st = stations(root, data, (True, True, True))
    with station_processes([p for _, p, _ in st], threads=1) as urls:
        yield [StationClient(name, u, t, timeout=120) for (name, _, t), u in zip(st, urls, strict=True)]


def test_sealed_rounds__with_more_stations_than_the_bound_equal_the_pooled_fit(tmp_path: Path) -> None:
    """Seals, openings and the stations' finishing steps, one station at a time: nothing waits for a
    station that waits for a slot (each call ends on its own), and the result is the pooled fit."""
    data, pheno, geno = write_cohort(tmp_path)
    with served(tmp_path, data) as clients:
        fed = Federation(clients, secure_aggregation="on", max_concurrent_stations=1)
        frame = fed.query("GWAS LINEAR ldl ~ age + sex")
        assert fed._slots is not None and fed._slots[1].most == 1
    rows = {r["POS"]: r for r in frame.iter_rows(named=True)}
    for pos in MISSING:
        beta, se = ols(pheno, geno[pos])
        assert not rows[pos]["WITHHELD"], pos
        assert rows[pos]["BETA"] == pytest.approx(beta, rel=1e-8, abs=1e-10)
        assert rows[pos]["SE"] == pytest.approx(se, rel=1e-8)
    rounds = [a.what for a in fed.answers]
    assert "the seal of the linear round" in rounds and "the opening of the linear round" in rounds
    assert "a finishing step of the linear round" in rounds  # the stations finished a row among themselves


# -- masks over many stations --------------------------------------------------------------------------------
@settings(max_examples=5)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 7, CHUNK_WORDS - 1, CHUNK_WORDS, 2 * CHUNK_WORDS + 3]))
def test_masks__cancel_exactly_over_30_stations(seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    stations_ = station_secrets(30)
    participants = [(s.name, s.public_text) for s in stations_]
    releases = [
        {
            "x": rng.normal(size=size) * 1e3,
            "n": rng.integers(-(2**40), 2**40, size=(size, 2)),
            "flag": rng.random(3) < 0.05,
        }
        for _ in stations_
    ]
    masked = [s.mask(r, "ab" * 16, 3, participants) for s, r in zip(stations_, releases, strict=True)]
    total = unmask_sum(masked, [s.name for s in stations_])
    assert np.array_equal(total["n"], sum(r["n"] for r in releases))
    assert np.array_equal(total["flag"], np.logical_or.reduce([r["flag"] for r in releases]))
    step = 2.0**-fixedpoint.FRACTION_BITS
    exact = np.array([math.fsum(col) for col in zip(*(r["x"] for r in releases), strict=True)])
    assert np.all(np.abs(total["x"] - exact) <= 30 * step / 2 + np.abs(exact) * 2.0**-52)


@pytest.mark.parametrize("words", [0, 1, CHUNK_WORDS - 1, CHUNK_WORDS, CHUNK_WORDS + 1, 3 * CHUNK_WORDS + 5])
def test_masks__streams_are_aes_ctr_of_zeros_across_chunks(words: int) -> None:
    """The chunked streams are the wire's: one AES-256-CTR encryption of zeros per pair and round."""
    key = bytes(range(32))
    whole = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(16 * words))
    assert np.array_equal(keystream(key, words), fixedpoint.from_bytes(whole, (words,)))
    peers = {"a": bytes(32), "z": key}
    values = np.arange(words, dtype=np.float64)
    got = mask_words({"v": values}, "m", peers)["v"].view(np.uint64).reshape(-1, 2)
    want = fixedpoint.subtract(
        fixedpoint.add(fixedpoint.encode(values), keystream(key, words)), keystream(bytes(32), words)
    )
    assert np.array_equal(got, want)  # "m" adds the stream it shares with "z" and subtracts the one with "a"
