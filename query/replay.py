"""Bind a result's values to the stations' signed releases.

A station signs a manifest for every release: the hash of the request it answered (``plan_sha256``) and
of the bytes it released (``result_sha256``). The manifests alone do not say what the table holds: the
coordinator computes the table from the releases, and could write any numbers beside valid signatures.
So a result written to a file keeps its **releases** beside it (``RESULT.releases``, a zip): the query,
what each station said it holds, and every request and released payload, in the order they came. ``better
verify`` then checks each payload and request against its signed manifest and runs the query again on
those payloads alone (:class:`ReplayClient` answers instead of the station); the table it gets must be
the table in the file.

The releases file holds only what the coordinator already received: masked or aggregate payloads, never
a station's rows.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl

from better.engine.errors import BetterError, InputError
from better.genomics.checksums import sha256
from better.query.remote import Recording, Release, StationClient, StationError
from better.wire.arrays import decode_arrays, decode_state
from better.wire.masking import canonical
from better.wire.messages import TaskRequest

#: The releases of ``result.json`` are in ``result.json.releases``.
SUFFIX = ".releases"
#: Request fields a replay must ask exactly as the recorded request did (the masks' session and round,
#: the relayed sealed messages and the Newton state differ from run to run or in the last bits).
COMPARED = (
    *("dataset", "analysis", "kind", "phenotype", "covariates", "binary", "groups", "where", "regions"),
    *("adjust", "pass_only", "label"),
)


def releases_path(result: Path) -> Path:
    """Where the releases of the result file ``result`` are kept."""
    return result.with_name(result.name + SUFFIX)


def write_releases(
    path: Path, query: str, dataset: str | None, secure_aggregation: str, answered: list[str], recording: Recording
) -> None:
    """Write a query's releases (see the module docstring) to the zip ``path``."""
    entries = [
        {
            "station": r.station,
            "task": r.task,
            "request": r.request,
            "payload": None if r.payload is None else f"payloads/{i:06d}.arrow",
        }
        for i, r in enumerate(recording.releases)
    ]
    index = {
        "query": query,
        "dataset": dataset,
        "secure_aggregation": secure_aggregation,
        "stations": answered,
        "info": {name: recording.info[name] for name in answered if name in recording.info},
        "releases": entries,
    }
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("releases.json", json.dumps(index))
        for entry, r in zip(entries, recording.releases, strict=True):
            if r.payload is not None:
                z.writestr(str(entry["payload"]), r.payload)
    tmp.replace(path)


@dataclass(frozen=True)
class Recorded:
    """A releases file, read back."""

    query: str
    dataset: str | None
    secure_aggregation: str
    stations: list[str]
    info: dict[str, dict[str, Any]]
    releases: list[Release]


def read_releases(path: Path) -> Recorded:
    """Read a releases file written by :func:`write_releases`."""
    try:
        with zipfile.ZipFile(path) as z:
            index = json.loads(_member(z, "releases.json"))
            releases = [
                Release(
                    str(e["station"]),
                    str(e["task"]),
                    dict(e["request"]),
                    None if e["payload"] is None else _member(z, str(e["payload"])),
                )
                for e in index["releases"]
            ]
        return Recorded(
            str(index["query"]),
            index.get("dataset"),
            str(index.get("secure_aggregation", "auto")),
            [str(s) for s in index["stations"]],
            {str(k): dict(v) for k, v in index["info"].items()},
            releases,
        )
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such file; the result's values cannot be checked without the releases written beside it"
        ) from None
    except Exception as exc:  # whatever the file holds, a clear answer: it is not what verify can read
        raise InputError(f"{path}: not a BETTER releases file ({type(exc).__name__}: {exc})") from None


#: The largest member a releases file may hold, uncompressed (a zip's sizes are checked before reading).
MAX_MEMBER = 4 << 30


def _member(z: zipfile.ZipFile, name: str) -> bytes:
    info = z.getinfo(name)
    if info.file_size > MAX_MEMBER:
        raise ValueError(f"member {name} holds {info.file_size} bytes, more than a release can")
    return z.read(info)


def check_releases(recorded: Recorded, manifests: list[dict[str, Any]]) -> list[str]:
    """Problems with the recorded releases against the (already verified) signed manifests: each release
    must be the one its station signed, request and payload alike."""
    signed = {
        (str(e.get("station")), str(e["manifest"].get("task"))): e["manifest"]
        for e in manifests
        if isinstance(e, dict) and isinstance(e.get("manifest"), dict)
    }
    problems = []
    for i, r in enumerate(recorded.releases):
        manifest = signed.get((r.station, r.task))
        if manifest is None:
            problems.append(f"release {i} ({r.station}, task {r.task}): no signed manifest for it")
        elif r.payload is None and r.phase not in ("seal", "finish"):  # only relayed messages are left out
            problems.append(f"release {i} ({r.station}, task {r.task}): its payload is missing")
        elif r.payload is not None and manifest.get("result_sha256") != sha256(r.payload):
            problems.append(f"release {i} ({r.station}, task {r.task}): the payload is not the one the station signed")
        elif manifest.get("plan_sha256") != sha256(canonical(r.request)):
            problems.append(f"release {i} ({r.station}, task {r.task}): the request is not the one the station signed")
    return problems


class ReplayError(BetterError):
    """The query, run again on the recorded releases, asked something they do not answer."""


@dataclass
class ReplayClient(StationClient):
    """Answers a query from a station's recorded releases, in the order they came, instead of over HTTP."""

    recorded: dict[tuple[str, str | None], deque[Release]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, recorded: Recorded) -> ReplayClient:
        queues: dict[tuple[str, str | None], deque[Release]] = {}
        for r in recorded.releases:
            if r.station == name:
                queues.setdefault((str(r.request.get("kind")), r.phase), deque()).append(r)
        return cls(name, f"replay://{name}", "", retries=0, recorded=queues, info=recorded.info.get(name, {}))

    async def run(
        self,
        client: httpx.AsyncClient,
        request: TaskRequest,
        on_progress: Any = None,
        submitted: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        phase = request.exchange.phase if request.exchange is not None else None
        queue = self.recorded.get((request.kind, phase))
        if not queue:
            raise ReplayError(f"station {self.name}: the query asks a {request.kind} task the releases do not hold")
        r = queue.popleft()
        asked = request.model_dump(mode="json")
        differ = [f for f in COMPARED if asked.get(f) != r.request.get(f)]
        if not _same_state(asked.get("state"), r.request.get("state")):
            differ.append("state")
        if differ:
            raise ReplayError(
                f"station {self.name}, task {r.task}: the query asks {', '.join(differ)} other than the recorded "
                "request did"
            )
        if submitted is not None:
            submitted.append(r.task)
        if r.payload is None:  # sealed messages to the other stations, relayed: only their addressees matter
            peers = [p.name for p in request.secure.participants if p.name != self.name] if request.secure else []
            return {"recipient": np.array(peers, dtype=object), "blob": np.array([""] * len(peers), dtype=object)}
        return decode_arrays(r.payload, f"recorded release of station {self.name}")

    async def station_info(self, client: httpx.AsyncClient) -> dict[str, Any]:
        if not self.info:
            raise StationError(self.name, "the releases hold no record of what this station holds")
        return self.info

    async def give_back(self, client: httpx.AsyncClient, tasks: list[str]) -> None:
        return None

    def left_over(self) -> int:
        return sum(len(q) for q in self.recorded.values())


def _same_state(asked: Any, recorded: Any) -> bool:
    """Whether a round's state (betas, rows, thresholds) is the recorded one: exactly, or for real numbers
    (which the replay derives again, maybe on another machine) within 1e-9."""
    if asked is None or recorded is None:
        return asked is None and recorded is None
    try:
        a, b = decode_state(str(asked)), decode_state(str(recorded))
    except Exception:
        return False
    if set(a) != set(b):
        return False
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape or x.dtype.kind != y.dtype.kind:
            return False
        if x.dtype.kind == "f":
            if not np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def replay(recorded: Recorded) -> pl.DataFrame:
    """The table the query gives on the recorded releases alone."""
    from better.query.federation import Federation

    clients = [ReplayClient.of(name, recorded) for name in recorded.stations]
    fed = Federation(list(clients), dataset=recorded.dataset, secure_aggregation=recorded.secure_aggregation)
    frame = fed.query(recorded.query)
    unused = sum(c.left_over() for c in clients)
    if unused:
        raise ReplayError(f"{unused} recorded release(s) were not asked for when the query ran again")
    return frame


def read_rows(result: Path) -> tuple[list[str], list[list[str]]] | None:
    """A result file's table as its columns and text rows, or None for a file without one (a batch job's
    ``provenance.json``)."""
    from better.query.output import rows_as_text

    try:
        if result.suffix == ".parquet":
            import pyarrow.parquet as pq

            frame = pl.from_arrow(pq.read_table(result))
            assert isinstance(frame, pl.DataFrame)
            return [c for c in frame.columns if c != "WITHHELD"], rows_as_text(frame)
        doc = json.loads(result.read_text())
        if not isinstance(doc, dict) or "rows" not in doc:
            return None
        columns, rows = doc.get("columns"), doc["rows"]
        if not isinstance(columns, list) or not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ValueError("its columns and rows are not lists")
        return [str(c) for c in columns], [[str(v) for v in row] for row in rows]
    except Exception as exc:
        raise InputError(f"{result}: its table cannot be read ({type(exc).__name__}: {exc})") from None


def compare_tables(replayed: pl.DataFrame, columns: list[str], rows: list[list[str]], rel: float = 2e-5) -> list[str]:
    """Where a table's text rows differ from the replayed table's: up to five differences, each naming the
    row and column. Numbers agree within ``rel`` (the text keeps 6 significant digits)."""
    from better.query.output import rows_as_text

    derived = [c for c in replayed.columns if c != "WITHHELD"]
    if columns != derived:
        return [f"the table's columns are {', '.join(columns)}; the releases give {', '.join(derived)}"]
    expected = rows_as_text(replayed)
    if len(rows) != len(expected):
        return [f"the table has {len(rows)} rows; the releases give {len(expected)}"]
    real = {c for c in derived if replayed.schema[c] == pl.Float64}  # numbers the text rounds
    problems = []
    for i, (got, want) in enumerate(zip(rows, expected, strict=True)):
        if len(got) != len(columns):
            return [f"row {i + 1} has {len(got)} values for {len(columns)} columns"]
        for c, g, w in zip(columns, got, want, strict=True):
            if g != w and (c not in real or not _same(g, w, rel)):
                problems.append(f"row {i + 1}, {c}: the table says {g}, the releases give {w}")
                if len(problems) == 5:
                    return problems
    return problems


def _same(written: str, derived: str, rel: float) -> bool:
    if written == derived:
        return True
    try:
        a, b = float(written), float(derived)
    except ValueError:
        return False
    return math.isclose(a, b, rel_tol=rel)


def verify_values(result: Path, manifests: list[dict[str, Any]]) -> tuple[list[str], int | None]:
    """Problems with a result's values (empty: the table is what its signed releases give) and the number of
    rows checked; None rows for a file that holds no table. ``manifests`` must be verified already."""
    table = read_rows(result)
    if table is None:
        return [], None
    recorded = read_releases(releases_path(result))
    problems = check_releases(recorded, manifests)
    if problems:
        return problems, 0
    try:
        replayed = replay(recorded)
    except Exception as exc:  # releases that do not fit together: not a crash of verify, a failed check
        return [f"the query does not run again on the signed releases: {exc}"], 0
    return compare_tables(replayed, *table), len(table[1])
