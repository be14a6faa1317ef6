"""Random record shapes (fast fixed-stride lines mixed with general ones) parse as cyvcf2 reads them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from better.genomics.packing import unpack_genotypes
from better.genomics.store import packed_view
from better.genomics.vcf import open_vcf
from tests.reference import cyvcf2_rows
from tests.zoo import vcf

BIALLELIC = ["0|0", "0/1", "1|0", "1/1", "./.", ".|.", "0", "1", ".", "./1", "0|."]
MULTI = [*BIALLELIC, "1/2", "2|2", "0/2", "2"]


@st.composite
def records(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    n = draw(st.integers(1, 9))
    samples = [f"s{i}" for i in range(n)]
    lines = []
    for pos in sorted(draw(st.sets(st.integers(1, 10_000), min_size=1, max_size=12))):
        n_alt = draw(st.sampled_from([1, 1, 1, 2]))
        alts = ["G", "T"][:n_alt]
        fmt = draw(st.sampled_from(["GT", "GT", "GT:DP"]))
        gts = [draw(st.sampled_from(BIALLELIC if n_alt == 1 else MULTI)) for _ in range(n)]
        fields = [g + (":7" if fmt == "GT:DP" else "") for g in gts]
        lines.append("\t".join(["22", str(pos), ".", "A", ",".join(alts), ".", ".", ".", fmt, *fields]))
    return samples, lines


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.sampled_from([40, 200, 1 << 20]))
def test_text_reader__random_shapes_match_cyvcf2(case: tuple[list[str], list[str]], chunk: int) -> None:
    samples, lines = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.vcf"
        path.write_text(vcf(samples, lines))
        _, batches = open_vcf(str(path), chunk_bytes=chunk)
        got = []
        for batch, _ in batches:
            codes = unpack_genotypes(packed_view(batch.column("genotypes"), len(samples)), len(samples))
            got += [(r["pos"], r["alt"], c.tolist()) for r, c in zip(batch.to_pylist(), codes, strict=True)]
        want = [(r["pos"], r["alt"], r["codes"]) for r in cyvcf2_rows(str(path))]
    assert got == want
