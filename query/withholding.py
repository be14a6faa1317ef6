"""Why each withheld row was withheld: the stations' rules, collected from the rounds' releases.

Every release flags its withheld rows per rule (``withheld_<rule>`` arrays, :data:`better.station_api.policy.RULES`);
masked releases arrive summed, so a flag reads "some station withheld it by that rule". A result table
gets a ``WITHHELD_BY`` column (the rules, comma-separated; empty on rows that were released).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from better.engine.design import KEY_COLUMNS
from better.engine.filters import VariantFilter
from better.station_api.policy import RULES

#: The row key of each kind of result row: a variant, a coverage target, a pileup position.
ROW_KEYS = (KEY_COLUMNS, ("chrom", "start", "end", "name"), ("chrom", "pos"))


class WithheldBy:
    """The rules that withheld each row of one query's main analysis."""

    def __init__(self) -> None:
        self.rules: dict[tuple[object, ...], set[str]] = {}
        #: Called and missing samples and ALT alleles of withheld rows (summed over stations).
        self.calls: dict[tuple[object, ...], list[int]] = {}

    def add(self, results: list[dict[str, np.ndarray]], task: dict[str, object]) -> None:
        """Record one round's flags (from each station in the clear, or their masked sum); each result's
        rows are keyed by its own ``key_*`` columns, or its task's. The calls of a withheld row are summed
        over every station's result, withheld there or not."""
        withheld: set[tuple[object, ...]] = set()
        keyed = []
        for result in results:
            flags = {r: np.asarray(result[f"withheld_{r}"], dtype=bool) for r in RULES if f"withheld_{r}" in result}
            if not flags:
                continue
            source = result if any(f"key_{c}" in result for c in ("pos", "start")) else task
            columns = next(cols for cols in ROW_KEYS if all(f"key_{c}" in source for c in cols))
            keys = list(zip(*(np.asarray(source[f"key_{c}"]).tolist() for c in columns), strict=True))
            hit = np.zeros(len(keys), dtype=bool)
            for f in flags.values():
                hit |= f
            for i in np.flatnonzero(hit).tolist():  # only withheld rows: a table of 50,000 variants has few
                self.rules.setdefault(keys[i], set()).update(r for r, f in flags.items() if f[i])
                withheld.add(keys[i])
            keyed.append((result, keys))
        for result, keys in keyed:
            counts = [result.get(f"{c}_ct") for c in ("called", "missing", "alt")]
            if any(c is None for c in counts):
                continue
            for i, key in enumerate(keys):
                if key in withheld:
                    calls = self.calls.setdefault(key, [0, 0, 0])
                    for j, c in enumerate(counts):
                        calls[j] += int(np.rint(c[i]))  # type: ignore[index]

    def column(self, keys: Iterable[tuple[object, ...]], withheld: Iterable[bool]) -> list[str]:
        """``WITHHELD_BY`` for rows with these keys (empty where not withheld)."""
        return [",".join(sorted(self.rules.get(k, set()))) if w else "" for k, w in zip(keys, withheld, strict=True)]

    def certainly_filtered(
        self,
        keys: Sequence[tuple[object, ...]],
        withheld: np.ndarray,
        vf: VariantFilter,
        mac_floor: int,
        dosages: bool = False,
    ) -> np.ndarray:
        """Withheld rows that ``vf`` drops: on their released counts; and those withheld for a minor allele
        count of 1 to ``mac_floor - 1`` (which is not released) when every such count fails the filter at
        the row's calls. A filter the hidden count could pass leaves the row withheld: dropping it would
        tell that count. ``hwe_p`` and ``r2`` conditions are not judged here (they need genotype counts and
        sums of squared dosages). With ``dosages`` (some station analyses dosages) a row withheld as rare is
        kept: the rule counted nearest genotypes there, and the hidden dosage sum the filter reads is not
        bounded by them.
        """
        usable = VariantFilter(tuple(c for c in vf.conditions if c.name not in ("hwe_p", "r2")))
        out = np.zeros(len(keys), dtype=bool)
        if not usable.conditions:
            return out
        hidden = np.arange(1, max(mac_floor, 2))
        for i, key in enumerate(keys):
            if not withheld[i] or key not in self.calls:
                continue
            called, missing, alt = self.calls[key]
            rare = "minor_allele_count" in self.rules.get(key, set())
            if rare and dosages:
                continue
            alts = hidden if rare else np.array([alt])
            out[i] = not usable.mask(alts, np.full(alts.shape[0], called), np.full(alts.shape[0], missing)).any()
        return out


def summary(withheld_by: Iterable[str]) -> dict[str, int]:
    """Rows withheld per rule, from a ``WITHHELD_BY`` column.

    >>> summary(["", "carriers", "carriers,missing_genotypes"])
    {'carriers': 2, 'missing_genotypes': 1}
    """
    counts: Counter[str] = Counter()
    for text in withheld_by:
        counts.update(r for r in text.split(",") if r)
    return dict(sorted(counts.items()))
