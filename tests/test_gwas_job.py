"""`better gwas`: outputs (GWAS-SSF, PLINK-style tables, plots, report) and resuming a killed job."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from better.jobs.gwas import run_job
from better.query.output import LINEAR
from better.station_api.config import Policy
from tests.servers import make_station, serve

SSF_REQUIRED = ["chromosome", "base_pair_location", "effect_allele", "other_allele"]


@pytest.fixture(scope="module")
def federation(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("job")
    entries = []
    with ExitStack() as stack:
        for name in ("milano", "nijmegen", "barcelona"):
            # every variant may leave: this tests the job's outputs; withholding is tested with the server
            open_policy = Policy(min_cell_count=1, min_minor_allele_count=0, min_samples_per_parameter=1)
            st = make_station(root, name, small_cohort, policy=open_policy)
            url = stack.enter_context(serve(st.path))
            entries.append(f'[[station]]\nname = "{name}"\nurl = "{url}"\ntoken = "{st.researcher}"\n')
        (root / "federation.toml").write_text("\n".join(entries))
        (root / "genes.bed").write_text(
            "#chrom\tstart\tend\tname\n22\t16000000\t16050000\tGENEA\n22\t16100000\t16200000\tGENEB\n"
        )
        yield root


def write_job(root: Path, out: str) -> Path:
    job = root / f"{out}.toml"
    job.write_text(
        f'federation = "federation.toml"\nout = "{out}"\ncovariates = ["age", "sex", "pc1"]\n'
        'variants = "maf >= 0.05"\nchunk_bp = 20000\nannotation = "genes.bed"\nadjust_station = true\n\n'
        '[[phenotype]]\nname = "ldl"\nmodel = "linear"\n\n[[phenotype]]\nname = "case"\nmodel = "logistic"\n'
    )
    return job


def check_ssf(path: Path, effect: str) -> int:
    """Check a GWAS-SSF data file and its metadata; return its number of rows."""
    meta = yaml.safe_load(Path(f"{path}-meta.yaml").read_text())
    assert meta["file_type"].startswith("GWAS-SSF") and meta["data_file_name"] == path.name
    assert meta["data_file_md5sum"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert meta["coordinate_system"] == "1-based" and meta["is_sorted"] is True
    for key in ("genome_assembly", "trait_description", "samples", "date_metadata_last_modified"):
        assert key in meta
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    header = lines[0].split("\t")
    assert header[:6] == [*SSF_REQUIRED, effect, "standard_error"]
    assert header[6:8] == ["effect_allele_frequency", "p_value"]
    last = (0, 0)
    for line in lines[1:]:
        f = dict(zip(header, line.split("\t"), strict=True))
        assert all(v != "" and v != "NA" for v in f.values())  # missing is written #NA
        key = (int(f["chromosome"]), int(f["base_pair_location"]))
        assert key >= last
        last = key
        assert f["effect_allele"] and f["other_allele"] and f["effect_allele"] != f["other_allele"]
        p = float(f["p_value"])
        assert 0 <= p <= 1 and math.isfinite(float(f[effect])) and float(f["standard_error"]) > 0
        assert abs(-math.log10(p) - float(f["neg_log_10_p_value"])) < 1e-4 * max(1, -math.log10(p)) if p > 0 else True
        assert 0 <= float(f["effect_allele_frequency"]) <= 1
    return len(lines) - 1


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag == "table":
            self.tables += 1


def test_job__writes_ssf_tables_plots_and_a_report(federation: Path) -> None:
    result = run_job(write_job(federation, "full"))
    out = result.out
    assert result.chunks_run > 3 and result.chunks_reused == 0
    assert check_ssf(out / "ldl.tsv.gz", "beta") > 50
    assert check_ssf(out / "case.tsv.gz", "odds_ratio") > 50
    glm = (out / "ldl.glm.linear").read_text().splitlines()
    assert glm[0].split("\t")[:12] == LINEAR
    assert (out / "case.glm.logistic").read_text().splitlines()[0].split("\t")[8:12] == [
        "OR",
        "LOG(OR)_SE",
        "Z_STAT",
        "P",
    ]
    for name in ("ldl", "case"):
        for suffix in ("manhattan.png", "qq.png"):
            assert (out / f"{name}.{suffix}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        top = (out / f"{name}.top_hits.tsv").read_text().splitlines()
        assert "NEAREST_GENE" in top[0] and len(top) > 5
        assert math.isfinite(result.lambdas[name])
    page = Images()
    page.feed((out / "report.html").read_text())
    assert len(page.images) == 4 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.tables >= 4  # top hits x2, stations, run time
    text = (out / "report.html").read_text()
    for needle in ("GWAS LINEAR ldl ~ age + sex + pc1", "λGC", "milano", "data sha256", "logistic_newton", "withheld"):
        assert needle in text, needle
    again = run_job(write_job(federation, "full"))  # a finished job: nothing to compute again
    assert again.chunks_run == 0


@pytest.mark.slow
def test_job__killed_midway_and_resumed__writes_the_same_bytes(federation: Path) -> None:
    reference = run_job(write_job(federation, "reference")).out
    job = write_job(federation, "resumed")
    chunks = federation / "resumed" / ".chunks"
    proc = subprocess.Popen([sys.executable, "-m", "better.cli", "gwas", str(job)])
    deadline = time.monotonic() + 120
    # the first chunk is done when both phenotypes' parts are there (they are written one after the other)
    while not (chunks.exists() and all((chunks / f"{ph}.00000.parquet").exists() for ph in ("ldl", "case"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it could be stopped"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(chunks.glob("*.parquet")))
    n_chunks = len(list((reference / ".chunks").glob("*.parquet")))
    assert 0 < done_before < n_chunks, "stopped too late to test resuming"
    result = run_job(job)
    assert result.chunks_reused > 0
    for name in (
        "ldl.glm.linear",
        "case.glm.logistic",
        "ldl.tsv.gz",
        "case.tsv.gz",
        "ldl.tsv.gz-meta.yaml",
        "case.top_hits.tsv",
        "ldl.manhattan.png",
        "case.qq.png",
    ):
        assert (result.out / name).read_bytes() == (reference / name).read_bytes(), name


def test_job__refuses_an_out_folder_of_another_job(federation: Path) -> None:
    run_job(write_job(federation, "first"))
    other = federation / "other.toml"
    other.write_text(write_job(federation, "first").read_text().replace("maf >= 0.05", "maf >= 0.2"))
    with pytest.raises(Exception, match="holds the results of a different job"):
        run_job(other)


def test_job__computes_pcs_first_and_uses_them_as_covariates(federation: Path) -> None:
    job = federation / "withpcs.toml"
    job.write_text(
        'federation = "federation.toml"\nout = "withpcs"\ncovariates = ["age", "sex"]\nvariants = "maf >= 0.05"\n'
        'chunk_bp = 100000\n\n[pca]\npcs = 3\nname = "jpc"\nuse = 2\nprune = "50 5 0.2"\n\n'
        '[[phenotype]]\nname = "ldl"\nmodel = "linear"\n'
    )
    result = run_job(job)
    out = result.out
    eig = (out / "pca.eigenval.tsv").read_text().splitlines()
    assert eig[0].split("\t")[:2] == ["PC", "EIGENVALUE"] and len(eig) == 4
    assert (out / "pca.scree.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = (out / "pca.weights.tsv").read_text().splitlines()
    assert weights[0].split("\t")[-3:] == ["PC1", "PC2", "PC3"] and len(weights) > 50
    text = (out / "report.html").read_text()
    assert "Principal components" in text and "GWAS LINEAR ldl ~ age + sex + jpc1 + jpc2" in text
    meta = yaml.safe_load(Path(f"{out / 'ldl.tsv.gz'}-meta.yaml").read_text())
    assert meta["covariates"] == ["age", "sex", "jpc1", "jpc2"]
    # resumed: the PCs are not computed again (the stations keep them), and nothing else either
    before = (out / "pca.eigenval.tsv").stat().st_mtime_ns
    assert run_job(job).chunks_run == 0 and (out / "pca.eigenval.tsv").stat().st_mtime_ns == before
