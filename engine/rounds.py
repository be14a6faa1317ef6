"""What a round kind is: everything the station, its policy, the wire and the coordinator need to know.

An analysis runs as rounds; each round is of one *kind* (``counts``, ``linear``, ``logistic_score``,
``coverage`` ...). A kind is declared once, as a :class:`RoundKind` in the module of its analysis
(:mod:`better.engine.analyses`), beside the analysis' central state machine. The station's server, its
policy, the wire format and the coordinator read the declaration through the registry
(:func:`better.engine.analyses.round_kind`) and never test a kind's name.

The station half of a kind is a pure function of the task and a :class:`StationData`: the station's
model inputs and genotype blocks, and the arrays of its read tables. :mod:`better.genomics.station_data`
provides those from the store; the tests provide them in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from better.engine.design import Block, Design, Targets

Result = dict[str, np.ndarray]
Task = dict[str, Any]

#: The rules that withhold a row (a variant, a target, a position), in the order results list them.
RULES = ("minor_allele_count", "carriers", "missing_genotypes", "case_control_cells", "small_cells")


class StationData(Protocol):
    """What a round's station half may read at a station.

    ``design`` is the task's model inputs (who is included, the phenotype, the covariates). The other
    members are read only by the kinds that need them.
    """

    design: Design

    def blocks(self, targets: Targets | None = None) -> Iterator[Block]:
        """The task's genotype blocks (only those holding ``targets``, when given)."""
        ...

    def variant_keys(self) -> dict[str, np.ndarray]:
        """The key columns of the task's variants."""
        ...

    def target_keys(self) -> dict[str, np.ndarray]:
        """The key columns of the targets the task's regions overlap."""
        ...

    def target_depth(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Per sample and target: target keys, then sample index, target row and sums (see coverage)."""
        ...

    def read_metrics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per sample: flagstat counters ``(samples, 2, fields)`` and MAPQ histogram ``(samples, 256)``."""
        ...

    def pileup_counts(self, task: Task) -> np.ndarray:
        """Per included sample, read counts ``(samples, positions, codes)`` at the task's positions."""
        ...

    def save_covariates(self, name: str, values: np.ndarray) -> None:
        """Keep ``values`` ``(samples, k)`` (NaN: none) as covariates ``name1..namek`` of the dataset."""
        ...


@dataclass(frozen=True)
class StateArray:
    """One array of a round's state, as the station checks it.

    ``shape`` names each dimension: a number, ``"rows"`` (the rows the state names, at most the
    station's cap per task and ``max_rows``), ``"k"`` (the design's columns), ``"k+1"`` (with the
    genotype) or ``"cols"`` (as many as the task sends, 1 to the kind's ``max_cols``, the same in every
    array). ``bounds``: the inclusive range of an integer scalar.
    """

    dtype: Any
    shape: tuple[int | str, ...] = ()
    finite: bool = False
    bounds: tuple[int, int] | None = None


@dataclass(frozen=True)
class SharedRows:
    """How a kind's per-row results are laid on a round's shared row list under secure aggregation.

    Masked arrays are added element by element, so every station releases them over the same rows in
    the same order: the union of every station's keys, which the ``keys_round`` lists in the clear.
    ``per_row``: the arrays with one row per key and, for a row the station lacks, the total it takes
    there (``None``: zero; a ``counts`` array gets the group sizes in its last, "missing", code).
    """

    keys_round: str
    columns: tuple[str, ...]
    per_row: dict[str, str | None]


@dataclass(frozen=True)
class Finishing:
    """The sums a kind's rows finish with at the stations (rows withheld only for a few missing calls).

    ``rows``: per-row sums; ``totals``: sums the same for every row; ``model``: the final statistics
    released (:mod:`better.engine.finals`).
    """

    rows: tuple[str, ...]
    totals: tuple[str, ...]
    model: str


@dataclass(frozen=True)
class Split:
    """A kind's station half in pieces over disjoint parts of the store's variants, for an executor that
    spreads the pieces over workers (:mod:`better.engine.pieces` combines them).

    ``piece(task, data, before)`` is the part of the result computed from ``data``'s blocks alone;
    ``before`` is what the previous pass gave, combined (``{}`` on the first). ``rows``: arrays with one
    row per variant read, concatenated in the store's order (the ``key_*`` columns always are);
    ``sums``: arrays added over the pieces; any other array is the same in every piece and kept once.
    ``then``: a further pass over the same parts that needs this one's combined result. ``finish``:
    run once at the station on the last pass' combined result (work on the design, not on variants).
    Run over one part holding everything, a split gives what the kind's ``execute`` gives.
    """

    piece: Callable[[Task, StationData, Result], Result]
    rows: tuple[str, ...] = ()
    sums: tuple[str, ...] = ()
    then: Split | None = None
    finish: Callable[[Task, StationData, Result], Result] | None = None


@dataclass(frozen=True)
class RoundKind:
    """One kind of round: its state, its station half and how its release is judged.

    Parameters
    ----------
    name
        The kind's name on the wire.
    execute
        The station half: ``(task, data) -> result`` (aggregates only).
    data
        The kind of dataset it reads: ``"variants"`` or ``"reads"``.
    state
        The arrays its task state holds (:class:`StateArray`); a kind with state needs it.
    scope
        What the station reads, for its variant cap and progress: ``"none"``, ``"variants"`` (the
        dataset's, within the regions), ``"targets"`` or ``"task"`` (the rows the state names).
    lists_keys
        It releases only keys (variants or targets), in the clear, and nothing about people.
    sealed
        Under secure aggregation its release is judged on totals summed over the stations first
        (``"always"``), only when it opens a query's audit (``"first"``), or never.
    case_control
        Its model is of a binary phenotype, judged within cases and within controls.
    shared
        How its per-row results are laid on a shared row list under secure aggregation (``None``: it has
        no per-row results, or its rows are those its state names, the same at every station).
    rules
        The rules (:data:`RULES`) that judge its rows.
    zeroed
        The per-row arrays a withheld row has zeroed.
    excludes
        A per-row state array the station sets to 0 for withheld rows before its station half runs, so that
        those variants enter nothing it computes (PCA's ``scale``: a row's genotypes feed every other row's
        product through the scores, so zeroing its own output is not enough).
    pairs
        Per-row arrays ``(rows, span, ...)`` whose entry ``[i, d]`` is about rows ``i`` and ``i + 1 + d``
        (LD pairs): zeroed where either row is withheld.
    dropped
        Arrays the station computes for its policy that never leave.
    judged_groups
        Its rows are judged on the genotype counts of the model's samples (a regression's): in one
        group, everyone, or two, controls and cases. A variant the station lacks counts them missing.
    people
        The per-row people counts its rules judge, from its result (genotype counts ``(rows, groups,
        4)``, or samples per row); ``None`` with ``judged_groups``: genotype counts computed beside the
        kernel, from the same blocks.
    calls
        The station's called and missing samples and ALT alleles per row, from its result, released
        for withheld rows too (as FREQ shows them), so a variant filter can still drop such rows.
    finishing
        The sums its rows finish with at the stations, if they may.
    rules_from
        The round whose pooled judgement its rows take (a Newton round's, from its score round).
    max_rows
        The most rows its state may name (besides the station's cap of variants per task).
    max_cols
        The most columns a ``"cols"`` dimension of its state may have.
    whole_count
        It releases one count (``n``), withheld as a whole: when the query audit refused it, or (judged
        alone) when it is small at this station.
    hard_calls
        It reads the hard calls even on a dataset with dosages (LD, PCA), so its people are counted on
        them; other kinds read dosages where a dataset has them, and their people are the genotypes
        nearest the dosages.
    split
        Its station half in pieces over parts of the store (:class:`Split`), so that an executor may
        spread a pass over every variant across workers; ``None``: it runs whole, at the station.
    """

    name: str
    execute: Callable[[Task, StationData], Result]
    data: Literal["variants", "reads"] = "variants"
    state: dict[str, StateArray] = field(default_factory=dict)
    scope: Literal["none", "variants", "targets", "task"] = "variants"
    lists_keys: bool = False
    sealed: Literal["always", "first", "never"] = "always"
    case_control: bool = False
    shared: SharedRows | None = None
    rules: tuple[str, ...] = ()
    judged_groups: int | None = None
    zeroed: tuple[str, ...] = ()
    pairs: tuple[str, ...] = ()
    excludes: str | None = None
    dropped: tuple[str, ...] = ()
    people: Callable[[Result], np.ndarray] | None = None
    calls: Callable[[Result], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    finishing: Finishing | None = None
    rules_from: str | None = None
    max_rows: int | None = None
    max_cols: int = 0
    whole_count: bool = False
    hard_calls: bool = False
    split: Split | None = None

    def __post_init__(self) -> None:
        unknown = set(self.rules) - set(RULES)
        if unknown:
            raise ValueError(f"round kind {self.name!r}: unknown rules {sorted(unknown)}")
        if self.lists_keys and self.sealed != "never":
            raise ValueError(f"round kind {self.name!r} lists keys in the clear: it cannot be sealed")
        if self.rules and self.people is None and self.judged_groups is None:
            raise ValueError(f"round kind {self.name!r} has rules but no people to judge")
        per_row = self.shared is not None or (self.rows_in_state and not self.whole_count)
        if per_row and not self.lists_keys and not (self.rules and self.zeroed):
            # fail closed: per-row results leave only judged, and a withheld row only zeroed
            raise ValueError(f"round kind {self.name!r} has per-row results: it needs rules and zeroed arrays")

    @property
    def rows_in_state(self) -> bool:
        """Its state names the rows it computes (and its result has one row per named row)."""
        return any("rows" in a.shape for a in self.state.values())


@dataclass(frozen=True)
class Analysis:
    """An analysis a station may allow, and the kinds of round it runs, in order of first use."""

    name: str
    rounds: tuple[str, ...]
    data: Literal["variants", "reads"] = "variants"
    #: Its model has a phenotype (a GWAS): the task names one, and the policy judges samples per parameter.
    needs_phenotype: bool = False
