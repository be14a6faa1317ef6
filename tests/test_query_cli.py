"""`better query` against two real station servers: formats, EXPLAIN, and clean failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import polars as pl
import pytest

from tests.servers import better, make_station, serve


@pytest.fixture(scope="module")
def federation(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("fed")
    entries = []
    with ExitStack() as stack:
        for i, name in enumerate(("milano", "nijmegen")):
            st = make_station(root, name, small_cohort)
            url = stack.enter_context(serve(st.path))
            token = f'token_env = "BETTER_TEST_TOKEN_{i}"' if i == 0 else f'token = "{st.researcher}"'
            entries.append(f'[[station]]\nname = "{name}"\nurl = "{url}"\n{token}\n')
            os.environ[f"BETTER_TEST_TOKEN_{i}"] = st.researcher
        path = root / "federation.toml"
        path.write_text("\n".join(entries))
        yield path


def test_query__tsv_json_and_parquet_agree(federation: Path, tmp_path: Path) -> None:
    q = "FREQ ON 22:16000000-16200000"
    tsv = better("query", "--federation", str(federation), "--format", "tsv", q)
    assert tsv.returncode == 0, tsv.stderr
    lines = tsv.stdout.splitlines()
    assert lines[0].split("\t") == [
        "#CHROM",
        "POS",
        "ID",
        "REF",
        "ALT",
        "ALT_FREQS",
        "MACH_R2",
        "OBS_CT",
        "MISSING_CT",
        "CALL_RATE",
        "WITHHELD_BY",
    ]
    rows = [line.split("\t") for line in lines[1:]]
    assert rows and any("withheld" in r for r in rows) and any("withheld" not in r for r in rows)
    assert all((r[-1] == "minor_allele_count") == ("withheld" in r) for r in rows)  # why, on withheld rows only
    # under maf > 0.01 the rare variants go: none of the counts the rule hides could pass it
    common = better("query", "--federation", str(federation), "--format", "tsv", q + " WHERE maf > 0.01")
    kept = [line.split("\t") for line in common.stdout.splitlines()[1:]]
    assert kept and not any("withheld" in r for r in kept) and len(kept) < len(rows)
    assert all(r[2] == "." or r[2].startswith("rs") for r in rows) and any(r[2] != "." for r in rows)
    js = better("query", "--federation", str(federation), "--format", "json", q)
    doc = json.loads(js.stdout)
    assert doc["rows"] == rows and doc["notes"] == []
    out = tmp_path / "freq.parquet"
    pq = better("query", "--federation", str(federation), "--format", "parquet", "--out", str(out), q)
    assert pq.returncode == 0, pq.stderr
    frame = pl.read_parquet(out)
    assert frame.height == len(rows)
    assert frame.filter(pl.col("WITHHELD"))["ALT_FREQS"].null_count() == frame["WITHHELD"].sum()


def test_query__explain_and_count(federation: Path) -> None:
    plan = better("query", "--federation", str(federation), "EXPLAIN GWAS LINEAR ldl ~ age + sex WHERE maf >= 0.05")
    assert plan.returncode == 0 and "round 1: `linear`" in plan.stdout
    count = better("query", "--federation", str(federation), "--format", "tsv", "--verbose", "COUNT WHERE sex = 1")
    assert count.returncode == 0 and count.stdout.splitlines()[0] == "COUNT"
    assert int(count.stdout.splitlines()[1]) > 50
    said = " ".join(count.stderr.split())  # --verbose: who answered, per station, on stderr
    assert all(f"{name}: answered 2 of 2 call(s)" in said for name in ("milano", "nijmegen")), said


def test_query__failures_are_one_message_and_exit_1(federation: Path) -> None:
    bad = better("query", "--federation", str(federation), "GWAS LINEAR ldl ~ agee")
    assert bad.returncode == 1 and "did you mean 'age'" in bad.stderr and "^^^^" in bad.stderr
    assert "Traceback" not in bad.stderr
    env = {k: v for k, v in os.environ.items() if k != "BETTER_TEST_TOKEN_0"}
    missing = better("query", "--federation", str(federation), "COUNT", env=env)
    assert missing.returncode == 1 and "set the environment variable BETTER_TEST_TOKEN_0" in missing.stderr
    nofile = better("query", "--federation", "/nonexistent.toml", "COUNT")
    assert nofile.returncode == 1 and "no such federation file" in nofile.stderr


def test_verify__signed_manifests_check_and_a_tampered_one_fails(federation: Path, tmp_path: Path) -> None:
    import httpx

    # pin each station's public key in a copy of the federation file
    text = federation.read_text()
    pinned = []
    for block in text.split("[[station]]")[1:]:
        url = next(line.split("=", 1)[1].strip().strip('"') for line in block.splitlines() if line.startswith("url"))
        key = httpx.get(f"{url}/info").json()["public_key"]
        pinned.append(f'[[station]]{block.rstrip()}\npublic_key = "{key}"\n')
    fed = tmp_path / "pinned.toml"
    fed.write_text("\n".join(pinned))
    result = tmp_path / "r.json"
    q = better("query", "--federation", str(fed), "--format", "json", "--out", str(result), "COUNT WHERE sex = 2")
    assert q.returncode == 0, q.stderr
    doc = json.loads(result.read_text())
    assert {m["station"] for m in doc["provenance"]} == {"milano", "nijmegen"}
    ok = better("verify", str(result), "--federation", str(fed))
    assert ok.returncode == 0 and "2 signed manifest(s) verified" in " ".join(ok.stderr.split()), ok.stderr
    assert "all 1 row(s) are what the signed releases give" in " ".join(ok.stderr.split())
    count = doc["rows"][0][0]
    doc["rows"][0][0] = str(int(count) + 1)  # the table edited: the signatures still hold, the values do not
    result.write_text(json.dumps(doc))
    edited = better("verify", str(result), "--federation", str(fed))
    assert edited.returncode == 1 and f"the table says {int(count) + 1}, the releases give {count}" in edited.stderr
    doc["rows"][0][0] = count
    doc["provenance"][0]["manifest"]["released"]["withheld"] = not doc["provenance"][0]["manifest"]["released"][
        "withheld"
    ]
    result.write_text(json.dumps(doc))
    bad = better("verify", str(result), "--federation", str(fed))
    assert bad.returncode == 1 and "signature does not match" in " ".join(bad.stderr.split())
    unpinned = better("verify", str(result), "--federation", str(federation))
    assert unpinned.returncode == 1 and "no public_key pinned" in " ".join(unpinned.stderr.split())


def test_federation_add__writes_the_file_and_pins_the_keys(small_cohort: Path, tmp_path: Path) -> None:
    import httpx

    st = make_station(tmp_path, "milano", small_cohort)
    fed = tmp_path / "fed.toml"
    with serve(st.path) as url:
        add = better("federation", "add", "milano", url, "--token-env", "MILANO_TOKEN", "--federation", str(fed))
        assert add.returncode == 0, add.stderr
        text = fed.read_text()
        info = httpx.get(f"{url}/info").json()
        assert info["agreement_key"] in text and info["public_key"] in text and "MILANO_TOKEN" in text
        wrong = better("federation", "add", "nijmegen", url, "--token", "x", "--federation", str(fed))
        assert wrong.returncode == 1 and "is station 'milano', not 'nijmegen'" in wrong.stderr
        env = {**os.environ, "MILANO_TOKEN": st.researcher}
        count = subprocess.run(
            [sys.executable, "-m", "better.cli", "query", "--federation", str(fed),
             "--format", "tsv", "COUNT"],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert count.returncode == 0 and int(count.stdout.splitlines()[1]) > 50, count.stderr
