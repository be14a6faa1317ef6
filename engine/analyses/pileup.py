"""PILEUP: read counts of each base (and deletions) at the positions asked for, over a dataset of
aligned reads, summed over the selected samples in one round (the station reads its files then)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from better.engine.protocol import OneRoundProtocol
from better.engine.rounds import Analysis, Result, RoundKind, StateArray, StationData, Task

#: PILEUP's columns of read counts, in this order.
PILEUP_CODES = ("A", "C", "G", "T", "N", "DEL")
#: Positions one round may ask for.
MAX_POSITIONS = 256


# -- station side ----------------------------------------------------------------------------------------
def pileup_station(counts: np.ndarray) -> Result:
    """Sums over samples of per-sample read counts ``(samples, positions, codes)``; ``carriers`` counts
    the samples with at least one read of each code (the station's policy checks it; it is not released)."""
    return {
        "counts": counts.sum(axis=0).astype(np.int64),
        "samples": (counts.sum(axis=2) > 0).sum(axis=0).astype(np.int64),
        "carriers": (counts > 0).sum(axis=0).astype(np.int64),
        "n": np.array(int(counts.shape[0])),
    }


def pileup_round(task: Task, data: StationData) -> Result:
    """The station half of the ``pileup`` round."""
    return pileup_station(data.pileup_counts(task))


def pileup_people(result: Result) -> np.ndarray:
    """The samples behind each position's counts: with a read there, and carrying each code."""
    return np.concatenate([result["samples"][:, None], result["carriers"]], axis=1).astype(np.int64)


# -- central side ----------------------------------------------------------------------------------------
@dataclass
class PileupProtocol(OneRoundProtocol):
    """One round at the positions asked for (1-based): read counts per base and deletions, added."""

    kind = "pileup"

    chrom: list[str]
    pos: list[int]
    min_base_quality: int = 13
    min_mapping_quality: int = 0
    total: Result | None = None
    withheld: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def task(self) -> Task:
        return {
            "kind": self.kind,
            "key_chrom": np.array(self.chrom),
            "key_pos": np.array(self.pos, dtype=np.int64),
            "min_base_quality": np.array(self.min_base_quality),
            "min_mapping_quality": np.array(self.min_mapping_quality),
        }

    def combine(self, results: list[Result]) -> None:
        self.total = {name: np.sum([r[name] for r in results], axis=0) for name in ("counts", "samples")}
        self.withheld = np.any([np.asarray(r.get("withheld", False), dtype=bool) for r in results], axis=0)
        self.withheld = np.broadcast_to(self.withheld, (len(self.pos),)).copy()

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        hide = self.withheld
        counts = self.total["counts"].astype(float)
        out: dict[str, np.ndarray] = {
            "CHROM": np.array(self.chrom, dtype=object),
            "POS": np.array(self.pos, dtype=np.int64),
            "SAMPLES": np.where(hide, np.nan, self.total["samples"].astype(float)),
            "DEPTH": np.where(hide, np.nan, counts.sum(axis=1)),
        }
        for j, code in enumerate(PILEUP_CODES):
            out[code] = np.where(hide, np.nan, counts[:, j])
        out["WITHHELD"] = hide
        return out


ROUNDS = (
    RoundKind(
        "pileup",
        pileup_round,
        data="reads",
        state={
            "key_chrom": StateArray(str, ("rows",)),
            "key_pos": StateArray(np.int64, ("rows",)),
            "min_base_quality": StateArray(np.int64, (), bounds=(0, 93)),
            "min_mapping_quality": StateArray(np.int64, (), bounds=(0, 255)),
        },
        scope="task",
        max_rows=MAX_POSITIONS,
        rules=("small_cells",),
        zeroed=("counts", "samples"),
        dropped=("carriers",),
        people=pileup_people,
    ),
)
ANALYSES = (Analysis("pileup", ("pileup",), data="reads"),)
