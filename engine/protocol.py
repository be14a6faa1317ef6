"""Analyses as small protocols: rounds of station tasks with explicit, serialisable central state.

A protocol hands out one task per round (the same for every station), receives each station's result
(a dict of numpy arrays), and updates its state; :func:`run_local` drives it in-process, the coordinator
drives it over HTTP. Station work is :func:`execute`: the round kind's station half
(:class:`better.engine.rounds.RoundKind`), a pure function of the task and the station's data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from better.engine.design import Block, BlockSource, Design, Targets, concat_keys
from better.engine.errors import InputError
from better.engine.rounds import Result, StationData, Task


class Protocol(ABC):
    """Central state of one federated analysis."""

    rounds: int = 0

    @abstractmethod
    def next_task(self) -> Task | None:
        """The task for every station this round, or None when finished."""

    @abstractmethod
    def receive(self, results: list[Result]) -> None:
        """Take the stations' results for the current task."""

    @abstractmethod
    def result(self) -> dict[str, np.ndarray]:
        """The final per-variant (or one-row) table as columns."""


class OneRoundProtocol(Protocol):
    """An analysis of one round: its task, then the stations' results combined (:meth:`combine`).

    ``kind`` names the round; :meth:`task` adds what the task carries besides.
    """

    kind: ClassVar[str]

    def task(self) -> Task:
        """The round's task."""
        return {"kind": self.kind}

    @abstractmethod
    def combine(self, results: list[Result]) -> None:
        """Take the stations' results of the round."""

    def next_task(self) -> Task | None:
        return None if self.rounds else self.task()

    def receive(self, results: list[Result]) -> None:
        self.combine(results)
        self.rounds += 1


def execute(task: Task, data: StationData) -> Result:
    """Run one task at a station and return what it computes (aggregates only; the policy then judges)."""
    from better.engine.analyses import round_kind  # the registry imports the analyses, which import this

    return round_kind(str(task["kind"])).execute(task, data)


@dataclass
class GenotypeData:
    """A station's data held in memory: its design and genotype blocks, and no reads (tests, benches)."""

    design: Design
    source: BlockSource
    #: Covariates a round asked this station to keep (``name`` -> ``(samples, k)``).
    covariates: dict[str, np.ndarray] = field(default_factory=dict)

    def blocks(self, targets: Targets | None = None) -> Iterator[Block]:
        return iter(self.source(targets))

    def variant_keys(self) -> dict[str, np.ndarray]:
        return concat_keys([b.keys for b in self.source(None)])

    def target_keys(self) -> dict[str, np.ndarray]:
        raise InputError("this station's data holds no aligned reads")

    def target_depth(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        raise InputError("this station's data holds no aligned reads")

    def read_metrics(self) -> tuple[np.ndarray, np.ndarray]:
        raise InputError("this station's data holds no aligned reads")

    def pileup_counts(self, task: Task) -> np.ndarray:
        raise InputError("this station's data holds no aligned reads")

    def save_covariates(self, name: str, values: np.ndarray) -> None:
        self.covariates[name] = values


def run_local(protocol: Protocol, stations: list[tuple[Design, BlockSource]]) -> dict[str, np.ndarray]:
    """Drive a protocol in-process over ``(design, block source)`` pairs, one per station."""
    data = [GenotypeData(d, b) for d, b in stations]
    while (task := protocol.next_task()) is not None:
        protocol.receive([execute(task, d) for d in data])
    return protocol.result()
