"""A station's store as the data a round kind's station half reads (:class:`better.engine.rounds.StationData`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from better.engine.design import Block, BlockSource, Design, Targets
from better.engine.rounds import Task
from better.genomics import read_tables
from better.genomics.regions import Region
from better.genomics.station_inputs import variant_keys
from better.genomics.store import Dataset


@dataclass
class StoreData:
    """One task's view of a dataset: its design, its genotype blocks (``source``), its read tables.

    ``regions`` and ``pass_only`` are the task's; ``on_item`` is called as a pileup reads each sample's
    file (progress; it may raise to cancel).
    """

    dataset: Dataset
    design: Design
    source: BlockSource
    regions: Sequence[Region] | None = None
    pass_only: bool = False
    on_item: Callable[[int], None] | None = None

    def blocks(self, targets: Targets | None = None) -> Iterator[Block]:
        return iter(self.source(targets))

    def variant_keys(self) -> dict[str, np.ndarray]:
        return variant_keys(self.dataset, self.regions, self.pass_only)

    def target_keys(self) -> dict[str, np.ndarray]:
        return read_tables.targets_in(self.dataset, self.regions)[0]

    def target_depth(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        return read_tables.target_depth(self.dataset, self.regions)

    def read_metrics(self) -> tuple[np.ndarray, np.ndarray]:
        return read_tables.read_metrics(self.dataset)

    def save_covariates(self, name: str, values: np.ndarray) -> None:
        self.dataset.save_covariates(name, values)

    def pileup_counts(self, task: Task) -> np.ndarray:
        return read_tables.pileup_counts_of(
            self.dataset,
            self.design.include,
            np.asarray(task["key_chrom"]).tolist(),
            np.asarray(task["key_pos"]).tolist(),
            int(task["min_base_quality"]),
            int(task["min_mapping_quality"]),
            self.on_item,
        )
