"""A determined researcher against three real stations (default policy, secure aggregation on): the
attacks of the disclosure-control issue, replayed through the query language and the HTTP API."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.query.federation import Federation
from better.query.remote import StationClient, StationError
from better.station_api.auth import new_token
from better.station_api.config import Policy, read_config, write_config
from better.station_api.launch import station_processes
from tests.servers import StationSetup, auth, make_station

NAMES = ("milano", "nijmegen", "barcelona")


@contextmanager
def federation(
    root: Path, cohort: Path, policy: Policy | None = None
) -> Iterator[tuple[Federation, list[StationSetup]]]:
    """Three fresh stations of the small cohort, served, and a federation over them (masked)."""
    stations = [make_station(root, name, cohort, policy) for name in NAMES]
    with station_processes([s.path for s in stations], threads=1) as urls:
        clients = [StationClient(s.name, u, s.researcher, timeout=120) for s, u in zip(stations, urls, strict=True)]
        yield Federation(clients, secure_aggregation="on"), stations


def unique_age(cohort: Path, names: tuple[str, ...] = NAMES) -> float:
    """An age exactly one person of the stations has (one with an ldl value), near the middle."""
    frames = [pl.read_csv(cohort / f"{n}.pheno.tsv", separator="\t", null_values="NA") for n in names]
    ph = pl.concat([f.select("age", "ldl") for f in frames]).drop_nulls("age")
    once = ph.group_by("age").agg(pl.len(), pl.col("ldl").is_not_null().all().alias("ok"))
    ages = once.filter((pl.col("len") == 1) & pl.col("ok"))["age"].sort().to_numpy()
    return float(ages[len(ages) // 2])


def refused(fed: Federation, text: str, rule: str = "query_audit") -> bool:
    try:
        fed.query(text)
    except StationError as exc:
        assert rule in str(exc), exc
        return True
    return False


def withheld(frame: pl.DataFrame) -> bool:
    return bool(frame["WITHHELD"][0]) and frame["COUNT"].is_null().all() | frame["COUNT"].is_nan().all()


def test_tracker__counts_and_freq_cannot_isolate_one_person(small_cohort: Path, tmp_path: Path) -> None:
    a = unique_age(small_cohort)
    with federation(tmp_path, small_cohort) as (fed, _):
        le, ge = fed.query(f"COUNT WHERE age <= {a}"), fed.query(f"COUNT WHERE age >= {a}")
        assert not withheld(le) and not withheld(ge)
        assert withheld(fed.query("COUNT WHERE age >= 0"))  # le + ge - (all with an age) = the person aged a
        # the same three selections in FREQ
        fed.query(f"FREQ WHERE age <= {a}")
        fed.query(f"FREQ WHERE age >= {a}")  # answered before (as COUNTs): answered again
        assert refused(fed, "FREQ WHERE age >= 0")
        assert fed.query(f"COUNT WHERE age <= {a}")["COUNT"][0] == le["COUNT"][0]  # old answers still come


def test_tracker__linear_regression_sums_cannot_isolate_one_person(small_cohort: Path, tmp_path: Path) -> None:
    a = unique_age(small_cohort)
    with federation(tmp_path, small_cohort) as (fed, _):
        fed.query(f"GWAS LINEAR ldl ~ sex WHERE age <= {a}")
        fed.query(f"GWAS LINEAR ldl ~ sex WHERE age >= {a}")
        assert refused(fed, "GWAS LINEAR ldl ~ sex + age")  # those with ldl, sex and age: the third set


def test_tracker__other_datasets_reingests_and_researchers_share_one_record(small_cohort: Path, tmp_path: Path) -> None:
    a = unique_age(small_cohort)
    with federation(tmp_path, small_cohort) as (fed, stations):
        fed.query(f"COUNT WHERE age <= {a}")
        # a second researcher asks the second set
        bob = []
        for s, client in zip(stations, fed.stations, strict=True):
            token, record = new_token("bob", "researcher")
            config = read_config(s.path)
            write_config(s.path, config.model_copy(update={"tokens": [*config.tokens, record]}))
            bob.append(StationClient(s.name, client.url, token, timeout=120))
        fed_bob = Federation(bob, secure_aggregation="on")
        fed_bob.query(f"COUNT WHERE age >= {a}")
        # and everyone, in a second dataset holding the same people
        for s in stations:
            ingest_vcf(
                Store.open(s.path),
                "copy",
                str(small_cohort / f"{s.name}.vcf.gz"),
                str(small_cohort / f"{s.name}.pheno.tsv"),
            )
        fed_bob.dataset = "copy"
        assert withheld(fed_bob.query("COUNT WHERE age >= 0"))
        assert refused(fed_bob, "FREQ WHERE age >= 0")


def with_one_more_person(src: Path, pheno: Path, out: Path) -> tuple[Path, Path]:
    """The station's VCF and phenotypes with one more sample (a copy of the first, new ID)."""
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines()
    body = []
    for line in lines:
        if line.startswith("##"):
            body.append(line)
        elif line.startswith("#"):
            body.append(line + "\tnewcomer")
        else:
            body.append(line + "\t" + line.split("\t")[9])
    vcf = out / "plus.vcf"
    vcf.write_text("\n".join(body) + "\n")
    rows = pheno.read_text().splitlines()
    first = rows[1].split("\t")
    (out / "plus.tsv").write_text("\n".join([*rows, "\t".join(["newcomer", *first[1:]])]) + "\n")
    return vcf, out / "plus.tsv"


def test_tracker__a_reingest_with_one_more_person_is_refused(small_cohort: Path, tmp_path: Path) -> None:
    with federation(tmp_path, small_cohort) as (fed, stations):
        fed.query("FREQ")
        s = stations[0]
        vcf, pheno = with_one_more_person(
            small_cohort / f"{s.name}.vcf.gz", small_cohort / f"{s.name}.pheno.tsv", tmp_path
        )
        ingest_vcf(Store.open(s.path), "cohort", str(vcf), str(pheno))  # the same dataset, replaced
        assert refused(fed, "FREQ")  # the two FREQs would differ by the newcomer's genotypes
        assert fed.query("FREQ WHERE age > 50").height > 0  # a selection the newcomer changes by more is fine


def test_errors__never_quote_a_value(small_cohort: Path, tmp_path: Path) -> None:
    a = unique_age(small_cohort)
    with federation(tmp_path, small_cohort) as (fed, _):
        with pytest.raises(Exception) as err:
            fed.query(f"GWAS LOGISTIC ldl ~ sex WHERE age = {a}")
        text = str(err.value).replace("HTTP 422", "")
        assert "0 (control)" in text
        digits = [w for w in text.replace(",", " ").split() if any(ch.isdigit() for ch in w)]
        assert all(w.strip("'.()") in {"0", "1", "0/1", "1/2", str(a)} for w in digits), text


@pytest.fixture(scope="module")
def realistic_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 people at three stations, 1% missing genotypes, missing ldl (3%), case (2%) and age (1%)."""
    from better.genomics.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("realistic")
    synthesize(SynthConfig(out=str(out), samples=1500, variants=600, stations=3, seed=11))
    return out


def test_ordinary_session__is_answered_in_full(realistic_cohort: Path, tmp_path: Path) -> None:
    # (In the 300-person cohort it is not: 3 people lack an age, and FREQ over everyone beside a GWAS with
    # age as covariate would give their genotype sums; the audit refuses that, as it should.)
    queries = [
        "COUNT",
        "COUNT WHERE sex = 2",
        "FREQ",
        "HWE",
        "GWAS LINEAR ldl ~ age + sex + pc1 + pc2",
        "GWAS LINEAR bmi ~ age + sex + pc1 + pc2",
        "GWAS LOGISTIC case ~ age + sex + pc1 + pc2",
        "GWAS LINEAR ldl ~ age + sex + pc1 + pc2 ADJUST station",
        "GWAS LOGISTIC case ~ age + sex + pc1 + pc2 ADJUST station",
        "FREQ WHERE sex = 2",
        "GWAS LINEAR ldl ~ age + pc1 + pc2 WHERE sex = 2",
        "GWAS LOGISTIC case ~ age + pc1 + pc2 WHERE sex = 2",
        "COUNT",  # and again: repeats are answered
        "GWAS LINEAR ldl ~ age + sex + pc1 + pc2",
    ]
    with federation(tmp_path, realistic_cohort) as (fed, _):
        for text in queries:
            frame = fed.query(text)
            assert frame.height > 0, text
            if text.startswith("COUNT"):
                assert not withheld(frame), text


def test_adjust_station__one_stations_difference_is_refused(small_cohort: Path, tmp_path: Path) -> None:
    # ADJUST station releases each station's own sums (in its indicator's columns): two models whose pooled
    # sets differ by 6 people, but by one at milano (the only one there lacking ldl), would give that
    # person's phenotypes and genotypes. The audit records each station's own sets.
    ph = pl.read_csv(small_cohort / "milano.pheno.tsv", separator="\t", null_values="NA")
    assert ph.filter(pl.col("ldl").is_null()).height == 1
    with federation(tmp_path, small_cohort) as (fed, _):
        adjusted = fed.query("GWAS LINEAR bmi ~ pc1 ADJUST station")
        pooled = fed.query("GWAS LINEAR bmi ~ pc1")
        assert fed.query("GWAS LINEAR bmi ~ pc1 + ldl").height > 0  # pooled, the same difference is 6 people
        assert refused(fed, "GWAS LINEAR bmi ~ pc1 + ldl ADJUST station")
    # and each station's own cells are judged: 1 to 4 ALT carriers at every station, 10 or more in all
    few = {pos for pos, c in _carriers(small_cohort).items() if all(1 <= x < 5 for x in c) and sum(c) >= 8}
    assert len(few) >= 2
    by_rule = dict(zip(adjusted["POS"], adjusted["WITHHELD_BY"], strict=True))
    assert all("carriers" in str(by_rule[pos]) for pos in few)
    by_rule = dict(zip(pooled["POS"], pooled["WITHHELD_BY"], strict=True))
    assert not any("carriers" in str(by_rule[pos]) for pos in few)


def test_adjust_station__in_the_clear_audits_each_stations_own_sets(small_cohort: Path, tmp_path: Path) -> None:
    with federation(tmp_path, small_cohort) as (fed, _):
        clear = Federation(fed.stations[:2], secure_aggregation="off")
        frame = clear.query("GWAS LINEAR ldl ~ age + sex ADJUST station")
    assert frame.height > 0 and not frame["WITHHELD"].all()


def _carriers(cohort: Path) -> dict[int, list[int]]:
    """Per position, the people carrying the ALT allele at each station (bi-allelic sites)."""
    import pysam

    out: dict[int, list[int]] = {}
    for name in NAMES:
        for rec in pysam.VariantFile(str(cohort / f"{name}.vcf.gz")):
            called = (s["GT"] for s in rec.samples.values() if None not in s["GT"])
            out.setdefault(rec.pos, []).append(sum(1 for gt in called if sum(gt) > 0))
    return out


def test_counts_in_two_groups__split_cases_and_controls_only(small_cohort: Path) -> None:
    from better.wire.messages import TaskRequest

    base = {"dataset": "cohort", "analysis": "freq", "kind": "counts", "phenotype": "ldl", "groups": 2}
    with pytest.raises(ValueError, match="need a binary phenotype"):
        TaskRequest.model_validate({**base, "binary": False})  # split by ldl > 0.5: a set the audit never saw
    TaskRequest.model_validate({**base, "phenotype": "case", "binary": True})


def test_masked_round__with_participants_the_session_did_not_audit_is_refused(
    small_cohort: Path, tmp_path: Path
) -> None:
    # a coordinator that makes up two peers knows their masks: one station's own sums would come back bare
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from better.query import secure as query_secure
    from better.station_api.secure_agg import StationSecrets
    from better.wire.arrays import encode_state

    sessions: list[str] = []
    next_round = query_secure.SecureSession.next_round

    def spy(self: query_secure.SecureSession) -> object:
        sessions.append(self.session)
        return next_round(self)

    fakes = [StationSecrets(n, X25519PrivateKey.generate()) for n in ("fake1", "fake2")]
    with federation(tmp_path, small_cohort) as (fed, stations):
        query_secure.SecureSession.next_round = spy  # type: ignore[method-assign]
        try:
            fed.query("GWAS LOGISTIC case ~ bmi")
        finally:
            query_secure.SecureSession.next_round = next_round  # type: ignore[method-assign]
        url = fed.stations[0].url
        info = httpx.get(f"{url}/info").json()
        participants = [
            {"name": info["name"], "agreement_key": info["agreement_key"]},
            *({"name": f.name, "agreement_key": f.public_text} for f in fakes),
        ]
        body = {
            "dataset": "cohort",
            "analysis": "gwas_logistic",
            "kind": "logistic_null",
            "phenotype": "case",
            "covariates": ["bmi"],
            "binary": True,
            "state": encode_state({"beta": np.zeros(2)}),
            "secure": {"session": sessions[-1], "round": 900, "participants": participants},
        }
        r = httpx.post(f"{url}/tasks", json=body, headers=auth(stations[0].researcher))
    assert r.status_code == 403 and "audit_session" in r.text


def test_an_out_of_range_statistic__is_refused_without_its_value() -> None:
    from better.engine import fixedpoint

    with pytest.raises(Exception, match="beyond the secure-aggregation range") as exc:
        fixedpoint.encode(np.array([2.61234e24]))
    assert "2.61" not in str(exc.value) and "e+24" not in str(exc.value)


# -- what the coordinator may try against a sealed round -------------------------------------------------
def test_sealed_round__stations_refuse_a_missing_or_altered_message_and_strangers(
    small_cohort: Path, tmp_path: Path
) -> None:
    with federation(tmp_path, small_cohort) as (fed, stations):
        fed.query("COUNT")  # the three stations now form an audit group
        s0, c0 = stations[0], fed.stations[0]
        info = [httpx.get(f"{c.url}/info").json() for c in fed.stations]
        participants = [{"name": i["name"], "agreement_key": i["agreement_key"]} for i in info]
        body = {
            "dataset": "cohort",
            "analysis": "count",
            "kind": "sample_count",
            "secure": {"session": "ab" * 16, "round": 0, "participants": participants},
        }
        seal = httpx.post(f"{c0.url}/tasks", json={**body, "exchange": {"phase": "seal"}}, headers=auth(s0.researcher))
        assert seal.status_code == 202, seal.text
        # an opening that lacks a peer's message, or carries a forged one
        r = httpx.post(
            f"{c0.url}/tasks",
            json={**body, "exchange": {"phase": "open", "blobs": {"nijmegen": "QUJD"}}},
            headers=auth(s0.researcher),
        )
        status = _wait(c0.url, r.json()["id"], s0.researcher)
        assert status["status"] == "failed" and "lacks the sealed message of station barcelona" in status["error"]
        seal = httpx.post(
            f"{c0.url}/tasks",
            json={**body, "secure": {**body["secure"], "round": 1}, "exchange": {"phase": "seal"}},
            headers=auth(s0.researcher),
        )
        assert seal.status_code == 202, seal.text
        body = {**body, "secure": {**body["secure"], "round": 1}}
        forged = {"nijmegen": "QUJD", "barcelona": "QUJD"}
        r = httpx.post(
            f"{c0.url}/tasks",
            json={**body, "exchange": {"phase": "open", "blobs": forged}},
            headers=auth(s0.researcher),
        )
        status = _wait(c0.url, r.json()["id"], s0.researcher)
        assert status["status"] == "failed" and "does not open" in status["error"]
        # in the clear, or with a station missing: refused, this station is in a group
        r = httpx.post(
            f"{c0.url}/tasks",
            json={"dataset": "cohort", "analysis": "count", "kind": "sample_count"},
            headers=auth(s0.researcher),
        )
        assert r.status_code == 403 and r.json()["detail"]["rule"] == "audit_group"
        two = {**body, "secure": {**body["secure"], "session": "cd" * 16, "participants": participants[:2]}}
        r = httpx.post(f"{c0.url}/tasks", json={**two, "exchange": {"phase": "seal"}}, headers=auth(s0.researcher))
        assert r.status_code == 403
        # the federation still works (a coordinator gives back a seal it will not open, as this one does)
        httpx.delete(f"{c0.url}/tasks/{seal.json()['id']}", headers=auth(s0.researcher))
        assert fed.query("COUNT")["COUNT"][0] > 0


def _wait(url: str, task: str, token: str) -> dict:
    for _ in range(400):
        status = httpx.get(f"{url}/tasks/{task}", headers=auth(token)).json()
        if status["status"] not in ("queued", "running"):
            return status
        import time

        time.sleep(0.05)
    raise AssertionError("task did not finish")


def test_local_scope__a_station_alone_audits_over_its_own_people(small_cohort: Path, tmp_path: Path) -> None:
    st = make_station(tmp_path, "milano", small_cohort)
    a = unique_age(small_cohort, ("milano",))
    with station_processes([st.path], threads=1) as (url,):
        fed = Federation([StationClient("milano", url, st.researcher)])
        fed.query(f"GWAS LINEAR ldl ~ sex WHERE age <= {a}")
        fed.query(f"GWAS LINEAR ldl ~ sex WHERE age >= {a}")
        assert refused(fed, "GWAS LINEAR ldl ~ sex + age")
        assert withheld(fed.query("COUNT WHERE age >= 0 AND ldl >= -100"))  # the same tracker's third set


def test_empty_selection__is_a_clear_refusal_not_zeros(small_cohort: Path, tmp_path: Path) -> None:
    with federation(tmp_path, small_cohort) as (fed, _):
        for text in ("FREQ WHERE age > 500", "GWAS LINEAR ldl ~ sex WHERE age > 500"):
            with pytest.raises(Exception, match="matches no sample at any station"):
                fed.query(text)
        assert fed.query("COUNT WHERE age > 500")["COUNT"].to_list() == [0]  # a count of nobody is 0


def test_verify__a_result_missing_one_stations_manifests_fails(small_cohort: Path, tmp_path: Path) -> None:
    from better.query.provenance import verify_manifests

    with federation(tmp_path, small_cohort) as (fed, _):
        fed.query("GWAS LINEAR ldl ~ age")
        keys = {s.name: httpx.get(f"{s.url}/info").json()["public_key"] for s in fed.stations}
        manifests = fed.manifests
    assert verify_manifests(manifests, keys) == ([], len(manifests))
    without = [m for m in manifests if m["station"] != "nijmegen"]
    problems, _ = verify_manifests(without, keys)
    assert problems and all("no manifest from nijmegen" in p for p in problems)
