"""A dataset's variants in parts, and one pass of a round computed on one part: what a worker runs.

An executor that spreads a station's work (:mod:`better.station_api.executor`) cuts the variants of a
task into :class:`Part` objects, whole row groups of the variants file in the store's order, and sends
each worker a :class:`PieceJob` with a part. The worker reads the part from the store (a path every
worker can read) and runs the round kind's :class:`~better.engine.rounds.Split` on it; nothing but the
piece's aggregates comes back, and the station combines them (:mod:`better.engine.pieces`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from better.engine.accelerate import set_threads
from better.engine.design import Block, Design
from better.engine.errors import StoreError
from better.engine.kernels.counts import genotype_counts
from better.engine.pieces import combine, passes
from better.engine.rounds import Result, Task
from better.genomics.regions import Region, merge_regions
from better.genomics.station_data import StoreData
from better.genomics.station_inputs import genotype_blocks
from better.genomics.store import Dataset

#: The most genotype bytes (packed calls and dosages) in one part: a piece that holds its part's rows
#: (PCA's) then holds at most this much, whatever the dataset's size.
PART_BYTES = 256 << 20
#: Genotype counts of each block read, with its keys: what the policy judges a round's rows by.
Seen = list[tuple[dict[str, np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class Part:
    """Consecutive row groups of a dataset's variants file within one region (``None``: everywhere)."""

    region: Region | None
    row_groups: tuple[int, ...]
    rows: int


def dataset_parts(dataset: Dataset, regions: Sequence[Region] | None, pass_only: bool, pieces: int) -> list[Part]:
    """The task's variants as about ``pieces`` parts of similar size (whole row groups, at least one each,
    and at most :data:`PART_BYTES` of genotypes unless one row group is larger), in the order the station
    itself reads them (region by region, then the file's order)."""
    candidates = [
        (region, dataset.row_groups(region, pass_only))
        for region in (merge_regions(list(regions)) if regions is not None else [None])
    ]
    total = sum(n for _, groups in candidates for _, n in groups)
    row_bytes = (dataset.n_samples + 3) // 4 + (2 * dataset.n_samples if dataset.has_dosages else 0)
    max_rows = max(1, min(-(-total // max(1, pieces)), PART_BYTES // max(1, row_bytes)))
    parts: list[Part] = []
    for region, groups in candidates:
        ids: list[int] = []
        rows = 0
        for group, n in groups:
            if ids and rows + n > max_rows:
                parts.append(Part(region, tuple(ids), rows))
                ids, rows = [], 0
            ids.append(group)
            rows += n
        if ids:
            parts.append(Part(region, tuple(ids), rows))
    return parts


def counting(
    blocks: Callable[[Any], Any], group: np.ndarray, n_groups: int, nearest: bool, seen: Seen
) -> Callable[[Any], Iterator[Block]]:
    """``blocks`` with each block's genotype counts (per group; from the dosages' nearest calls if
    ``nearest``) added to ``seen`` on the way: a round's people, counted from the blocks its kernel reads."""

    def counted(targets: Any = None) -> Iterator[Block]:
        for b in blocks(targets):
            dosages = b.dosages if nearest else None
            seen.append((b.keys, genotype_counts(np.ascontiguousarray(b.packed), group, n_groups, dosages)))
            yield b

    return counted


@dataclass(frozen=True)
class PieceJob:
    """What a worker needs besides the part: where the dataset is (and its variants file's size, to check
    that the worker reads the station's store) and which round and pass to run."""

    path: str
    name: str
    n_samples: int
    kind: str
    pass_no: int
    pass_only: bool
    store_bytes: int = -1


def run_piece(
    job: PieceJob,
    part: Part,
    task: Task,
    design: Design,
    before: Result,
    judged: tuple[np.ndarray, int, bool] | None = None,
) -> tuple[Result, Seen]:
    """One pass of ``job.kind`` over ``part``: the piece, and (first pass, with ``judged``: group per sample,
    groups, from dosages) the genotype counts of the blocks it read, for the policy.

    Runs on a worker, one kernel thread per piece (the workers' pieces run side by side).
    """
    from better.engine.analyses import round_kind  # the registry imports every analysis

    set_threads(1)
    split = round_kind(job.kind).split
    if split is None:
        raise ValueError(f"round kind {job.kind!r} does not run in pieces")
    dataset = Dataset(Path(job.path), job.name, job.n_samples)
    if job.store_bytes >= 0 and _size(dataset.variants_path) != job.store_bytes:
        raise StoreError(
            "a worker of the station's compute cluster does not see the station's store as the station does; "
            "every worker must mount the store at the station's path (tell the station's administrator)"
        )

    def blocks(targets: Any = None) -> Iterator[Block]:  # a part's blocks; targets may read more (allowed)
        return genotype_blocks(dataset, part.region, None, pass_only=job.pass_only, row_groups=part.row_groups)

    seen: Seen = []
    source: Callable[[Any], Iterator[Block]] = blocks
    if judged is not None and job.pass_no == 0:
        group, n_groups, nearest = judged
        source = counting(blocks, group, n_groups, nearest, seen)
    regions = None if part.region is None else [part.region]
    data = StoreData(dataset, design, source, regions, job.pass_only)
    return passes(split)[job.pass_no].piece(task, data, before), seen


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def combine_pieces(
    kind: str, pass_no: int, left: tuple[Result, Seen], right: tuple[Result, Seen]
) -> tuple[Result, Seen]:
    """Two neighbouring pieces of a pass combined (a node of the tree that combines a pass' pieces)."""
    from better.engine.analyses import round_kind

    split = round_kind(kind).split
    assert split is not None
    return combine(passes(split)[pass_no], [left[0], right[0]]), left[1] + right[1]
