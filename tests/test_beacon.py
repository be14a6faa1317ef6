"""The station's GA4GH Beacon v2 (``/beacon``) and federated ``BEACON`` queries.

Every response is validated against the vendored Beacon v2 schemas (``tests/beacon_schema.py``); counts
are checked against DuckDB over the store (and, with filters, against the genotypes decoded here); the
policy, the access levels and bad requests are checked through the HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from better.genomics.allele_query import AlleleQuery, bases_match
from better.genomics.packing import unpack_genotypes
from better.genomics.store import Store
from better.query.federation import Federation
from better.station_api.app import create_app
from better.station_api.auth import new_token
from better.station_api.config import Policy, read_config, write_config
from tests.beacon_schema import validate
from tests.servers import StationSetup, auth, better, make_station, serve

R = "framework/json/responses/"
BOOLEAN, COUNT, ERROR = R + "beaconBooleanResponse.json", R + "beaconCountResponse.json", R + "beaconErrorResponse.json"


class AppClient:
    """The station's application answering in this process (its lifespan started), over
    ``httpx.ASGITransport`` on an event loop of its own: the routes, middleware and tasks as served."""

    def __init__(self, client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client, self._loop = client, loop

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.get(path, **kwargs))

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.post(path, **kwargs))


@contextmanager
def TestClient(app: Any) -> Iterator[AppClient]:  # noqa: N802 (read as the class it stands in for)
    loop = asyncio.new_event_loop()
    app.state.station.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    try:
        yield AppClient(client, loop)
    finally:
        loop.run_until_complete(client.aclose())
        app.state.station.stop()
        loop.close()


def _station(root: Path, cohort: Path, label: str = "one", public: bool = True, **policy: Any) -> StationSetup:
    """Milano's part of the cohort as a station of its own (in ``root/label``), with a beacon token."""
    st = make_station(root / label, "milano", cohort, policy=Policy(**policy))
    config = read_config(st.path)
    token, record = new_token("network", "beacon")
    config.beacon.public = public
    write_config(st.path, config.model_copy(update={"tokens": [*config.tokens, record]}))
    (st.path / "beacon.token").write_text(token)
    return st


def _beacon_token(st: StationSetup) -> str:
    return (st.path / "beacon.token").read_text()


@pytest.fixture
def station(small_cohort: Path, tmp_path: Path) -> Iterator[tuple[StationSetup, AppClient]]:
    """A station with its own audit (each test's answers stand alone), served in-process."""
    st = _station(tmp_path, small_cohort)
    with TestClient(create_app(st.path)) as client:
        yield st, client


def _sql(st: StationSetup, query: str, params: list[Any] | None = None) -> Any:
    with duckdb.connect(str(st.path / "catalog.duckdb"), read_only=True) as con:
        return con.execute(query, params or []).fetchall()


# -- the framework ------------------------------------------------------------------------------------------
def test_framework_documents__validate_and_the_station_info_stays(
    station: tuple[StationSetup, AppClient],
) -> None:
    st, client = station
    for path, schema in (
        ("/beacon", R + "beaconInfoResponse.json"),
        ("/beacon/info", R + "beaconInfoResponse.json"),
        ("/beacon/service-info", R + "ga4gh-service-info-1-0-0-schema.json"),
        ("/beacon/configuration", R + "beaconConfigurationResponse.json"),
        ("/beacon/map", R + "beaconMapResponse.json"),
        ("/beacon/entry_types", R + "beaconEntryTypesResponse.json"),
        ("/beacon/filtering_terms", R + "beaconFilteringTermsResponse.json"),
    ):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        validate(r.json(), schema)
    config = client.get("/beacon/configuration").json()["response"]
    assert set(config["entryTypes"]) == {"genomicVariant", "individual", "dataset"}
    assert config["securityAttributes"]["securityLevels"] == ["PUBLIC", "REGISTERED", "CONTROLLED"]
    terms = {t["id"] for t in client.get("/beacon/filtering_terms").json()["response"]["filteringTerms"]}
    assert {"age", "sex", "ldl", "smoking"} <= terms
    datasets = client.get("/beacon/datasets", headers=auth(_beacon_token(st)))
    validate(datasets.json(), R + "beaconCollectionsResponse.json")
    assert [d["id"] for d in datasets.json()["response"]["collections"]] == ["cohort"]
    # the OpenAPI document lists every Beacon route, each operation once (a duplicate id is a warning: an error)
    paths = create_app(st.path).openapi()["paths"]
    assert {p for p in paths if p.startswith("/beacon")} == {
        "/beacon",
        *(f"/beacon/{p}" for p in ("info", "service-info", "configuration", "map", "entry_types")),
        *(f"/beacon/{p}" for p in ("filtering_terms", "g_variants", "individuals", "datasets")),
    }
    # the station's own /info is as it was: no Beacon fields
    info = client.get("/info").json()
    assert set(info) == {"name", "software", "wire_version", "public_key", "agreement_key", "analyses"}


# -- g_variants: counts equal the store ---------------------------------------------------------------------
def _carried(st: StationSetup, query: AlleleQuery, where: str | None = None) -> int:
    """The reference count: DuckDB selects the variants (and, with ``where``, the samples), genotypes are
    decoded here, and a variant counts when a selected sample carries its ALT allele."""
    rows = _sql(st, "SELECT pos, ref, alt, n_het + n_hom_alt FROM variants_cohort WHERE chrom = '22' ORDER BY pos")
    pos, ref, alt = (np.array([r[i] for r in rows]) for i in range(3))
    keep = query.matches(pos, ref, alt)
    if where is None:
        return int((keep & (np.array([r[3] for r in rows]) > 0)).sum())
    chosen = {r[0] for r in _sql(st, f"SELECT sample_index FROM phenotypes_cohort WHERE {where}")}
    ds = Store.open(st.path).dataset("cohort")
    mask = np.zeros(ds.n_samples, dtype=bool)
    mask[sorted(chosen)] = True
    carried = []
    for block in ds.blocks():
        g = unpack_genotypes(np.asarray(block.packed), ds.n_samples)[:, mask]
        carried.append(((g == 1) | (g == 2)).any(axis=1))
    return int((keep & np.concatenate(carried)).sum())


def test_g_variants__counts_equal_the_store_get_and_post(station: tuple[StationSetup, AppClient]) -> None:
    st, client = station
    first = _sql(st, "SELECT pos, ref, alt FROM variants_cohort WHERE n_het + n_hom_alt > 10 ORDER BY pos LIMIT 1")
    pos, ref, alt = first[0]
    lo, hi = pos - 1, pos + 40_000
    cases: list[tuple[dict[str, Any], AlleleQuery]] = [
        ({"start": [lo], "alternateBases": alt}, AlleleQuery("22", (lo,), alternate_bases=alt)),
        ({"start": [lo], "referenceBases": ref, "alternateBases": "N"}, AlleleQuery("22", (lo,), (), ref, "N")),
        ({"start": [lo], "end": [hi]}, AlleleQuery("22", (lo,), (hi,))),
        ({"start": [lo], "end": [hi], "variantType": "SNP"}, AlleleQuery("22", (lo,), (hi,), variant_type="SNP")),
        ({"start": [lo, hi], "end": [lo + 1, hi + 1]}, AlleleQuery("22", (lo, hi), (lo + 1, hi + 1))),
        ({"start": [lo], "end": [hi], "variantMinLength": 2}, AlleleQuery("22", (lo,), (hi,), min_length=2)),
    ]
    token = auth(_beacon_token(st))
    for params, query in cases:
        want = _carried(st, query)
        body = {"meta": {"apiVersion": "v2.0"}, "query": {"requestParameters": {"referenceName": "chr22", **params}}}
        body["query"]["requestedGranularity"] = "count"
        post = client.post("/beacon/g_variants", json=body, headers=token)
        get_params = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in params.items()}
        get = client.get(
            "/beacon/g_variants",
            params={"referenceName": "22", "requestedGranularity": "count", **get_params},
            headers=token,
        )
        for r in (post, get):
            assert r.status_code == 200, (params, r.text)
            validate(r.json(), COUNT)
            assert r.json()["meta"]["returnedGranularity"] == "count"
            assert r.json()["responseSummary"] == {"exists": want > 0, "numTotalResults": want}, params
    assert _carried(st, cases[2][1]) > 10  # the range holds variants: the comparison was not of zeros
    # with filters: the variants the selected individuals carry
    for filters, where in ((["sex=1"], "sex = 1"), (["age>50", "smoking=never"], "age > 50 AND smoking = 'never'")):
        r = client.get(
            "/beacon/g_variants",
            params={"referenceName": "22", "start": lo, "end": hi, "filters": ",".join(filters)},
            headers=token | {"accept": "application/json"},
        )
        assert r.status_code == 200, r.text
        validate(r.json(), BOOLEAN)
        assert r.json()["responseSummary"]["exists"] == (_carried(st, cases[2][1], where) > 0)
        r = client.post(
            "/beacon/g_variants",
            json={
                "meta": {},
                "query": {
                    "requestParameters": {"referenceName": "22", "start": [lo], "end": [hi]},
                    "filters": [{"id": f.split("=")[0].split(">")[0], **_op(f)} for f in filters],
                    "requestedGranularity": "count",
                },
            },
            headers=token,
        )
        validate(r.json(), COUNT)
        assert r.json()["responseSummary"]["numTotalResults"] == _carried(st, cases[2][1], where)
    # another assembly matches nothing when the station names its own
    config = read_config(st.path)
    config.beacon.assembly = "GRCh38"
    write_config(st.path, config)
    for assembly, want in (("hg19", 0), ("hg38", _carried(st, cases[2][1]))):
        r = client.get(
            "/beacon/g_variants",
            params={
                "referenceName": "22",
                "start": lo,
                "end": hi,
                "assemblyId": assembly,
                "requestedGranularity": "count",
            },
            headers=token,
        )
        assert r.json()["responseSummary"]["numTotalResults"] == want


def _op(text: str) -> dict[str, str]:
    op = ">" if ">" in text else "="
    return {"operator": op, "value": text.split(op, 1)[1]}


# -- individuals and the policy -----------------------------------------------------------------------------
def test_individuals__counts_equal_the_store_and_small_counts_are_withheld(
    station: tuple[StationSetup, AppClient],
) -> None:
    st, client = station
    token = auth(st.researcher)

    def ask(*filters: dict[str, Any]) -> dict[str, Any]:
        body = {"meta": {}, "query": {"filters": list(filters), "requestedGranularity": "count"}}
        r = client.post("/beacon/individuals", json=body, headers=token)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        validate(doc, COUNT if doc["meta"]["returnedGranularity"] == "count" else BOOLEAN)
        return doc

    everyone = ask()
    assert everyone["responseSummary"]["numTotalResults"] == _sql(st, "SELECT count(*) FROM samples_cohort")[0][0]
    men = ask({"id": "sex", "operator": "=", "value": "1"})
    assert (
        men["responseSummary"]["numTotalResults"]
        == _sql(st, "SELECT count(*) FROM phenotypes_cohort WHERE sex = 1")[0][0]
    )
    never = ask({"id": "smoking", "operator": "=", "value": "never"})
    want = _sql(st, "SELECT count(*) FROM phenotypes_cohort WHERE smoking = 'never'")[0][0]
    assert never["responseSummary"]["numTotalResults"] == want > 5
    nobody = ask({"id": "age", "operator": ">", "value": "500"})
    assert nobody["responseSummary"] == {"exists": False, "numTotalResults": 0}
    # three oldest people: the count (1..4) is withheld, and the answer says only that there are some
    ages = [r[0] for r in _sql(st, "SELECT age FROM phenotypes_cohort WHERE age IS NOT NULL ORDER BY age DESC")]
    cut = (ages[2] + ages[3]) / 2
    assert ages[2] > cut > ages[3]
    few = ask({"id": "age", "operator": ">", "value": str(cut)})
    assert few["meta"]["returnedGranularity"] == "boolean" and few["responseSummary"] == {"exists": True}
    assert "numTotalResults" not in few["responseSummary"] and "withheld" in few["info"]
    assert str(3) not in json.dumps(few["info"]["datasets"])
    # a difference of two answers that would single out the youngest person: the second is withheld
    youngest = min(ages)
    ask({"id": "age", "operator": ">=", "value": str(youngest)})
    second = ask({"id": "age", "operator": ">", "value": str(youngest)})
    assert "numTotalResults" not in second["responseSummary"]
    # a variant answer over everyone, then over everyone but one person: the second is refused
    lo, hi = 16_000_000, 16_100_000
    over_everyone = client.get(
        "/beacon/g_variants", params={"referenceName": "22", "start": lo, "end": hi}, headers=token
    )
    assert over_everyone.status_code == 200
    one = _sql(st, "SELECT pc1 FROM phenotypes_cohort WHERE pc1 IS NOT NULL LIMIT 1")[0][0]
    but_one = client.get(
        "/beacon/g_variants",
        params={"referenceName": "22", "start": lo, "end": hi, "filters": f"pc1!{one!r}"},
        headers=token,
    )
    assert but_one.status_code == 403 and "query_audit" in but_one.json()["error"]["errorMessage"], but_one.text
    validate(but_one.json(), ERROR)
    # every answer is a task in the audit log, as the caller
    log = [json.loads(line) for line in (st.path / "audit.jsonl").read_text().splitlines()]
    labels = [e for e in log if e.get("action") == "task.submitted" and "beacon" in str(e)]
    assert len(labels) >= 6 and all(e.get("actor", e.get("user")) == "ana" for e in labels)


def test_policy_refusals__are_beacon_errors(small_cohort: Path, tmp_path: Path) -> None:
    no_freq = _station(tmp_path, small_cohort, "a", allowed_analyses=["count"])
    manual = _station(tmp_path, small_cohort, "b", approval="manual")
    capped = _station(tmp_path, small_cohort, "c", max_variants_per_task=10)
    for station_, path, params, status, words in (
        (no_freq, "/beacon/g_variants", {"referenceName": "22", "start": 0, "end": 10**9}, 403, "allowed"),
        (manual, "/beacon/individuals", {}, 403, "by hand"),
        (capped, "/beacon/g_variants", {"referenceName": "22", "start": 0, "end": 10**9}, 403, "max_variants"),
    ):
        with TestClient(create_app(station_.path)) as client:
            r = client.get(path, params=params, headers=auth(station_.researcher))
            assert r.status_code == status, r.text
            validate(r.json(), ERROR)
            assert words in r.json()["error"]["errorMessage"]
            assert not any(ch.isdigit() for ch in r.json()["error"]["errorMessage"])  # no count of anything
    # over the rate limit: 429, with Retry-After, as a Beacon error
    limited = _station(tmp_path, small_cohort, "d", rate_limit_per_minute=1)
    with TestClient(create_app(limited.path)) as client:
        assert client.get("/beacon/individuals", headers=auth(limited.researcher)).status_code == 200
        r = client.get("/beacon/individuals", headers=auth(limited.researcher))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        validate(r.json(), ERROR)


# -- who may ask what ---------------------------------------------------------------------------------------
def test_access_levels__public_registered_controlled(small_cohort: Path, tmp_path: Path) -> None:
    public = _station(tmp_path, small_cohort, "open")
    closed = _station(tmp_path, small_cohort, "shut", public=False)
    rare = _sql(public, "SELECT pos, alt FROM variants_cohort WHERE n_het + n_hom_alt BETWEEN 1 AND 2 LIMIT 1")[0]
    common = _sql(public, "SELECT pos, alt FROM variants_cohort WHERE n_het + 2 * n_hom_alt > 20 LIMIT 1")[0]
    rare_ref = _sql(public, "SELECT pos, alt FROM variants_cohort WHERE 2 * n_hom_ref + n_het BETWEEN 1 AND 2 LIMIT 1")

    def variant(pos: int, alt: str) -> dict[str, Any]:
        return {"referenceName": "22", "start": pos - 1, "alternateBases": alt, "requestedGranularity": "count"}

    with TestClient(create_app(public.path)) as client:
        anonymous = client.get("/beacon/g_variants", params=variant(*common))
        assert anonymous.status_code == 200, anonymous.text
        validate(anonymous.json(), BOOLEAN)
        assert anonymous.json()["meta"]["returnedGranularity"] == "boolean"
        assert anonymous.json()["responseSummary"] == {"exists": True}
        # a rare allele: yes with a token (as FREQ shows it, withheld), no to anyone; a rare REF: yes to anyone
        assert client.get("/beacon/g_variants", params=variant(*rare)).json()["responseSummary"]["exists"] is False
        if rare_ref:
            asked = variant(*rare_ref[0])
            assert client.get("/beacon/g_variants", params=asked).json()["responseSummary"]["exists"] is True
        for token, level in ((_beacon_token(public), "REGISTERED"), (public.researcher, "CONTROLLED")):
            r = client.get("/beacon/g_variants", params=variant(*rare), headers=auth(token))
            assert r.json()["responseSummary"] == {"exists": True, "numTotalResults": 1}
            assert r.json()["info"]["accessLevel"] == level
        # filters, individuals and datasets need a token; a bad token is refused; record is never returned
        for path, params in (
            ("/beacon/g_variants", {**variant(*common), "filters": "sex=1"}),
            ("/beacon/individuals", {}),
            ("/beacon/datasets", {}),
        ):
            r = client.get(path, params=params)
            assert r.status_code == 401 and "WWW-Authenticate" in r.headers, (path, r.text)
            validate(r.json(), ERROR)
        bad = client.get("/beacon/individuals", headers=auth("btr_aaaaaaaaaaaa_" + "A" * 43))
        assert bad.status_code == 401
        record = client.get(
            "/beacon/individuals", params={"requestedGranularity": "record"}, headers=auth(_beacon_token(public))
        )
        assert record.json()["meta"]["returnedGranularity"] == "count"
        # a beacon token is for the Beacon only
        assert client.get("/station", headers=auth(_beacon_token(public))).status_code == 403
    with TestClient(create_app(closed.path)) as client:
        r = client.get("/beacon/g_variants", params=variant(*common))
        assert r.status_code == 401
        validate(r.json(), ERROR)
        assert (
            "PUBLIC"
            not in client.get("/beacon/configuration").json()["response"]["securityAttributes"]["securityLevels"]
        )


BAD_GETS: list[dict[str, Any]] = [
    {"referenceName": "22", "start": "x", "alternateBases": "A"},
    {"referenceName": "22", "start": "100"},
    {"referenceName": "22", "start": "100", "end": "50"},
    {"referenceName": "22", "start": "100,200", "end": "300"},
    {"referenceName": "22", "start": "200,100", "end": "300,400"},
    {"referenceName": "22", "start": "-5", "alternateBases": "A"},
    {"referenceName": "22", "start": "1", "alternateBases": "XYZ"},
    {"referenceName": "22", "start": "1", "alternateBase": "A"},
    {"geneId": "BRCA1"},
    {"start": "1", "alternateBases": "A"},
    {"referenceName": "22", "start": "1", "end": "2", "filters": "age~5"},
    {"referenceName": "22", "start": "1", "end": "2", "filters": "agee>5"},
    {"referenceName": "22", "start": "1", "end": "2", "filters": "age>old"},
    {"referenceName": "22", "start": "1", "end": "2", "filters": "smoking<never"},
    {"referenceName": "22", "start": "1", "end": "2", "filters": "smoking=nev%"},
    {"referenceName": "22", "start": "1", "end": "2", "requestedGranularity": "everything"},
    {"referenceName": "22", "start": "1", "end": "2", "datasetIds": "nosuch"},
    {"referenceName": "22", "start": "1", "end": "2", "limit": "-1"},
    {"referenceName": "22" * 50, "start": "1", "end": "2"},
]
BAD_BODIES: list[bytes] = [
    b"{not json",
    b"[1, 2]",
    b'{"meta": {}, "query": []}',
    b'{"meta": {}, "query": {"requestParameters": {"referenceName": "22", "start": [1, 2, 3], "end": [4]}}}',
    b'{"meta": {}, "query": {"requestParameters": {"referenceName": 22, "start": [1], "end": [4]}}}',
    b'{"meta": {}, "query": {"requestParameters": {"referenceName": "22", "start": [true], "end": [4]}}}',
    b'{"meta": {}, "query": {"filters": [{"id": "NCIT:C16576"}]}}',
    b'{"meta": {}, "query": {"filters": [{"id": "age", "operator": "~", "value": "1"}]}}',
    b'{"meta": {}, "query": {"filters": "age>1"}}',
    b'{"meta": {}, "query": {"pagination": 5}}',
    b'{"meta": {}, "query": {"requestedGranularity": 3}}',
    b'{"meta": {}, "extra": 1}',
    b"[" * 10_000 + b"]" * 10_000,
    b'{"meta": {}, "query": {"requestParameters": {"referenceName": "22", "start": [1], "end": [2]}}}' + b" " * 70_000,
]


def test_bad_requests__beacon_errors_naming_the_problem(station: tuple[StationSetup, AppClient]) -> None:
    st, client = station
    token = auth(st.researcher)
    for params in BAD_GETS:
        r = client.get("/beacon/g_variants", params=params, headers=token)
        assert 400 <= r.status_code < 500, (params, r.status_code, r.text)
        validate(r.json(), ERROR)
        assert r.json()["error"]["errorCode"] == r.status_code and len(r.json()["error"]["errorMessage"]) > 10
    for body in BAD_BODIES:
        for path in ("/beacon/g_variants", "/beacon/individuals"):
            r = client.post(path, content=body, headers=token | {"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (body[:80], path, r.status_code, r.text)
            validate(r.json(), ERROR)
    unknown = client.get("/beacon/g_variants", params={"referenceName": "22", "start": 1, "end": 9, "datasetIds": "x"})
    assert unknown.status_code == 404 and "cohort" not in unknown.text  # the names are for /beacon/datasets
    # what would break a server: a 5000-digit number, a lone surrogate echoed back
    for body in (
        b'{"meta": {}, "query": {"pagination": {"skip": ' + b"9" * 5000 + b"}}}",
        b'{"meta": {}, "query": {"requestParameters": {"referenceName": "22\\ud800", "start": [1], "end": [4]}}}',
        b'{"meta": {}, "query": {"filters": [{"id": "smoking", "operator": "=", "value": "\\ud800"}]}}',
    ):
        r = client.post("/beacon/g_variants", content=body, headers=token | {"content-type": "application/json"})
        assert r.status_code == 400, (body[:80], r.text)
        validate(r.json(), ERROR)


# -- the query's matching, against a slow reference ----------------------------------------------------------
def _reference_match(q: AlleleQuery, pos: int, ref: str, alt: str) -> bool:
    """One variant against one query, written out case by case (the vectorised matcher's twin)."""
    begin, stop = pos - 1, pos - 1 + len(ref)
    if len(q.start) == 1 and not q.end:
        where = begin == q.start[0]
    elif len(q.start) == 1:
        where = begin < q.end[0] and stop > q.start[0]
    else:
        where = q.start[0] <= begin < q.start[1] and q.end[0] <= stop < q.end[1]
    if not where:
        return False
    if q.reference_bases is not None and not bases_match(q.reference_bases, ref):
        return False
    if q.alternate_bases is not None and not bases_match(q.alternate_bases, alt):
        return False
    kind = "SNP" if len(ref) == len(alt) == 1 else "MNP" if len(ref) == len(alt) else "INDEL"
    if len(ref) != len(alt):
        kind = "INS" if len(ref) == 1 else "DEL" if len(alt) == 1 else "INDEL"
    if q.variant_type is not None:
        wanted = {"SNV": {"SNP"}, "SNP": {"SNP"}, "INDEL": {"INS", "DEL", "INDEL"}}.get(
            q.variant_type, {q.variant_type}
        )
        if kind not in wanted:
            return False
    length = abs(len(alt) - len(ref)) if len(ref) != len(alt) else len(ref)
    if q.min_length is not None and length < q.min_length:
        return False
    return q.max_length is None or length <= q.max_length


_bases = st.text(alphabet="ACGT", min_size=1, max_size=4)


@st.composite
def _queries(draw: st.DrawFn) -> AlleleQuery:
    form = draw(st.sampled_from(["sequence", "range", "bracket"]))
    a = draw(st.integers(0, 30))
    if form == "sequence":
        start, end = (a,), ()
    elif form == "range":
        start, end = (a,), (a + draw(st.integers(1, 10)),)
    else:
        b = draw(st.integers(0, 30))
        start, end = (a, a + draw(st.integers(1, 6))), (b, b + draw(st.integers(1, 6)))
    pattern = st.none() | _bases.map(lambda s: s.replace("C", "N")) | _bases
    return AlleleQuery(
        "22",
        start,
        end,
        reference_bases=draw(pattern),
        alternate_bases=draw(pattern) if form != "sequence" else draw(_bases | _bases.map(lambda s: "N" * len(s))),
        variant_type=draw(st.none() | st.sampled_from(["SNP", "SNV", "MNP", "INDEL", "INS", "DEL"])),
        min_length=draw(st.none() | st.integers(0, 3)),
        max_length=draw(st.none() | st.integers(1, 4)),
    )


@given(_queries(), st.lists(st.tuples(st.integers(1, 40), _bases, _bases), max_size=30))
def test_allele_query__matches_equal_the_case_by_case_reference(
    query: AlleleQuery, variants: list[tuple[int, str, str]]
) -> None:
    pos = np.array([v[0] for v in variants], dtype=np.int64)
    ref = np.array([v[1] for v in variants], dtype=object)
    alt = np.array([v[2] for v in variants], dtype=object)
    got = query.matches(pos, ref, alt)
    assert got.tolist() == [_reference_match(query, *v) for v in variants]


# -- federated BEACON ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def federation(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("beaconfed")
    with ExitStack() as stack:
        entries = []
        for name in ("milano", "nijmegen", "barcelona"):
            st = make_station(root, name, small_cohort)
            url = stack.enter_context(serve(st.path))
            entries.append(f'[[station]]\nname = "{name}"\nurl = "{url}"\ntoken = "{st.researcher}"\n')
        path = root / "federation.toml"
        path.write_text("\n".join(entries))
        yield path


def _pooled_carriers(cohort: Path, where: pl.Expr | None) -> dict[tuple[int, str, str], int]:
    """ALT allele count per variant over the pooled cohort's selected samples (cyvcf2, no BETTER code)."""
    from cyvcf2 import VCF

    vcf = VCF(str(cohort / "pooled.vcf.gz"))
    pheno = pl.read_csv(cohort / "pooled.pheno.tsv", separator="\t")
    chosen = set(pheno.filter(where)["#IID"].to_list()) if where is not None else set(vcf.samples)
    mask = np.array([s in chosen for s in vcf.samples])
    out = {}
    for v in vcf:
        gt = v.gt_types[mask]  # 0 hom-ref, 1 het, 2 unknown, 3 hom-alt
        out[(v.POS, v.REF, v.ALT[0])] = int((gt == 1).sum() + 2 * (gt == 3).sum())
    return out


def test_beacon_query__pooled_exists_under_secure_aggregation(federation: Path, small_cohort: Path) -> None:
    fed = Federation.from_file(federation)
    carriers = _pooled_carriers(small_cohort, pl.col("sex") == 1)
    common = next(k for k, n in carriers.items() if n >= 20)
    rare = next(k for k, n in carriers.items() if 1 <= n <= 2)
    absent = next(k for k, n in carriers.items() if n == 0)
    for (pos, ref, alt), exists, withheld in ((common, True, False), (rare, True, True), (absent, False, False)):
        table = fed.query(f"BEACON 22:{pos} {ref}>{alt} WHERE sex = 1")
        assert table.height == 1 and table["EXISTS"][0] is exists and table["WITHHELD"][0] is withheld
        if not withheld:
            assert table["ALT_FREQS"][0] == pytest.approx(carriers[(pos, ref, alt)] / table["OBS_CT"][0])
    counted = [m["manifest"] for m in fed.manifests if m["manifest"]["kind"] == "counts"]
    assert counted and all(m["secure"] is not None for m in counted)  # masked: the coordinator saw only sums
    # an allele no station holds: one row, EXISTS false
    pos, ref, _ = common
    other = next(b for b in "ACGT" if b not in (ref, common[2]))
    assert fed.query(f"BEACON 22:{pos} {ref}>{other}").to_dicts()[0]["EXISTS"] is False
    # a range, over the command line: every variant of the range, EXISTS as the pooled carriers say
    lo, hi = pos, pos + 20_000
    done = better("query", "--federation", str(federation), "--format", "tsv", f"BEACON 22:{lo}-{hi} WHERE sex = 1")
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert lines[0][:6] == ["#CHROM", "POS", "ID", "REF", "ALT", "EXISTS"]
    want = {k: n > 0 for k, n in carriers.items() if lo <= k[0] <= hi}
    assert {(int(r[1]), r[3], r[4]): r[5] == "TRUE" for r in lines[1:]} == want
    # milano's audit is now pooled with its group: it releases nothing in the clear, so its Beacon refuses and
    # says what to do instead (a station serving a Beacon network audits locally: the tests above)
    stations = tomllib.loads(federation.read_text())["station"]
    params = {"referenceName": "22", "start": lo - 1, "end": hi, "requestedGranularity": "count"}
    refused = httpx.get(stations[0]["url"] + "/beacon/g_variants", params=params, headers=auth(stations[0]["token"]))
    assert refused.status_code == 403
    validate(refused.json(), ERROR)
    assert (
        "audit_group" in refused.json()["error"]["errorMessage"] and "BEACON" in refused.json()["error"]["errorMessage"]
    )
