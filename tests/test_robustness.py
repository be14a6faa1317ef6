"""What an operator or a careless client runs into: every failure a clear error, never a traceback, a 500 or
a hang; and an audit log that a deleted or torn tail cannot fool."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from better.engine.errors import InputError
from better.genomics.ingest import ingest_vcf
from better.genomics.phenotypes import QUERY_WORDS, read_phenotypes
from better.genomics.store import Store
from better.query.federation import Federation
from better.query.parser import QueryError, parse
from better.query.remote import StationClient, StationError
from better.station_api.audit import LOG_FILE, AuditLog
from better.station_api.config import Policy
from better.station_api.launch import station_processes
from tests.conftest import write_text
from tests.servers import auth, better, make_station, serve

NAMES = ("milano", "nijmegen", "barcelona")


def test_regions_without_variants__an_empty_table_masked_or_not(small_cohort: Path, tmp_path: Path) -> None:
    stations = [make_station(tmp_path, n, small_cohort, Policy(audit_scope="local")) for n in NAMES]
    with station_processes([s.path for s in stations], threads=1) as urls:
        clients = [StationClient(s.name, u, s.researcher) for s, u in zip(stations, urls, strict=True)]
        for secure in ("off", "on"):
            fed = Federation(clients, secure_aggregation=secure)
            assert fed.query("FREQ ON 22:1-100").height == 0
            assert fed.query("HWE ON 1:1-1000").height == 0


def test_secure_block_with_an_unusable_key__is_refused_by_name(small_cohort: Path, tmp_path: Path) -> None:
    st = make_station(tmp_path, "milano", small_cohort)
    with serve(st.path) as url:
        mine = httpx.get(f"{url}/info").json()["agreement_key"]
        zeros = "x25519:" + "A" * 43 + "="
        participants = [
            {"name": "milano", "agreement_key": mine},
            {"name": "ghost", "agreement_key": zeros},
            {"name": "other", "agreement_key": "x25519:" + "B" * 43 + "="},
        ]
        body = {
            "dataset": "cohort",
            "analysis": "count",
            "kind": "sample_count",
            "secure": {"session": "ab" * 16, "round": 0, "participants": participants},
            "exchange": {"phase": "seal"},
        }
        r = httpx.post(f"{url}/tasks", json=body, headers=auth(st.researcher))
        assert r.status_code == 422 and "participant ghost" in r.text and "no shared secret" in r.text


def test_query_limits__too_many_conditions_or_regions_is_a_query_error() -> None:
    with pytest.raises(QueryError, match="at most 32 sample conditions"):
        parse("COUNT WHERE " + " AND ".join(f"age > {i}" for i in range(40)))
    with pytest.raises(QueryError, match="at most 256 regions"):
        parse("FREQ ON " + ", ".join(f"22:{i * 10 + 1}-{i * 10 + 5}" for i in range(300)))


def test_phenotypes__huge_integers_are_numbers_and_infinity_is_named(tmp_path: Path) -> None:
    t = read_phenotypes(str(write_text(tmp_path / "p.tsv", "sample_id\tbig\na\t123456789012345678901234567890\n")))
    assert str(t.table.schema.field("big").type) == "double"
    with pytest.raises(InputError, match=r"line 3, column 'x'.*not a finite number"):
        read_phenotypes(str(write_text(tmp_path / "q.tsv", "sample_id\tx\na\t1.5\nb\tinf\n")))


def test_phenotypes__a_column_named_like_a_query_word_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="'count' is a word of the query language"):
        read_phenotypes(str(write_text(tmp_path / "p.tsv", "sample_id\tcount\na\t1\n")))
    grammar = (Path(__file__).parents[1] / "query" / "grammar.lark").read_text()
    keywords = set(re.findall(r"/(\w+)\\b/i", grammar))  # the keyword terminals, e.g. /count\b/i
    assert len(keywords) > 20 and keywords <= QUERY_WORDS, keywords - QUERY_WORDS


def test_ingest__a_directory_or_a_device_is_named_as_such(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="a directory, not a VCF"):
        ingest_vcf(store, "x", str(tmp_path))
    with pytest.raises(InputError, match="not a regular file"):
        ingest_vcf(store, "x", "/dev/zero")


def test_audit_log__a_deleted_tail_stays_missing_and_a_torn_line_does_not_stop_the_station(
    small_cohort: Path, tmp_path: Path
) -> None:
    st = make_station(tmp_path, "milano", small_cohort)
    log = AuditLog(Store.open(st.path))
    for i in range(3):
        log.append("test", "x", {"i": i})
    lines = (st.path / LOG_FILE).read_text().splitlines()
    (st.path / LOG_FILE).write_text("\n".join(lines[:-1]) + "\n")  # delete the newest row
    assert not log.verify().ok
    token = better("station", "token", "--station", str(st.path), "--user", "bob")
    assert token.returncode == 0
    assert not AuditLog(Store.open(st.path)).verify().ok  # the next row does not heal the gap
    with (st.path / LOG_FILE).open("a") as f:
        f.write('{"seq": 99, "logged_at": "tor')  # a crash in the middle of a line
    with serve(st.path) as url:
        assert httpx.get(f"{url}/info").status_code == 200
        station = httpx.get(f"{url}/station", headers=auth(st.researcher))
        assert station.status_code == 200 and station.json()["audit_log"].startswith("needs attention")
        tasks = httpx.get(f"{url}/tasks", headers=auth(st.researcher))
        assert tasks.status_code == 200
    v = AuditLog(Store.open(st.path)).verify()
    assert not v.ok and ("missing" in v.problem or "not a row" in v.problem)
    rows = [json.loads(line) for line in (st.path / LOG_FILE).read_text().splitlines() if line.endswith("}")]
    assert rows[-1]["action"] == "server.stop"  # logging went on


def test_a_stopped_station__fails_within_the_timeout_naming_it(small_cohort: Path, tmp_path: Path) -> None:
    st = make_station(tmp_path, "milano", small_cohort)
    with serve(st.path) as url:
        server = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _serves(int(p), st.path))
        os.kill(server, signal.SIGSTOP)
        try:
            fed = Federation([StationClient("milano", url, st.researcher, timeout=3)])
            t0 = time.monotonic()
            with pytest.raises(StationError, match=r"station milano: no answer to GET /station within 3 s"):
                fed.query("COUNT")
            assert time.monotonic() - t0 < 15
        finally:
            os.kill(server, signal.SIGCONT)


def _serves(pid: int, station: Path) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in cmd and str(station).encode() in cmd


def test_allow_partial__never_falls_back_to_the_clear(small_cohort: Path, tmp_path: Path) -> None:
    stations = [make_station(tmp_path, n, small_cohort) for n in NAMES[:2]]
    stations.append(make_station(tmp_path, NAMES[2], small_cohort, Policy(allowed_analyses=["count"])))
    with station_processes([s.path for s in stations], threads=1) as urls:
        clients = [StationClient(s.name, u, s.researcher) for s, u in zip(stations, urls, strict=True)]
        fed = Federation(clients)
        with pytest.raises(InputError, match="too few for secure aggregation"):
            fed.query("FREQ", allow_partial=True)


def test_policy__out_of_range_values_and_bad_peer_keys_are_refused(small_cohort: Path, tmp_path: Path) -> None:
    st = make_station(tmp_path, "milano", small_cohort)
    with serve(st.path) as url:
        policy = httpx.get(f"{url}/admin/policy", headers=auth(st.admin)).json()
        for change in ({"max_variants_per_task": 10**30}, {"min_cell_count": 0}, {"secure_peers": {"x": "nope"}}):
            r = httpx.put(f"{url}/admin/policy", json={**policy, **change}, headers=auth(st.admin))
            assert r.status_code == 422, change
        assert httpx.get(f"{url}/admin/policy", headers=auth(st.admin)).json() == policy


def test_token__revoke_by_user(small_cohort: Path, tmp_path: Path) -> None:
    st = make_station(tmp_path, "milano", small_cohort)
    with serve(st.path) as url:
        assert httpx.get(f"{url}/station", headers=auth(st.researcher)).status_code == 200
        r = better("station", "token", "--station", str(st.path), "--revoke", "ana")
        assert r.returncode == 0 and "revoked 1 token" in r.stderr
        assert httpx.get(f"{url}/station", headers=auth(st.researcher)).status_code == 401
        missing = better("station", "token", "--station", str(st.path), "--revoke", "nobody")
        assert missing.returncode == 1 and "no token" in missing.stderr
