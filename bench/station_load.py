"""Load on one station: many concurrent task submissions over HTTP, all checked, throughput and latency.

Sets up one station of the synthetic demo cohort (2,000 samples x 8,000 sites, the milano share) under
bench/out/load/, starts ``better station serve`` on a loopback port, submits ``--tasks`` tasks at once
(half FREQ counts, half linear GWAS rounds, each over its own region), waits for all, and checks every
released result against the same task run in-process through the same policy.

Usage::

    python bench/station_load.py [--tasks 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx
import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "load"


def setup() -> tuple[Path, str]:
    from better.genomics.ingest import ingest_vcf
    from better.genomics.store import Store
    from better.genomics.synth import SynthConfig, synthesize
    from better.station_api.auth import new_token
    from better.station_api.config import Policy, StationConfig, write_config

    cohort = OUT / "cohort"
    if not (cohort / "cohort.json").exists():
        synthesize(SynthConfig(out=str(cohort)))
    station = OUT / "milano"
    if not (station / "catalog.duckdb").exists():
        ingest_vcf(Store.create(station), "cohort", str(cohort / "milano.vcf.gz"), str(cohort / "milano.pheno.tsv"))
    token, record = new_token("load", "researcher")
    write_config(station, StationConfig(name="milano", policy=Policy(rate_limit_per_minute=100_000), tokens=[record]))
    return station, token


def workload(station: Path, n: int) -> list[dict]:
    from better.genomics.store import Store

    pos = Store.open(station).dataset("cohort").variants(columns=["pos"]).column("pos").to_numpy()
    edges = np.linspace(pos.min(), pos.max() + 1, n // 2 + 1).astype(int)
    bodies = []
    for i in range(n):
        lo, hi = edges[(i // 2) % (len(edges) - 1)], edges[(i // 2) % (len(edges) - 1) + 1] - 1
        region = [f"22:{lo}-{hi}"]
        if i % 2 == 0:
            bodies.append({"dataset": "cohort", "analysis": "freq", "kind": "counts", "regions": region})
        else:
            bodies.append(
                {
                    "dataset": "cohort",
                    "analysis": "gwas_linear",
                    "kind": "linear",
                    "phenotype": "ldl",
                    "covariates": ["age", "sex", "pc1", "pc2"],
                    "regions": region,
                }
            )
    return bodies


def expected(station: Path, body: dict) -> dict[str, np.ndarray]:
    from better.engine.protocol import GenotypeData, execute
    from better.genomics.station_inputs import StationBlocks
    from better.genomics.store import Store
    from better.station_api.config import Policy
    from better.station_api.policy import release
    from better.station_api.runner import design_of, regions_of
    from better.wire.messages import TaskRequest

    req = TaskRequest(**body)
    ds = Store.open(station).dataset("cohort")
    task = {"kind": req.kind, "groups": 1}
    data = GenotypeData(design_of(ds, req), StationBlocks(ds, regions_of(req)))
    out, _ = release(req.kind, execute(task, data), Policy())
    return out


async def one(client: httpx.AsyncClient, url: str, token: str, body: dict) -> tuple[float, bytes]:
    h = {"Authorization": f"Bearer {token}"}
    t0 = time.perf_counter()
    r = await client.post(f"{url}/tasks", json=body, headers=h)
    r.raise_for_status()
    task_id = r.json()["id"]
    pause = 0.01
    while True:
        s = (await client.get(f"{url}/tasks/{task_id}", headers=h)).json()
        if s["status"] == "done":
            break
        if s["status"] not in ("queued", "running"):
            raise RuntimeError(f"task {task_id}: {s}")
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.2)
    r = await client.get(f"{url}/tasks/{task_id}/result", headers=h)
    r.raise_for_status()
    return time.perf_counter() - t0, r.content


async def load(url: str, token: str, bodies: list[dict]) -> tuple[float, list[tuple[float, bytes]]]:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=len(bodies) + 4)) as client:
        t0 = time.perf_counter()
        out = await asyncio.gather(*(one(client, url, token, b) for b in bodies))
        return time.perf_counter() - t0, list(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from better.station_api.launch import station_process
    from better.wire.arrays import decode_arrays

    station, token = setup()
    bodies = workload(station, args.tasks)
    with station_process(station, threads=args.threads) as url:
        asyncio.run(load(url, token, bodies[:2]))  # warm-up: compile the kernels in the server
        wall, results = asyncio.run(load(url, token, bodies))
    wrong = 0
    for body, (_, payload) in zip(bodies, results, strict=True):
        got, want = decode_arrays(payload), expected(station, body)
        if set(got) != set(want) or not all(np.array_equal(got[k], want[k]) for k in want):
            wrong += 1
    lat = np.array([r[0] for r in results])
    print(
        f"{len(bodies)} concurrent tasks against one station ({args.threads} kernel threads): "
        f"{len(bodies) - wrong}/{len(bodies)} correct | wall {wall:.2f} s | throughput {len(bodies) / wall:.1f} "
        f"tasks/s | latency p50 {np.percentile(lat, 50):.2f} s, p95 {np.percentile(lat, 95):.2f} s, "
        f"max {lat.max():.2f} s"
    )
    if wrong:
        raise SystemExit(f"{wrong} results differ from the in-process run")


if __name__ == "__main__":
    main()
