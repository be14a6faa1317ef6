"""kill -9 at every line of a store commit and of an audit append: the store is the old dataset or the new
one, with a catalog that matches its files; the log verifies; what a crash left is gone after a start.

A child process runs the operation under a tracer that counts the lines executed in the module under test
and kills the process (SIGKILL) at line ``n``; the parent checks, for every ``n`` up to the operation's
length (the default run takes 4 points spread over it, the ``slow`` run every line).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from better.genomics.ingest import ingest_vcf
from better.genomics.store import DATASETS, Store
from better.station_api.audit import AuditLog
from tests.conftest import write_text
from tests.zoo import ZOO, vcf

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    target, stop = sys.argv[1], int(sys.argv[2])
    seen = 0

    def tracer(frame, event, arg):
        global seen
        if frame.f_code.co_filename.endswith(target):
            if event == "line":
                seen += 1
                if seen == stop:
                    os.kill(os.getpid(), signal.SIGKILL)
            return tracer
        return tracer

    from better.genomics.ingest import ingest_vcf
    from better.genomics.store import Store
    from better.station_api.audit import AuditLog
    store = Store.open(sys.argv[3])
    sys.settrace(tracer)
    if target.endswith("store.py"):
        ingest_vcf(store, "ds", sys.argv[4])
    else:
        AuditLog(store).append("crash", "test", {"n": stop})
    sys.settrace(None)
    print("SEEN", seen)
    """
)


def run_child(target: str, stop: int, station: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, target, str(stop), str(station), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_store(station: Path, old: Path, new: Path) -> str:
    """The store holds dataset "ds" as exactly the old or the new file; returns which."""
    store = Store.open(station)
    ds = store.dataset("ds")
    info = next(d for d in store.summary() if d["name"] == "ds")
    rows = pq.ParquetFile(ds.variants_path).metadata.num_rows
    assert rows == info["n_variants"], "the catalog's counts do not match the files"
    assert ds.n_samples == pq.read_table(ds.path / "samples.parquet").num_rows
    which = {sha256(old): "old", sha256(new): "new"}[info["source_sha256"]]
    with store.catalog() as con:  # the admin's SQL view reads the same files
        assert con.execute("SELECT count(*) FROM variants_ds").fetchone()[0] == rows
    return which


@pytest.mark.parametrize("points", [pytest.param(4, id="4-points"), pytest.param(0, marks=pytest.mark.slow)])
def test_ingest_killed_at_any_line_of_the_commit__old_or_new_never_a_mix(tmp_path: Path, points: int) -> None:
    old = write_text(tmp_path / "old.vcf", ZOO["two_chromosomes"])
    new = write_text(
        tmp_path / "new.vcf",
        vcf(["a", "b", "c"], [f"22\t{100 * i}\t.\tA\tG\t.\t.\t.\tGT\t0/1\t1/1\t0/0" for i in range(1, 9)]),
    )
    station = tmp_path / "station"
    ingest_vcf(Store.create(station), "ds", str(old))
    full = run_child("genomics/store.py", 10**9, station, str(new))
    assert full.returncode == 0, full.stderr
    length = int(full.stdout.split()[-1])
    assert check_store(station, old, new) == "new"
    outcomes = []
    stops = (
        range(1, length + 1)
        if not points
        else sorted({round(1 + i * (length - 1) / (points - 1)) for i in range(points)})
    )
    for stop in stops:
        ingest_vcf(Store.open(station), "ds", str(old))  # back to the old dataset
        killed = run_child("genomics/store.py", stop, station, str(new))
        assert killed.returncode == -9, killed.stderr[-2000:]
        outcomes.append(check_store(station, old, new))
        Store.open(station).clean_up()  # as a station does when it starts
        left = [p.name for p in (station / DATASETS).iterdir()]
        assert len(left) == 1 and left[0].startswith("ds"), left
    assert len(outcomes) >= min(points or length, length) and {"old", "new"} <= set(outcomes), (length, outcomes)


@pytest.mark.parametrize("every", [pytest.param(8, id="every-eighth-line"), pytest.param(1, marks=pytest.mark.slow)])
def test_audit_append_killed_at_any_line__the_log_verifies(tmp_path: Path, every: int) -> None:
    station = tmp_path / "station"
    store = Store.create(station)
    AuditLog(store).append("test", "start", {})
    full = run_child("station_api/audit.py", 10**9, station)
    assert full.returncode == 0, full.stderr
    length = int(full.stdout.split()[-1])
    for stop in range(1, length + 1, every):
        killed = run_child("station_api/audit.py", stop, station)
        assert killed.returncode == -9
        log = AuditLog(Store.open(station))
        log.append("test", "after", {"stop": stop})  # the next row, as a restarted station writes
        v = log.verify()
        assert v.ok, (stop, v.problem)
