"""COUNT: how many samples pass the filter (and have the phenotype and covariates asked for). One round."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from better.engine.protocol import OneRoundProtocol
from better.engine.rounds import Analysis, Result, RoundKind, StationData, Task


def sample_count_station(task: Task, data: StationData) -> Result:
    """The station's number of included samples."""
    return {"n": np.array(int(data.design.include.sum()))}


@dataclass
class SampleCountProtocol(OneRoundProtocol):
    """One round: the stations' counts, added."""

    kind = "sample_count"

    total: int | None = None
    withheld: bool = False

    def combine(self, results: list[Result]) -> None:
        self.withheld = any(bool(r.get("withheld", False)) for r in results)
        self.total = int(sum(int(r["n"]) for r in results))

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        return {
            "COUNT": np.array([np.nan if self.withheld else self.total]),
            "WITHHELD": np.array([self.withheld]),
        }


ROUNDS = (RoundKind("sample_count", sample_count_station, scope="none", whole_count=True),)
ANALYSES = (Analysis("count", ("sample_count",)),)
