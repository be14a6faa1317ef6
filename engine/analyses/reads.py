"""READS: ``samtools flagstat``'s counters and the MAPQ histogram over a dataset of aligned reads, summed
over the selected samples in one round."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from better.engine.kernels.read_metrics import FLAGSTAT_FIELDS
from better.engine.protocol import OneRoundProtocol
from better.engine.rounds import Analysis, Result, RoundKind, StationData, Task


# -- station side ----------------------------------------------------------------------------------------
def reads_station(flagstat: np.ndarray, mapq: np.ndarray, include: np.ndarray) -> Result:
    """Sums over the included samples of the flagstat counters ``(samples, 2, fields)`` and of the MAPQ
    histograms ``(samples, 256)``."""
    return {
        "flagstat": flagstat[include].sum(axis=0).astype(np.int64),
        "mapq": mapq[include].sum(axis=0).astype(np.int64),
        "n": np.array(int(include.sum())),
    }


def reads_round(task: Task, data: StationData) -> Result:
    """The station half of the ``reads`` round."""
    return reads_station(*data.read_metrics(), data.design.include)


# -- central side ----------------------------------------------------------------------------------------
@dataclass
class ReadsProtocol(OneRoundProtocol):
    """One round: the flagstat counters and the MAPQ histogram, added over stations."""

    kind = "reads"

    total: Result | None = None

    def combine(self, results: list[Result]) -> None:
        self.total = {name: np.sum([r[name] for r in results], axis=0) for name in ("flagstat", "mapq", "n")}

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        passed = self.total["flagstat"][0]
        c = dict(zip(FLAGSTAT_FIELDS, passed.tolist(), strict=True))
        mapq = self.total["mapq"]
        mapped = max(int(mapq.sum()), 1)
        total = max(c["total"], 1)
        out = {"SAMPLES": int(self.total["n"]), **{f.upper(): c[f] for f in FLAGSTAT_FIELDS}}
        out["QCFAIL"] = int(self.total["flagstat"][1][0])
        out["MAPPED_PCT"] = 100.0 * c["mapped"] / total
        out["DUPLICATES_PCT"] = 100.0 * c["duplicates"] / total
        out["PROPERLY_PAIRED_PCT"] = 100.0 * c["properly_paired"] / max(c["paired"], 1)
        out["MEAN_MAPQ"] = float((np.arange(256) * mapq).sum() / mapped)
        out["MAPQ0_PCT"] = 100.0 * mapq[0] / mapped
        out["MAPQ_GE20_PCT"] = 100.0 * mapq[20:].sum() / mapped
        out["MAPQ_GE30_PCT"] = 100.0 * mapq[30:].sum() / mapped
        return {k: np.array([v]) for k, v in out.items()}


ROUNDS = (RoundKind("reads", reads_round, data="reads", scope="none"),)
ANALYSES = (Analysis("reads", ("reads",), data="reads"),)
