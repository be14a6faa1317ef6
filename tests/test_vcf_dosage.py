"""ALT dosages from FORMAT DS, HDS and GP: stored units against cyvcf2's own decoded values, the text path
against the BCF path, plink2's rules on hand-made records, and bad values refused with clear errors.

The expected values of the hand-made records were measured with plink2 v2.00a3.5
(``plink2 --vcf t.vcf dosage=DS --make-pgen``, then ``--export A include-alt`` and ``--export ped``).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from better.engine.errors import InputError
from better.genomics.ingest import ingest_vcf
from better.genomics.packing import unpack_genotypes
from better.genomics.store import Store
from better.genomics.vcf import open_vcf
from tests.conftest import bgzip, write_text
from tests.test_ingest_errors import assert_no_trace

HEADER = """##fileformat=VCFv4.2
##contig=<ID=1>
##contig=<ID=X>
##INFO=<ID=R2,Number=1,Type=Float,Description="imputation r2">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allele depths">
##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dosage">
##FORMAT=<ID=HDS,Number=.,Type=Float,Description="Haplotype ALT dosages">
##FORMAT=<ID=GP,Number=G,Type=Float,Description="Genotype probabilities">
"""
MISSING = 65535


def vcf_text(samples: list[str], records: list[str], header: str = HEADER) -> str:
    cols = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(samples)
    return header + cols + "\n" + "".join(r + "\n" for r in records)


def stored(store: Store, name: str) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """The dosage units and hard-call codes ``(rows, samples)`` of a dataset, read straight from parquet."""
    ds = Store.open(store.path).dataset(name)
    table = pq.read_table(ds.variants_path)
    n = ds.n_samples
    units = np.frombuffer(b"".join(table.column("dosages").to_pylist()), dtype="<u2").reshape(table.num_rows, n)
    packed = np.frombuffer(b"".join(table.column("genotypes").to_pylist()), dtype=np.uint8)
    codes = unpack_genotypes(packed.reshape(table.num_rows, -1), n)
    return units, codes, table


# --- a slow, obviously correct twin of the rules, on the values cyvcf2 decodes -------------------------------


def _values(raw: np.ndarray | None, s: int) -> list[float | None] | None:
    """Sample ``s``'s values of a ``variant.format(...)`` array: None for '.', the list ends at htslib's
    vector-end marker."""
    if raw is None:
        return None
    row = np.ascontiguousarray(raw).reshape(raw.shape[0], -1)[s]
    out: list[float | None] = []
    for x, bits in zip(row.tolist(), row.view(np.uint32).tolist(), strict=True):
        if bits == 0x7F800002:
            break
        out.append(None if bits == 0x7F800001 else float(x))
    return out


def _units(dosage: float) -> int:
    return math.floor(dosage * 16384 + 0.5)


def _sample_units(field: str, vals: list[float | None] | None, k: int, n_alt: int, haploid: bool) -> int | None:
    """Units of ALT ``k`` from one sample's ``field`` values; None when they are missing."""
    if not vals or all(v is None for v in vals):
        return None
    if field == "DS":
        d = vals[k - 1]
        return None if d is None else _units(2 * d if haploid else d)
    if field == "HDS":
        return _units(2 * vals[0]) if len(vals) == 1 else _units(vals[0] + vals[1])  # type: ignore[operator]
    total = 0.0
    for p in vals:
        total += p  # type: ignore[operator]
    if total == 0.0:
        return MISSING
    if haploid:
        return _units(2 * vals[k] / total)  # type: ignore[operator]
    num, i = 0.0, 0
    for b in range(n_alt + 1):
        for a in range(b + 1):
            num += ((a == k) + (b == k)) * vals[i]  # type: ignore[operator]
            i += 1
    return _units(num / total)


def reference(path: str, field: str) -> tuple[np.ndarray, np.ndarray]:
    """Expected units and hard calls of every row (split as ``bcftools norm -m-``), from cyvcf2."""
    import cyvcf2

    units = []
    vcf = cyvcf2.VCF(path, strict_gt=False)
    n = len(vcf.samples)
    for v in vcf:
        n_alt = len(v.ALT)
        gts = v.genotypes if "GT" in v.FORMAT else [[-1, -1, False]] * n
        raw = v.format(field) if field in v.FORMAT else None
        ds = v.format("DS") if field == "HDS" and "DS" in v.FORMAT else None
        for k in range(1, max(n_alt, 1) + 1):
            row = []
            for s in range(n):
                alleles = gts[s][:-1]
                haploid = len(alleles) == 1
                if any(a < 0 for a in alleles):
                    code = 3
                else:
                    code = 2 * (alleles[0] == k) if haploid else sum(a == k for a in alleles)
                u = _sample_units(field, _values(raw, s), k, n_alt, haploid)
                if u is None and field == "HDS":
                    u = _sample_units("DS", _values(ds, s), k, n_alt, haploid)
                row.append((MISSING if code == 3 else 16384 * code) if u is None else u)
            units.append(row)
    u = np.array(units, dtype=np.int64)
    nearest = (u + 8192) // 16384
    hard = np.where((u != MISSING) & (np.abs(u - nearest * 16384) <= 1638), nearest, 3)
    return u, hard


# --- random VCFs of every shape ------------------------------------------------------------------------------


def _dosage(rng: np.random.Generator, top: float) -> str:
    """A DS value in [0, top] written in one of the ways VCFs write numbers (at most 3 decimals, so that
    htslib's float32 and the text path's double give the same units)."""
    special = ["0", "0.123", "1e-3", ".5", "1E-1", "0.1", "1", "2", "2.000", "+0.75", "5e-1"]
    choice = [s for s in special if float(s) <= top]
    if rng.random() < 0.3:
        return str(rng.choice(choice))
    return f"{rng.integers(0, int(top * 1000) + 1) / 1000:.3f}"


def _gt(rng: np.random.Generator, n_alt: int, haploid: bool) -> str:
    a = [str(x) for x in rng.integers(0, n_alt + 1, size=2)]
    r = rng.random()
    if r < 0.05:
        return "."
    if haploid:
        return a[0]
    if r < 0.1:
        return "./."
    if r < 0.13:
        return f"./{a[1]}"
    return a[0] + ("|" if rng.random() < 0.5 else "/") + a[1]


def _is_haploid(gt: str | None) -> bool:
    return gt is not None and "/" not in gt[1:] and "|" not in gt[1:]


def random_vcf(rng: np.random.Generator, field: str, n_samples: int = 23, n_records: int = 70) -> str:
    """Records mixing biallelic and multi-allelic sites, haploid samples, ``.`` and shortened fields, and
    the dosage field at varying FORMAT positions."""
    formats = {
        "DS": ["GT:DS", "DS:GT", "GT:AD:DS", "GT:DS:AD", "GT", "DS"],
        "HDS": ["GT:HDS", "GT:HDS:DS", "GT:DS:HDS", "HDS:GT", "GT:DS", "GT"],
        "GP": ["GT:GP", "GP:GT", "GT:AD:GP", "GT:DS:GP", "GT"],
    }[field]
    records = []
    for i in range(n_records):
        fmt = str(rng.choice(formats))
        n_alt = int(rng.choice([1, 1, 1, 2, 3])) if field != "HDS" or "HDS" not in fmt else 1
        chrom, haploid_record = ("X", True) if i >= n_records - 8 else ("1", False)
        alts = ",".join("CGTA"[:n_alt])
        samples = []
        for _ in range(n_samples):
            keys = fmt.split(":")
            gt = _gt(rng, n_alt, haploid_record) if "GT" in keys else None
            parts = {}
            for key in keys:
                if key == "GT":
                    parts[key] = gt
                elif key == "AD":
                    parts[key] = ",".join(str(x) for x in rng.integers(0, 30, size=n_alt + 1))
                else:
                    parts[key] = "."  # filled below once the ploidy is known
            # a GT cut off a shortened field reads as '.', which is haploid
            cut = len(keys) if rng.random() < 0.85 else int(rng.integers(1, len(keys) + 1))
            haploid = "GT" in keys and (keys.index("GT") >= cut or _is_haploid(gt))
            for key in keys:
                if key == "DS":
                    values = [
                        _dosage(rng, 1.0 if haploid else 2.0) if rng.random() < 0.9 else "." for _ in range(n_alt)
                    ]
                    parts[key] = "." if rng.random() < 0.1 else ",".join(values)
                elif key == "HDS":
                    r = rng.random()
                    one = f"{rng.integers(0, 1001) / 1000:.3f}"
                    two = f"{rng.integers(0, 1001) / 1000:.3f},{rng.integers(0, 1001) / 1000:.3f}"
                    parts[key] = "." if r < 0.1 else ".,." if r < 0.15 else one if r < 0.3 else two
                elif key == "GP":
                    size = n_alt + 1 if haploid else (n_alt + 1) * (n_alt + 2) // 2
                    weights = rng.integers(0, 9, size=size) / 8  # exact in float32: dyadic probabilities
                    if rng.random() < 0.05:
                        weights[:] = 0
                    parts[key] = "." if rng.random() < 0.1 else ",".join(f"{w:g}" for w in weights)
            samples.append(":".join(str(parts[k]) for k in keys[:cut]))
        records.append(f"{chrom}\t{100 + i}\t.\tA\t{alts}\t.\tPASS\tR2=0.{i % 10}\t{fmt}\t" + "\t".join(samples))
    return vcf_text([f"s{j}" for j in range(n_samples)], records)


@pytest.mark.parametrize("field", ["DS", "HDS", "GP"])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_vcf__stored_dosages_match_cyvcf2_values(field: str, seed: int, store: Store, tmp_path: Path) -> None:
    path = write_text(tmp_path / "r.vcf", random_vcf(np.random.default_rng(seed), field))
    gz = bgzip(path, tmp_path / "r.vcf.gz")
    want_units, want_codes = reference(str(path), field)
    for name, src in (("plain", path), ("gz", gz)):
        report = ingest_vcf(store, name, str(src), dosage=field)
        assert report.dosage_field == field
        units, codes, table = stored(store, name)
        np.testing.assert_array_equal(units, want_units)
        np.testing.assert_array_equal(codes, want_codes)
        assert ((units % 16384 != 0) & (units != MISSING)).mean() > 0.3  # mostly real dosages
        counts = np.stack([table.column(c).to_numpy() for c in ("n_hom_ref", "n_het", "n_hom_alt", "n_missing")], 1)
        np.testing.assert_array_equal(counts, np.stack([(want_codes == c).sum(1) for c in range(4)], 1))


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools is needed to write BCF")
@pytest.mark.parametrize("field", ["DS", "HDS", "GP"])
def test_text_path__equals_bcf_path_byte_for_byte(field: str, tmp_path: Path) -> None:
    path = write_text(tmp_path / "r.vcf", random_vcf(np.random.default_rng(7), field, n_samples=41, n_records=90))
    bcf = tmp_path / "r.bcf"
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(path)], check=True, capture_output=True)
    tables = []
    for src in (path, bcf):
        header, batches = open_vcf(str(src), dosage=field)
        assert header.dosage_field == field
        tables.append(pa.Table.from_batches([b for b, _ in batches]))
    text, binary = tables
    for column in ("dosages", "genotypes", "n_hom_ref", "n_het", "n_hom_alt", "n_missing", "alt", "imputation_r2"):
        assert text.column(column).equals(binary.column(column)), column


def test_gt_ds_one_pass__equals_the_general_reader(tmp_path: Path) -> None:
    # a biallelic GT:DS line is read in one pass (vcf_numba._gt_ds_line), which takes the common shapes
    # (``easy``) and hands a line with any other (``odd``) to the general readers; the same samples written
    # DS:GT always go through the general readers: both must give the same dosages, hard calls and counts
    easy = ["0/0:0", "0|1:1", "1/1:2", "./.:1.2", "./1:0.5", "1/.:.", "0/1:.", "0/1", "1:0.7", "0:.", ".:0.25",
            "1", "0/1:1.91", "0/0:0.0999", "0/0:0.1001", "0/1:1.", "0/1:.5", "0|0:00.75", "0/0:0.0",
            "1/1:1.999999999999"]  # fmt: skip
    odd = ["0/1:1e-1", "0/1:+0.5", "0/1:0.123456789012345678", "0/1:1.9999999999999999", "0/1:.,.", "01/1:0.3",
           "/0/1:0.4", "1/1:2.00000000000000000"]  # fmt: skip
    samples = easy + odd
    swapped = [":".join(reversed((f + ":.").split(":")[:2])) for f in samples]  # a shortened field: DS '.'
    records = [
        f"1\t{100 + i}\t.\tA\tG\t.\t.\t.\t{fmt}\t" + "\t".join(values)
        for i, (fmt, values) in enumerate(
            [
                ("GT:DS", easy + easy[: len(odd)]),
                ("DS:GT", swapped[: len(easy)] + swapped[: len(odd)]),
                ("GT:DS", samples),
                ("DS:GT", swapped),
            ]
        )
    ]
    path = write_text(tmp_path / "a.vcf", vcf_text([f"s{i}" for i in range(len(samples))], records))
    table = pa.Table.from_batches([b for b, _ in open_vcf(str(path), dosage="DS")[1]])
    for column in ("dosages", "genotypes", "n_hom_ref", "n_het", "n_hom_alt", "n_missing"):
        values = table.column(column).to_pylist()
        assert values[0] == values[1] and values[2] == values[3], column
    units = np.frombuffer(table.column("dosages")[0].as_py(), dtype="<u2")
    assert units[easy.index("1:0.7")] == 22938 and units[easy.index("0/1:.")] == 16384
    assert units[easy.index("1/.:.")] == MISSING and units[easy.index("0/1:1.91")] == 31293
    # the first line is the one pass's, the third is not
    from better.genomics import vcf_numba

    code_of = np.full(33, 255, dtype=np.uint8)
    code_of[[0, 1, 2, 4, 5, 8]] = [0, 1, 2, 3, 3, 3]
    value = np.full(256, 16, dtype=np.uint8)
    value[[ord("0"), ord("1"), ord(".")]] = [0, 1, 4]
    for line, taken in ((records[0], True), (records[2], False)):
        buf = np.frombuffer(line.encode(), dtype=np.uint8)
        start = len("\t".join(line.split("\t")[:9])) + 1
        out = np.zeros(8, np.uint8), np.zeros(4, np.int32), np.zeros(len(samples), np.uint16)
        assert vcf_numba._gt_ds_line(buf, start, len(buf), len(samples), *out, value, code_of) == taken


def test_auto__takes_the_first_declared_of_ds_hds_gp(tmp_path: Path) -> None:
    record = ["1\t100\t.\tA\tG\t.\t.\t.\tGT:DS\t0/1:0.9"]
    path = write_text(tmp_path / "a.vcf", vcf_text(["a"], record))
    assert open_vcf(str(path))[0].dosage_field == "DS"
    assert open_vcf(str(path), dosage="none")[0].dosage_field is None
    assert open_vcf(str(path), dosage="GP")[0].dosage_field == "GP"

    def without(*ids: str) -> str:
        return "".join(line + "\n" for line in HEADER.splitlines() if not any(f"<ID={i}," in line for i in ids))

    hds_record = ["1\t100\t.\tA\tG\t.\t.\t.\tGT:HDS\t0|1:0.4,0.5"]
    hds = write_text(tmp_path / "h.vcf", vcf_text(["a"], hds_record, without("DS")))
    assert open_vcf(str(hds))[0].dosage_field == "HDS"
    bare = write_text(tmp_path / "b.vcf", vcf_text(["a"], record, without("DS", "HDS", "GP")))
    assert open_vcf(str(bare))[0].dosage_field is None
    with pytest.raises(InputError, match="declares no FORMAT/DS"):
        open_vcf(str(bare), dosage="DS")
    if shutil.which("bcftools"):
        bcf = tmp_path / "a.bcf"
        subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(hds)], check=True, capture_output=True)
        assert open_vcf(str(bcf))[0].dosage_field == "HDS"


def test_no_dosage__no_dosages_column(store: Store, tmp_path: Path) -> None:
    path = write_text(tmp_path / "a.vcf", vcf_text(["a", "b"], ["1\t100\t.\tA\tG\t.\t.\t.\tGT:DS\t0/1:1.91\t0/0:0.5"]))
    report = ingest_vcf(store, "d", str(path), dosage="none")
    assert report.dosage_field is None
    table = pq.read_table(store.dataset("d").variants_path)
    assert "dosages" not in table.column_names and table.column("n_het").to_pylist() == [1]


# --- plink2's rules, on records whose plink2 output was measured -------------------------------------------


def ingest_one(store: Store, tmp_path: Path, records: list[str], samples: int, dosage: str) -> tuple[list, list]:
    """Ingest hand-made records; return the stored ALT dosage units and hard calls of each row."""
    names = [f"s{i + 1}" for i in range(samples)]
    header = HEADER if dosage != "GP" else HEADER.replace("##FORMAT=<ID=DS,", "##FORMAT=<ID=XDS,")
    ingest_vcf(store, "d", str(write_text(tmp_path / "t.vcf", vcf_text(names, records, header))), dosage=dosage)
    units, codes, _ = stored(store, "d")
    return units.tolist(), codes.tolist()


def plink2_says(export_a: list[str], ped: list[str]) -> tuple[list, list]:
    """What plink2 printed for REF A / ALT G records: ``--export A include-alt`` (it counts REF) per
    variant, and ``--export ped`` genotypes per sample; as ALT units and hard calls per variant."""
    units = [
        [MISSING if x == "NA" else 32768 - math.floor(float(x) * 16384 + 0.5) for x in line.split()]
        for line in export_a
    ]
    calls = [[3 if g == "00" else g.count("G") for g in line.split()] for line in ped]
    return units, [list(c) for c in zip(*calls, strict=True)]


def test_ds__plink2_rules(store: Store, tmp_path: Path) -> None:
    records = [
        # DS decides the hard call (GT ignored); '.' and absent DS fall back to GT
        "1\t100\tv1\tA\tG\t.\t.\t.\tGT:DS\t0/1:1.91\t0/0:0.5\t0/1:.\t./.:.\t1/1:0.0999\t0/0:0.1",
        # 0.1 (1638 units) is still a hard call, 1639 units no longer
        "1\t200\tv2\tA\tG\t.\t.\t.\tGT:DS\t0/0:0.10003\t0/0:0.10009\t0/0:0.1001\t0/0:1.9\t0/0:1.89993\t0/0:1e-1",
        # a haploid (and a '.' GT, haploid too) doubles DS; a shortened field has no DS
        "1\t300\tv3\tA\tG\t.\t.\t.\tGT:DS\t1:0.6\t0:.\t.:0.6\t1:0.3\t.\t0/1:+0.5",
        "1\t400\tv4\tA\tG\t.\t.\t.\tGT:DS\t0/0:1e-3\t0/0:1E+0\t0/0:-0\t0/0:0.05e1\t0/0:2\t1/1",
    ]
    want = plink2_says(
        [
            "0.09 1.5 1 NA 1.9001 1.9",
            "1.89996 1.8999 1.8999 0.1 0.1001 1.9",
            "0.8 2 0.8 1.4 NA 1.5",
            "1.999 1 2 1.5 0 0",
        ],
        ["GG 00 00 AA", "00 00 AA GA", "GA 00 00 AA", "00 GG 00 00", "AA 00 00 GG", "AA AA 00 GG"],
    )
    assert ingest_one(store, tmp_path, records, 6, "DS") == want


def test_hds__plink2_rules(store: Store, tmp_path: Path) -> None:
    records = [
        # HDS wins over DS; a missing HDS falls back to DS, then GT; one value counts twice
        "1\t100\tv1\tA\tG\t.\t.\t.\tGT:HDS:DS\t0|1:0.2,0.7:1.5\t0|0:.:1.5\t1|1:.\t0/1:.,.:0.3\t1:0.4:1.9\t0/0:0.3:1.0",
        "1\t200\tv2\tA\tG\t.\t.\t.\tGT:HDS\t0|1:0.2,0.7\t0|0:.\t1|1:0,1\t0/1:1,1\t1:0.45\t1|0:0.95,0.05",
    ]
    want = plink2_says(
        ["1.1 0.5 0 1.7 1.2 1.4", "1.1 2 1 0 1.1 1"], ["GA GA", "00 AA", "GG GA", "00 GG", "00 GA", "00 GA"]
    )
    assert ingest_one(store, tmp_path, records, 6, "HDS") == want


def test_gp__plink2_rules(store: Store, tmp_path: Path) -> None:
    records = [
        # not summing to 1 is normalised, all zero is missing (GT ignored), haploid GP has 2 values
        "1\t100\tv1\tA\tG\t.\t.\t.\tGT:GP\t0/1:0.1,0.8,0.1\t0/0:0.5,0.5,0.5\t1/1:0,0,0\t0/1:.\t1:0.2,0.6\t"
        "0/0:0.2,0.3,0.3\t.:0.1,0.2\t0/1:0.25,0.25,0",
        "1\t200\tv2\tA\tG\t.\t.\t.\tGT:GP\t0/0:1,0,0\t1/1:0.001,0.001,0.999\t0/0:0,0,0.001\t1:0,0\t1:0.3,0.3\t"
        "0:1,0\t1/1:1e-1,0,0\t0/0",
    ]
    want = plink2_says(
        ["1 1 NA 1 0.5 0.875 0.6667 1.5", "2 0.003 0 NA 1 2 2 2"],
        ["GA AA", "GA GG", "00 GG", "GA 00", "00 GA", "00 AA", "00 AA", "00 AA"],
    )
    assert ingest_one(store, tmp_path, records, 8, "GP") == want


def units_of(*dosages: float | None) -> list[int]:
    return [MISSING if d is None else math.floor(d * 16384 + 0.5) for d in dosages]


def test_ds__multiallelic_rows_get_their_values(store: Store, tmp_path: Path) -> None:
    """plink2 v2.00a3.5 refuses multi-allelic dosages; these are its values after ``bcftools norm -m-``
    (which writes an empty DS for a lone '.', that plink2 refuses: here it leaves the rows to GT)."""
    records = ["1\t100\tv1\tA\tG,T\t.\t.\t.\tGT:DS\t0/1:0.9,0.2\t1/2:.,0.7\t2/2:.\t0/0:0.1,0.1\t1:0.4,0.3"]
    units, codes = ingest_one(store, tmp_path, records, 5, "DS")
    assert units == [units_of(0.9, 1.0, 0.0, 0.1, 0.8), units_of(0.2, 0.7, 2.0, 0.1, 0.6)]
    assert codes == [[1, 1, 0, 0, 3], [3, 3, 2, 0, 3]]


def test_gp__multiallelic_is_the_expected_allele_count(store: Store, tmp_path: Path) -> None:
    # diploid genotypes 0/0 0/1 1/1 0/2 1/2 2/2; haploid 0 1 2
    records = ["1\t100\tv1\tA\tG,T\t.\t.\t.\tGT:GP\t1/2:0,0,0,0,1,0\t0/2:0,0.25,0,0.5,0.25,0\t2:0,0.5,0.5"]
    units, codes = ingest_one(store, tmp_path, records, 3, "GP")
    assert units == [units_of(1.0, 0.5, 1.0), units_of(1.0, 0.75, 1.0)]
    assert codes == [[1, 3, 1], [1, 3, 1]]


def test_chunk_size__does_not_change_dosages(tmp_path: Path) -> None:
    path = write_text(tmp_path / "r.vcf", random_vcf(np.random.default_rng(3), "DS", n_samples=9, n_records=40))
    whole = pa.Table.from_batches([b for b, _ in open_vcf(str(path), chunk_bytes=1 << 22)[1]])
    small = pa.Table.from_batches([b for b, _ in open_vcf(str(path), chunk_bytes=300)[1]])
    assert whole.equals(small) and "dosages" in whole.column_names


# --- bad values ------------------------------------------------------------------------------------------


BAD = [
    ("DS", "0/1:2.5", "outside [0, 2]"),
    ("DS", "0/1:-0.1", "outside [0, 2]"),
    ("DS", "1:1.5", "outside [0, 2] (a haploid"),
    ("DS", "0/1:abc", "not a list of numbers"),
    ("DS", "0/1:0.5abc", "not a list of numbers"),
    ("DS", "0/1:", "not a list of numbers"),
    ("DS", "0/1:nan", "not a list of numbers"),
    ("DS", "0/1:0.5,0.2", "has 2 value(s); it needs one per ALT allele (1)"),
    ("HDS", "0|1:1.2,0", "each haplotype dosage must lie in [0, 1]"),
    ("HDS", "0|1:0.3,.", "not a list of numbers"),
    ("HDS", "0|1:.,0.3", "not a list of numbers"),
    ("HDS", "0|1:0.1,0.2,0.3", "has 3 value(s)"),
    ("GP", "0/1:0.5,1.5,0", "each genotype probability must lie in [0, 1]"),
    ("GP", "0/1:0.5,0.5", "has 2 value(s); it needs 3 for a diploid genotype"),
    ("GP", "1:0.1,0.2,0.7", "has 3 value(s); it needs 2 for a haploid genotype"),
    ("GP", "0/1:0.5,x,0", "not a list of numbers"),
]


@pytest.mark.parametrize(("field", "sample", "fragment"), BAD)
def test_bad_value__names_file_line_record_and_sample(
    field: str, sample: str, fragment: str, store: Store, tmp_path: Path
) -> None:
    good = "0/0:" + {"DS": "0", "HDS": "0,0", "GP": "1,0,0"}[field]
    records = [
        f"1\t100\t.\tA\tG\t.\t.\t.\tGT:{field}\t{good}\t{good}",
        f"1\t250\t.\tA\tG\t.\t.\t.\tGT:{field}\t{good}\t{sample}",
    ]
    path = write_text(tmp_path / "bad.vcf", vcf_text(["ok", "bad_one"], records))
    with pytest.raises(InputError) as info:
        ingest_vcf(store, "ds", str(path), dosage=field)
    message = str(info.value)
    for want in (str(path), "line 12", "1:250", "'bad_one'", f"FORMAT/{field}", fragment):
        assert want in message, message
    assert_no_trace(store)


def test_multiallelic_hds__refused(store: Store, tmp_path: Path) -> None:
    records = ["1\t100\t.\tA\tG,T\t.\t.\t.\tGT:HDS\t0|1:.\t1|2:0.9,0.8"]
    path = write_text(tmp_path / "bad.vcf", vcf_text(["a", "b"], records))
    with pytest.raises(InputError, match=r"multi-allelic.*--dosage DS") as info:
        ingest_vcf(store, "ds", str(path), dosage="HDS")
    assert "'b'" in str(info.value) and "1:100" in str(info.value)
    assert_no_trace(store)


def test_multiallelic_ds__wrong_count_refused(store: Store, tmp_path: Path) -> None:
    records = ["1\t100\t.\tA\tG,T\t.\t.\t.\tGT:DS\t0/1:0.9,0\t1/2:0.9"]
    path = write_text(tmp_path / "bad.vcf", vcf_text(["a", "b"], records))
    with pytest.raises(InputError, match=r"has 1 value\(s\); it needs one per ALT allele \(2\)"):
        ingest_vcf(store, "ds", str(path), dosage="DS")
    assert_no_trace(store)


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools is needed to write BCF")
@pytest.mark.parametrize(
    ("field", "sample", "fragment"),
    [
        ("DS", "0/1:2.5", "FORMAT/DS '2.5' is outside [0, 2]"),
        ("GP", "0/1:0.5,0.5", "FORMAT/GP '0.5,0.5' has 2 value(s)"),
        ("HDS", "0|1:0.5,.", "FORMAT/HDS '0.5,.' is not a list of numbers"),
    ],
)
def test_bad_value__bcf_path_same_message(field: str, sample: str, fragment: str, store: Store, tmp_path: Path) -> None:
    records = [f"1\t100\t.\tA\tG\t.\t.\t.\tGT:{field}\t0/0\t{sample}"]
    path = write_text(tmp_path / "bad.vcf", vcf_text(["ok", "bad_one"], records))
    bcf = tmp_path / "bad.bcf"
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(path)], check=True, capture_output=True)
    for src in (path, bcf):
        with pytest.raises(InputError) as info:
            ingest_vcf(store, "ds", str(src), dosage=field)
        assert fragment in str(info.value) and "'bad_one'" in str(info.value) and "1:100" in str(info.value)
        assert_no_trace(store)


def test_cli__dosage_option(tmp_path: Path) -> None:
    from tests.servers import better

    st = tmp_path / "st"
    assert better("station", "init", "--station", str(st), "--name", "milano").returncode == 0
    path = write_text(tmp_path / "a.vcf", vcf_text(["a", "b"], ["1\t100\t.\tA\tG\t.\t.\t.\tGT:DS\t0/1:1.91\t0/0:0.5"]))
    r = better("ingest", "--station", str(st), "--dataset", "d", "--vcf", str(path), "--dosage", "DS")
    assert r.returncode == 0, r.stderr
    assert "dosages: FORMAT/DS" in r.stderr
    r = better("ingest", "--station", str(st), "--dataset", "e", "--vcf", str(path), "--dosage", "none")
    assert r.returncode == 0 and "dosages:" not in r.stderr
    r = better("ingest", "--station", str(st), "--dataset", "f", "--vcf", str(path), "--dosage", "XX")
    assert r.returncode != 0 and "'XX' is not one of" in r.stderr
