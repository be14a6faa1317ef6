"""``better ingest --bfile/--pfile/--bgen``: PLINK 1, PLINK 2 and BGEN inputs made by plink2 from one VCF with
dosages, ingested and compared with what the readers themselves decode (pgenlib, cbgen) and with the same data
ingested from the VCF, for every sample and variant; and bad inputs refused with a clear error.

Inputs (made by the ``files`` fixture)::

    plink2 --vcf ds.vcf dosage=DS --make-pgen | --make-bed --out ds
    plink2 --vcf ds.vcf dosage=DS --export bgen-1.2 ref-first bits=16 | bgen-1.3 ref-first --out ds12 | ds13
    plink2 --vcf hds.vcf dosage=HDS --export bgen-1.2 ref-first --out phased
    plink2 --vcf multi.vcf --make-pgen --out multi       # multi-allelic hard calls

plus BGENs written by ``write_bgen`` (random numerators; a multi-allelic variant, a haploid sample), which
tests/validation/test_bgen_plink2.py also holds against plink2.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from better.engine.errors import InputError
from better.genomics.bgen import bgen_source
from better.genomics.dosage import DOSAGE_MISSING
from better.genomics.ingest import VariantSource, ingest_variants, ingest_vcf
from better.genomics.packing import unpack_genotypes
from better.genomics.plink_files import bed_source, pgen_header, pgen_source
from better.genomics.store import Store
from tests.servers import better
from tests.test_ingest_errors import assert_no_trace

N_SAMPLES, N_VARIANTS = 37, 80  # 37: the last packed byte is part padding


def dosage_vcf(path: Path, n: int, m: int, seed: int, *, phased: bool = False, chrom: str = "1") -> Path:
    """A VCF of ``m`` biallelic records x ``n`` samples with GT and DS (or, ``phased``, GT and HDS), about 2%
    missing, on chromosomes ``chrom`` and 2."""
    rng = np.random.default_rng(seed)
    field = "HDS" if phased else "DS"
    lines = [
        "##fileformat=VCFv4.2",
        f"##contig=<ID={chrom}>",
        "##contig=<ID=2>",
        '##INFO=<ID=AF,Number=A,Type=Float,Description="frequency">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="genotype">',
        f'##FORMAT=<ID={field},Number={"." if phased else "A"},Type=Float,Description="dosage">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"])
        + "".join(f"\ts{i}" for i in range(n)),
    ]
    for v in range(m):
        p = rng.uniform(0.05, 0.6)
        haps = np.clip(rng.binomial(1, p, (n, 2)) + rng.normal(0, 0.12, (n, 2)), 0, 1).round(3)
        missing = rng.random(n) < 0.02
        cells = []
        for i in range(n):
            a, b = (int(np.rint(h)) for h in haps[i])
            if missing[i]:
                cells.append(f"{'.|.' if phased else './.'}:.")
            elif phased:
                cells.append(f"{a}|{b}:{haps[i, 0]:g},{haps[i, 1]:g}")
            else:
                ds = haps[i].sum()
                g = int(np.rint(ds))
                cells.append(f"{['0/0', '0/1', '1/1'][g]}:{ds:.3f}")
        c, pos = (chrom, 1000 + 17 * v) if v < m // 2 else ("2", 500 + 13 * v)
        ref, alt = "ACGT"[v % 4], "ACGT"[(v + 1) % 4]
        info = f"AF={p:.3f}"
        lines.append("\t".join([c, str(pos), f"rs{v}", ref, alt, "50", "PASS", info, f"GT:{field}", *cells]))
    path.write_text("\n".join(lines) + "\n")
    return path


MULTI_VCF = """##fileformat=VCFv4.2
##contig=<ID=1>
##INFO=<ID=AC,Number=A,Type=Integer,Description="count">
##FORMAT=<ID=GT,Number=1,Type=String,Description="genotype">
#CHROM	POS	ID	REF	ALT	QUAL	FILTER	INFO	FORMAT	a	b	c	d	e
1	100	rs1	A	G	50	PASS	AC=3	GT	0/0	0/1	1/1	./.	0/1
1	300	rs3	G	A,C,T	.	PASS	AC=2,3,1	GT	0/1	1/2	2/2	./.	0/3
1	400	rs4	T	TA	.	.	.	GT	0/0	0/1	1/1	0/1	./.
"""


def _pack(values: np.ndarray, bits: int) -> bytes:
    """Values ``bits`` wide, least significant bits first, as BGEN layout 2 stores probabilities."""
    acc = 0
    for i, v in enumerate(values.tolist()):
        acc |= int(v) << (i * bits)
    return acc.to_bytes(-(-len(values) * bits // 8), "little")


def write_bgen(
    path: Path,
    n: int,
    m: int,
    bits: int,
    *,
    phased: bool,
    seed: int,
    three_alleles: int = -1,
    haploid: int = -1,
    certain: int = -1,
) -> Path:
    """A zlib-compressed BGEN v1.2 of ``m`` biallelic diploid variants with random probability numerators
    (5% of samples missing), sample IDs stored, and its ``.sample`` file. Variant ``three_alleles`` (if any)
    has three alleles, variant ``haploid`` a haploid first sample, and variant ``certain`` only
    probabilities of 0 and 1 (as for a typed variant)."""
    rng = np.random.default_rng(seed)
    denom = (1 << bits) - 1
    samples = [f"id{i}" for i in range(n)]
    ids = b"".join(struct.pack("<H", len(s)) + s.encode() for s in samples)
    sample_block = struct.pack("<II", 8 + len(ids), n) + ids
    flags = 1 | (2 << 2) | (1 << 31)  # zlib, layout 2, sample IDs stored
    header = struct.pack("<III", 20, m, n) + b"bgen" + struct.pack("<I", flags)
    out = [struct.pack("<I", len(header) + len(sample_block)), header, sample_block]
    for v in range(m):
        rsid, pos = f"rs{v}".encode(), 100 + 7 * v
        alleles = ([b"A", b"G"] if v % 2 else [b"C", b"TT"]) + ([b"T"] if v == three_alleles else [])
        out.append(struct.pack("<H", 0) + struct.pack("<H", len(rsid)) + rsid + struct.pack("<H", 1) + b"1")
        out.append(struct.pack("<IH", pos, len(alleles)) + b"".join(struct.pack("<I", len(a)) + a for a in alleles))
        missing = rng.random(n) < 0.05
        if phased:
            k = rng.integers(0, denom + 1, size=(n, 2))
        else:
            aa = rng.integers(0, denom + 1, size=n)
            k = np.stack([aa, (rng.random(n) * (denom - aa + 1)).astype(np.int64)], axis=1)
        if v == certain:  # every genotype certain: numerators 0 or all of the denominator
            k = np.zeros_like(k)
            k[np.arange(n), rng.integers(0, 2, size=n)] = denom
        k[missing] = 0
        ploidy = np.where(missing, 0x82, 2).astype(np.uint8)
        values = k.ravel()
        if v == three_alleles:  # unphased: 5 stored values a sample (6 genotypes)
            values = np.zeros(5 * n, dtype=np.int64)
        if v == haploid:  # the first sample: one allele, one stored value
            ploidy[0], values = 1, values[1:]
        data = struct.pack("<IHBB", n, len(alleles), 1 if v == haploid else 2, 2) + ploidy.tobytes()
        data += bytes([int(phased), bits]) + _pack(values, bits)
        packed = zlib.compress(data)
        out.append(struct.pack("<II", len(packed) + 4, len(data)) + packed)
    path.write_bytes(b"".join(out))
    path.with_suffix(".sample").write_text("ID_1 ID_2 missing\n0 0 0\n" + "".join(f"{s} {s} 0\n" for s in samples))
    return path


def plink2(*args: str) -> None:
    subprocess.run(["plink2", *args, "--threads", "1"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("plink2") is None:
        if os.environ.get("BETTER_REQUIRE_TOOLS"):
            pytest.fail("plink2 not found on PATH; BETTER_REQUIRE_TOOLS is set")
        pytest.skip("plink2 not found on PATH (apt-get install plink2)")
    d = tmp_path_factory.mktemp("plinkfiles")
    vcf = dosage_vcf(d / "ds.vcf", N_SAMPLES, N_VARIANTS, seed=3)
    plink2("--vcf", str(vcf), "dosage=DS", "--make-pgen", "--out", str(d / "ds"))
    plink2("--vcf", str(vcf), "dosage=DS", "--make-bed", "--out", str(d / "ds"))
    plink2("--vcf", str(vcf), "dosage=DS", "--export", "bgen-1.2", "ref-first", "bits=16", "--out", str(d / "ds12"))
    plink2("--vcf", str(vcf), "dosage=DS", "--export", "bgen-1.3", "ref-first", "--out", str(d / "ds13"))
    plink2("--vcf", str(vcf), "dosage=DS", "--export", "bgen-1.1", "--out", str(d / "ds11"))
    hds = dosage_vcf(d / "hds.vcf", N_SAMPLES, 30, seed=4, phased=True)
    plink2("--vcf", str(hds), "dosage=HDS", "--export", "bgen-1.2", "ref-first", "--out", str(d / "phased"))
    (d / "multi.vcf").write_text(MULTI_VCF)
    plink2("--vcf", str(d / "multi.vcf"), "--make-pgen", "--out", str(d / "multi"))
    return d


def stored(store: Store, name: str) -> tuple[dict[str, list], np.ndarray, np.ndarray | None]:
    """A dataset's variant columns, genotype codes ``(variants, samples)`` and dosage units (or None)."""
    ds = store.dataset(name)
    table = pq.read_table(ds.variants_path)
    n = ds.n_samples
    packed = np.frombuffer(table.column("genotypes").combine_chunks().buffers()[1], np.uint8)
    codes = unpack_genotypes(packed.reshape(table.num_rows, -1), n)
    units = None
    if "dosages" in table.column_names:
        raw = table.column("dosages").combine_chunks().buffers()[1]
        units = np.frombuffer(raw, "<u2").reshape(table.num_rows, n)
    meta = table.drop_columns([c for c in ("genotypes", "dosages") if c in table.column_names]).to_pydict()
    return meta, codes, units


def pgenlib_reads(path: Path, n: int, dosages: bool) -> np.ndarray:
    """pgenlib's own decoding of a .pgen/.bed: dosage units, or genotype codes (3 missing)."""
    import pgenlib

    reader = pgenlib.PgenReader(str(path).encode(), raw_sample_ct=n)
    m = reader.get_variant_ct()
    if dosages:
        d = np.empty((m, n), dtype=np.float64)
        reader.read_dosages_range(0, m, d)
        return np.where(d < 0, DOSAGE_MISSING, np.rint(d * 16384)).astype(np.uint16)
    g = np.empty((m, n), dtype=np.int8)
    reader.read_range(0, m, g)
    return np.where(g < 0, 3, g)


def cbgen_alt_dosages(path: Path) -> np.ndarray:
    """ALT (second allele) dosages from cbgen's probabilities: P(het) + 2 P(hom-ALT), or the two haplotypes'
    ALT probabilities summed; NaN missing."""
    import tempfile

    import cbgen

    out = []
    with tempfile.TemporaryDirectory() as tmp, cbgen.bgen_file(path) as bgen:
        bgen.create_metafile(Path(tmp) / "m")
        with cbgen.bgen_metafile(Path(tmp) / "m") as mf:
            for p in range(mf.npartitions):
                for offset in mf.read_partition(p).variants.offset:
                    g = bgen.read_genotype(int(offset))
                    pr = g.probability
                    d = pr[:, 1] + pr[:, 3] if g.phased else pr[:, 1] + 2 * pr[:, 2]
                    out.append(np.where(g.missing, np.nan, d))
    return np.array(out)


@pytest.fixture(scope="module")
def from_vcf(files: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list], np.ndarray, np.ndarray]:
    """The VCF with dosages, ingested the VCF way: the reference the other formats must match."""
    store = Store.create(tmp_path_factory.mktemp("vcfstore") / "st")
    ingest_vcf(store, "v", str(files / "ds.vcf"), dosage="DS")
    meta, codes, units = stored(store, "v")
    assert units is not None
    return meta, codes, units


def ingest(store: Store, source: VariantSource) -> tuple[dict[str, list], np.ndarray, np.ndarray | None]:
    ingest_variants(store, "d", source)
    return stored(store, "d")


SAME = ("chrom", "pos", "id", "ref", "alt", "record", "alt_index")


def test_pgen__dosages_equal_pgenlib_and_the_vcf(store: Store, files: Path, from_vcf: tuple) -> None:
    source = pgen_source(str(files / "ds"))
    assert source.dosages and source.samples == [f"s{i}" for i in range(N_SAMPLES)]
    meta, codes, units = ingest(store, source)
    assert units is not None and units.shape == (N_VARIANTS, N_SAMPLES)
    assert np.array_equal(units, pgenlib_reads(files / "ds.pgen", N_SAMPLES, dosages=True))
    assert np.array_equal(codes, pgenlib_reads(files / "ds.pgen", N_SAMPLES, dosages=False))
    vmeta, vcodes, vunits = from_vcf
    assert np.array_equal(units, vunits) and np.array_equal(codes, vcodes)
    assert (units == DOSAGE_MISSING).any() and ((units % 16384) != 0).any()
    for c in (*SAME, "qual", "filter", "info"):
        assert meta[c] == vmeta[c], c
    assert meta["n_missing"] == vmeta["n_missing"] and meta["n_het"] == vmeta["n_het"]
    catalog = store.summary()[0]
    assert catalog["name"] == "d"


def test_bed__hard_calls_equal_pgenlib_and_the_vcf(store: Store, files: Path, from_vcf: tuple) -> None:
    source = bed_source(str(files / "ds"))
    assert not source.dosages and source.format == "bed"
    meta, codes, units = ingest(store, source)
    assert units is None
    assert np.array_equal(codes, pgenlib_reads(files / "ds.bed", N_SAMPLES, dosages=False))
    vmeta, vcodes, _ = from_vcf
    assert np.array_equal(codes, vcodes)  # plink2 --make-bed writes the hard calls of the dosages
    for c in SAME:
        assert meta[c] == vmeta[c], c
    counts = np.stack([(codes == k).sum(axis=1) for k in range(4)], axis=1)
    assert np.array_equal(counts, np.array([meta[c] for c in ("n_hom_ref", "n_het", "n_hom_alt", "n_missing")]).T)


@pytest.mark.parametrize("name", ["ds12", "ds13"])
def test_bgen__dosages_equal_cbgen_probabilities_and_the_vcf(
    store: Store, files: Path, from_vcf: tuple, name: str
) -> None:
    source = bgen_source(str(files / f"{name}.bgen"), str(files / f"{name}.sample"), ref="first")
    assert source.samples == [f"s{i}" for i in range(N_SAMPLES)] and source.dosages
    meta, codes, units = ingest(store, source)
    assert units is not None
    expected = cbgen_alt_dosages(files / f"{name}.bgen")
    missing = np.isnan(expected)
    assert np.array_equal(units == DOSAGE_MISSING, missing)
    assert np.abs(units[~missing] / 16384 - expected[~missing]).max() <= 0.5 / 16384 + 1e-12
    vmeta, vcodes, vunits = from_vcf
    assert np.array_equal(units, vunits)  # 16-bit probabilities carry the 1/16384 dosages exactly
    assert np.array_equal(codes, vcodes)
    for c in ("chrom", "pos", "id", "ref", "alt"):
        assert meta[c] == vmeta[c], c


def test_bgen__ref_last_swaps_alleles_and_dosages(store: Store, files: Path, from_vcf: tuple) -> None:
    meta, codes, units = ingest(store, bgen_source(str(files / "ds12.bgen"), str(files / "ds12.sample"), "last"))
    vmeta, vcodes, vunits = from_vcf
    assert meta["ref"] == vmeta["alt"] and meta["alt"] == vmeta["ref"]
    assert units is not None
    called = vunits != DOSAGE_MISSING
    assert np.array_equal(units[called], 32768 - vunits[called].astype(np.int64))
    assert np.array_equal(units[~called], vunits[~called])
    assert np.array_equal(np.where(vcodes == 3, 3, 2 - vcodes), codes)


def test_bgen__phased_dosage_is_the_sum_of_haplotype_probabilities(store: Store, files: Path) -> None:
    source = bgen_source(str(files / "phased.bgen"))  # sample IDs stored in the file
    assert source.samples == [f"s{i}" for i in range(N_SAMPLES)]
    _, _, units = ingest(store, source)
    expected = cbgen_alt_dosages(files / "phased.bgen")
    missing = np.isnan(expected)
    assert units is not None and np.array_equal(units == DOSAGE_MISSING, missing)
    assert np.abs(units[~missing] / 16384 - expected[~missing]).max() <= 0.5 / 16384 + 1e-12


def test_pgen_multiallelic__one_row_per_alt_as_the_vcf_splits_it(store: Store, files: Path, tmp_path: Path) -> None:
    source = pgen_source(str(files / "multi.pgen"))  # a prefix given with its extension
    assert not source.dosages
    meta, codes, _ = ingest(store, source)
    other = Store.create(tmp_path / "other")
    ingest_vcf(other, "v", str(files / "multi.vcf"))
    vmeta, vcodes, _ = stored(other, "v")
    assert meta["alt"] == ["G", "A", "C", "T", "TA"] and meta["alt_index"] == [1, 1, 2, 3, 1]
    for c in (*SAME, "info"):
        assert meta[c] == vmeta[c], c
    assert np.array_equal(codes, vcodes)
    assert codes[2].tolist() == [0, 1, 2, 3, 0]  # 1/2 counts one C; 2/2 two


def test_pvar_without_header__read_as_bim_columns(store: Store, files: Path, tmp_path: Path) -> None:
    for ext in (".pgen", ".psam"):
        shutil.copy(files / f"ds{ext}", tmp_path / f"nohead{ext}")
    shutil.copy(files / "ds.bim", tmp_path / "nohead.pvar")
    meta, _, units = ingest(store, pgen_source(str(tmp_path / "nohead")))
    assert units is not None and meta["alt"][:3] == ["C", "G", "T"] and meta["qual"][0] is None


def test_pgen_header__finds_dosages_past_the_first_variant_block(tmp_path: Path, files: Path) -> None:
    n = (1 << 16) + 5
    head = "##fileformat=VCFv4.2\n##contig=<ID=1>\n"
    head += '##FORMAT=<ID=GT,Number=1,Type=String,Description="g">\n'
    head += '##FORMAT=<ID=DS,Number=A,Type=Float,Description="d">\n'
    head += "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb\n"
    body = "".join(f"1\t{i + 1}\t.\tA\tG\t.\t.\t.\tGT\t0/1\t0/0\n" for i in range(n))
    (tmp_path / "late.vcf").write_text(head + body + f"1\t{n + 1}\t.\tA\tG\t.\t.\t.\tGT:DS\t0/1:0.8\t0/0:0\n")
    (tmp_path / "none.vcf").write_text(head + body)
    for name in ("late", "none"):
        plink2("--vcf", str(tmp_path / f"{name}.vcf"), "dosage=DS", "--make-pgen", "--out", str(tmp_path / name))
    assert pgen_header(str(tmp_path / "late.pgen")).dosages
    assert not pgen_header(str(tmp_path / "none.pgen")).dosages
    assert not pgen_header(str(files / "multi.pgen")).dosages and pgen_header(str(files / "ds.pgen")).dosages


# --- bad input: a clear InputError naming the file and the fix, and no dataset left behind ---------------


def fails(store: Store, open_source: object, *fragments: str) -> str:
    with pytest.raises(InputError) as info:
        ingest_variants(store, "ds", open_source())  # type: ignore[operator]
    message = str(info.value)
    for f in fragments:
        assert f in message, message
    assert_no_trace(store)
    return message


def copy_fileset(src: Path, dst: Path, exts: tuple[str, ...]) -> Path:
    for ext in exts:
        shutil.copy(src.with_suffix(ext), dst.with_suffix(ext))
    return dst


def test_truncated_bed(store: Store, files: Path, tmp_path: Path) -> None:
    p = copy_fileset(files / "ds", tmp_path / "cut", (".bed", ".bim", ".fam"))
    data = (tmp_path / "cut.bed").read_bytes()
    (tmp_path / "cut.bed").write_bytes(data[:-7])
    fails(store, lambda: bed_source(str(p)), "cut.bed", "truncated", "3 + 80 x 10")


def test_fam_that_does_not_match_the_bed(store: Store, files: Path, tmp_path: Path) -> None:
    p = copy_fileset(files / "ds", tmp_path / "odd", (".bed", ".bim", ".fam"))
    with open(tmp_path / "odd.fam", "a") as f:
        f.write("".join(f"x extra{i} 0 0 0 -9\n" for i in range(4)))  # 41 samples: 11 bytes a variant, not 10
    fails(store, lambda: bed_source(str(p)), "odd.bed", "41 samples", "odd.fam", "not its own")


def test_not_a_bed(store: Store, files: Path, tmp_path: Path) -> None:
    p = copy_fileset(files / "ds", tmp_path / "junk", (".bed", ".bim", ".fam"))
    (tmp_path / "junk.bed").write_bytes(b"hello world")
    fails(store, lambda: bed_source(str(p)), "junk.bed", "not a PLINK 1 .bed")


@pytest.mark.parametrize(
    ("prefix", "exts", "gone"), [("ds", (".bed", ".fam"), ".bim"), ("ds", (".pgen", ".pvar"), ".psam")]
)
def test_missing_companion_file(store: Store, files: Path, tmp_path: Path, prefix: str, exts: tuple, gone: str) -> None:
    p = copy_fileset(files / prefix, tmp_path / "part", exts)
    opener = bed_source if gone == ".bim" else pgen_source
    fails(store, lambda: opener(str(p)), f"part{gone}", "no such file", "PREFIX")


def test_pvar_that_does_not_match_the_pgen(store: Store, files: Path, tmp_path: Path) -> None:
    p = copy_fileset(files / "ds", tmp_path / "short", (".pgen", ".pvar", ".psam"))
    lines = (tmp_path / "short.pvar").read_text().splitlines(keepends=True)
    (tmp_path / "short.pvar").write_text("".join(lines[:-1]))
    fails(store, lambda: pgen_source(str(p)), "short.pgen", "80 variants", "lists 79")


def test_unsorted_bim(store: Store, files: Path, tmp_path: Path) -> None:
    p = copy_fileset(files / "ds", tmp_path / "unsorted", (".bed", ".bim", ".fam"))
    lines = (tmp_path / "unsorted.bim").read_text().splitlines(keepends=True)
    lines[4], lines[5] = lines[5], lines[4]
    (tmp_path / "unsorted.bim").write_text("".join(lines))
    fails(store, lambda: bed_source(str(p)), "unsorted.bim", "line 6", "--sort-vars")


def test_bgen_sample_file_with_another_sample_count(store: Store, files: Path, tmp_path: Path) -> None:
    sample = tmp_path / "short.sample"
    sample.write_text("".join((files / "ds12.sample").read_text().splitlines(keepends=True)[:-3]))
    fails(store, lambda: bgen_source(str(files / "ds12.bgen"), str(sample)), "short.sample", "34 samples", "holds 37")


def test_bgen_v11_and_truncated_and_not_a_bgen(store: Store, files: Path, tmp_path: Path) -> None:
    fails(store, lambda: bgen_source(str(files / "ds11.bgen"), str(files / "ds11.sample")), "v1.1", "bgen-1.2")
    cut = tmp_path / "cut.bgen"
    cut.write_bytes((files / "ds12.bgen").read_bytes()[:5000])
    fails(
        store, lambda: bgen_source(str(cut), str(files / "ds12.sample")), "cut.bgen: variant 27 of 80", "is truncated"
    )
    fails(store, lambda: bgen_source(str(files / "ds.vcf")), "ds.vcf", "not a BGEN file")
    fails(store, lambda: bgen_source(str(files / "ds12.bgen"), str(tmp_path / "none.sample")), "none.sample")


def test_bgen_unsorted(store: Store, files: Path, tmp_path: Path) -> None:
    lines = dosage_vcf(tmp_path / "u.vcf", 8, 10, seed=1).read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines[first + 1], lines[first + 2] = lines[first + 2], lines[first + 1]  # 1:1034 before 1:1017
    (tmp_path / "u.vcf").write_text("".join(lines))
    plink2(
        "--vcf", str(tmp_path / "u.vcf"), "dosage=DS", "--export", "bgen-1.2", "ref-first", "--out", str(tmp_path / "u")
    )
    fails(
        store, lambda: bgen_source(str(tmp_path / "u.bgen")), "u.bgen: variant 3", "1:1017 comes after 1:1034", "sort"
    )


def test_bgen_multiallelic_and_haploid_variants(store: Store, tmp_path: Path) -> None:
    bgen = write_bgen(tmp_path / "m.bgen", 6, 4, 8, phased=False, seed=1, three_alleles=2)
    fails(store, lambda: bgen_source(str(bgen)), "m.bgen: variant 3 (1:114 rs2)", "3 alleles", "biallelic")
    bgen = write_bgen(tmp_path / "h.bgen", 6, 4, 8, phased=False, seed=1, haploid=1)
    fails(store, lambda: bgen_source(str(bgen)), "h.bgen: variant 2", "ploidy other than 2", "--make-pgen")
    bgen = write_bgen(tmp_path / "ok.bgen", 6, 4, 8, phased=False, seed=1)
    ingest_variants(store, "ds", bgen_source(str(bgen), str(bgen.with_suffix(".sample"))))


# --- the command line ---------------------------------------------------------------------------------------


def test_cli__one_variant_input_exactly(files: Path, tmp_path: Path) -> None:
    st = tmp_path / "st"
    assert better("station", "init", "--station", str(st), "--name", "a").returncode == 0
    r = better("ingest", "--station", str(st), "--dataset", "d")
    assert r.returncode == 1 and "no variant file given" in r.stderr and "--bfile PREFIX" in r.stderr
    r = better("ingest", "--station", str(st), "--dataset", "d", "--vcf", "x.vcf", "--bgen", "y.bgen")
    assert r.returncode == 1 and "--vcf and --bgen given together" in r.stderr
    for args in (
        ["--bfile", str(files / "ds")],
        ["--pfile", str(files / "ds")],
        ["--bgen", str(files / "ds12.bgen"), "--sample", str(files / "ds12.sample"), "--bgen-ref", "first"],
    ):
        r = better("ingest", "--station", str(st), "--dataset", "d", *args)
        assert r.returncode == 0, r.stderr
        assert f"{N_SAMPLES} samples" in r.stderr and f"{N_VARIANTS} variants" in r.stderr
    assert "dosages: from the bgen file" in r.stderr
    r = better("ingest", "--station", str(st), "--dataset", "e", "--bfile", str(files / "nothing"))
    assert r.returncode == 1 and "nothing.bed: no such file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("phased", [False, True])
def test_bgen__certain_genotypes_are_exact_dosages(tmp_path: Path, phased: bool) -> None:
    """All-0/1 probabilities fit every precision's grid: the dosage rounding must use the file's own bits."""
    bgen = write_bgen(tmp_path / "c.bgen", 30, 3, 16, phased=phased, seed=5, certain=1)
    store = Store.create(tmp_path / "st")
    ingest_variants(store, "c", bgen_source(str(bgen), str(bgen.with_suffix(".sample"))))
    _, _, units = stored(store, "c")
    assert units is not None
    called = units[1][units[1] != 65535]
    assert called.size and set(called.tolist()) <= {0, 16384, 32768}
