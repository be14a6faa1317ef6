"""Where a station's kernels run: in the server's own threads (the default), or on a Dask cluster.

``station.toml``'s ``[executor]`` chooses (:class:`better.station_api.config.Executor`). With
``kind = "dask"`` a round whose kind runs in pieces (:class:`~better.engine.rounds.Split`: linear and
logistic GWAS, FREQ and HWE counts, PCA) is cut into parts of whole row groups
(:func:`better.genomics.parts.dataset_parts`), each part becomes a Dask task that reads the store (a path
every worker can read) and returns only its aggregates, and the pieces are combined in a tree on the
workers; the station finishes the result, judges it and releases it as always. Every other round (key
lists, a Newton round's few variants, reads) runs in the station's threads.

A worker that dies mid-piece has its piece run again elsewhere (pieces are pure functions of the store,
so a piece run twice gives the same numbers); a piece lost on too many workers fails the task with a
clear error, and nothing is released. Cancelling a task cancels its pieces.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from better.engine.design import Block
from better.engine.errors import StoreError
from better.engine.pieces import passes
from better.engine.rounds import Result, RoundKind, Split
from better.genomics.parts import PieceJob, Seen, combine_pieces, dataset_parts, run_piece
from better.genomics.regions import Region
from better.genomics.station_data import StoreData
from better.genomics.store import Dataset
from better.station_api import __version__
from better.station_api.config import Executor as ExecutorConfig

log = logging.getLogger(__name__)

#: Parts per worker thread: a few, so that fast workers take more and the last piece is short.
PARTS_PER_THREAD = 4
#: glibc's allocator settings for the workers of a LocalCluster the station starts (see ``_connect``): large
#: buffers stay in the heap and are reused, as in the station's own process.
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": 128 << 20, "MALLOC_MMAP_THRESHOLD_": 32 << 20}
#: How long the station waits for its cluster before a task fails (seconds).
CONNECT_SECONDS = 120.0
#: How long a task waits on a cluster that has no worker before it fails (seconds).
NO_WORKERS_SECONDS = 60.0
#: What a researcher is told when the cluster cannot be reached (the log says why).
UNAVAILABLE = "the station's compute cluster is not available now; its administrator can see why in the station's log"
NO_WORKERS = "the station's compute cluster has no workers now, so this task cannot run; tell its administrator"


class DaskExecutor:
    """A station's Dask client: an existing cluster (``scheduler``) or a ``LocalCluster`` it starts.

    The connection is made in the background from the moment the station starts; the first task that
    needs it waits for it. A client that lost its scheduler for good is made again on the next task.
    What went wrong is logged for the administrator; researchers are told only that the cluster is not
    available (its addresses are the station's own business).
    """

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self._client: Any = None
        self._cluster: Any = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        threading.Thread(target=self._connect, name="better-dask-connect", daemon=True).start()

    def _connect(self) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster

            if self.config.scheduler is not None:
                self._client = Client(self.config.scheduler, timeout=30)
            else:
                if self._cluster is None:
                    # Dask's nannies give workers MALLOC_TRIM_THRESHOLD_=65536, so every large buffer a
                    # piece frees goes back to the system and the next one faults its pages in again: the
                    # kernels ran 1.8 times slower than in the station. Workers, and their restarts, get
                    # WORKER_MALLOC.
                    dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC.items()})
                    self._cluster = LocalCluster(
                        n_workers=self.config.workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address="127.0.0.1:0",  # its HTTP routes on a free loopback port
                    )
                self._client = Client(self._cluster)
            versions = set(self._client.run(_warm).values())
            if versions - {__version__}:
                raise StoreError(f"the workers run better {', '.join(sorted(versions))}, the station {__version__}")
            self._error = None
        except Exception as exc:  # a wrong address, a cluster that would not start: every task says so
            where = self.config.scheduler or f"a LocalCluster of {self.config.workers} workers"
            self._error = f"the Dask cluster ({where}) is not available: {exc}"
            log.error("%s; check [executor] in station.toml and the cluster", self._error)
        finally:
            self._ready.set()

    def client(self) -> Any:
        """The connected client (connecting again if the last one closed); a :class:`StoreError` if the
        cluster cannot be reached."""
        with self._lock:
            if not self._ready.wait(CONNECT_SECONDS):
                raise StoreError(UNAVAILABLE)
            if self._client is not None and self._client.status in ("closed", "failed", "closing"):
                log.warning("the Dask client lost its scheduler; connecting again")
                self._ready.clear()
                self._connect()
            if self._error is not None:
                raise StoreError(UNAVAILABLE)
            return self._client

    def workers(self) -> int:
        """Worker threads in the cluster now (0: none)."""
        return sum(self.client().nthreads().values())

    def takes(self, kind: RoundKind, dataset: Dataset) -> bool:
        """Whether this executor spreads a round of ``kind`` over ``dataset`` (else it runs in the station)."""
        return kind.split is not None and kind.data == "variants" and dataset.kind == "variants"

    def run(
        self,
        kind: RoundKind,
        task: dict[str, Any],
        data: StoreData,
        regions: list[Region] | None,
        on_block: Callable[[int], None] | None,
        judged: tuple[np.ndarray, int, bool] | None,
    ) -> tuple[Result, Seen, int]:
        """A round of ``kind`` over the store's parts on the cluster: its result, with ``judged`` the
        genotype counts of the blocks it read (what :func:`better.station_api.runner.compute` judges), and
        the number of parts.

        ``on_block`` is told the rows of each part done (progress; it may raise to cancel the task). The
        station holds only the pieces still running and each pass' result: a piece is dropped as soon as
        it is done, and the tree's nodes as soon as their parent has combined them.
        """
        split = kind.split
        assert split is not None
        dataset = data.dataset
        client = self.client()
        threads = self.workers()
        if threads == 0:
            raise StoreError(NO_WORKERS)
        parts = dataset_parts(dataset, regions, data.pass_only, PARTS_PER_THREAD * threads)
        if not parts:  # nothing in scope: the station computes the empty result itself
            return kind.execute(task, data), [], 0
        held: dict[str, Any] = {}  # what the station still holds: cancelled if the task ends early
        try:
            # one opaque object each (a dict scattered as such would be stored under its own field names)
            design, state, counting = client.scatter([data.design, task, judged], hash=False)
            held.update({f.key: f for f in (design, state, counting)})
            before: Any = {}
            seen: Any = None
            store_bytes = dataset.variants_path.stat().st_size  # what every worker must see at the path
            for number in range(len(passes(split))):
                job = PieceJob(
                    str(dataset.path), dataset.name, dataset.n_samples, kind.name, number, data.pass_only, store_bytes
                )
                pieces = [
                    client.submit(run_piece, job, part, state, design, before, counting, pure=False) for part in parts
                ]
                held.update({f.key: f for f in pieces})
                root = _tree(client, kind.name, number, pieces)
                held[root.key] = root
                _wait(held, {f.key: part.rows for f, part in zip(pieces, parts, strict=True)}, on_block, self.workers)
                del pieces
                if number == 0:
                    seen = client.submit(_second, root, pure=False)
                    held[seen.key] = seen
                before = client.submit(_first, root, pure=False)
                held[before.key] = before
                held.pop(root.key, None)  # (a pass of one part: its root is its piece, dropped already)
                del root
            _wait({k: held[k] for k in (before.key, seen.key)}, {}, on_block, self.workers)
            result, counted = client.gather([before, seen])
        except BaseException as exc:  # a cancelled or failed task: its pieces still queued need not run
            try:
                client.cancel(list(held.values()))
            except Exception:  # a client already closed: its futures are gone with it
                log.debug("cancelling a task's futures", exc_info=True)
            if type(exc).__name__ == "KilledWorker":
                raise StoreError(
                    "the station's Dask workers kept dying while computing this task (a part was lost on "
                    "several workers), so nothing was released; check the workers' memory and logs, then "
                    "run the query again"
                ) from exc
            raise
        held.clear()  # done: released (not cancelled), the cluster forgets them
        if len(passes(split)) == 1:
            result = {**result, **_from_design(split, task, data)}
        if split.finish is not None:
            result = split.finish(task, data, result)
        return result, counted, len(parts)

    def close(self) -> None:
        """Disconnect, and stop the LocalCluster if this station started one."""
        if not self._ready.wait(CONNECT_SECONDS):
            return
        for thing in (self._client, self._cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # shutting down: a cluster already gone is fine
                    log.debug("closing the Dask executor", exc_info=True)


def executor_for(config: ExecutorConfig) -> DaskExecutor | None:
    """The station's executor: ``None`` for the server's own threads, else a :class:`DaskExecutor`."""
    if config.kind == "threads":
        return None
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise StoreError(
            "station.toml [executor] kind = \"dask\" needs Dask: pip install 'better-genomics[dask]' "
            '(or set kind = "threads")'
        ) from None
    return DaskExecutor(config)


def _from_design(split: Split, task: dict[str, Any], data: StoreData) -> Result:
    """The arrays a one-pass piece computes from the design alone (``C'C``, the sample counts ...), computed
    here as the station computes them in its threads: a worker's BLAS, on one thread, may round them
    differently in the last bit."""

    def no_blocks(targets: Any = None) -> Iterator[Block]:
        return iter(())

    empty = split.piece(task, StoreData(data.dataset, data.design, no_blocks, data.regions, data.pass_only), {})
    return {k: v for k, v in empty.items() if not k.startswith("key_") and k not in (*split.rows, *split.sums)}


def _warm() -> str:
    """Import the analyses on a worker (their kernels then load from Numba's cache on first use); the
    worker's BETTER version."""
    import better.engine.analyses  # noqa: F401

    return __version__


def _first(pair: tuple[Result, Seen]) -> Result:
    return pair[0]


def _second(pair: tuple[Result, Seen]) -> Seen:
    return pair[1]


def _tree(client: Any, kind: str, number: int, nodes: list[Any]) -> Any:
    """A pass' pieces combined pairwise, neighbours first, on the workers: its root (the inner nodes are
    held by their parents only, so each is released once combined)."""
    while len(nodes) > 1:
        paired = []
        for i in range(0, len(nodes), 2):
            if i + 1 == len(nodes):
                paired.append(nodes[i])
                continue
            paired.append(client.submit(combine_pieces, kind, number, nodes[i], nodes[i + 1], pure=False))
        nodes = paired
    return nodes[0]


def _wait(
    held: dict[str, Any],
    rows: dict[str, int],
    on_block: Callable[[int], None] | None,
    workers: Callable[[], int] | None = None,
) -> None:
    """Wait for the futures of ``rows`` (keys) among ``held``, telling ``on_block`` each one's rows as it
    ends (and checking for a cancellation in between) and dropping it from ``held``; a failed future raises
    its error here, and a cluster left without workers for :data:`NO_WORKERS_SECONDS` a :class:`StoreError`.
    """
    pending = {key: held[key] for key in rows} if rows else dict(held)
    checked = time.monotonic()
    without = None
    while pending:
        if on_block is not None:
            on_block(0)  # raises if the task was cancelled
        for key, future in list(pending.items()):
            if future.done():
                del pending[key]
                if future.status != "finished":
                    future.result()  # raises the piece's error
                if key in rows:
                    held.pop(key, None)
                    if on_block is not None:
                        on_block(rows[key])
        if pending and workers is not None and time.monotonic() - checked > 2.0:
            checked = time.monotonic()
            if workers():
                without = None
            elif without is None:
                without = checked
            elif checked - without > NO_WORKERS_SECONDS:
                raise StoreError(NO_WORKERS)
        if pending:
            time.sleep(0.02)
