"""The task manager in-process: cancellation of a running task, and a failing task's message."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import better.station_api.tasks as tasks_module
from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.station_api.audit import AuditLog
from better.station_api.config import StationConfig
from better.station_api.tasks import TaskManager
from better.wire.messages import TaskRequest

REQUEST = TaskRequest(dataset="cohort", analysis="freq", kind="counts")


@pytest.fixture
def manager(small_cohort: Path, tmp_path: Path) -> Iterator[TaskManager]:
    store = Store.create(tmp_path / "st")
    ingest_vcf(store, "cohort", str(small_cohort / "milano.vcf.gz"), str(small_cohort / "milano.pheno.tsv"))
    m = TaskManager(store, StationConfig(name="milano"), AuditLog(store))
    yield m
    m.close()


def wait_for(record: Any, status: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while record.status != status:
        assert time.monotonic() < deadline, record.describe()
        time.sleep(0.01)


def test_cancel__stops_a_running_task_at_its_next_block(manager: TaskManager, monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    blocks = []

    def slow(prepared: Any, policy: Any, on_block: Any, *_: Any) -> None:
        started.set()
        for _ in range(2000):
            on_block(1)
            blocks.append(1)
            time.sleep(0.005)
        raise AssertionError("the task was not cancelled")

    monkeypatch.setattr(tasks_module, "run_task", slow)
    record = manager.submit("ana", REQUEST)
    assert started.wait(10)
    manager.cancel("ana", record.id)
    wait_for(record, "cancelled")
    assert len(blocks) < 2000
    actions = [r["action"] for r in manager.audit.rows(0, 100)]
    assert "task.cancel" in actions and "task.cancelled" in actions


def test_a_bug_in_a_task__fails_it_with_a_reference_not_a_traceback(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(tasks_module, "run_task", broken)
    record = manager.submit("ana", REQUEST)
    wait_for(record, "failed")
    assert record.error is not None
    assert record.id in record.error and "boom" not in record.error and "Traceback" not in record.error


def test_many_tasks__run_concurrently_and_all_finish(manager: TaskManager) -> None:
    records = [manager.submit("ana", REQUEST) for _ in range(12)]
    for r in records:
        wait_for(r, "done", 60)
    payloads = {r.outcome.payload for r in records if r.outcome is not None}
    assert len(payloads) == 1  # the same task gives the same bytes, whichever thread ran it


def test_block_cache__tasks_over_the_same_variants_share_one_read() -> None:
    """The phenotypes of a GWAS chunk arrive together: the station reads their genotypes once."""
    from concurrent.futures import ThreadPoolExecutor

    from better.station_api.runner import BlockCache

    cache = BlockCache(entries=2)
    reads: list[str] = []

    def read(name: str) -> list:
        reads.append(name)
        time.sleep(0.05)  # the second task arrives while the first still reads
        return [name]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: cache.get(("chunk1",), lambda: read("chunk1")), range(4)))
    assert got == [["chunk1"]] * 4 and reads == ["chunk1"]
    cache.get(("chunk2",), lambda: read("chunk2"))
    cache.get(("chunk3",), lambda: read("chunk3"))  # chunk1 is the oldest of three: dropped
    cache.get(("chunk1",), lambda: read("chunk1"))
    assert reads == ["chunk1", "chunk2", "chunk3", "chunk1"]
    assert cache.fits(1000, 10_000) and not cache.fits(100_000, 10_000)


def test_a_release_the_audit_log_cannot_record__is_not_released(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    append = manager.audit.append

    def full_disk(user: str, action: str, details: dict) -> None:
        if action == "task.released":
            raise OSError(28, "No space left on device")
        append(user, action, details)

    monkeypatch.setattr(manager.audit, "append", full_disk)
    record = manager.submit("ana", REQUEST)
    wait_for(record, "failed")
    assert record.outcome is None and record.manifest is None and "could not write its audit log" in str(record.error)
