"""The station server over real HTTP: a uvicorn process on a loopback port per station."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from better.engine.protocol import GenotypeData, execute
from better.genomics.station_inputs import StationBlocks
from better.genomics.store import Store
from better.query.remote import Model, StationClient, StationError, run_remote, to_request
from better.station_api.audit import AuditLog
from better.station_api.config import Policy, Server
from better.station_api.policy import release
from better.station_api.runner import design_of, prepare, run_task
from better.wire.arrays import ARROW_STREAM, decode_arrays, encode_state
from tests.servers import StationSetup, auth, better, make_station, serve

FAKE_ID = "0" * 32


@pytest.fixture(scope="module")
def milano(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StationSetup, str]]:
    # The tests below ask for many sample sets in turn; the differencing guard has its own test.
    st = make_station(tmp_path_factory.mktemp("stations"), "milano", small_cohort, Policy(differencing_guard=False))
    with serve(st.path) as url:
        yield st, url


def submit_and_wait(url: str, token: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    r = httpx.post(f"{url}/tasks", json=body, headers=auth(token))
    assert r.status_code == 202, r.text
    task_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/tasks/{task_id}", headers=auth(token)).json()
        if status["status"] not in ("queued", "running", "pending_approval") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def null_round(covariates: list[str], beta: np.ndarray) -> dict[str, Any]:
    """A logistic null-model round of ``case`` on ``covariates`` at coefficients ``beta``."""
    return {
        "dataset": "cohort",
        "analysis": "gwas_logistic",
        "kind": "logistic_null",
        "phenotype": "case",
        "binary": True,
        "covariates": covariates,
        "state": encode_state({"beta": beta}),
    }


def counts_body(**extra: Any) -> dict[str, Any]:
    return {"dataset": "cohort", "analysis": "freq", "kind": "counts", **extra}


# -- open routes and the auth matrix -----------------------------------------------------------------------
def test_open_routes__answer_without_a_token(milano: tuple[StationSetup, str]) -> None:
    _, url = milano
    for path in ("/health", "/info", "/service-info", "/openapi.json"):
        r = httpx.get(url + path)
        assert r.status_code == 200, path
    assert httpx.get(url + "/info").json()["name"] == "milano"


def _operations(url: str) -> list[tuple[str, str, list[str]]]:
    doc = httpx.get(url + "/openapi.json").json()
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ops.append((method.upper(), path.replace("{task_id}", FAKE_ID), op.get("x-roles", [])))
    return ops


def test_auth_matrix__every_route_in_the_openapi_document(milano: tuple[StationSetup, str]) -> None:
    st, url = milano
    ops = _operations(url)
    assert len(ops) >= 14
    tokens = {"researcher": st.researcher, "admin": st.admin}
    bad = "btr_aaaaaaaaaaaa_" + "A" * 43
    for method, path, roles in ops:
        if path in ("/health", "/info", "/service-info"):
            assert roles == []
            continue
        if path.startswith("/beacon"):  # the Beacon's own access levels: tests/test_beacon.py
            continue
        assert roles, f"{method} {path} declares no x-roles: every closed route must say who may call it"
        body = {"json": {}} if method in ("POST", "PUT") else {}
        if path == "/admin/policy" and method == "PUT":  # a valid body must not reset the policy: send it back
            body = {"json": httpx.get(url + path, headers=auth(st.admin)).json()}
        for headers, want in (({}, 401), (auth(bad), 401), ({"Authorization": "Basic eDp5"}, 401)):
            r = httpx.request(method, url + path, headers=headers, **body)
            assert r.status_code == want, (method, path, headers, r.status_code, r.text)
            assert "WWW-Authenticate" in r.headers
        for role, token in tokens.items():
            r = httpx.request(method, url + path, headers=auth(token), **body)
            if role in roles:
                assert r.status_code not in (401, 403), (method, path, role, r.text)
            else:
                assert r.status_code == 403, (method, path, role, r.status_code, r.text)
                assert "role" in r.json()["detail"]


# -- tasks and what leaves the station ---------------------------------------------------------------------
def test_counts_task__released_result_equals_in_process_run_under_the_policy(
    milano: tuple[StationSetup, str],
) -> None:
    st, url = milano
    status = submit_and_wait(url, st.researcher, counts_body(where=[{"column": "age", "op": ">", "value": 30}]))
    assert status["status"] == "done", status
    assert status["progress"] == 1.0
    r = httpx.get(f"{url}/tasks/{status['id']}/result", headers=auth(st.researcher))
    assert r.headers["content-type"] == ARROW_STREAM
    got = decode_arrays(r.content)
    # the same task in-process, through the same policy
    ds = Store.open(st.path).dataset("cohort")
    from better.wire.messages import TaskRequest

    req = TaskRequest(**counts_body(where=[{"column": "age", "op": ">", "value": 30}]))
    want, _ = release(
        "counts",
        execute({"kind": "counts", "groups": 1}, GenotypeData(design_of(ds, req), StationBlocks(ds))),
        Policy(),
    )
    assert set(got) == set(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    withheld = got["withheld"]
    assert 0 < withheld.sum() < withheld.size  # the small cohort has rare variants: some are held back
    assert (got["counts"][withheld] == 0).all()
    c = got["counts"][:, 0]
    mac = np.minimum(c[:, 1] + 2 * c[:, 2], 2 * c[:, 0] + c[:, 1])
    assert not ((mac[~withheld] > 0) & (mac[~withheld] < 5)).any(), "a rare variant's counts left the station"
    assert np.array_equal(withheld, got["withheld_minor_allele_count"])
    assert status["released"]["withheld"] == int(withheld.sum())


def test_linear_round__rare_variants_and_few_missing_are_withheld(milano: tuple[StationSetup, str]) -> None:
    st, url = milano
    body = {"dataset": "cohort", "analysis": "gwas_linear", "kind": "linear", "phenotype": "ldl", "covariates": ["age"]}
    status = submit_and_wait(url, st.researcher, body)
    assert status["status"] == "done", status
    got = decode_arrays(httpx.get(f"{url}/tasks/{status['id']}/result", headers=auth(st.researcher)).content)
    n = int(got["n"])
    alt = got["cg"][:, 0]
    mac = np.minimum(alt, 2 * (n - got["n_miss"]) - alt)
    kept = ~got["withheld"]
    assert got["withheld"].any() and kept.any()
    assert not ((mac[kept] > 0) & (mac[kept] < 5)).any()
    assert not ((got["n_miss"][kept] > 0) & (got["n_miss"][kept] < 5)).any()
    assert (got["m_cc"][got["withheld"]] == 0).all()


def test_remote_protocol__equals_in_process_over_one_station(milano: tuple[StationSetup, str]) -> None:
    from better.engine.analyses.logistic import LogisticProtocol

    st, url = milano
    model = Model("cohort", "gwas_logistic", "case", ("age", "sex"), binary=True)
    remote = run_remote(LogisticProtocol(k=3), [StationClient("milano", url, st.researcher)], model)
    ds = Store.open(st.path).dataset("cohort")

    def local(task: dict[str, Any]) -> dict[str, np.ndarray]:  # in-process, through the same policy
        prepared = prepare(lambda _: ds, to_request(task, model, 0, 1), Policy())
        return decode_arrays(run_task(prepared, Policy()).payload)

    proto = LogisticProtocol(k=3)
    while (task := proto.next_task()) is not None:
        proto.receive([local(task)])
    want = proto.result()
    assert list(remote["ERRCODE"]) == list(want["ERRCODE"])
    assert "WITHHELD" in set(remote["ERRCODE"])
    np.testing.assert_allclose(remote["Z_STAT"], want["Z_STAT"], rtol=1e-10, equal_nan=True)


def test_bad_requests__clear_4xx_and_never_a_traceback(milano: tuple[StationSetup, str]) -> None:
    st, url = milano
    h = auth(st.researcher)
    cases = [
        ({**counts_body(), "dataset": "cohrt"}, 404, "did you mean 'cohort'"),
        ({**counts_body(), "kind": "linear"}, 422, "has no 'linear' round"),
        ({**counts_body(), "regions": ["22:9-1"]}, 422, "start must not exceed end"),
        ({**counts_body(), "where": [{"column": "agee", "op": ">", "value": 3}]}, 404, "did you mean 'age'"),
        ({**counts_body(), "bogus": 1}, 422, "bogus"),
        (
            {
                "dataset": "cohort",
                "analysis": "gwas_logistic",
                "kind": "logistic_null",
                "phenotype": "case",
                "binary": True,
                "state": "!!!",
            },
            422,
            "",
        ),
    ]
    for body, want, text in cases:
        r = httpx.post(f"{url}/tasks", json=body, headers=h)
        if want == 200:  # accepted; the unknown column fails in the task, with a suggestion
            assert r.status_code == 202
            status = submit_and_wait(url, st.researcher, body)
            assert status["status"] == "failed" and "did you mean 'age'" in status["error"]
            continue
        assert r.status_code == want, (body, r.status_code, r.text)
        assert text in r.text
        assert "Traceback" not in r.text
    # a state whose shapes do not fit this station's design is refused at submission, saying why
    r = httpx.post(f"{url}/tasks", json=null_round(["age"], np.zeros(5)), headers=h)
    assert r.status_code == 422 and "'beta' is float64 (5,)" in r.text
    r = httpx.post(f"{url}/tasks", content=b"x" * 100, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = httpx.get(f"{url}/tasks/{FAKE_ID}/result", headers=h)
    assert r.status_code == 404


def test_results__only_their_owner_sees_them(milano: tuple[StationSetup, str]) -> None:
    st, url = milano
    from better.station_api.auth import new_token
    from better.station_api.config import read_config, write_config

    status = submit_and_wait(url, st.researcher, counts_body())
    token, record = new_token("eve", "researcher")
    config = read_config(st.path)
    write_config(st.path, config.model_copy(update={"tokens": [*config.tokens, record]}))
    # a token added while the server runs works at once; eve cannot see ana's task, nor its result
    assert httpx.get(f"{url}/tasks", headers=auth(token)).json() == []
    assert httpx.get(f"{url}/tasks/{status['id']}", headers=auth(token)).status_code == 404
    assert httpx.get(f"{url}/tasks/{status['id']}/result", headers=auth(token)).status_code == 404
    assert httpx.get(f"{url}/tasks/{status['id']}/result", headers=auth(st.researcher)).status_code == 200


def test_policy_refusals_and_admin_policy_route(milano: tuple[StationSetup, str]) -> None:
    st, url = milano
    admin, res = auth(st.admin), auth(st.researcher)
    before = httpx.get(f"{url}/admin/policy", headers=admin).json()
    try:
        new = {**before, "allowed_analyses": ["count"], "max_variants_per_task": 10}
        assert httpx.put(f"{url}/admin/policy", json=new, headers=admin).status_code == 200
        r = httpx.post(f"{url}/tasks", json=counts_body(), headers=res)
        assert r.status_code == 403 and r.json()["detail"]["rule"] == "allowed_analyses"
        new["allowed_analyses"] = ["freq"]
        httpx.put(f"{url}/admin/policy", json=new, headers=admin)
        r = httpx.post(f"{url}/tasks", json=counts_body(), headers=res)
        assert r.status_code == 403 and r.json()["detail"]["rule"] == "max_variants_per_task"
        assert "split it into smaller regions" in r.json()["detail"]["message"]
        bad = httpx.put(f"{url}/admin/policy", json={**new, "min_cell_count": 0}, headers=admin)
        assert bad.status_code == 422
    finally:
        assert httpx.put(f"{url}/admin/policy", json=before, headers=admin).status_code == 200


def test_sample_count__small_counts_are_withheld(milano: tuple[StationSetup, str]) -> None:
    st, url = milano
    body = {"dataset": "cohort", "analysis": "count", "kind": "sample_count"}
    big = submit_and_wait(url, st.researcher, body)
    got = decode_arrays(httpx.get(f"{url}/tasks/{big['id']}/result", headers=auth(st.researcher)).content)
    assert int(got["n"]) > 100 and not bool(got["withheld"])
    ages = Store.open(st.path).dataset("cohort").phenotypes().column("age").to_numpy(zero_copy_only=False)
    oldest = np.sort(ages[np.isfinite(ages)])[::-1]
    cut = float(oldest[2] + oldest[3]) / 2  # exactly three people are older
    tiny = {**body, "where": [{"column": "age", "op": ">", "value": cut}]}
    status = submit_and_wait(url, st.researcher, tiny)
    got = decode_arrays(httpx.get(f"{url}/tasks/{status['id']}/result", headers=auth(st.researcher)).content)
    assert bool(got["withheld"]) and int(got["n"]) == 0
    assert status["released"] == {"kind": "sample_count", "withheld": True, "bytes": status["released"]["bytes"]}


def test_small_models__too_few_samples_per_parameter_or_cases_are_refused(small_cohort: Path, tmp_path: Path) -> None:
    st = make_station(tmp_path, "barcelona", small_cohort, Policy(min_cases=1000, differencing_guard=False))
    with serve(st.path) as url:
        h = auth(st.researcher)
        big = {"dataset": "cohort", "analysis": "gwas_linear", "kind": "linear", "phenotype": "ldl"}
        r = httpx.post(
            f"{url}/tasks", json={**big, "covariates": ["age", "sex", "pc1", "pc2", "pc3", "pc4", "bmi"]}, headers=h
        )
        assert r.status_code == 403 and r.json()["detail"]["rule"] == "min_samples_per_parameter"
        r = httpx.post(f"{url}/tasks", json=null_round(["age"], np.zeros(2)), headers=h)
        assert r.status_code == 403 and r.json()["detail"]["rule"] == "min_cases"


def test_rate_limit__429_with_retry_after(small_cohort: Path, tmp_path: Path) -> None:
    st = make_station(tmp_path, "barcelona", small_cohort, policy=Policy(rate_limit_per_minute=3))
    with serve(st.path) as url:
        codes = [
            httpx.post(f"{url}/tasks", json=counts_body(), headers=auth(st.researcher)).status_code for _ in range(5)
        ]
        assert codes[:3] == [202] * 3 and codes[3:] == [429, 429]
        r = httpx.post(f"{url}/tasks", json=counts_body(), headers=auth(st.researcher))
        assert int(r.headers["Retry-After"]) > 0


# -- manual approval, cancellation, expiry, audit ---------------------------------------------------------
def test_manual_approval_flow__cli_approve_and_admin_reject(small_cohort: Path, tmp_path: Path) -> None:
    st = make_station(
        tmp_path, "nijmegen", small_cohort, policy=Policy(approval="manual"), server=Server(result_ttl_seconds=2)
    )
    with serve(st.path) as url:
        client = StationClient("nijmegen", url, st.researcher)
        r = httpx.post(f"{url}/tasks", json=counts_body(label="q1"), headers=auth(st.researcher))
        first = r.json()["id"]
        assert r.json()["status"] == "pending_approval"
        time.sleep(0.8)
        assert httpx.get(f"{url}/tasks/{first}", headers=auth(st.researcher)).json()["status"] == "pending_approval"
        listing = better("station", "approve", "--station", str(st.path))
        assert listing.returncode == 0 and listing.stdout.split("\t")[0] == first
        done = better("station", "approve", "--station", str(st.path), first)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 30
        while (s := httpx.get(f"{url}/tasks/{first}", headers=auth(st.researcher)).json())["status"] != "done":
            assert time.monotonic() < deadline, s
            time.sleep(0.1)
        # rejected through the admin route: the researcher sees the reason
        second = httpx.post(f"{url}/tasks", json=counts_body(), headers=auth(st.researcher)).json()["id"]
        pending = httpx.get(f"{url}/admin/approvals", headers=auth(st.admin)).json()
        assert [p["task"] for p in pending] == [second]
        d = httpx.post(
            f"{url}/admin/approvals/{second}",
            json={"decision": "reject", "reason": "no consent"},
            headers=auth(st.admin),
        )
        assert d.status_code == 200
        s = httpx.get(f"{url}/tasks/{second}", headers=auth(st.researcher)).json()
        assert s["status"] == "rejected" and "no consent" in s["error"]
        # a pending task can be cancelled
        third = httpx.post(f"{url}/tasks", json=counts_body(), headers=auth(st.researcher)).json()["id"]
        s = httpx.delete(f"{url}/tasks/{third}", headers=auth(st.researcher)).json()
        assert s["status"] == "cancelled"
        assert better("station", "approve", "--station", str(st.path), third).returncode == 1
        # results expire after result_ttl_seconds
        time.sleep(3.0)
        assert httpx.get(f"{url}/tasks/{first}", headers=auth(st.researcher)).json()["status"] == "expired"
        assert httpx.get(f"{url}/tasks/{first}/result", headers=auth(st.researcher)).status_code == 409
        with pytest.raises(StationError, match=r"station nijmegen: counts task failed with HTTP 404: no dataset .nope"):
            import asyncio

            async def one() -> None:
                async with httpx.AsyncClient() as c:
                    await client.run(c, to_request({"kind": "counts", "groups": 1}, Model("nope", "freq"), 0, 1))

            asyncio.run(one())
    verify = better("station", "audit", "--station", str(st.path), "--verify")
    assert verify.returncode == 0, verify.stderr
    actions = [r["action"] for r in AuditLog(Store.open(st.path)).rows(0, 1000)]
    for a in (
        "server.start",
        "task.submitted",
        "task.approved",
        "task.rejected",
        "task.released",
        "http",
        "server.stop",
    ):
        assert a in actions, a


def _log_of_six(path: Path) -> tuple[Store, AuditLog]:
    store = Store.create(path)
    log = AuditLog(store)
    for i in range(6):
        log.append("ana", "task.released", {"task": i, "withheld": 0})
    assert log.verify().ok
    return store, log


def _edit_log(store: Store, edit: Any) -> None:
    path = store.path / "audit.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in edit(lines)))


def test_audit_verify__catches_an_edited_row_with_the_cli(tmp_path: Path) -> None:
    store, _ = _log_of_six(tmp_path / "st")
    ok = better("station", "audit", "--station", str(store.path), "--verify")
    assert ok.returncode == 0 and "intact" in ok.stderr
    _edit_log(
        store,
        lambda lines: [
            line.replace('withheld\\":0', 'withheld\\":9') if i == 2 else line for i, line in enumerate(lines)
        ],
    )
    bad = better("station", "audit", "--station", str(store.path), "--verify")
    assert bad.returncode == 1 and "row 3 was edited" in bad.stderr, bad.stderr


def test_audit_verify__catches_deleted_rows_in_the_middle_and_at_the_end(tmp_path: Path) -> None:
    store, log = _log_of_six(tmp_path / "a")
    _edit_log(store, lambda lines: lines[:3] + lines[4:])
    v = log.verify()
    assert not v.ok and v.problem == "row 4 is missing (next is 5)"
    store, log = _log_of_six(tmp_path / "b")
    _edit_log(store, lambda lines: lines[:4])
    v = log.verify()
    assert not v.ok and v.problem == "rows 5..6 were deleted"
    with store.catalog() as con:  # the catalog's SQL view reads the same rows
        log.create_view()
        assert con.execute("SELECT count(*) FROM audit").fetchone() == (4,)
