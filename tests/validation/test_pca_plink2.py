"""PCA and PRUNE over three live station servers, against PLINK 2 on the pooled VCF: ``--pca`` (with
``meanimpute`` and with its default missingness correction), ``--indep-pairwise``, a GWAS adjusted for the
PCs the stations stored; and what the stations release for a PCA.

Reference commands (the variants: those the federated query used, as an ``--extract`` list)::

    plink2 --vcf split.vcf.gz --vcf-half-call missing --set-all-var-ids @:#:$r:$a --new-id-max-allele-len 200 \\
        --extract LIST --pca 11 [meanimpute] | --indep-pairwise W [kb] STEP R2

The stores are shared by the session: scores are stored under names no other test uses (``vpc``, ``gpcv``,
``gpcw``, ``ppc``), and the stations audit locally (:data:`AUDITED`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from better.engine.analyses.pca.station import MOMENTS
from better.engine.design import KEY_COLUMNS
from better.genomics.store import Store
from better.query.federation import Federation
from better.query.remote import StationClient
from better.query.structure import Structure
from better.station_api.auth import new_token
from better.station_api.config import Policy, StationConfig, write_config
from better.station_api.launch import station_process
from better.wire.arrays import decode_arrays, decode_state
from tests.validation.conftest import PlinkCohort, needs, plink, read

pytestmark = needs("plink2", "bcftools")
PCS = 10
#: The default rules, audited over each station's own people: a station whose audit went pooled (secure
#: aggregation under ``audit_scope="auto"``) answers only masked from then on, in this module and in any other
#: that serves the same stores later in the session; the release test below runs in the clear.
AUDITED = Policy(audit_scope="local")
VARIANT_IDS = ["--set-all-var-ids", "@:#:$r:$a", "--new-id-max-allele-len", "200"]


@dataclass
class Live:
    fed: Federation
    urls: list[str]
    tokens: list[str]
    cohort: PlinkCohort
    work: Path

    def vcf(self) -> list[str]:
        return ["--vcf", str(self.cohort.root / "split.vcf.gz"), "--vcf-half-call", "missing", *VARIANT_IDS]

    def clients(self) -> list[StationClient]:
        return [
            StationClient(name, url, token, timeout=300)
            for name, url, token in zip(self.cohort.stations, self.urls, self.tokens, strict=True)
        ]


@pytest.fixture(scope="module")
def live(plink_cohort: PlinkCohort, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    urls, tokens = [], []
    with ExitStack() as stack:
        for name, path in zip(plink_cohort.stations, plink_cohort.stores, strict=True):
            researcher, record = new_token("ana", "researcher")
            write_config(path, StationConfig(name=name, policy=AUDITED, tokens=[record]))
            urls.append(stack.enter_context(station_process(path, threads=1)))
            tokens.append(researcher)
        clients = [
            StationClient(n, u, t, timeout=300) for n, u, t in zip(plink_cohort.stations, urls, tokens, strict=True)
        ]
        yield Live(
            Federation(clients, secure_aggregation="on"), urls, tokens, plink_cohort, tmp_path_factory.mktemp("pca")
        )


def variant_id(chrom: object, pos: object, ref: object, alt: object) -> str:
    return f"{chrom}:{pos}:{ref}:{alt}"


def write_extract(path: Path, keys: dict[str, np.ndarray]) -> Path:
    ids = [variant_id(*k) for k in zip(*(keys[c].tolist() for c in KEY_COLUMNS), strict=True)]
    assert len(set(ids)) == len(ids)
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def eigenvalues(path: Path) -> np.ndarray:
    return np.array([float(x) for x in path.read_text().split()])


def eigenvectors(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    pcs = [c for c in rows[0] if c.startswith("PC")]
    return {r["#IID"]: np.array([float(r[c]) for c in pcs]) for r in rows}


def stored_scores(cohort: PlinkCohort, name: str, k: int) -> dict[str, np.ndarray]:
    """Each person's scores ``name1..namek`` as the stations stored them, by sample id."""
    out: dict[str, np.ndarray] = {}
    for path in cohort.stores:
        table = Store.open(path).dataset("c").phenotypes().to_pydict()
        for i, sid in enumerate(table["sample_id"]):
            out[sid] = np.array(
                [np.nan if table[f"{name}{c + 1}"][i] is None else table[f"{name}{c + 1}"][i] for c in range(k)]
            )
    return out


def separated(values: np.ndarray, gap: float) -> list[int]:
    """The PCs (of all but the last value) whose eigenvalue is more than ``gap`` (relative) from both
    neighbours."""
    return [
        i
        for i in range(values.shape[0] - 1)
        if all(abs(values[i] - values[j]) > gap * values[i] for j in (i - 1, i + 1) if j >= 0)
    ]


def abs_corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.corrcoef(a, b)[0, 1]))


@dataclass
class PCARun:
    frame: pl.DataFrame
    structure: Structure
    meanimpute: Path  # plink2 --out prefixes
    default: Path


@pytest.fixture(scope="module")
def pca_run(live: Live) -> PCARun:
    frame = live.fed.query(f"PCA {PCS} WHERE maf >= 0.01 AS vpc")
    structure = live.fed.structure
    assert structure.pca is not None
    extract = write_extract(live.work / "vpc.extract", structure.pca.keys)
    out = live.work / "vpc"
    # one PC more than asked: the last one's lower neighbour, to tell whether it is separated
    plink(*live.vcf(), "--extract", str(extract), "--pca", str(PCS + 1), "meanimpute", "--out", f"{out}.mi")
    plink(*live.vcf(), "--extract", str(extract), "--pca", str(PCS + 1), "--out", f"{out}.def")
    return PCARun(frame, structure, Path(f"{out}.mi"), Path(f"{out}.def"))


def test_pca__eigenvalues_equal_plink2(live: Live, pca_run: PCARun) -> None:
    frame, pca = pca_run.frame, pca_run.structure.pca
    assert pca is not None and pca.converged
    assert frame["PC"].to_list() == [f"PC{i + 1}" for i in range(PCS)]
    assert pca_run.structure.variants == pca.keys["pos"].shape[0] > 1000  # nothing else counts in M
    ours_mi = frame["EIGENVALUE_MEANIMPUTE"].to_numpy()
    ours = frame["EIGENVALUE"].to_numpy()
    mi = eigenvalues(Path(f"{pca_run.meanimpute}.eigenval"))
    default = eigenvalues(Path(f"{pca_run.default}.eigenval"))
    # PLINK 2 prints 6 significant digits (measured: within 1.2e-6)
    np.testing.assert_allclose(ours_mi, mi[:PCS], rtol=1e-5)
    # the default divides each pair's product by the variants both are called at; ours expands that to second
    # order in the missing fraction (measured: within 3.7e-5; meanimpute's are 2.1e-2 from them)
    np.testing.assert_allclose(ours, default[:PCS], rtol=3e-4)
    assert (np.diff(ours_mi) <= 0).all()
    np.testing.assert_allclose(frame["VARIANCE_EXPLAINED"].to_numpy(), ours_mi / pca.trace, rtol=1e-12)


def test_pca__stored_scores_equal_plink2_eigenvectors(live: Live, pca_run: PCARun) -> None:
    stored = stored_scores(live.cohort, "vpc", PCS)
    mi = eigenvectors(Path(f"{pca_run.meanimpute}.eigenvec"))
    default = eigenvectors(Path(f"{pca_run.default}.eigenvec"))
    assert set(stored) == set(mi) == set(default)
    assert pca_run.structure.stored == len(mi)
    ids = sorted(mi)
    ours = np.array([stored[i] for i in ids])
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(np.linalg.norm(ours, axis=0), 1.0, rtol=1e-6)  # unit eigenvectors, as PLINK's
    ref_mi = np.array([mi[i] for i in ids])
    ref_default = np.array([default[i] for i in ids])
    values_mi = eigenvalues(Path(f"{pca_run.meanimpute}.eigenval"))
    values_default = eigenvalues(Path(f"{pca_run.default}.eigenval"))
    compared = separated(values_mi, 1e-3)
    assert compared[:4] == [0, 1, 2, 3], values_mi  # the cohort's structure: at least those
    for c in compared:  # measured: 1 - |corr| at most 6.1e-13
        assert abs_corr(ours[:, c], ref_mi[:, c]) >= 0.999999, (c, abs_corr(ours[:, c], ref_mi[:, c]))
    for c in separated(values_default, 1e-3):  # PLINK's default GRM has other eigenvectors: measured 4.3e-5
        assert abs_corr(ours[:, c], ref_default[:, c]) >= 0.9998, (c, abs_corr(ours[:, c], ref_default[:, c]))


@pytest.mark.parametrize(
    ("clause", "args"),
    [
        ("PRUNE 50 5 0.1", ["50", "5", "0.1"]),
        ("PRUNE 100kb 0.2", ["100kb", "1", "0.2"]),
        ("PRUNE 20 1 0.5", ["20", "1", "0.5"]),
    ],
)
def test_prune__equals_plink2_indep_pairwise(live: Live, clause: str, args: list[str]) -> None:
    frame = live.fed.query(f"{clause} WHERE maf >= 0.01")
    assert frame.columns[:5] == ["#CHROM", "POS", "ID", "REF", "ALT"] and "PRUNE" in frame.columns
    keys = {"chrom": frame["#CHROM"].to_numpy(), "pos": frame["POS"].to_numpy()}
    keys |= {"ref": frame["REF"].to_numpy(), "alt": frame["ALT"].to_numpy()}
    # the stations audit locally here, so each withholds variants that 1..4 of its own people lack a call
    # at (their pair sums would show those people); under the default pooled audit far fewer are left out
    assert frame.height > 500
    name = "prune_" + "_".join(args).replace(".", "")
    extract = write_extract(live.work / f"{name}.extract", keys)
    out = live.work / name
    plink(*live.vcf(), "--extract", str(extract), "--indep-pairwise", *args, "--out", str(out))
    want = set(Path(f"{out}.prune.out").read_text().split())
    kept = set(Path(f"{out}.prune.in").read_text().split())
    ids = [variant_id(*k) for k in zip(*(keys[c].tolist() for c in KEY_COLUMNS), strict=True)]
    assert want | kept == set(ids)
    got = {i for i, verdict in zip(ids, frame["PRUNE"].to_list(), strict=True) if verdict == "out"}
    assert 0 < len(want) < len(ids)
    assert got == want, (len(got), len(want), sorted(got - want)[:5], sorted(want - got)[:5])
    assert live.fed.structure.pruned == len(want)


def _gwas_against(live: Live, frame: pl.DataFrame, eigenvec: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Our GWAS table against PLINK 2's with its own PCs from ``eigenvec``: per shared variant, the BETA
    difference in standard errors and the SE's relative difference (one array), and the |log10 P|
    difference."""
    pcs = eigenvectors(eigenvec)
    pheno = live.cohort.out / "pooled.pheno.tsv"
    with open(pheno) as f:
        people = {r["#IID"]: r for r in csv.DictReader(f, delimiter="\t")}
    covar = live.work / f"{name}.covar.tsv"
    with open(covar, "w") as f:
        f.write("#IID\tage\tsex\tPC1\tPC2\n")
        for iid, v in pcs.items():
            f.write(f"{iid}\t{people[iid]['age']}\t{people[iid]['sex']}\t{float(v[0])!r}\t{float(v[1])!r}\n")
    out = live.work / name
    plink(
        *live.vcf()[:4],
        "--pheno",
        str(pheno),
        "--pheno-name",
        "ldl",
        "--covar",
        str(covar),
        "--covar-name",
        "age",
        "sex",
        "PC1",
        "PC2",
        "--covar-variance-standardize",
        "--glm",
        "hide-covar",
        "omit-ref",
        "--maf",
        "0.05",
        "--out",
        str(out),
    )
    ref = read(Path(f"{out}.ldl.glm.linear"))
    got = {(r["#CHROM"], r["POS"], r["REF"], r["ALT"]): r for r in frame.iter_rows(named=True) if not r["WITHHELD"]}
    shared = [k for k in ref if k in got and ref[k]["ERRCODE"] == "." and got[k]["ERRCODE"] == "."]
    # the default rules withhold a variant where 1 to 4 people of a station lack a call (missing_genotypes)
    assert len(shared) > 300 and len(shared) >= 0.99 * len(got), (len(shared), len(ref), len(got))
    beta, dp = [], []
    for k in shared:
        r, ours = ref[k], got[k]
        assert ours["OBS_CT"] == int(r["OBS_CT"]), k
        beta.append(abs(ours["BETA"] - float(r["BETA"])) / float(r["SE"]))  # in standard errors
        beta.append(abs(ours["SE"] - float(r["SE"])) / float(r["SE"]))
        dp.append(abs(ours["LOG10_P"] + np.log10(float(r["P"]))))
    return np.array(beta), np.array(dp)


@pytest.mark.parametrize(
    ("prune", "name"),
    # (pruning itself is checked against plink2 --indep-pairwise above)
    [pytest.param("PRUNE 50 5 0.2", "gpcv", marks=pytest.mark.slow), ("", "gpcw")],
)
def test_gwas__with_stored_pcs_equals_plink2_with_its_pcs(live: Live, prune: str, name: str) -> None:
    live.fed.query(f"PCA 4 WHERE maf >= 0.01 {prune} AS {name}")
    structure = live.fed.structure
    pca = structure.pca
    assert pca is not None and (structure.pruned > 0) == bool(prune)
    assert pca.keys["pos"].shape[0] == structure.variants - structure.left_out - structure.pruned
    extract = write_extract(live.work / f"{name}.extract", pca.keys)
    plink(*live.vcf(), "--extract", str(extract), "--pca", "4", "meanimpute", "--out", str(live.work / f"{name}.mi"))
    plink(*live.vcf(), "--extract", str(extract), "--pca", "4", "--out", str(live.work / f"{name}.def"))
    frame = live.fed.query(f"GWAS LINEAR ldl ~ age + sex + {name}1 + {name}2 WHERE maf >= 0.05")
    # PLINK's PCs with meanimpute are ours (to its 6 printed digits)
    beta, dp = _gwas_against(live, frame, live.work / f"{name}.mi.eigenvec", f"{name}_gwas_mi")
    assert beta.max() < 1e-4 and dp.max() < 1e-4, (beta.max(), dp.max())  # measured 1.3e-5 and 3.4e-6
    # its default PCs differ from ours by its missingness correction: so do the GWAS results, a little
    # (measured: BETA up to 0.021 SE, |d log10 P| up to 0.031; medians 8.2e-4 and 4.8e-3, pruned)
    beta, dp = _gwas_against(live, frame, live.work / f"{name}.def.eigenvec", f"{name}_gwas_def")
    assert beta.max() < 0.1 and dp.max() < 0.1, (beta.max(), dp.max())
    assert np.median(beta) < 5e-3 and np.median(dp) < 2e-2, (np.median(beta), np.median(dp))


def test_pca__in_the_clear__no_release_holds_a_person_or_a_score(live: Live) -> None:
    """Unmasked, every array a station releases for a PCA is per variant or a count: none has one entry per
    person of the station, none holds a stored score; the scores round releases only how many were scored."""
    fed = Federation(live.clients(), secure_aggregation="off", record_releases=True)
    fed.query("PCA 3 WHERE maf >= 0.05 AS ppc")
    assert fed.recording is not None and fed.structure.pca is not None
    stored = stored_scores(live.cohort, "ppc", 3)
    people, scores, records = {}, {}, {}
    for name, path in zip(live.cohort.stations, live.cohort.stores, strict=True):
        ds = Store.open(path).dataset("c")
        ids = ds.samples().column("sample_id").to_pylist()
        people[name] = len(ids)
        own = np.concatenate([stored[i] for i in ids])
        scores[name] = np.sort(np.concatenate([own, own**2]))  # a score, or its square
        (info,) = [d for d in Store.open(path).summary() if d["name"] == "c"]
        records[name] = {int(info["n_variants"]), int(info["n_records"])}
    assert len(set(people.values())) == len(people)  # each station's count is told apart
    kinds: dict[str, int] = {}
    for release in fed.recording.releases:
        assert release.payload is not None
        kind = str(release.request["kind"])
        kinds[kind] = kinds.get(kind, 0) + 1
        arrays = decode_arrays(release.payload)
        state = decode_state(release.request.get("state"))
        rows = {int(state["key_pos"].shape[0])} if "key_pos" in state else records[release.station]
        if kind == "pca_scores":  # the count scored, and per PC a few sums over the people scored
            assert set(arrays) <= {"n", "moments", "withheld"} and "n" in arrays, sorted(arrays)
            assert int(arrays["n"]) == people[release.station]
            assert "moments" not in arrays or arrays["moments"].shape == (len(MOMENTS), 3)
        for label, a in arrays.items():
            for d in a.shape:
                assert d in rows or d not in people.values(), (release.station, kind, label, a.shape)
            if a.dtype.kind == "f" and a.size:
                values = a.ravel()
                own = scores[release.station]
                at = np.clip(np.searchsorted(own, values), 1, own.shape[0] - 1)
                near = np.minimum(np.abs(own[at] - values), np.abs(own[at - 1] - values))
                assert not (near <= 1e-9 * np.abs(values)).any(), (release.station, kind, label)
    assert kinds.get("pca_scores") == 3 and kinds.get("pca_product", 0) >= 3, kinds
