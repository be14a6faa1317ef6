"""The one region type of BETTER.

Inside the code a region is 0-based and half-open (``start`` included, ``end`` excluded), like BED and
tskit. At the edges (the DSL, the CLI, output tables) regions are written ``chrom:start-end``, 1-based
and inclusive, and VCF ``POS`` stays 1-based. Conversion happens only in :meth:`Region.parse` and
:meth:`Region.__str__`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from better.engine.errors import InputError

_REGION = re.compile(r"^(?P<chrom>[A-Za-z0-9_.]+)(?::(?P<start>[0-9,]+)(?:-(?P<end>[0-9,]+))?)?$")
#: Sentinel end of a whole-chromosome region (larger than any real chromosome).
WHOLE = 2**62


@dataclass(frozen=True, order=True)
class Region:
    """A genomic interval, 0-based half-open.

    Parameters
    ----------
    chrom
        Chromosome name exactly as in the VCF (``22``, ``chr22``, ``X``).
    start
        First base, 0-based.
    end
        One past the last base, 0-based; :data:`WHOLE` for "to the end of the chromosome".

    Examples
    --------
    >>> r = Region.parse("22:100-200")
    >>> (r.chrom, r.start, r.end)
    ('22', 99, 200)
    >>> r.contains_pos(100), r.contains_pos(201)
    (True, False)
    >>> str(r)
    '22:100-200'
    """

    chrom: str
    start: int = 0
    end: int = WHOLE

    def __post_init__(self) -> None:
        if self.start < 0 or self.end <= self.start:
            raise InputError(f"region {self.chrom}:{self.start + 1}-{self.end} is empty or negative")

    @classmethod
    def parse(cls, text: str) -> Region:
        """Parse ``chrom``, ``chrom:pos`` or ``chrom:start-end`` (1-based, inclusive; commas allowed)."""
        m = _REGION.match(text.strip())
        if m is None:
            raise InputError(
                f"cannot read region {text!r}: write it as chrom, chrom:pos or chrom:start-end "
                "(1-based, inclusive), e.g. 22:16050000-16060000"
            )
        chrom = m["chrom"]
        if m["start"] is None:
            return cls(chrom)
        start = int(m["start"].replace(",", ""))
        end = int(m["end"].replace(",", "")) if m["end"] is not None else start
        if start < 1 or end < start or end >= WHOLE:
            raise InputError(
                f"region {text!r}: positions are 1-based, start must not exceed end, and both must be below 2^62"
            )
        return cls(chrom, start - 1, end)

    @property
    def first_pos(self) -> int:
        """First VCF position (1-based) inside the region."""
        return self.start + 1

    @property
    def last_pos(self) -> int:
        """Last VCF position (1-based) inside the region."""
        return self.end

    def contains_pos(self, pos: int) -> bool:
        """Whether the 1-based VCF position ``pos`` lies in the region."""
        return self.start < pos <= self.end

    def __str__(self) -> str:
        if self.start == 0 and self.end == WHOLE:
            return self.chrom
        return f"{self.chrom}:{self.start + 1}-{self.end}"


def merge_regions(regions: list[Region]) -> list[Region]:
    """Overlapping or touching regions of a chromosome merged into one; chromosomes in first-seen order.

    Reading merged regions never visits a variant twice.

    Examples
    --------
    >>> [str(r) for r in merge_regions([Region.parse("2:5-9"), Region.parse("1"), Region.parse("2:1-6")])]
    ['2:1-9', '1']
    """
    order: dict[str, list[Region]] = {}
    for r in regions:
        order.setdefault(r.chrom, []).append(r)
    out: list[Region] = []
    for chrom, rs in order.items():
        rs.sort(key=lambda r: r.start)
        cur = rs[0]
        for r in rs[1:]:
            if r.start <= cur.end:
                cur = Region(chrom, cur.start, max(cur.end, r.end))
            else:
                out.append(cur)
                cur = r
        out.append(cur)
    return out
