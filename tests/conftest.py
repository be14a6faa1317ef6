from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from better.genomics.store import Store
from better.genomics.synth import SynthConfig, synthesize
from better.station_api.config import StationConfig, write_config

# Numba compiles a kernel the first time a test calls it: a per-example deadline would fail that example.
settings.register_profile("better", deadline=None)
settings.load_profile("better")


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cohort: 300 samples, 600 sites, 3 stations."""
    out = tmp_path_factory.mktemp("cohort")
    synthesize(SynthConfig(out=str(out), samples=300, variants=600, stations=3, seed=7))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = tmp_path / "station"
    s = Store.create(st)
    write_config(st, StationConfig(name="test"))
    return s


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def bgzip(src: Path, dst: Path) -> Path:
    import pysam

    pysam.tabix_compress(str(src), str(dst), force=True)
    return dst


@pytest.fixture(scope="session")
def bam_cohort(small_cohort: Path) -> Path:
    """Indexed BAMs of 6 samples per station of the small cohort (``small_cohort/bam``)."""
    from better.genomics.synth_bam import BamConfig, synthesize_bams

    out = small_cohort / "bam"
    if not (out / "targets.bed").exists():
        synthesize_bams(small_cohort, ["milano", "nijmegen", "barcelona"], BamConfig(samples_per_station=6))
    return out
