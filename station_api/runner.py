"""Run one station task against the store: request -> design and blocks -> engine -> policy -> bytes.

Everything in the request was validated by the wire model; what depends on the store (the dataset, its
columns, the state's shapes against the design) is checked here, each with an error that says what to
fix.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from better.engine.analyses import analysis, round_kind
from better.engine.design import KEY_COLUMNS, Block, Design
from better.engine.errors import InputError
from better.engine.kernels.counts import genotype_counts
from better.engine.key_union import INTEGER_KEYS
from better.engine.protocol import execute
from better.engine.rounds import RoundKind, StateArray
from better.engine.shared_rows import GENOTYPE_COUNTS, conform
from better.genomics import read_tables
from better.genomics.parts import Seen, counting
from better.genomics.regions import Region, merge_regions
from better.genomics.selection import Condition
from better.genomics.station_data import StoreData
from better.genomics.station_inputs import StationBlocks, build_design
from better.genomics.store import DATASETS, Dataset, Store
from better.station_api.config import Policy
from better.station_api.executor import DaskExecutor
from better.station_api.policy import release, withheld_rows
from better.station_api.secure_agg import StationSecrets
from better.wire.arrays import decode_state, encode_arrays
from better.wire.messages import TaskRequest, participants_of

#: Result arrays with one row per variant, by round; they form the Arrow table.
_ROWS_KEY = "key_pos"


@dataclass(frozen=True)
class Outcome:
    """What a task releases (Arrow IPC bytes) and the summary written to the audit log."""

    payload: bytes
    summary: dict[str, Any]


def regions_of(request: TaskRequest) -> list[Region] | None:
    """The request's regions, parsed and merged (None: the whole dataset)."""
    if not request.regions:
        return None
    return merge_regions([Region.parse(r) for r in request.regions])


def variants_in_scope(dataset: Dataset, request: TaskRequest, task: dict[str, Any]) -> int:
    """How many variants (or targets, or positions) the task reads (for the variant cap and progress)."""
    kind = round_kind(request.kind)
    if kind.scope == "task":
        return int(task[row_array(kind)].shape[0])
    if kind.scope == "none":
        return 0
    regions = regions_of(request)
    if kind.scope == "targets":
        own = int(read_tables.targets_in(dataset, regions)[1].shape[0])
    elif regions is None:
        own = dataset.n_variants
    else:
        own = sum(dataset.variants(r, ["pos"]).num_rows for r in regions)
    shared = task.get("shared_rows")  # the round's shared rows, which may be more than this station's
    return max(own, len(next(iter(shared.values())))) if shared is not None else own


def design_of(dataset: Dataset, request: TaskRequest) -> Design:
    """The task's model inputs at this station."""
    conditions = [Condition(c.column, c.op, c.value) for c in request.where]
    if request.phenotype is None:
        n = dataset.n_samples
        return Design(C=np.ones((n, 1)), y=np.zeros(n), include=dataset.sample_mask(conditions), names=("intercept",))
    adjust = request.adjust
    return build_design(
        dataset,
        request.phenotype,
        request.covariates,
        conditions,
        binary=request.binary,
        station_index=adjust.index if adjust else None,
        n_stations=adjust.count if adjust else 1,
    )


def engine_task(request: TaskRequest, design: Design, max_variants: int) -> dict[str, Any]:
    """The engine's task dict, with the round state checked against the kind's schema and the design."""
    kind = round_kind(request.kind)
    task: dict[str, Any] = {"kind": request.kind, "groups": request.groups}
    state = decode_state(request.state)  # checked even where the kind reads none: nothing unchecked is kept
    if kind.shared is not None and request.secure is not None:
        task["shared_rows"] = _keys(state, max_variants, kind.shared.columns)
    rows = _rows_named(kind, state, max_variants) if kind.rows_in_state else 0
    sizes = {"rows": rows, "k": design.k, "k+1": design.k + 1, "cols": _cols_named(kind, state)}
    for name, spec in kind.state.items():
        task[name] = _checked(state, name, spec, tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape))
    return task


def row_array(kind: RoundKind) -> str:
    """The state array whose length is the number of rows a kind's state names (``key_pos`` if it has one)."""
    named = [name for name, spec in kind.state.items() if spec.shape[:1] == ("rows",)]
    return "key_pos" if "key_pos" in named else named[0]


def _rows_named(kind: RoundKind, state: dict[str, np.ndarray], max_variants: int) -> int:
    """How many rows a round's state names: 1 to the kind's own cap; without one, up to the station's cap
    of variants per task (a kind with its own cap is held to the station's by the policy, as a refusal)."""
    first = row_array(kind)
    if first not in state:
        raise InputError(f"task state: the round names no rows ({first} is missing)")
    a = int(np.asarray(state[first]).shape[0])
    if kind.max_rows is not None and not 1 <= a <= kind.max_rows:
        raise InputError(f"task state: a {kind.name} round takes 1 to {kind.max_rows} rows, not {a}")
    if kind.max_rows is None and a > max_variants:
        raise InputError(f"task state: {a} rows, over the station's cap of {max_variants} variants per task")
    return a


def _cols_named(kind: RoundKind, state: dict[str, np.ndarray]) -> int:
    """How many columns a round's ``"cols"`` arrays have: those of the first such array, 1 to the kind's
    ``max_cols`` (every other such array is then checked against it)."""
    for name, spec in kind.state.items():
        if "cols" in spec.shape and name in state:
            a = np.asarray(state[name])
            dim = spec.shape.index("cols")
            cols = int(a.shape[dim]) if a.ndim > dim else 0
            if not 1 <= cols <= kind.max_cols:
                raise InputError(f"task state: {name!r} must have 1 to {kind.max_cols} columns, not {cols}")
            return cols
    return 0


def _checked(state: dict[str, np.ndarray], name: str, spec: StateArray, shape: tuple[int, ...]) -> Any:
    """One state array, checked against its declaration (a bounded scalar comes back as an int)."""
    a = _array(state, name, spec.dtype, shape, finite=spec.finite)
    if spec.bounds is None:
        return a
    low, high = spec.bounds
    if not low <= int(a) <= high:
        raise InputError(f"task state: {name} must be between {low} and {high}")
    return int(a)


def _keys(
    state: dict[str, np.ndarray], max_variants: int, columns: tuple[str, ...] = KEY_COLUMNS
) -> dict[str, np.ndarray]:
    """The key columns a round's state names (``key_*``: variants, or targets), within the station's cap."""
    first = f"key_{columns[1]}"
    if first not in state:
        raise InputError(f"task state: the round names no rows ({first} is missing)")
    a = int(np.asarray(state[first]).shape[0])
    if a > max_variants:
        raise InputError(f"task state: {a} rows, over the station's cap of {max_variants} variants per task")
    return {c: _array(state, f"key_{c}", np.int64 if c in INTEGER_KEYS else str, (a,)) for c in columns}


def _array(
    state: dict[str, np.ndarray], name: str, dtype: Any, shape: tuple[int, ...], finite: bool = False
) -> np.ndarray:
    if name not in state:
        raise InputError(f"task state: {name!r} is missing")
    a = state[name]
    want_kind = np.dtype(dtype).kind
    if a.dtype.kind != want_kind or a.shape != shape:
        raise InputError(
            f"task state: {name!r} is {a.dtype} {a.shape}; this station's design needs {np.dtype(dtype)} {shape} "
            "(do the covariates and ADJUST station match the rest of the query?)"
        )
    if finite and not np.all(np.isfinite(a)):
        raise InputError(f"task state: {name!r} holds NaN or infinity")
    return a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray would make a scalar 1-d)


@dataclass(frozen=True)
class Prepared:
    """A request checked against the store: everything a worker needs to run it."""

    request: TaskRequest
    dataset: Dataset
    design: Design
    task: dict[str, Any]
    n_variants: int


class DatasetCache:
    """Open datasets by name once; a dataset replaced by a new ingest (a new folder) is opened again."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._open: dict[str, tuple[int, Dataset]] = {}
        self._digests: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def digest(self, name: str) -> str:
        """SHA-256 of the dataset's source VCF, as recorded at ingest (for signed manifests)."""
        inode = self._inode(name)
        with self._lock:
            hit = self._digests.get(name)
        if hit is not None and hit[0] == inode:
            return hit[1]
        value = next((str(d["source_sha256"] or "") for d in self.store.summary() if d["name"] == name), "")
        with self._lock:
            self._digests[name] = (inode, value)
        return value

    def _inode(self, name: str) -> int:
        """A token that changes whenever any dataset is committed (a commit renames a folder into
        ``datasets/``, which changes that folder's modification time)."""
        try:
            return os.stat(self.store.path / DATASETS).st_mtime_ns
        except OSError:
            return -1

    def __call__(self, name: str) -> Dataset:
        inode = self._inode(name)
        with self._lock:
            hit = self._open.get(name)
            if hit is not None and hit[0] == inode != -1:
                return hit[1]
        dataset = self.store.dataset(name)  # the catalog's answer, with a suggestion if unknown
        with self._lock:
            self._open[name] = (inode, dataset)
        return dataset


def prepare(datasets: Callable[[str], Dataset], request: TaskRequest, policy: Policy) -> Prepared:
    """Check a request against the store (dataset, columns, regions, state shapes); raise a clear error."""
    dataset = datasets(request.dataset)
    wanted = analysis(request.analysis).data
    if dataset.kind != wanted:
        how = "`better ingest-bam`" if wanted == "reads" else "`better ingest` from a VCF"
        raise InputError(
            f"dataset {request.dataset!r} holds {dataset.kind}; a {request.analysis} analysis needs a dataset of "
            f"{wanted} (made by {how})"
        )
    regions_of(request)
    design = design_of(dataset, request)
    task = engine_task(request, design, policy.max_variants_per_task)
    return Prepared(request, dataset, design, task, variants_in_scope(dataset, request, task))


class BlockCache:
    """Blocks of the latest small full reads, kept for the next task over the same variants.

    A batch GWAS sends one task per phenotype for each chunk of the genome at the same time; with this
    cache the station reads and unpacks the chunk's genotypes once for all of them (the kernels still run
    per phenotype, as their samples differ). Only reads of at most ``max_bytes`` are kept, ``entries``
    of them, least recently used first out.
    """

    def __init__(self, max_bytes: int = 64 << 20, entries: int = 4) -> None:
        self.max_bytes = max_bytes
        self.entries = entries
        self._data: dict[tuple[Any, ...], list[Block]] = {}
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._lock = threading.Lock()

    def fits(self, n_variants: int, n_samples: int, dosages: bool = False) -> bool:
        """Whether a read of ``n_variants`` rows (hard calls, and 2 bytes a sample with dosages) is kept."""
        return n_variants * (n_samples // 4 + 1 + (2 * n_samples if dosages else 0)) <= self.max_bytes

    def get(self, key: tuple[Any, ...], read: Callable[[], list[Block]]) -> list[Block]:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # a second task for the same variants waits for the first one's read
            with self._lock:
                if key in self._data:
                    self._data[key] = self._data.pop(key)  # most recent last
                    return self._data[key]
            blocks = read()
            with self._lock:
                self._data[key] = blocks
                while len(self._data) > self.entries:
                    oldest = next(iter(self._data))
                    del self._data[oldest]
                    self._locks.pop(oldest, None)
            return blocks


def block_source(
    prepared: Prepared, on_block: Callable[[int], None] | None, cache: BlockCache | None
) -> Callable[[Any], Any]:
    """The task's blocks: through ``cache`` for a small full read, straight from the store otherwise."""
    request = prepared.request
    regions = regions_of(request)
    dataset = prepared.dataset
    if cache is None or not cache.fits(prepared.n_variants, dataset.n_samples, dataset.has_dosages):
        return StationBlocks(prepared.dataset, regions, on_block=on_block, pass_only=request.pass_only)
    plain = StationBlocks(prepared.dataset, regions, pass_only=request.pass_only)
    # the folder's inode changes when a new ingest replaces the dataset, so stale blocks are never served
    folder = os.stat(prepared.dataset.path).st_ino
    key = (str(prepared.dataset.path), folder, tuple(map(str, regions or [])), request.pass_only)

    def source(targets: Any = None) -> Any:
        if targets is not None:
            return plain(targets)
        blocks = cache.get(key, lambda: list(plain(None)))

        def replay() -> Any:
            for b in blocks:
                if on_block is not None:
                    on_block(b.packed.shape[0])
                yield b

        return replay()

    return source


@dataclass(frozen=True)
class Computed:
    """A round's result at this station, and the people behind each of its rows (for the policy)."""

    result: dict[str, np.ndarray]
    people: np.ndarray | None
    #: Samples per group behind genotype-count people (a variant absent here counts them as missing).
    group_sizes: np.ndarray | None = None
    #: The parts it was computed in on a cluster (0: here, whole).
    pieces: int = 0


def judged_groups(design: Design, kind: RoundKind) -> tuple[np.ndarray, int]:
    """The sample groups a round's genotype counts are judged by: everyone, or controls and cases."""
    n = kind.judged_groups or 1
    return design.groups(n), n


def compute(
    prepared: Prepared,
    on_block: Callable[[int], None] | None = None,
    compute_lock: Any = None,
    cache: BlockCache | None = None,
    judge: bool = True,
    executor: DaskExecutor | None = None,
) -> Computed:
    """Run a prepared task's station work: its result, and the per-row people counts the policy judges.

    For the regression rounds the genotype counts come from the same blocks as the kernel's (one read).
    ``judge=False``: the rows' judgements are known already (a later round of a judged session), so
    nothing is counted for them. ``executor``: a cluster that runs the kinds that split into pieces
    (:mod:`better.station_api.executor`); ``None``, or another kind, runs here.
    """
    request, task = prepared.request, prepared.task
    kind = round_kind(request.kind)
    seen: Seen = []
    pieces = 0
    # a round's own sums give its people only for hard calls; on dosages they are counted from the blocks
    dosages = kind.data == "variants" and not kind.hard_calls and prepared.dataset.has_dosages
    from_sums = kind.people is not None and not (dosages and kind.judged_groups is not None)
    judged = None
    if judge and kind.judged_groups is not None and not from_sums:
        judged = (*judged_groups(prepared.design, kind), dosages)
    regions = regions_of(request)
    spread = executor is not None and executor.takes(kind, prepared.dataset)
    blocks = block_source(prepared, None if spread else on_block, None if spread else cache)
    if judged is not None and not spread:
        blocks = counting(blocks, *judged, seen)
    data = StoreData(prepared.dataset, prepared.design, blocks, regions, request.pass_only, on_block)
    locked = compute_lock is not None and kind.data == "variants" and not kind.lists_keys
    if spread:
        assert executor is not None
        executor.client()  # connected (or its error) before the kernels' turn: a slow connection holds no lock
    with compute_lock if locked else nullcontext():
        if spread:
            assert executor is not None
            result, seen, pieces = executor.run(kind, task, data, regions, on_block, judged)
        else:
            result = execute(task, data)
    if kind.judged_groups is None or not judge:
        return Computed(result, kind.people(result) if kind.people is not None and judge else None, pieces=pieces)
    group, n_groups = judged_groups(prepared.design, kind)
    sizes = np.bincount(group[group >= 0], minlength=n_groups).astype(np.int64)
    if from_sums:  # e.g. a linear round's own sums give its genotype counts: no second pass
        assert kind.people is not None
        return Computed(result, kind.people(result), sizes, pieces)
    return Computed(result, _counts_on_rows(result, task, seen, sizes), sizes, pieces)


def _counts_on_rows(
    result: dict[str, np.ndarray],
    task: dict[str, Any],
    seen: list[tuple[dict[str, np.ndarray], np.ndarray]],
    sizes: np.ndarray,
) -> np.ndarray:
    """Genotype counts laid on the result's rows: the blocks' own order, or a Newton round's variants (one
    this station lacks counts every analysed sample as missing)."""
    n_groups = sizes.shape[0]
    if "key_pos" in result:  # rows in block order
        return np.concatenate([c for _, c in seen]) if seen else np.zeros((0, n_groups, 4), dtype=np.int64)
    wanted = list(zip(*(np.asarray(task[f"key_{c}"]).tolist() for c in KEY_COLUMNS), strict=True))
    out = np.zeros((len(wanted), n_groups, 4), dtype=np.int64)
    out[:, :, 3] = sizes
    where = {key: i for i, key in enumerate(wanted)}
    for keys, counts in seen:
        for r, key in enumerate(zip(*(keys[c].tolist() for c in KEY_COLUMNS), strict=True)):
            if key in where:
                out[where[key]] = counts[r]
    return out


def n_rows_of(request: TaskRequest, task: dict[str, Any], released: dict[str, np.ndarray]) -> int | None:
    """How many rows a result's table has (the arrays of that length become its columns)."""
    kind = round_kind(request.kind)
    if kind.rows_in_state:
        return int(task[row_array(kind)].shape[0])
    if request.secure is not None and "shared_rows" in task:
        return len(next(iter(task["shared_rows"].values())))
    return int(released[_ROWS_KEY].shape[0]) if _ROWS_KEY in released else None


def on_shared_rows(request: TaskRequest, task: dict[str, Any], computed: Computed) -> Computed:
    """A secure round's result and people laid on the round's shared rows."""
    kind = round_kind(request.kind)
    if "shared_rows" not in task or kind.shared is None:
        return computed
    shared = task["shared_rows"]
    result = conform(kind.shared, computed.result, shared)
    people = computed.people
    if kind.judged_groups is not None and people is not None and computed.group_sizes is not None:
        keys = {k: v for k, v in computed.result.items() if k.startswith("key_")}
        people = conform(GENOTYPE_COUNTS, {**keys, "counts": people, "group_size": computed.group_sizes}, shared)[
            "counts"
        ]
    elif kind.people is not None:
        people = kind.people(result)
    return Computed(result, people, computed.group_sizes)


def _rules_first(
    prepared: Prepared,
    kind: RoundKind,
    policy: Policy,
    cache: BlockCache | None,
) -> dict[str, np.ndarray]:
    """A round's per-row judgements before it runs, on this station's own genotype counts of the task's
    rows (one counting pass)."""
    group, n_groups = judged_groups(prepared.design, kind)
    sizes = np.bincount(group[group >= 0], minlength=n_groups).astype(np.int64)
    nearest = not kind.hard_calls  # the genotypes nearest the dosages, where the dataset has them
    seen = [
        (b.keys, genotype_counts(np.ascontiguousarray(b.packed), group, n_groups, b.dosages if nearest else None))
        for b in block_source(prepared, None, cache)(None)
    ]
    return withheld_rows(kind.name, _counts_on_rows({}, prepared.task, seen, sizes), policy)


def run_task(
    prepared: Prepared,
    policy: Policy,
    on_block: Callable[[int], None] | None = None,
    compute_lock: Any = None,
    cache: BlockCache | None = None,
    secrets: StationSecrets | None = None,
    withhold: bool = False,
    rules: dict[str, np.ndarray] | None = None,
    executor: DaskExecutor | None = None,
) -> Outcome:
    """Run a prepared task (in the clear, or a masked round of an audited session) and return what the
    policy lets leave (its kernels on ``executor``'s cluster, if any; see :func:`compute`).

    ``on_block`` is called with the size of every block read (progress; it may raise to cancel).
    ``compute_lock`` is held around the kernels (the server makes tasks take turns). ``cache`` shares
    small reads between tasks over the same variants. ``secrets`` mask the release when the request asks
    for secure aggregation. ``withhold``: the query audit withheld this count. ``rules``: per-row
    judgements made before (a Newton round's, from its session's score round).
    """
    request, task = prepared.request, prepared.task
    kind = round_kind(request.kind)
    if kind.excludes is not None:  # withheld rows enter nothing: judge them first, then compute without them
        if rules is None:  # judged here, once: the same judgements go to the policy below
            rules = _rules_first(prepared, kind, policy, cache)
        hit = np.zeros(int(np.asarray(task["key_pos"]).shape[0]), dtype=bool)
        for rule in rules.values():
            hit |= np.asarray(rule, dtype=bool)
        task = {**task, kind.excludes: np.where(hit, 0.0, task[kind.excludes])}
        prepared = replace(prepared, task=task)
    computed = compute(prepared, on_block, compute_lock, cache, judge=rules is None, executor=executor)
    if request.secure is not None:  # masked arrays are added row by row: lay them on the round's rows first
        computed = on_shared_rows(request, task, computed)
    result = dict(computed.result)
    if withhold:
        result["withheld"] = np.array(True)
    released, summary = release(request.kind, result, policy, computed.people, rules=rules)
    n_rows = n_rows_of(request, task, released)
    if request.secure is None:
        payload = encode_arrays(released, n_rows)
    else:
        if secrets is None:
            raise InputError("this station has no key-agreement key, so it cannot take part in secure aggregation")
        masked = secrets.mask(released, request.secure.session, request.secure.round, participants_of(request.secure))
        payload = encode_arrays(masked, n_rows, compress=False)
        summary["secure_round"] = request.secure.round
    summary["bytes"] = len(payload)
    if computed.pieces:
        summary["pieces"] = computed.pieces
    return Outcome(payload, summary)
