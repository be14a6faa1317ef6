"""Which stored variants a GA4GH Beacon v2 variant query asks about.

A Beacon query names a reference sequence and 0-based coordinates, in one of three forms:

- **sequence**: ``start`` (one value) and ``alternateBases``: variants starting at ``start``;
- **range**: ``start`` and ``end`` (one value each): variants overlapping ``[start, end)``;
- **bracket**: ``start`` and ``end`` (two values each): variants starting in ``[start[0], start[1])`` and
  ending in ``[end[0], end[1])`` (so ``start[1] = start[0] + 1`` asks for one exact start).

A stored variant (VCF ``POS``, ``REF``, ``ALT``, one ALT a row) starts at ``POS - 1`` and ends at
``POS - 1 + len(REF)``. ``referenceBases`` and ``alternateBases`` compare with ``REF`` and ``ALT`` as
written in the VCF, base by base, with the IUPAC codes as wildcards (``N`` any base). ``variantType`` is
``SNP`` (or ``SNV``), ``MNP``, ``INDEL``, ``INS`` or ``DEL``; a symbolic ALT (``<DUP>``) matches its own name.
The length ``variantMinLength``/``variantMaxLength`` bound is the number of bases inserted or deleted for
an indel, and ``len(REF)`` otherwise.

Reference names match with or without ``chr``, and as RefSeq accessions (``NC_000022.11``, with or without
``refseq:``) of the human chromosomes.

Examples
--------
>>> q = AlleleQuery("chr22", (16050074,), alternate_bases="G")
>>> q.kind, q.scan_start(longest_ref=1), q.scan_end()
('sequence', 16050074, 16050075)
>>> q.matches(np.array([16050075, 16050075]), np.array(["A", "A"]), np.array(["G", "T"])).tolist()
[True, False]
>>> same_chromosome("refseq:NC_000022.11", "chr22"), same_chromosome("MT", "chrM")
(True, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from better.engine.errors import InputError

#: IUPAC nucleotide codes and the bases each stands for (``U`` is read as ``T``).
IUPAC = {
    "A": "A",
    "C": "C",
    "G": "G",
    "T": "T",
    "U": "T",
    "R": "AG",
    "Y": "CT",
    "S": "CG",
    "W": "AT",
    "K": "GT",
    "M": "AC",
    "B": "CGT",
    "D": "AGT",
    "H": "ACT",
    "V": "ACG",
    "N": "ACGT",
}
_BASES = re.compile(r"^[ACGTUNRYSWKMBDHV]*$")
_REFSEQ = re.compile(r"^NC_0+(\d+)\.\d+$")
#: Variant types a query may name, and what each takes of ``len(REF)`` and ``len(ALT)``.
VARIANT_TYPES = ("SNP", "SNV", "MNP", "INDEL", "INS", "DEL")
#: The largest coordinate a query may give (2^62: no chromosome is longer).
MAX_COORDINATE = 2**62


def chromosome_key(name: str) -> str:
    """A reference name reduced to what two spellings of one chromosome share.

    Examples
    --------
    >>> [chromosome_key(n) for n in ("chr22", "22", "refseq:NC_000023.11", "NC_012920.1", "chrM")]
    ['22', '22', 'X', 'MT', 'MT']
    """
    text = name.strip()
    if text.lower().startswith("refseq:"):
        text = text[len("refseq:") :]
    if text.upper().startswith("NC_012920"):
        return "MT"
    m = _REFSEQ.match(text)
    if m is not None:
        number = int(m[1])
        return {23: "X", 24: "Y"}.get(number, str(number))
    if text.lower().startswith("chr"):
        text = text[3:]
    text = text.upper()
    return "MT" if text == "M" else text


def same_chromosome(asked: str, stored: str) -> bool:
    """Whether a query's reference name ``asked`` names the stored chromosome ``stored``."""
    return chromosome_key(asked) == chromosome_key(stored)


def _check_bases(what: str, bases: str | None) -> str | None:
    if bases is None:
        return None
    up = bases.upper()
    if len(up) > 1000 or not _BASES.match(up):
        raise InputError(f"{what} {bases[:40]!r}: use 1 to 1000 IUPAC bases (A, C, G, T, N, ...)")
    return up


@dataclass(frozen=True)
class AlleleQuery:
    """A Beacon variant query over one reference sequence (see the module's description).

    Parameters
    ----------
    reference_name
        The chromosome as the query names it.
    start, end
        0-based coordinates: ``start`` one or two values, ``end`` none, one or two (exclusive).
    reference_bases, alternate_bases
        Bases to match (IUPAC codes as wildcards), or None.
    variant_type
        One of :data:`VARIANT_TYPES`, a symbolic ALT's name (``DUP``), or None.
    min_length, max_length
        Bounds on the variant's length, or None.
    """

    reference_name: str
    start: tuple[int, ...]
    end: tuple[int, ...] = ()
    reference_bases: str | None = None
    alternate_bases: str | None = None
    variant_type: str | None = None
    min_length: int | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if not self.reference_name or len(self.reference_name) > 64:
            raise InputError("referenceName: give the chromosome (1 to 64 characters), e.g. 22 or chr22")
        values = (*self.start, *self.end)
        if not 1 <= len(self.start) <= 2 or len(self.end) > 2 or any(not 0 <= v < MAX_COORDINATE for v in values):
            raise InputError("start: one or two 0-based positions (end: none, one or two), each 0 to 2^62")
        if len(self.start) == 2 and len(self.end) != 2:
            raise InputError("a bracket query gives two values in start and two in end")
        if len(self.start) == 1 and len(self.end) == 2:
            raise InputError("end has two values: a bracket query needs two values in start too")
        if len(self.start) == 2 and (self.start[0] >= self.start[1] or self.end[0] >= self.end[1]):
            raise InputError("bracket query: start[0] must be below start[1] and end[0] below end[1]")
        if len(self.end) == 1 and self.end[0] <= self.start[0]:
            raise InputError(
                f"range query: end ({self.end[0]}) must be above start ({self.start[0]}); 0-based, end excluded"
            )
        if not self.end and self.alternate_bases is None:
            raise InputError("a query with start and no end needs alternateBases (or give end for a range query)")
        object.__setattr__(self, "reference_bases", _check_bases("referenceBases", self.reference_bases))
        object.__setattr__(self, "alternate_bases", _check_bases("alternateBases", self.alternate_bases))
        if self.variant_type is not None:
            vt = self.variant_type.strip().upper()
            if not vt or len(vt) > 64:
                raise InputError("variantType: 1 to 64 characters, e.g. SNP, INDEL, DEL")
            object.__setattr__(self, "variant_type", vt)
        for name, v in (("variantMinLength", self.min_length), ("variantMaxLength", self.max_length)):
            if v is not None and not 0 <= v < MAX_COORDINATE:
                raise InputError(f"{name}: a length from 0 to 2^62")

    @property
    def kind(self) -> str:
        """``sequence``, ``range`` or ``bracket``."""
        return {0: "sequence", 1: "range", 2: "bracket"}[len(self.end)]

    def scan_start(self, longest_ref: int) -> int:
        """The first 0-based start a matching variant can have, for a dataset whose longest REF is
        ``longest_ref`` bases (a range query also takes variants that start before it and reach into it)."""
        if self.kind == "range":
            return max(0, self.start[0] - max(longest_ref, 1) + 1)
        return self.start[0]

    def scan_end(self) -> int:
        """One past the last 0-based start a matching variant can have."""
        if self.kind == "sequence":
            return self.start[0] + 1
        if self.kind == "range":
            return self.end[0]
        return self.start[1]

    def matches(self, pos: np.ndarray, ref: np.ndarray, alt: np.ndarray) -> np.ndarray:
        """Which variants (1-based VCF ``pos``, ``ref``, ``alt``; on the queried chromosome) match."""
        pos = np.asarray(pos, dtype=np.int64)
        ref_len = np.array([len(r) for r in ref], dtype=np.int64)
        alt_len = np.array([len(a) for a in alt], dtype=np.int64)
        begin = pos - 1
        stop = begin + ref_len
        if self.kind == "sequence":
            keep = begin == self.start[0]
        elif self.kind == "range":
            keep = (begin < self.end[0]) & (stop > self.start[0])
        else:
            keep = (self.start[0] <= begin) & (begin < self.start[1]) & (self.end[0] <= stop) & (stop < self.end[1])
        if self.reference_bases is not None:
            keep &= np.array([bases_match(self.reference_bases, r) for r in ref], dtype=bool)
        if self.alternate_bases is not None:
            keep &= np.array([bases_match(self.alternate_bases, a) for a in alt], dtype=bool)
        if self.variant_type is not None:
            keep &= np.array([variant_type(r, a) in self._types() for r, a in zip(ref, alt, strict=True)], dtype=bool)
        if self.min_length is not None or self.max_length is not None:
            length = np.where(_indel(ref_len, alt_len, ref, alt), np.abs(alt_len - ref_len), ref_len)
            if self.min_length is not None:
                keep &= length >= self.min_length
            if self.max_length is not None:
                keep &= length <= self.max_length
        return np.asarray(keep, dtype=bool)

    def _types(self) -> tuple[str, ...]:
        vt = self.variant_type
        assert vt is not None
        if vt in ("SNP", "SNV"):
            return ("SNP",)
        if vt == "INDEL":
            return ("INS", "DEL", "INDEL")
        return (vt.strip("<>"),)


def _indel(ref_len: np.ndarray, alt_len: np.ndarray, ref: np.ndarray, alt: np.ndarray) -> np.ndarray:
    symbolic = np.array([a.startswith("<") for a in alt], dtype=bool)
    return (ref_len != alt_len) & ~symbolic


def variant_type(ref: str, alt: str) -> str:
    """``SNP``, ``MNP``, ``INS``, ``DEL``, ``INDEL`` (REF and ALT of different lengths, both over one base),
    or a symbolic ALT's name (``<DUP:TANDEM>`` gives ``DUP:TANDEM``).

    Examples
    --------
    >>> [variant_type(r, a) for r, a in (("A", "G"), ("AC", "GT"), ("A", "AT"), ("AT", "A"), ("AT", "GCC"))]
    ['SNP', 'MNP', 'INS', 'DEL', 'INDEL']
    """
    if alt.startswith("<") and alt.endswith(">"):
        return alt[1:-1].upper()
    if len(ref) == len(alt):
        return "SNP" if len(ref) == 1 else "MNP"
    if len(ref) == 1:
        return "INS"
    if len(alt) == 1:
        return "DEL"
    return "INDEL"


def bases_match(pattern: str, bases: str) -> bool:
    """Whether stored ``bases`` match a query's ``pattern`` (IUPAC codes as wildcards, same length).

    Examples
    --------
    >>> bases_match("ANNT", "ACGT"), bases_match("R", "G"), bases_match("R", "C"), bases_match("A", "AT")
    (True, True, False, False)
    """
    if len(pattern) != len(bases):
        return False
    return all(b.upper() in IUPAC[p] for p, b in zip(pattern, bases, strict=True))
