"""Why each withheld row was withheld: the stations' rules, collected from the rounds' releases.

Every release flags its withheld rows per rule (``withheld_<rule>`` arrays, :data:`station_api.policy.RULES`);
masked releases arrive summed, so a flag reads "some station withheld it by that rule". A result table
gets a ``WITHHELD_BY`` column (the rules, comma-separated; empty on rows that were released).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from station_api.policy import RULES

#: The row key of each kind of result row: a variant, a coverage target, a pileup position.
ROW_KEYS = (("chrom", "pos", "ref", "alt"), ("chrom", "start", "end", "name"), ("chrom", "pos"))


class WithheldBy:
    """The rules that withheld each row of one query's main analysis."""

    def __init__(self) -> None:
        self.rules: dict[tuple[object, ...], set[str]] = {}

    def add(self, result: dict[str, np.ndarray], task: dict[str, object]) -> None:
        """Record a round's flags; its rows are keyed by its own ``key_*`` columns, or its task's."""
        flags = {r: np.asarray(result[f"withheld_{r}"], dtype=bool) for r in RULES if f"withheld_{r}" in result}
        if not flags:
            return
        source = result if any(f"key_{c}" in result for c in ("pos", "start")) else task
        columns = next(cols for cols in ROW_KEYS if all(f"key_{c}" in source for c in cols))
        keys = zip(*(np.asarray(source[f"key_{c}"]).tolist() for c in columns), strict=True)
        for i, key in enumerate(keys):
            hit = {r for r, f in flags.items() if f[i]}
            if hit:
                self.rules.setdefault(key, set()).update(hit)

    def column(self, keys: Iterable[tuple[object, ...]], withheld: Iterable[bool]) -> list[str]:
        """``WITHHELD_BY`` for rows with these keys (empty where not withheld)."""
        return [",".join(sorted(self.rules.get(k, set()))) if w else "" for k, w in zip(keys, withheld, strict=True)]


def summary(withheld_by: Iterable[str]) -> dict[str, int]:
    """Rows withheld per rule, from a ``WITHHELD_BY`` column.

    >>> summary(["", "carriers", "carriers,missing_genotypes"])
    {'carriers': 2, 'missing_genotypes': 1}
    """
    counts: Counter[str] = Counter()
    for text in withheld_by:
        counts.update(r for r in text.split(",") if r)
    return dict(sorted(counts.items()))
