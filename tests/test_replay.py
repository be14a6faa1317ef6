"""A result's values are bound to the stations' signed releases: ``better verify`` runs the query again on
the releases kept beside the result and finds an edited table, payload or request."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import httpx
import pytest

from better.engine.errors import InputError
from better.query.output import write
from better.query.provenance import verify_manifests
from better.query.replay import read_releases, releases_path, verify_values, write_releases
from tests.test_disclosure import federation


def _result(fed, text: str, out: Path, fmt: str = "json") -> list[dict]:  # type: ignore[no-untyped-def]
    from rich.console import Console

    fed.record_releases = True
    frame = fed.query(text)
    write(frame, fmt, out, fed.notes, Console(), fed.manifests)
    assert fed.recording is not None
    write_releases(releases_path(out), text, fed.dataset, fed.secure_aggregation, fed.answered, fed.recording)
    return fed.manifests


def _rewrite_zip(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    change(members)
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


def test_verify__values_edited_payloads_swapped_or_requests_changed_fail(small_cohort: Path, tmp_path: Path) -> None:
    with federation(tmp_path, small_cohort) as (fed, _):
        keys = {s.name: httpx.get(f"{s.url}/info").json()["public_key"] for s in fed.stations}
        linear = tmp_path / "linear.json"
        manifests = _result(fed, "GWAS LINEAR ldl ~ age + sex WHERE maf >= 0.05", linear)
        logistic = tmp_path / "logistic.parquet"
        logistic_manifests = _result(fed, "GWAS LOGISTIC case ~ age + sex WHERE maf >= 0.05", logistic, "parquet")
        freq = tmp_path / "freq.json"
        _releases_hold_only_what_the_coordinator_received(freq, _result(fed, "FREQ", freq), tmp_path)
    assert verify_manifests(manifests, keys)[0] == []
    problems, rows = verify_values(linear, manifests)
    assert problems == [] and rows is not None and rows > 50
    problems, rows = verify_values(logistic, logistic_manifests)
    assert problems == [] and rows is not None and rows > 50

    # the same signed null-model releases of a station in another order: other betas than the replay asks
    swapped = tmp_path / "swapped.parquet"
    swapped.write_bytes(logistic.read_bytes())
    releases_path(swapped).write_bytes(releases_path(logistic).read_bytes())

    def swap_null_rounds(members: dict[str, bytes]) -> None:
        index = json.loads(members["releases.json"])
        station = index["stations"][0]
        at = [
            i
            for i, e in enumerate(index["releases"])
            if e["station"] == station
            and e["request"]["kind"] == "logistic_null"
            and e["request"].get("state")
            and not e["request"].get("exchange")
        ]
        assert len(at) >= 2
        entries = index["releases"]
        entries[at[0]], entries[at[-1]] = entries[at[-1]], entries[at[0]]
        members["releases.json"] = json.dumps(index).encode()

    _rewrite_zip(releases_path(swapped), swap_null_rounds)
    problems, _ = verify_values(swapped, logistic_manifests)
    assert len(problems) == 1 and "state other than the recorded request" in problems[0], problems

    # one P value edited in the table
    doc = json.loads(linear.read_text())
    p = doc["columns"].index("P")
    row = next(i for i, r in enumerate(doc["rows"]) if r[p] not in ("withheld", "NA"))
    doc["rows"][row][p] = f"{float(doc['rows'][row][p]) / 10:.6g}"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    releases_path(edited).write_bytes(releases_path(linear).read_bytes())
    problems, _ = verify_values(edited, manifests)
    assert problems == [
        f"row {row + 1}, P: the table says {doc['rows'][row][p]}, the releases give "
        f"{json.loads(linear.read_text())['rows'][row][p]}"
    ]

    # a payload changed (its hash is no longer the signed one)
    def flip_payload(members: dict[str, bytes]) -> None:
        name = sorted(n for n in members if n.startswith("payloads/"))[-1]
        members[name] = members[name][:-1] + bytes([members[name][-1] ^ 1])

    _rewrite_zip(releases_path(edited), flip_payload)
    doc["rows"][row][p] = json.loads(linear.read_text())["rows"][row][p]
    edited.write_text(json.dumps(doc))
    problems, _ = verify_values(edited, manifests)
    assert len(problems) == 1 and "the payload is not the one the station signed" in problems[0]

    # the query text changed to a covariate the releases were not asked for
    releases_path(edited).write_bytes(releases_path(linear).read_bytes())

    def other_query(members: dict[str, bytes]) -> None:
        index = json.loads(members["releases.json"])
        index["query"] = "GWAS LINEAR ldl ~ age WHERE maf >= 0.05"
        members["releases.json"] = json.dumps(index).encode()

    _rewrite_zip(releases_path(edited), other_query)
    problems, _ = verify_values(edited, manifests)
    assert len(problems) == 1 and "covariates other than the recorded request did" in problems[0]

    # a recorded request changed to match a forged query (its hash is no longer the signed one)
    def forged_request(members: dict[str, bytes]) -> None:
        index = json.loads(members["releases.json"])
        index["releases"][0]["request"]["covariates"] = ["age"]
        members["releases.json"] = json.dumps(index).encode()

    _rewrite_zip(releases_path(edited), forged_request)
    problems, _ = verify_values(edited, manifests)
    assert problems and "the request is not the one the station signed" in problems[0]

    # the releases file missing: the values cannot be checked, and verify says so
    releases_path(edited).unlink()
    with pytest.raises(Exception, match="cannot be checked without the releases"):
        verify_values(edited, manifests)


def _releases_hold_only_what_the_coordinator_received(out: Path, manifests: list[dict], tmp_path: Path) -> None:
    recorded = read_releases(releases_path(out))
    assert set(recorded.stations) == {"milano", "nijmegen", "barcelona"}
    # a position moved by a few bases is not "within rounding": labels and counts must match exactly
    doc = json.loads(out.read_text())
    pos = doc["columns"].index("POS")
    doc["rows"][3][pos] = str(int(doc["rows"][3][pos]) + 300)
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(doc))
    releases_path(moved).write_bytes(releases_path(out).read_bytes())
    problems, _ = verify_values(moved, manifests)
    assert problems and problems[0].startswith("row 4, POS: the table says")
    # a table or releases file that is not what verify reads fails with a clear error, never a traceback
    moved.write_text(json.dumps({**doc, "rows": 5}))
    with pytest.raises(InputError, match="its table cannot be read"):
        verify_values(moved, manifests)
    releases_path(moved).unlink()
    releases_path(moved).mkdir()
    with pytest.raises(InputError, match="not a BETTER releases file"):
        read_releases(releases_path(moved))
    # masked rounds: every release the stations made, and nothing else (one task id each)
    assert len({(r.station, r.task) for r in recorded.releases}) == len(recorded.releases)
    assert {r.request["kind"] for r in recorded.releases} >= {"counts"}
