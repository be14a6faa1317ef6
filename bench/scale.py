"""BETTER at scale: a biobank-sized station on Dask workers, and many stations behind one coordinator.

Subcommands:

``station``
    One large station (``better synth-store``, default 100,000 samples x 100,000 variants, made once under
    ``--out``): the station's work of a linear GWAS round (``ldl ~ age + sex + pc1 + pc2``, every
    variant) in its own threads and on a Dask ``LocalCluster`` of 1, then 2, worker processes (one kernel
    thread each), with each run's peak memory; every result is checked equal to the first, to the bit.
``federation``
    K small stations on this machine (``better synth --stations K``, one ``better station serve`` each,
    default policy, secure aggregation on), for K in ``--stations`` (3, 5, 10, 20): a linear GWAS and a
    FREQ through the coordinator, and a table of time per round against the number of stations. The
    stations share this machine's cores (one kernel thread each), so the times measure the coordinator's
    and the protocol's overhead more than the stations' arithmetic.
``masking``
    Secure aggregation's masks without HTTP: one station masking a release of ``--words`` numbers with
    ``n - 1`` peers (key agreement and the pair streams, :mod:`better.wire.masking`) and the coordinator
    adding ``n`` masked releases (``unmask_sum``), for n from 2 to 100.

Usage::

    python bench/scale.py station [--samples 100000] [--variants 100000] [--workers 1,2]
    python bench/scale.py federation [--stations 3,5,10,20] [--samples 3000] [--variants 2000]
    python bench/scale.py masking [--words 100000] [--stations 2,3,5,10,20,50,100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "scale"
QUERIES = {"linear": "GWAS LINEAR ldl ~ age + sex", "freq": "FREQ"}


# -- federation ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One timed query: its rounds' seconds, the coordinator's unmasking, what went over the wire."""

    seconds: float = 0.0
    rounds: list[float] = field(default_factory=list)
    #: exchanges with every station (station info, variant lists, seals, openings, finishing steps)
    exchanges: int = 0
    unmask: list[float] = field(default_factory=list)
    #: masked words per round (the size of one station's release), for the masking estimate
    words: list[int] = field(default_factory=list)
    wire_bytes: int = 0
    #: CPU seconds of this process (the coordinator) over the query
    cpu: float = 0.0


def stations_for(k: int, samples: int, variants: int, root: Path) -> list[Path]:
    """The stores of a ``k``-station synthetic cohort in ``root`` (made the first time: synth, then ingest)."""
    from better.genomics.ingest import ingest_vcf
    from better.genomics.store import Store
    from better.genomics.synth import SynthConfig, station_names, synthesize

    cohort = root / "cohort"
    wanted = {"stations": k, "samples": samples, "variants": variants}
    stamp = root / "made.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != wanted:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        synthesize(SynthConfig(out=str(cohort), samples=samples, variants=variants, stations=k, seed=21))
        for name in station_names(k):
            store = Store.create(root / name)
            ingest_vcf(store, "d", str(cohort / f"{name}.vcf.gz"), str(cohort / f"{name}.pheno.tsv"))
        stamp.write_text(json.dumps(wanted))
    return [root / name for name in station_names(k)]


@contextmanager
def served(paths: list[Path]) -> Iterator[list[Any]]:
    """Every store served (``better station serve``, one kernel thread, default policy, a fresh token)."""
    from better.query.remote import StationClient
    from better.station_api.auth import new_token
    from better.station_api.config import Server, StationConfig, write_config
    from better.station_api.launch import station_processes

    tokens = []
    for path in paths:
        token, record = new_token("bench", "researcher")
        write_config(path, StationConfig(name=path.name, server=Server(threads=1), tokens=[record]))
        tokens.append(token)
    with station_processes(paths, threads=1) as urls:
        yield [
            StationClient(p.name, url, token, timeout=1200) for p, url, token in zip(paths, urls, tokens, strict=True)
        ]


@contextmanager
def timed_unmask(run: Callable[[], Run]) -> Iterator[None]:
    """Time the coordinator's ``unmask_sum`` into ``run()``'s record while the block runs."""
    from better.query import remote

    plain = remote.unmask_sum

    def timed(payloads: list[dict[str, np.ndarray]], stations: list[str]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = plain(payloads, stations)
        record = run()
        record.unmask.append(time.perf_counter() - t0)
        record.words.append(sum(a.size // 2 for n, a in payloads[0].items() if a.dtype == np.int64))
        return out

    remote.unmask_sum = timed  # type: ignore[assignment]
    try:
        yield
    finally:
        remote.unmask_sum = plain


def query(fed: Any, text: str) -> Run:
    """Run ``text`` once over ``fed`` and record its rounds."""
    run = Run()

    def on_round(_stage: str, _round: int, _kind: str, _n: int, seconds: float) -> None:
        run.rounds.append(seconds)

    with timed_unmask(lambda: run):
        t0, cpu = time.perf_counter(), time.process_time()
        fed.query(text, on_round=on_round)
        run.seconds, run.cpu = time.perf_counter() - t0, time.process_time() - cpu
    run.exchanges = len(fed.answers)
    run.wire_bytes = sum(s.sent_bytes + s.received_bytes for s in fed.stations)  # counted from the query's start
    return run


def station_masking(k: int, words: int) -> float:
    """Seconds one station takes to mask ``words`` numbers for a round of ``k`` stations (measured here)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from better.station_api.secure_agg import StationSecrets

    if not words:
        return 0.0
    secrets = [StationSecrets(f"s{i:03d}", X25519PrivateKey.generate()) for i in range(k)]
    participants = [(s.name, s.public_text) for s in secrets]
    release = {"x": np.random.default_rng(0).normal(size=words)}
    secrets[0].mask(release, "ab" * 16, 0, participants)  # warm: the kernels compile
    t0 = time.perf_counter()
    secrets[0].mask(release, "ab" * 16, 1, participants)
    return time.perf_counter() - t0


def federation(args: argparse.Namespace) -> None:
    """The ``federation`` subcommand: the table of time per round against stations."""
    from better.query.federation import Federation

    sizes = [int(k) for k in args.stations.split(",")]
    rows = []
    for k in sizes:
        t0 = time.perf_counter()
        paths = stations_for(k, args.samples, args.variants, args.out / f"k{k}")
        made = time.perf_counter() - t0
        with served(paths) as clients:
            started = time.perf_counter() - t0 - made
            fed = Federation(clients, secure_aggregation="on", max_concurrent_stations=args.max_concurrent)
            for text in QUERIES.values():  # warm-up: every server loads its kernels, the audit group forms
                fed.query(text + " ON 22:1-16010000")
            for name, text in QUERIES.items():
                runs = [query(fed, text) for _ in range(args.repeat)]
                assert fed.last_plan is not None and fed.last_plan.secure
                rows.append((k, name, runs, made, started))
                print(f"  {k} stations, {name}: {[round(r.seconds, 2) for r in runs]} s", file=sys.stderr, flush=True)
    print(
        f"\n{args.samples} samples x {args.variants} variants split over K stations (better synth), secure "
        f"aggregation on, at most {args.max_concurrent} stations asked at once; medians of {args.repeat} run(s)\n"
    )
    head = (
        "| stations | query | rounds (exchanges) | s per round (median) | s per query | coordinator CPU s per query "
        "| mask s per round (one station) | unmask s per round (coordinator) | MB per query (coordinator in+out) "
        "| set-up s (synth+ingest, serve) |"
    )
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for k, name, runs, made, started in rows:
        run = min(runs, key=lambda r: r.seconds)
        per_round = statistics.median([x for r in runs for x in r.rounds])
        per_query = statistics.median(r.seconds for r in runs)
        masked = [w for r in runs for w in r.words]
        mask = statistics.median([station_masking(k, w) for w in sorted(set(masked))]) if masked else 0.0
        unmask = statistics.median([u for r in runs for u in r.unmask]) if masked else 0.0
        mb = statistics.median([r.wire_bytes for r in runs]) / 1e6
        cpu = statistics.median([r.cpu for r in runs])
        print(
            f"| {k} | {name} | {len(run.rounds)} ({run.exchanges}) | {per_round:.2f} | {per_query:.2f} | {cpu:.2f} "
            f"| {mask:.4f} | {unmask:.4f} | {mb:.2f} | {made:.0f}, {started:.0f} |"
        )


# -- masking -------------------------------------------------------------------------------------------------
def masking(args: argparse.Namespace) -> None:
    """The ``masking`` subcommand: one station's masks and the coordinator's sum, 2 to 100 stations."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from better.station_api.secure_agg import StationSecrets, shared_secret
    from better.wire.masking import context_digest, mask_words, pair_key, unmask_sum

    words = args.words
    release = {"x": np.random.default_rng(0).normal(size=words)}
    print(f"\none station's release of {words} numbers ({16 * words / 1e6:.1f} MB masked); best of {args.repeat}\n")
    print("| stations | key agreement ms | masking ms (n-1 streams) | ns per number and peer | unmask ms |")
    print("|---|---|---|---|---|")
    for n in [int(k) for k in args.stations.split(",")]:
        secrets = [StationSecrets(f"s{i:03d}", X25519PrivateKey.generate()) for i in range(n)]
        participants = [(s.name, s.public_text) for s in secrets]
        me = secrets[0]
        payload = me.mask(release, "ab" * 16, 0, participants)  # warm-up; a valid payload for the sum
        keys_s, words_s, sum_s = [], [], []
        for r in range(args.repeat):
            t0 = time.perf_counter()
            context = context_digest("ab" * 16, r + 1, participants)
            keys = {p: pair_key(shared_secret(me.key, text, p), context) for p, text in participants[1:]}
            t1 = time.perf_counter()
            mask_words(release, me.name, keys)
            t2 = time.perf_counter()
            unmask_sum([payload] * n, [s.name for s in secrets])  # the same words n times: the cost is the same
            t3 = time.perf_counter()
            keys_s.append(t1 - t0)
            words_s.append(t2 - t1)
            sum_s.append(t3 - t2)
        per = min(words_s) / (words * max(1, n - 1)) * 1e9
        print(f"| {n} | {min(keys_s) * 1e3:.1f} | {min(words_s) * 1e3:.1f} | {per:.2f} | {min(sum_s) * 1e3:.1f} |")


# -- station -------------------------------------------------------------------------------------------------
def large_station(samples: int, variants: int, root: Path) -> Path:
    """A station holding ``samples`` x ``variants`` made by ``better synth-store`` (once: kept in ``root``)."""
    path = root / f"station_{samples}x{variants}"
    if not (path / "station.toml").exists():
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        done = subprocess.run(
            ["better", "synth-store", "--station", str(path), "--samples", str(samples), "--variants", str(variants)],
            check=False,
        )
        if done.returncode:
            sys.exit(done.returncode)
        print(f"better synth-store {samples} x {variants}: {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def _peak_mib() -> float:
    """This process' peak resident memory, in MiB (``VmHWM``: unlike ``ru_maxrss``, a worker's own, not the
    station's it was spawned from)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def station(args: argparse.Namespace) -> None:
    """Time one linear GWAS round over every variant of a large station: threads, then Dask workers."""
    from better.engine.accelerate import set_threads
    from better.genomics.store import Store
    from better.station_api.config import Executor, Policy
    from better.station_api.executor import DaskExecutor
    from better.station_api.runner import DatasetCache, compute, prepare
    from better.wire.messages import TaskRequest

    path = large_station(args.samples, args.variants, args.out)
    covariates = ["age", "sex", "pc1", "pc2"]
    request = TaskRequest(
        dataset="cohort", analysis="gwas_linear", kind="linear", phenotype="ldl", covariates=covariates
    )
    prepared = prepare(DatasetCache(Store.open(path)), request, Policy(max_variants_per_task=10**8))
    n, m = prepared.dataset.n_samples, prepared.n_variants
    print(f"\n{n:,} samples x {m:,} variants, the linear round of ldl ~ {' + '.join(covariates)}")
    print("first run: a fresh worker loads the kernels from Numba's cache; second run: warm")
    print(
        "| executor | processes x kernel threads | parts | first run s | second run s | genotypes/s | peak MiB | same |"
    )
    print("|---|---|---|---|---|---|---|---|")
    reference: dict[str, np.ndarray] | None = None

    def row(name: str, layout: str, parts: int, first: float, second: float, peak: float, result: Any) -> None:
        nonlocal reference
        reference = reference if reference is not None else result
        same = all(np.array_equal(reference[k], result[k], equal_nan=result[k].dtype.kind == "f") for k in reference)
        rate = n * m / second
        print(
            f"| {name} | {layout} | {parts} | {first:.1f} | {second:.1f} | {rate:.2e} | {peak:.0f} | {same} |",
            flush=True,
        )

    def twice(run: Callable[[], Any]) -> tuple[float, float, Any]:
        t0 = time.perf_counter()
        run()
        t1 = time.perf_counter()
        out = run()
        return t1 - t0, time.perf_counter() - t1, out

    for threads in args.threads:
        set_threads(threads)
        first, second, out = twice(lambda: compute(prepared))
        row("threads", f"1 x {threads}", 1, first, second, _peak_mib(), out.result)
    for workers in args.workers:
        executor = DaskExecutor(Executor(kind="dask", workers=workers))
        try:
            client = executor.client()
            first, second, out = twice(lambda e=executor: compute(prepared, executor=e))
            peak = max(client.run(_peak_mib).values())
            row("dask", f"{workers} x 1", out.pieces, first, second, peak, out.result)
        finally:
            executor.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the subcommand and run it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    one = sub.add_parser("station", help="a large station's linear GWAS round: threads, then 1 and 2 Dask workers")
    one.add_argument("--samples", type=int, default=100_000)
    one.add_argument("--variants", type=int, default=100_000)
    one.add_argument("--threads", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2], help="e.g. 1,2")
    one.add_argument("--workers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2], help="e.g. 1,2")
    one.add_argument("--out", type=Path, default=OUT, help="where the large station is kept between runs")
    one.set_defaults(run=station)
    fed = sub.add_parser("federation", help="K small stations on this machine: time per round against K")
    fed.add_argument("--stations", default="3,5,10,20", help="comma-separated numbers of stations")
    fed.add_argument("--samples", type=int, default=3000, help="samples over all stations")
    fed.add_argument("--variants", type=int, default=2000, help="VCF records (sites)")
    fed.add_argument("--repeat", type=int, default=1, help="timed runs of each query")
    fed.add_argument("--max-concurrent", type=int, default=16, help="max_concurrent_stations")
    fed.add_argument("--out", type=Path, default=OUT, help="where the cohorts and stores are kept between runs")
    fed.set_defaults(run=federation)
    mask = sub.add_parser("masking", help="secure aggregation's masks without HTTP, 2 to 100 stations")
    mask.add_argument("--stations", default="2,3,5,10,20,50,100")
    mask.add_argument("--words", type=int, default=100_000, help="numbers in one station's release")
    mask.add_argument("--repeat", type=int, default=3)
    mask.set_defaults(run=masking)
    args = ap.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
