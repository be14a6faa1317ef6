"""A variant where one person of the whole federation lacks a call: its sums never reach the coordinator.
Where every station's policy allows ``finish_rows``, its result is exact (the stations finish it); by
default, and alone, it is withheld."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm

from better.genomics.ingest import ingest_vcf
from better.genomics.store import Store
from better.query.federation import Federation
from better.query.remote import StationClient
from better.station_api.auth import new_token
from better.station_api.config import Policy, StationConfig, write_config
from better.station_api.launch import station_processes
from tests.servers import auth

NAMES = ("alpha", "beta", "gamma")
SIZES = (70, 50, 40)
# variant -> how many samples lack a call at each station
MISSING = {101: (1, 0, 0), 102: (2, 2, 2), 103: (0, 0, 0), 104: (0, 3, 0)}


def write_cohort(root: Path, seed: int = 5) -> tuple[dict[str, Path], pl.DataFrame, dict[int, np.ndarray]]:
    """Three stations' VCFs and phenotypes; returns the pooled phenotypes and genotypes (-1 missing)."""
    rng = np.random.default_rng(seed)
    n = sum(SIZES)
    geno = {pos: rng.binomial(2, rng.uniform(0.15, 0.4), n) for pos in MISSING}
    start = np.cumsum((0, *SIZES))
    for pos, per_station in MISSING.items():
        for s, k in enumerate(per_station):
            geno[pos][start[s] : start[s] + k] = -1
    ids = [f"p{i}" for i in range(n)]
    age = rng.normal(50, 10, n).round(1)
    sex = rng.integers(1, 3, n)
    ldl = 3 + 0.02 * age + 0.3 * (geno[103].clip(0)) + rng.normal(0, 0.7, n)
    case = (rng.random(n) < 1 / (1 + np.exp(-(-0.5 + 0.02 * (age - 50) + 0.4 * geno[103].clip(0))))).astype(int)
    pheno = pl.DataFrame({"sample_id": ids, "age": age, "sex": sex, "ldl": ldl.round(4), "case": case})
    paths = {}
    for s, name in enumerate(NAMES):
        rows = slice(start[s], start[s + 1])
        folder = root / "data"
        folder.mkdir(exist_ok=True)
        header = "##fileformat=VCFv4.2\n##contig=<ID=22>\n"
        header += '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        header += "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(ids[rows]) + "\n"
        code = {-1: "./.", 0: "0/0", 1: "0/1", 2: "1/1"}
        body = "".join(
            f"22\t{pos}\t.\tA\tG\t.\tPASS\t.\tGT\t" + "\t".join(code[int(g)] for g in geno[pos][rows]) + "\n"
            for pos in sorted(MISSING)
        )
        (folder / f"{name}.vcf").write_text(header + body)
        pheno[rows].write_csv(folder / f"{name}.tsv", separator="\t")
        paths[name] = folder
    return paths, pheno, geno


def stations(root: Path, data: dict[str, Path], finish: tuple[bool, ...]) -> list[tuple[str, Path, str]]:
    out = []
    for name, finish_rows in zip(NAMES, finish, strict=False):
        store = Store.create(root / name)
        ingest_vcf(store, "c", str(data[name] / f"{name}.vcf"), str(data[name] / f"{name}.tsv"))
        token, record = new_token("ana", "researcher")
        policy = Policy(finish_rows=finish_rows)
        write_config(store.path, StationConfig(name=name, tokens=[record], policy=policy))
        out.append((name, store.path, token))
    return out


@contextmanager
def federation(
    root: Path, data: dict[str, Path], n: int = 3, finish: tuple[bool, ...] = (True, True, True)
) -> Iterator[tuple[Federation, list[str], list[str]]]:
    """``n`` stations served (``finish``: their policies' ``finish_rows``), and a federation over them (masked
    with three); yields it, URLs and tokens."""
    st = stations(root, data, finish)[:n]
    with station_processes([p for _, p, _ in st], threads=1) as urls:
        clients = [StationClient(name, u, t) for (name, _, t), u in zip(st, urls, strict=True)]
        yield Federation(clients), urls, [t for _, _, t in st]


def ols(pheno: pl.DataFrame, g: np.ndarray) -> tuple[float, float]:
    """statsmodels' beta and SE of the genotype, samples without a call dropped (as PLINK 2 does)."""
    keep = g >= 0
    x = np.column_stack([np.ones(keep.sum()), pheno["age"].to_numpy()[keep], pheno["sex"].to_numpy()[keep], g[keep]])
    fit = sm.OLS(pheno["ldl"].to_numpy()[keep], x).fit()
    return float(fit.params[3]), float(fit.bse[3])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], pl.DataFrame, dict]:
    root = tmp_path_factory.mktemp("finishing")
    data, pheno, geno = write_cohort(root)
    return root, data, pheno, geno


def test_one_missing_call__sums_stay_with_the_stations_and_the_result_is_exact(cohort: tuple, tmp_path: Path) -> None:
    _, data, pheno, geno = cohort
    with federation(tmp_path, data) as (fed, urls, tokens):
        frame = fed.query("GWAS LINEAR ldl ~ age + sex")
        rows = {r["POS"]: r for r in frame.iter_rows(named=True)}
        for pos in MISSING:
            beta, se = ols(pheno, geno[pos])
            assert not rows[pos]["WITHHELD"], pos
            assert rows[pos]["OBS_CT"] == int((geno[pos] >= 0).sum())
            assert rows[pos]["BETA"] == pytest.approx(beta, rel=1e-8, abs=1e-10)
            assert rows[pos]["SE"] == pytest.approx(se, rel=1e-8)
        # what the opening released: the 1-missing variant (pooled 1 person) and the 3-missing one were not
        # among the sums; the stations finished them
        tasks = httpx.get(f"{urls[0]}/tasks", headers=auth(tokens[0])).json()
        opened = [t["released"] for t in tasks if t["kind"] == "linear" and "withheld_by" in (t["released"] or {})]
        assert [r["finished_by_stations"] for r in opened] == [2]
        assert opened[0]["withheld_by"] == {"missing_genotypes": 2}


def test_one_missing_call__logistic_newton_rounds_run_among_the_stations(cohort: tuple, tmp_path: Path) -> None:
    _, data, pheno, geno = cohort
    with federation(tmp_path, data) as (fed, _, _):
        frame = fed.query("GWAS LOGISTIC case ~ age + sex")
    rows = {r["POS"]: r for r in frame.iter_rows(named=True)}
    for pos in MISSING:
        keep = geno[pos] >= 0
        x = np.column_stack(
            [np.ones(keep.sum()), pheno["age"].to_numpy()[keep], pheno["sex"].to_numpy()[keep], geno[pos][keep]]
        )
        fit = sm.Logit(pheno["case"].to_numpy()[keep], x).fit(disp=0)
        assert not rows[pos]["WITHHELD"] and rows[pos]["FIRTH?"] == "N", pos
        assert rows[pos]["Z_STAT"] == pytest.approx(fit.tvalues[3], rel=1e-6), pos
        assert rows[pos]["LOG(OR)_SE"] == pytest.approx(fit.bse[3], rel=1e-6), pos


def test_one_missing_call__alone_a_station_withholds_it(cohort: tuple, tmp_path: Path) -> None:
    _, data, _, _ = cohort
    with federation(tmp_path, data, n=2) as (fed, _, _):
        frame = fed.query("GWAS LINEAR ldl ~ age + sex")  # two stations: in the clear
    rows = {r["POS"]: r for r in frame.iter_rows(named=True)}
    assert rows[101]["WITHHELD"] and rows[101]["WITHHELD_BY"] == "missing_genotypes"  # 1 at alpha
    assert rows[102]["WITHHELD"]  # 2 at alpha, 2 at beta: each alone is too few
    assert not rows[103]["WITHHELD"] and rows[104]["WITHHELD"]  # 3 at beta


@pytest.mark.parametrize("finish", [(False, False, False), pytest.param((True, False, True), marks=pytest.mark.slow)])
def test_one_missing_call__withheld_unless_every_station_finishes_rows(
    cohort: tuple, tmp_path: Path, finish: tuple[bool, ...]
) -> None:
    # by default (and when one station does not allow it: the stations decide rows alike, by the strictest
    # policy) a variant where 1 person of the group lacks a call is withheld; 6 lacking a call is released
    _, data, pheno, geno = cohort
    with federation(tmp_path, data, finish=finish) as (fed, _, _):
        frame = fed.query("GWAS LINEAR ldl ~ age + sex")
    rows = {r["POS"]: r for r in frame.iter_rows(named=True)}
    assert rows[101]["WITHHELD"] and rows[101]["WITHHELD_BY"] == "missing_genotypes"  # 1 at alpha, 0 elsewhere
    assert rows[104]["WITHHELD"] and rows[104]["WITHHELD_BY"] == "missing_genotypes"  # 3 at beta
    for pos in (102, 103):  # 6 lacking a call over the group, and none
        beta, _ = ols(pheno, geno[pos])
        assert not rows[pos]["WITHHELD"] and rows[pos]["BETA"] == pytest.approx(beta, rel=1e-8, abs=1e-10), pos
