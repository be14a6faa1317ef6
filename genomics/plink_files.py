"""PLINK filesets as :class:`~better.genomics.ingest.VariantSource`: PLINK 1 (``.bed``/``.bim``/``.fam``) and
PLINK 2 (``.pgen``/``.pvar``/``.psam``), read the way ``plink2 --bfile`` and ``plink2 --pfile`` read them.

* ``.bed``: hard calls only. ``.bim`` column 5 (A1) is ALT and column 6 (A2) is REF, as ``plink2 --bfile``
  takes them; an allele code ``0`` (missing) is stored as ``.``. The 2-bit ``.bed`` codes (00 hom-A1,
  01 missing, 10 het, 11 hom-A2) are turned into ours (:mod:`better.genomics.schema`) by a byte lookup table.
* ``.pgen``: through ``pgenlib``. A ``.pgen`` that stores dosages gives a dataset with dosages (the
  ``.pgen``'s own 1/16384 units, genotypes their hard calls); otherwise hard calls. A multi-allelic ``.pvar``
  row becomes one row per ALT, as ``bcftools norm -m-`` splits a VCF record: the row of ALT ``k`` holds the
  count of allele ``k`` (pgenlib's ``allele_idx``), so ``1/2`` is a het in both rows.
* Sample IDs are the IIDs (``.fam`` column 2, the ``.psam`` IID column).
* Numeric chromosome codes are written the way plink2 writes them: ``01`` is ``1``, ``23`` ``X``, ``24``
  ``Y``, ``25`` ``XY`` and ``26`` ``MT``.

Memory is bounded: variants are read a batch at a time (at most :data:`BATCH_ROWS` rows and about
:data:`BATCH_BYTES` of genotypes), never the whole file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import pyarrow as pa

from better.engine.errors import InputError
from better.genomics.dosage import DOSAGE_MISSING, DOSAGE_ONE, hard_calls
from better.genomics.ingest import VariantSource
from better.genomics.packing import pack_genotypes
from better.genomics.paths import input_file
from better.genomics.schema import packed_width
from better.genomics.vcf import SortChecker
from better.genomics.vcf_batches import build_batch
from better.genomics.vcf_header import split_info

#: Most variant rows in one batch.
BATCH_ROWS = 4096
#: About this many bytes of decoded genotypes (or dosages) in one batch.
BATCH_BYTES = 16 << 20

BED_MAGIC = b"\x6c\x1b"
#: PLINK 1 numeric chromosome codes past the autosomes, as plink2 writes them.
PLINK_CHROMS = {"23": "X", "24": "Y", "25": "XY", "26": "MT"}
_INFO_NUMBER = re.compile(r"^##INFO=<ID=([^,>]+),Number=([^,>]+)")


def plink_chrom(code: str) -> str:
    """A chromosome code as plink2 writes it: leading zeros dropped, 23-26 named.

    Examples
    --------
    >>> [plink_chrom(c) for c in ("1", "01", "23", "26", "chr2", "X", "0")]
    ['1', '1', 'X', 'MT', 'chr2', 'X', '0']
    """
    if code.isdigit():
        code = code.lstrip("0") or "0"
        return PLINK_CHROMS.get(code, code)
    return code


def batch_rows(row_bytes: int) -> int:
    """Rows per batch for rows of ``row_bytes`` bytes: at most :data:`BATCH_ROWS`, about :data:`BATCH_BYTES`.

    Examples
    --------
    >>> batch_rows(100), batch_rows(1 << 20), batch_rows(1 << 30)
    (4096, 16, 1)
    """
    return max(1, min(BATCH_ROWS, BATCH_BYTES // max(1, row_bytes)))


def fileset(prefix: str, extensions: tuple[str, ...], what: str) -> list[str]:
    """The files ``prefix + ext`` of a fileset, each checked to be a readable file.

    A prefix given with one of the extensions (``data.bed`` for ``data``) is taken without it.
    """
    prefix = os.fspath(prefix)
    for ext in extensions:
        if prefix.endswith(ext) and not os.path.exists(prefix + extensions[0]):
            prefix = prefix[: -len(ext)]
            break
    names = " + ".join(extensions)
    return [input_file(prefix + ext, f"{ext} file (a {what} is PREFIX{names})") for ext in extensions]


def check_unique(samples: list[str], path: str) -> None:
    """Refuse empty or duplicate sample IDs, naming the first offender."""
    seen: dict[str, int] = {}
    for i, s in enumerate(samples):
        if not s:
            raise InputError(f"{path}: sample {i + 1} has an empty ID")
        if s in seen:
            raise InputError(
                f"{path}: sample ID {s!r} appears twice (samples {seen[s] + 1} and {i + 1}); the IIDs must be "
                "unique (rename one)"
            )
        seen[s] = i


def _data_lines(f: TextIO, first_line: int) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the non-blank lines of ``f``, without line ends."""
    for number, line in enumerate(f, first_line):
        line = line.rstrip("\r\n")
        if line.strip():
            yield number, line


def open_text(path: str) -> TextIO:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd":
        kind = "zstd" if magic[0] == 0x28 else "gzip"
        raise InputError(f"{path}: a {kind}-compressed file; decompress it first (e.g. `{kind} -d`)")
    return open(path, encoding="utf-8", errors="replace")


def read_fam(path: str) -> list[str]:
    """The IIDs (column 2) of a ``.fam`` file.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".fam", delete=False) as f:
    ...     _ = f.write("f1 a 0 0 1 -9\\nf1 b 0 0 2 -9\\n")
    >>> read_fam(f.name)
    ['a', 'b']
    """
    samples = []
    with open_text(path) as f:
        for number, line in _data_lines(f, 1):
            cols = line.split()
            if len(cols) < 2:
                raise InputError(f"{path}: line {number}: {len(cols)} column; a .fam line is FID IID PAT MAT SEX PHENO")
            samples.append(cols[1])
    check_unique(samples, path)
    return samples


def read_psam(path: str) -> list[str]:
    """The IIDs of a ``.psam`` file (the IID column of its ``#FID``/``#IID`` header, else ``.fam`` order)."""
    samples = []
    iid = 1  # no header line: .fam columns
    with open_text(path) as f:
        for number, line in _data_lines(f, 1):
            if line.startswith("##"):
                continue
            if line.startswith("#"):
                names = line[1:].split()
                if "IID" not in names:
                    raise InputError(f"{path}: line {number}: the header line has no IID column")
                iid = names.index("IID")
                continue
            cols = line.split()
            if len(cols) <= iid:
                raise InputError(f"{path}: line {number}: no IID (column {iid + 1})")
            samples.append(cols[iid])
    check_unique(samples, path)
    return samples


@dataclass
class VariantTable:
    """The layout of a ``.bim`` or ``.pvar``: which column holds what, and where the records start."""

    path: str
    columns: dict[str, int]
    first_line: int  # the 1-based line of the first record
    info_number: dict[str, str] = field(default_factory=dict)
    tabs: bool = True  # fields split on tabs (a .pvar with a header line), else on any whitespace

    def width(self) -> int:
        return max(self.columns.values()) + 1


#: ``.bim`` columns: CHROM, ID, CM, POS, A1 (ALT), A2 (REF); without CM, as plink2 accepts a headerless .pvar.
BIM_COLUMNS = {"CHROM": 0, "ID": 1, "POS": 3, "ALT": 4, "REF": 5}
BIM_COLUMNS_NO_CM = {"CHROM": 0, "ID": 1, "POS": 2, "ALT": 3, "REF": 4}


def pvar_layout(path: str) -> VariantTable:
    """The layout of a ``.pvar``: its ``#CHROM`` header line, or ``.bim`` columns when it has none."""
    info_number: dict[str, str] = {}
    with open_text(path) as f:
        for number, line in _data_lines(f, 1):
            if line.startswith("##"):
                m = _INFO_NUMBER.match(line)
                if m:
                    info_number[m.group(1)] = m.group(2)
                continue
            if line.startswith("#CHROM"):
                names = line[1:].split("\t") if "\t" in line else line[1:].split()
                columns = {name: i for i, name in enumerate(names)}
                missing = [c for c in ("CHROM", "POS", "ID", "REF", "ALT") if c not in columns]
                if missing:
                    raise InputError(f"{path}: line {number}: the #CHROM header line has no {', '.join(missing)}")
                return VariantTable(path, columns, number + 1, info_number, tabs="\t" in line)
            if line.startswith("#"):
                raise InputError(f"{path}: line {number}: a header line must start with ## or #CHROM")
            n = len(line.split())
            if n not in (5, 6):
                raise InputError(
                    f"{path}: line {number}: {n} columns; a .pvar without a #CHROM header line has .bim columns "
                    "(CHROM ID [CM] POS ALT REF)"
                )
            return VariantTable(path, BIM_COLUMNS if n == 6 else BIM_COLUMNS_NO_CM, number, info_number, tabs=False)
    return VariantTable(path, BIM_COLUMNS, 1)


def iter_records(table: VariantTable, rows: int) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
    """The records of a ``.bim``/``.pvar`` in chunks of ``rows``: ``(line numbers, split fields)``."""
    width = table.width()
    with open_text(table.path) as f:
        for _ in range(table.first_line - 1):
            f.readline()
        lines: list[int] = []
        fields: list[list[str]] = []
        for number, line in _data_lines(f, table.first_line):
            cols = line.split("\t") if table.tabs else line.split()
            if len(cols) < width:
                raise InputError(f"{table.path}: line {number}: {len(cols)} columns where {width} are expected")
            lines.append(number)
            fields.append(cols)
            if len(fields) == rows:
                yield np.array(lines, dtype=np.int64), fields
                lines, fields = [], []
        if fields:
            yield np.array(lines, dtype=np.int64), fields


def count_records(table: VariantTable) -> tuple[int, np.ndarray | None]:
    """The number of records of a ``.bim``/``.pvar`` and, when any has several ALTs, pgenlib's
    ``allele_idx_offsets`` (``n + 1`` cumulative allele counts); ``None`` when every record is biallelic."""
    alt = table.columns["ALT"]
    n_alleles: list[int] = []
    multi = False
    for _lines, fields in iter_records(table, 1 << 16):
        counts = [2 + cols[alt].count(",") for cols in fields]
        multi = multi or max(counts) > 2
        n_alleles.extend(counts)
    if not multi:
        return len(n_alleles), None
    offsets = np.zeros(len(n_alleles) + 1, dtype=np.uintp)
    np.cumsum(np.array(n_alleles, dtype=np.uintp), out=offsets[1:])
    return len(n_alleles), offsets


def _allele(code: str) -> str:
    return "." if code == "0" else code


@dataclass
class RecordMeta:
    """The fixed fields of a chunk of records, one row per ALT allele (multi-allelic records split)."""

    chrom: list[str]
    pos: np.ndarray
    ident: list[str | None]
    ref: list[str]
    alt: list[str]
    qual: list[float | None]
    filt: list[str | None]
    info: list[str | None]
    record: np.ndarray  # index of the record in the file
    alt_index: np.ndarray  # 1-based ALT of each row
    line: np.ndarray  # line of each row, for error messages
    n_alts: np.ndarray  # ALT alleles of each record (max 1)


def record_meta(table: VariantTable, lines: np.ndarray, fields: list[list[str]], first_record: int) -> RecordMeta:
    """The rows of a chunk of ``.bim``/``.pvar`` records, checked (POS an integer, QUAL a number)."""
    c = table.columns
    qual_col, filt_col, info_col = c.get("QUAL"), c.get("FILTER"), c.get("INFO")
    m: dict[str, list[Any]] = {k: [] for k in ("chrom", "pos", "id", "ref", "alt", "qual", "filt", "info")}
    n_alts = np.empty(len(fields), dtype=np.int64)
    for j, cols in enumerate(fields):
        number = lines[j]
        try:
            pos = int(cols[c["POS"]])
        except ValueError:
            raise InputError(f"{table.path}: line {number}: POS {cols[c['POS']]!r} is not an integer") from None
        qual: float | None = None
        if qual_col is not None and cols[qual_col] != ".":
            try:
                qual = float(cols[qual_col])
            except ValueError:
                raise InputError(f"{table.path}: line {number}: QUAL {cols[qual_col]!r} is not a number") from None
        alts = [_allele(a) for a in cols[c["ALT"]].split(",")]
        info = cols[info_col] if info_col is not None and cols[info_col] != "." else None
        filt = cols[filt_col] if filt_col is not None and cols[filt_col] != "." else None
        ident = cols[c["ID"]]
        n_alts[j] = len(alts)
        for k, alt in enumerate(alts, 1):
            m["chrom"].append(plink_chrom(cols[c["CHROM"]]))
            m["pos"].append(pos)
            m["id"].append(None if ident == "." else ident)
            m["ref"].append(_allele(cols[c["REF"]]))
            m["alt"].append(alt)
            m["qual"].append(qual)
            m["filt"].append(filt)
            m["info"].append(split_info(info, k, len(alts), table.info_number))
    rows_of = np.repeat(np.arange(len(fields)), n_alts)
    starts = np.cumsum(n_alts) - n_alts
    return RecordMeta(
        chrom=m["chrom"],
        pos=np.array(m["pos"], dtype=np.int64),
        ident=m["id"],
        ref=m["ref"],
        alt=m["alt"],
        qual=m["qual"],
        filt=m["filt"],
        info=m["info"],
        record=first_record + rows_of,
        alt_index=np.arange(rows_of.size) - starts[rows_of] + 1,
        line=lines[rows_of],
        n_alts=n_alts,
    )


def code_counts(codes: np.ndarray) -> np.ndarray:
    """``(rows, 4)`` counts of codes 0..3 of a ``(rows, samples)`` block.

    Examples
    --------
    >>> code_counts(np.array([[0, 1, 1, 3], [2, 2, 2, 2]], dtype=np.int8)).tolist()
    [[1, 2, 0, 1], [0, 0, 4, 0]]
    """
    return np.stack([(codes == c).sum(axis=1, dtype=np.int32) for c in range(4)], axis=1)


def meta_batch(
    n_samples: int,
    meta: RecordMeta,
    *,
    packed: np.ndarray,
    counts: np.ndarray,
    dosages: np.ndarray | None = None,
) -> pa.RecordBatch:
    """One batch of ``variants.parquet`` rows from a chunk's :class:`RecordMeta` and its genotypes."""
    return build_batch(
        n_samples,
        chrom=meta.chrom,
        pos=meta.pos,
        ident=meta.ident,
        ref=meta.ref,
        alt=meta.alt,
        qual=meta.qual,
        filt=meta.filt,
        info=meta.info,
        record=meta.record,
        alt_index=meta.alt_index,
        counts=counts,
        packed=packed,
        dosages=dosages,
    )


def sort_checked(
    batches: Iterable[tuple[pa.RecordBatch, np.ndarray]], path: str, fix: str, unit: str = "line"
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """``batches`` through :class:`~better.genomics.vcf.SortChecker`, its message naming ``fix`` and ``unit``."""
    checker = SortChecker(path)
    for batch, lines in batches:
        try:
            checker.check(batch, lines)
        except InputError as exc:
            message = str(exc).replace("run `bcftools sort`", fix)
            if unit != "line":
                message = message.replace(f"{path}: line ", f"{path}: {unit} ", 1)
            raise InputError(message) from None
        yield batch, lines


# --- PLINK 1 -----------------------------------------------------------------------------------------------


def _bed_tables() -> tuple[np.ndarray, np.ndarray]:
    """A byte of ``.bed`` codes -> the byte of our codes; and the count of each code in a byte of ours."""
    ours = np.array([2, 3, 1, 0], dtype=np.uint8)  # .bed 00 hom-A1 (ALT), 01 missing, 10 het, 11 hom-A2 (REF)
    b = np.arange(256)
    fields = np.stack([(b >> (2 * i)) & 3 for i in range(4)], axis=1)  # (256, 4): the 2-bit fields of a byte
    lut = (ours[fields].astype(np.int64) << (2 * np.arange(4))).sum(axis=1).astype(np.uint8)
    counts = np.stack([(fields == c).sum(axis=1) for c in range(4)], axis=1).astype(np.uint8)
    return lut, counts


BED_TO_CODES, CODE_COUNTS = _bed_tables()


def bed_to_packed(raw: np.ndarray, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, ceil(n / 4))`` ``.bed`` bytes -> our packed genotypes (padding bits zero) and their counts.

    Examples
    --------
    >>> from better.genomics.packing import unpack_genotypes
    >>> raw = np.array([[0b11_10_01_00, 0b00]], dtype=np.uint8)  # hom-A1, missing, het, hom-A2; hom-A1
    >>> packed, counts = bed_to_packed(raw, 5)
    >>> unpack_genotypes(packed, 5).tolist(), counts.tolist()
    ([[2, 3, 1, 0, 2]], [[1, 1, 2, 1]])
    """
    packed = BED_TO_CODES[raw]
    pad = (-n_samples) % 4
    if pad and packed.size:
        packed[:, -1] &= np.uint8((1 << (2 * (4 - pad))) - 1)
    counts = np.stack([CODE_COUNTS[:, c][packed].sum(axis=1, dtype=np.int32) for c in range(4)], axis=1)
    counts[:, 0] -= pad if packed.size else 0  # the zeroed padding reads as hom-ref
    return packed, counts


def bed_source(prefix: str) -> VariantSource:
    """A PLINK 1 fileset ``PREFIX.bed`` + ``.bim`` + ``.fam`` as a :class:`VariantSource` (hard calls).

    Parameters
    ----------
    prefix
        The fileset's path without extension (as ``plink2 --bfile`` takes it; ``PREFIX.bed`` works too).

    Returns
    -------
    VariantSource
        Format ``bed``; the ``.bim`` and ``.fam`` are recorded as companions. The ``.bed``'s magic bytes and
        size are checked against the ``.bim`` and ``.fam`` counts before anything is read.
    """
    bed, bim, fam = fileset(prefix, (".bed", ".bim", ".fam"), "PLINK 1 fileset")
    samples = read_fam(fam)
    n = len(samples)
    table = VariantTable(bim, BIM_COLUMNS, 1, tabs=False)
    with open(bim, "rb") as f:
        first = f.readline()
    if first.strip() and len(first.split()) == 5:
        table.columns = BIM_COLUMNS_NO_CM
    n_variants, _ = count_records(table)
    width = packed_width(n)
    with open(bed, "rb") as f:
        head = f.read(3)
    size = os.path.getsize(bed)
    if head[:2] != BED_MAGIC:
        raise InputError(f"{bed}: not a PLINK 1 .bed file (its first bytes are not 6c 1b); check the path")
    if len(head) < 3 or head[2] != 1:
        raise InputError(
            f"{bed}: a sample-major .bed (PLINK 0.99 and earlier); rewrite it variant-major with "
            "`plink --bfile PREFIX --make-bed --out NEW`"
        )
    expected = 3 + n_variants * width
    if size != expected:
        how = "is truncated, or the" if size < expected else "does not match: the"
        raise InputError(
            f"{bed}: {size} bytes, but the {n_variants} variants of {bim} and the {n} samples of {fam} make "
            f"{expected} (3 + {n_variants} x {width}); the .bed {how} .bim/.fam are not its own; write the "
            "fileset again with `plink2 --make-bed`"
        )

    def batches() -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        rows = batch_rows(width)
        record = 0
        with open(bed, "rb") as f:
            f.seek(3)
            for lines, fields in iter_records(table, rows):
                meta = record_meta(table, lines, fields, record)
                if np.any(meta.n_alts > 1):
                    at = int(np.flatnonzero(meta.n_alts > 1)[0])
                    raise InputError(f"{bim}: line {lines[at]}: a .bim allele code holds a comma")
                raw = np.frombuffer(f.read(len(fields) * width), dtype=np.uint8).reshape(len(fields), width)
                packed, counts = bed_to_packed(raw, n)
                yield meta_batch(n, meta, packed=packed, counts=counts), meta.line
                record += len(fields)

    fix = "sort it with `plink2 --bfile PREFIX --sort-vars --make-pgen`"
    details = {"alleles": ".bim A1 (column 5) = ALT, A2 (column 6) = REF"}
    return VariantSource(bed, "bed", samples, sort_checked(batches(), bim, fix), False, [bim, fam], details)


# --- PLINK 2 -----------------------------------------------------------------------------------------------


@dataclass
class PgenHeader:
    """What the first bytes of a ``.pgen`` say: its storage mode, counts, and whether it stores dosages."""

    mode: int
    n_variants: int | None  # None: a .bed-style .pgen (mode 1), whose counts come from the .pvar/.psam
    n_samples: int | None
    dosages: bool


#: Variants in one .pgen variant block (the header holds per-block record types).
PGEN_VBLOCK = 1 << 16


def pgen_header(path: str) -> PgenHeader:
    """Read a ``.pgen`` header, scanning its variant record types for dosage flags (bits 5-6).

    Raises
    ------
    InputError
        If the magic bytes or the storage mode are not a ``.pgen``'s.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 3 or head[:2] != BED_MAGIC:
            raise InputError(f"{path}: not a PLINK 2 .pgen file (its first bytes are not 6c 1b); check the path")
        mode = head[2]
        if mode == 0x01:
            return PgenHeader(mode, None, None, False)
        if mode not in (0x02, 0x03, 0x04, 0x10, 0x11) or len(head) < 12:
            raise InputError(f"{path}: unknown .pgen storage mode {mode:#04x}; rewrite it with `plink2 --make-pgen`")
        n_variants = int.from_bytes(head[3:7], "little")
        n_samples = int.from_bytes(head[7:11], "little")
        if mode in (0x02, 0x03, 0x04):  # fixed-width: 0x03/0x04 carry dosages
            return PgenHeader(mode, n_variants, n_samples, mode != 0x02)
        ctrl = head[11]
        storage = ctrl & 15
        if storage < 4 or storage >= 8:  # 4-bit record types (or special encodings): hard calls only
            return PgenHeader(mode, n_variants, n_samples, False)
        if mode == 0x11:  # header extensions: not scanned; dosages may be present
            return PgenHeader(mode, n_variants, n_samples, True)
        n_blocks = -(-n_variants // PGEN_VBLOCK)
        at = 12 + 8 * n_blocks
        per_variant = 1 + (1 + (storage & 3)) + ((ctrl >> 4) & 3)  # record type, record length, allele count
        nonref = (ctrl >> 6) == 3
        for b in range(n_blocks):
            count = min(PGEN_VBLOCK, n_variants - b * PGEN_VBLOCK)
            f.seek(at)
            types = np.frombuffer(f.read(count), dtype=np.uint8)
            if types.size < count:
                raise InputError(f"{path}: the .pgen header is truncated")
            if np.any(types & 0x60):
                return PgenHeader(mode, n_variants, n_samples, True)
            at += count * per_variant + (-(-count // 8) if nonref else 0)
        return PgenHeader(mode, n_variants, n_samples, False)


def _to_codes(g: np.ndarray) -> np.ndarray:
    """pgenlib's allele counts (0, 1, 2; -9 missing) as our codes."""
    return np.where(g < 0, 3, g).astype(np.int8)


def _to_units(d: np.ndarray) -> np.ndarray:
    """pgenlib's dosages (multiples of 1/16384; -9 missing) as stored units."""
    return np.where(d < 0, DOSAGE_MISSING, np.rint(d * DOSAGE_ONE)).astype(np.uint16)


def pgen_source(prefix: str) -> VariantSource:
    """A PLINK 2 fileset ``PREFIX.pgen`` + ``.pvar`` + ``.psam`` as a :class:`VariantSource`, read by pgenlib.

    Parameters
    ----------
    prefix
        The fileset's path without extension (as ``plink2 --pfile`` takes it; ``PREFIX.pgen`` works too).

    Returns
    -------
    VariantSource
        Format ``pgen``, with dosages when the ``.pgen`` stores any; the ``.pvar`` and ``.psam`` are recorded
        as companions. Multi-allelic ``.pvar`` rows are split into one row per ALT.

    Raises
    ------
    InputError
        On a missing companion, counts that disagree between the three files, or a multi-allelic variant with
        dosages (pgenlib cannot give its per-ALT dosages).
    """
    pgen, pvar, psam = fileset(prefix, (".pgen", ".pvar", ".psam"), "PLINK 2 fileset")
    samples = read_psam(psam)
    n = len(samples)
    header = pgen_header(pgen)
    table = pvar_layout(pvar)
    n_variants, offsets = count_records(table)
    if header.n_samples is not None and header.n_samples != n:
        raise InputError(
            f"{pgen}: {header.n_samples} samples, but {psam} lists {n}; the .psam is not this .pgen's (write the "
            "fileset again with `plink2 --make-pgen`)"
        )
    if header.n_variants is not None and header.n_variants != n_variants:
        raise InputError(
            f"{pgen}: {header.n_variants} variants, but {pvar} lists {n_variants}; the .pvar is not this .pgen's "
            "(write the fileset again with `plink2 --make-pgen`)"
        )
    import pgenlib

    try:
        reader = pgenlib.PgenReader(pgen.encode(), raw_sample_ct=n, variant_ct=n_variants, allele_idx_offsets=offsets)
    except Exception as exc:  # pgenlib raises RuntimeError and friends with its own message
        raise InputError(f"{pgen}: pgenlib cannot read it ({str(exc).strip()})") from None
    dosages = header.dosages

    def read_block(start: int, meta: RecordMeta) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        end = start + meta.n_alts.size
        rows = meta.alt_index.size
        first_rows = np.cumsum(meta.n_alts) - meta.n_alts
        multi = np.flatnonzero(meta.n_alts > 1)
        if dosages:
            d = np.empty((end - start, n), dtype=np.float64)
            reader.read_dosages_range(start, end, d)
            units = np.empty((rows, n), dtype=np.uint16)
            units[first_rows] = _to_units(d)
            buf = np.empty(n, dtype=np.float64)
            for j in multi:
                for k in range(2, int(meta.n_alts[j]) + 1):
                    try:
                        reader.read_dosages(start + int(j), buf, k)
                    except Exception as exc:
                        raise InputError(
                            f"{pvar}: line {meta.line[first_rows[j]]}: a multi-allelic variant in a .pgen with "
                            f"dosages; pgenlib cannot read the dosage of each ALT ({str(exc).strip()}); export it "
                            "(`plink2 --pfile PREFIX --export vcf vcf-dosage=DS`) and ingest that VCF, whose "
                            "multi-allelic records are split"
                        ) from None
                    units[first_rows[j] + k - 1] = _to_units(buf)
            packed, counts = hard_calls(units)
            return packed, counts, units
        g = np.empty((end - start, n), dtype=np.int8)
        reader.read_range(start, end, g)
        codes = np.empty((rows, n), dtype=np.int8)
        codes[first_rows] = _to_codes(g)
        gbuf = np.empty(n, dtype=np.int8)
        for j in multi:
            for k in range(2, int(meta.n_alts[j]) + 1):
                reader.read(start + int(j), gbuf, k)
                codes[first_rows[j] + k - 1] = _to_codes(gbuf)
        return pack_genotypes(codes), code_counts(codes), None

    def batches() -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        record = 0
        try:
            for lines, fields in iter_records(table, batch_rows(n * (8 if dosages else 1))):
                meta = record_meta(table, lines, fields, record)
                if n:
                    packed, counts, units = read_block(record, meta)
                else:
                    rows = meta.alt_index.size
                    packed = np.zeros((rows, 0), dtype=np.uint8)
                    counts = np.zeros((rows, 4), dtype=np.int32)
                    units = np.zeros((rows, 0), dtype=np.uint16) if dosages else None
                yield meta_batch(n, meta, packed=packed, counts=counts, dosages=units), meta.line
                record += len(fields)
        finally:
            reader.close()

    fix = "sort it with `plink2 --pfile PREFIX --sort-vars --make-pgen`"
    details: dict[str, Any] = {"dosage_source": "pgen"} if dosages else {}
    return VariantSource(pgen, "pgen", samples, sort_checked(batches(), pvar, fix), dosages, [pvar, psam], details)
