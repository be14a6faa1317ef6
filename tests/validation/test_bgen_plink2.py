"""BGEN dosages from the store against plink2's, for every sample and variant.

Reference command (run by the test, for each BGEN)::

    plink2 --bgen F.bgen ref-first --sample F.sample --export A include-alt --out F

Inputs: BGENs written by ``tests.test_ingest_plink_bgen.write_bgen`` with random probability numerators
(8-, 10- and 16-bit, unphased and phased, missing samples; these hit plink2's rounding ties often at 8
bits), and plink2's own export of a VCF with dosages (``--export bgen-1.2 ref-first bits=8``).
``--export A`` counts the REF allele unless told otherwise; the header names the counted allele, and the
test compares ``2 - ALT dosage`` where it is REF. plink2 prints each dosage as the shortest decimal that
reads back as its 1/16384 step, so the printed value times 16384, rounded, is plink2's stored integer: the
comparison is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from better.genomics.bgen import bgen_source
from better.genomics.dosage import DOSAGE_MISSING
from better.genomics.ingest import ingest_variants
from better.genomics.store import Store
from tests.test_ingest_plink_bgen import dosage_vcf, stored, write_bgen
from tests.validation.conftest import needs, plink

pytestmark = needs("plink2")


def plink2_raw(bgen: Path) -> tuple[list[str], np.ndarray]:
    """``plink2 --bgen F ref-first --sample S --export A include-alt``: the counted allele of each variant and
    the values (NaN missing), ``(variants, samples)``."""
    out = bgen.with_suffix("")
    plink("--bgen", str(bgen), "ref-first", "--sample", str(bgen.with_suffix(".sample")), "--export", "A",
          "include-alt", "--out", str(out))  # fmt: skip
    lines = out.with_suffix(".raw").read_text().splitlines()
    counted = [c.rsplit("_", 1)[1].split("(")[0] for c in lines[0].split("\t")[6:]]
    values = np.array([[np.nan if x == "NA" else float(x) for x in line.split("\t")[6:]] for line in lines[1:]])
    return counted, values.T


def check_against_plink2(store: Store, bgen: Path) -> int:
    """Ingest ``bgen`` and compare every dosage with plink2's printed one; the number of entries compared."""
    ingest_variants(store, "b", bgen_source(str(bgen), str(bgen.with_suffix(".sample")), ref="first"))
    meta, _, units = stored(store, "b")
    assert units is not None
    counted, theirs = plink2_raw(bgen)
    assert theirs.shape == units.shape
    for v, allele in enumerate(counted):
        assert allele in (meta["ref"][v], meta["alt"][v]), (v, allele)
        missing = units[v] == DOSAGE_MISSING
        assert np.array_equal(missing, np.isnan(theirs[v])), v
        alt = units[v][~missing].astype(np.int64)
        ours = alt if allele == meta["alt"][v] else 32768 - alt
        # plink2 prints the shortest decimal that reads back as its 1/16384 step: read it back the same way
        assert np.array_equal(ours, np.rint(theirs[v][~missing] * 16384)), (bgen.name, v)
    return units.size


@pytest.mark.parametrize(("bits", "phased"), [(8, False), (16, False), (10, False), (8, True), (16, True)])
def test_random_probabilities__dosages_equal_plink2(store: Store, tmp_path: Path, bits: int, phased: bool) -> None:
    bgen = write_bgen(tmp_path / "r.bgen", 120, 150, bits, phased=phased, seed=bits + phased, certain=7)
    assert check_against_plink2(store, bgen) == 120 * 150


def test_plink2_export__dosages_equal_plink2(store: Store, tmp_path: Path) -> None:
    vcf = dosage_vcf(tmp_path / "d.vcf", 150, 200, seed=9)
    plink("--vcf", str(vcf), "dosage=DS", "--export", "bgen-1.2", "ref-first", "bits=8", "--out", str(tmp_path / "d"))
    assert check_against_plink2(store, tmp_path / "d.bgen") == 150 * 200
