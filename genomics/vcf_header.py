"""VCF header: samples, contigs and INFO ``Number`` declarations, read from text or from cyvcf2."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from better.engine.errors import InputError

FIXED_COLUMNS = ("#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")
_META_ID = re.compile(r"^##(INFO|FORMAT|contig)=<ID=([^,>]+)(?:.*?Number=([^,>]+))?")


@dataclass
class VcfHeader:
    """What BETTER needs from a VCF header.

    Attributes
    ----------
    samples
        Sample IDs in column order (unique).
    info_number
        ``Number`` of each declared INFO field (``"A"``, ``"R"``, ``"1"``, ...), used to split
        multi-allelic records as ``bcftools norm -m-`` does.
    contigs
        Declared contigs, in header order.
    n_lines
        Number of header lines, so that record ``i`` (0-based) sits on line ``n_lines + i + 1``.
    dosage_field
        The FORMAT field the ingest reads ALT dosages from (``DS``, ``HDS`` or ``GP``), or None for hard
        calls only; set by :func:`choose_dosage_field`.
    """

    samples: list[str]
    info_number: dict[str, str] = field(default_factory=dict)
    contigs: list[str] = field(default_factory=list)
    format_ids: list[str] = field(default_factory=list)
    n_lines: int = 0
    fileformat: str = "VCFv4.2"
    dosage_field: str | None = None


#: FORMAT fields that give dosages, in the order ``auto`` prefers them.
DOSAGE_FIELDS = ("DS", "HDS", "GP")


def choose_dosage_field(header: VcfHeader, wanted: str, path: str) -> str | None:
    """The FORMAT field to read dosages from: ``auto`` takes the first of :data:`DOSAGE_FIELDS` the
    header declares (None if it declares none), ``none`` reads hard calls only, and a field name must be
    declared.

    Examples
    --------
    >>> h = VcfHeader(samples=["a"], format_ids=["GT", "GP", "DS"])
    >>> [choose_dosage_field(h, wanted, "x.vcf") for wanted in ("auto", "GP", "none")]
    ['DS', 'GP', None]
    """
    if wanted == "none" or not header.samples:
        return None
    if wanted == "auto":
        return next((f for f in DOSAGE_FIELDS if f in header.format_ids), None)
    if wanted not in DOSAGE_FIELDS:
        raise InputError(f"dosage field {wanted!r} is not one of auto, {', '.join(DOSAGE_FIELDS)}, none")
    if wanted not in header.format_ids:
        declared = ", ".join(header.format_ids) or "none"
        raise InputError(
            f"{path}: the header declares no FORMAT/{wanted} (FORMAT fields: {declared}); choose another "
            "--dosage field or none"
        )
    return wanted


def parse_header_text(lines: list[str], path: str) -> VcfHeader:
    """Parse header lines (``##`` meta lines then the ``#CHROM`` line) of the VCF at ``path``."""
    if not lines or not lines[0].startswith("##fileformat=VCF"):
        first = lines[0][:60] if lines else ""
        raise InputError(
            f"{path}: line 1 is {first!r}, not '##fileformat=VCFv4.x': this is not a VCF file "
            "(expected .vcf, .vcf.gz or .bcf)"
        )
    header = VcfHeader(samples=[], fileformat=lines[0].split("=", 1)[1].strip())
    for line in lines[1:-1]:
        m = _META_ID.match(line)
        if m is None:
            continue
        kind, ident, number = m.group(1), m.group(2), m.group(3)
        if kind == "INFO":
            header.info_number[ident] = number or "."
        elif kind == "FORMAT":
            header.format_ids.append(ident)
        else:
            header.contigs.append(ident)
    columns = lines[-1].rstrip("\r\n").split("\t")
    if tuple(columns[:8]) != FIXED_COLUMNS:
        raise InputError(
            f"{path}: line {len(lines)}: the column header must start with "
            f"{' '.join(FIXED_COLUMNS)} separated by tabs, found {' '.join(columns[:8])!r}"
        )
    if len(columns) > 8 and columns[8] != "FORMAT":
        raise InputError(f"{path}: line {len(lines)}: column 9 must be FORMAT, found {columns[8]!r}")
    header.samples = columns[9:]
    header.n_lines = len(lines)
    check_sample_ids(header.samples, path)
    return header


def check_sample_ids(samples: list[str], path: str) -> None:
    """Refuse empty or duplicate sample IDs, naming the first offender."""
    seen: set[str] = set()
    for s in samples:
        if not s:
            raise InputError(f"{path}: an empty sample ID in the #CHROM line")
        if s in seen:
            raise InputError(
                f"{path}: sample ID {s!r} appears twice in the #CHROM line; sample IDs must be unique "
                "(rename with `bcftools reheader --samples`)"
            )
        seen.add(s)


def split_info(info: str | None, k: int, n_alt: int, info_number: dict[str, str]) -> str | None:
    """The INFO of the row of ALT ``k`` (1-based) of a record with ``n_alt`` ALTs.

    ``Number=A`` fields keep their ``k``-th value, ``Number=R`` fields the REF value and the ``k``-th,
    and ``Number=G`` fields the values of genotypes 0/0, 0/k and k/k (diploid order, or 0 and k when
    haploid), as ``bcftools norm -m-`` writes them; other fields are kept whole.

    Examples
    --------
    >>> split_info("AC=1,2;AD=5,6,7;DP=10", 2, 2, {"AC": "A", "AD": "R", "DP": "1"})
    'AC=2;AD=5,7;DP=10'
    >>> split_info("GL=0,1,2,3,4,5", 2, 2, {"GL": "G"})  # 0/0 0/1 1/1 0/2 1/2 2/2
    'GL=0,3,5'
    """
    if info is None or n_alt <= 1:
        return info
    out = []
    for item in info.split(";"):
        key, eq, value = item.partition("=")
        number = info_number.get(key)
        if eq and number in ("A", "R", "G"):
            values = value.split(",")
            if number == "A" and len(values) == n_alt:
                value = values[k - 1]
            elif number in ("R", "G") and len(values) == n_alt + 1:  # Number=G of a haploid record
                value = values[0] + "," + values[k]
            elif number == "G" and len(values) == (n_alt + 1) * (n_alt + 2) // 2:
                het = k * (k + 1) // 2  # genotype a/b (a <= b) sits at b(b+1)/2 + a
                value = ",".join(values[i] for i in (0, het, het + k))
        out.append(key + eq + value)
    return ";".join(out)
