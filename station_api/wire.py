"""The wire protocol between coordinator and station, version 1: both sides import this module.

A **task** is JSON (:class:`TaskRequest`): which dataset, analysis and round, the model (phenotype,
covariates, sample filter, regions, station adjustment) and the round's state. The state and the
**result** are named numpy arrays carried as an Arrow IPC stream (zstd-compressed): arrays with one row
per variant become the columns of a table (matrices per variant as fixed-size lists), the others (a
``k x k`` total, a count) travel in the schema metadata. Results are served as
``application/vnd.apache.arrow.stream``; in a task the state is that stream in base64.

Everything decoded here may come from an attacker: sizes, types and shapes are checked, and any
failure is an :class:`~better.engine.errors.InputError` that says what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from better.engine.errors import InputError

WIRE_VERSION = 1
ARROW_STREAM = "application/vnd.apache.arrow.stream"

#: Analyses a station may allow, and the rounds (engine task kinds) each one runs.
ANALYSIS_KINDS: dict[str, tuple[str, ...]] = {
    "count": ("sample_count",),
    "freq": ("variant_keys", "counts"),
    "hwe": ("variant_keys", "counts"),
    # counts: the pooled genotype counts an hwe_p filter needs; variant_keys: the variant list that
    # secure aggregation lays every station's arrays on
    "gwas_linear": ("variant_keys", "counts", "linear"),
    "gwas_logistic": ("variant_keys", "counts", "logistic_null", "logistic_score", "logistic_newton"),
    # over a "reads" dataset (aligned-read files)
    "coverage": ("target_keys", "coverage"),
    "reads": ("reads",),
    "pileup": ("pileup",),
}
#: Analyses over a dataset of aligned reads; the others need a dataset of variants.
READ_ANALYSES = ("coverage", "reads", "pileup")
KINDS = tuple(dict.fromkeys(k for kinds in ANALYSIS_KINDS.values() for k in kinds))

#: Sample-filter conditions and regions a task may carry (the query language says so before sending).
MAX_CONDITIONS = 32
MAX_REGIONS = 256
#: Hard ceilings on what a payload may declare, whatever the HTTP layer let through.
MAX_PAYLOAD_BYTES = 512 << 20
MAX_ARRAY_VALUES = 1 << 28
MAX_DIMS = 4
_DTYPES = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(), "str": pa.string()}

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]


class Condition(BaseModel):
    """One sample-filter condition on a phenotype column: ``column op value``."""

    model_config = ConfigDict(extra="forbid")

    column: Name
    op: Literal["=", "!=", "<", "<=", ">", ">=", "is_missing", "not_missing"]
    value: float | Annotated[str, StringConstraints(max_length=256)] | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        needs_value = self.op not in ("is_missing", "not_missing")
        if needs_value and self.value is None:
            raise ValueError(f"condition on {self.column!r}: {self.op!r} needs a value")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"condition on {self.column!r}: the value must be a finite number")
        return self


class Adjust(BaseModel):
    """``ADJUST station``: this station's 0-based index among ``count`` stations."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, le=63)
    count: int = Field(ge=1, le=64)

    @model_validator(mode="after")
    def _index_in_range(self) -> Adjust:
        if self.index >= self.count:
            raise ValueError(f"station index {self.index} is not below the station count {self.count}")
        return self


class Participant(BaseModel):
    """A station taking part in a securely aggregated round, with its key-agreement key."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
    agreement_key: Annotated[str, StringConstraints(pattern=r"^x25519:[A-Za-z0-9+/]{43}=$")]


class Secure(BaseModel):
    """Secure aggregation of this round: the station masks its release (see :mod:`better.station_api.secure_agg`)."""

    model_config = ConfigDict(extra="forbid")

    session: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(
        description="the query's random session id (128 bits, hex)"
    )
    round: int = Field(ge=0, le=1_000_000, description="the round's number within the session, never reused")
    participants: list[Participant] = Field(min_length=2, max_length=64)

    @model_validator(mode="after")
    def _distinct(self) -> Secure:
        names = [p.name for p in self.participants]
        keys = [p.agreement_key for p in self.participants]
        if len(set(names)) != len(names) or len(set(keys)) != len(keys):
            raise ValueError("a participant (name or key) appears twice")
        return self


#: Rounds whose release is judged on per-row people counts and sample totals that, under secure
#: aggregation, are summed over the stations first: they run sealed (a seal, then an opening).
SEALED_KINDS = ("sample_count", "counts", "linear", "logistic_null", "logistic_score", "coverage", "reads", "pileup")
#: Rounds that list keys in the clear and release nothing about people.
KEY_KINDS = ("variant_keys", "target_keys")
StationName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]


class Exchange(BaseModel):
    """A sealed round's step (see :mod:`better.station_api.sealed`).

    ``seal``: compute the round, keep the result, and return, for each other participant, a message
    only that station can open (masked counts for the totals the release is judged on). ``open``: the
    messages the other participants sealed to this station (by sender); the station sums the totals,
    decides, and releases what it kept. ``finish``: a step of the rows the stations finish themselves
    (:mod:`better.station_api.finishing`): first without messages (the station seals its sums), then with the
    others' messages of the step before, until the station releases those rows' results.
    """

    model_config = ConfigDict(extra="forbid")

    phase: Literal["seal", "open", "finish"]
    lock: bool = Field(False, description="seal holding the station's audit (a round run again for that)")
    test: Literal["wald", "score", "firth"] | None = Field(
        None, description="finish: the logistic test the finished rows get (the coordinator's protocol's)"
    )
    blobs: dict[StationName, Annotated[str, StringConstraints(max_length=128 << 20)]] = Field(
        default_factory=dict, max_length=64
    )


class TaskRequest(BaseModel):
    """One round of one analysis, as a station receives it."""

    model_config = ConfigDict(extra="forbid")

    wire_version: Literal[1] = Field(1, description="wire protocol version")
    dataset: Name
    analysis: Literal["count", "freq", "hwe", "gwas_linear", "gwas_logistic", "coverage", "reads", "pileup"]
    kind: Literal[
        "sample_count",
        "variant_keys",
        "counts",
        "linear",
        "logistic_null",
        "logistic_score",
        "logistic_newton",
        "target_keys",
        "coverage",
        "reads",
        "pileup",
    ]
    phenotype: Name | None = None
    covariates: list[Name] = Field(default_factory=list, max_length=64)
    binary: bool = False
    groups: Literal[1, 2] = 1
    where: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    regions: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_REGIONS
    )
    pass_only: bool = Field(False, description="use only records whose FILTER is PASS (or '.') at this station")
    adjust: Adjust | None = None
    state: str | None = Field(None, description="round state: an Arrow IPC stream, base64")
    label: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        None, description="the coordinator's name for the query this round belongs to (for the audit log)"
    )
    secure: Secure | None = Field(None, description="mask the release for secure aggregation")
    exchange: Exchange | None = Field(None, description="a sealed round's seal or opening (with secure)")

    @model_validator(mode="after")
    def _consistent(self) -> TaskRequest:
        if self.kind not in ANALYSIS_KINDS[self.analysis]:
            raise ValueError(f"a {self.analysis} analysis has no {self.kind!r} round")
        if self.analysis.startswith("gwas") and self.phenotype is None:
            raise ValueError("a GWAS needs a phenotype")
        if self.kind.startswith("logistic") and not self.binary:
            raise ValueError("logistic rounds need binary = true")
        if self.groups == 2 and (self.phenotype is None or not self.binary):
            raise ValueError("case/control counts (groups = 2) need a binary phenotype (binary = true)")
        if (
            self.kind in ("logistic_null", "logistic_score", "logistic_newton")
            and self.state is None
            and not self._opening
        ):
            raise ValueError(f"a {self.kind} round needs its state")
        if len(set(self.covariates)) != len(self.covariates):
            raise ValueError("a covariate is named twice")
        if self.kind in ("variant_keys", "target_keys") and self.secure is not None:
            raise ValueError(f"the {self.kind} round lists keys in the clear; it takes no secure block")
        if self.kind == "pileup" and self.state is None and not self._opening:
            raise ValueError("a pileup round needs its positions in the state")
        if self.exchange is not None:
            if self.secure is None:
                raise ValueError("a sealed round (exchange) needs secure aggregation (a secure block)")
            if self.kind not in SEALED_KINDS:
                raise ValueError(f"a {self.kind!r} round is not sealed")
            if self.exchange.phase == "open" and not self.exchange.blobs:
                raise ValueError("an opening carries the other stations' sealed messages")
            if self.exchange.phase == "seal" and self.exchange.blobs:
                raise ValueError("a seal carries no messages")
        return self

    @property
    def _opening(self) -> bool:
        """An opening or a finishing step: the station has the round's state from its seal."""
        return self.exchange is not None and self.exchange.phase != "seal"


# -- arrays <-> Arrow IPC --------------------------------------------------------------------------------
def encode_arrays(arrays: dict[str, np.ndarray], n_rows: int | None = None, compress: bool = True) -> bytes:
    """Named arrays as an Arrow IPC stream. Arrays whose first dimension is ``n_rows`` form the table;
    the others go in the schema metadata. ``compress=False`` for data that does not compress (masked
    words)."""
    columns: list[pa.Array] = []
    fields: list[pa.Field] = []
    extra: dict[str, dict[str, object]] = {}
    for name, value in arrays.items():
        a = np.asarray(value)
        dtype = _dtype_name(name, a)
        if n_rows is not None and a.ndim >= 1 and a.shape[0] == n_rows and 0 not in a.shape[1:]:
            flat = a.reshape(n_rows, int(np.prod(a.shape[1:]))) if a.ndim > 1 else a
            base = pa.array(flat.reshape(-1) if a.ndim > 1 else flat, type=_DTYPES[dtype])
            col = pa.FixedSizeListArray.from_arrays(base, int(np.prod(a.shape[1:]))) if a.ndim > 1 else base
            columns.append(col)
            fields.append(pa.field(name, col.type, nullable=False, metadata={"shape": json.dumps(a.shape[1:])}))
        else:
            extra[name] = {
                "dtype": dtype,
                "shape": list(a.shape),
                "data": a.astype(str).tolist() if dtype == "str" else base64.b64encode(a.tobytes()).decode(),
            }
    schema = pa.schema(fields, metadata={"better.wire": str(WIRE_VERSION), "better.extra": json.dumps(extra)})
    table = pa.Table.from_arrays(columns, schema=schema) if columns else schema.empty_table()
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd" if compress else None)
    with pa.ipc.new_stream(sink, schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def decode_arrays(data: bytes, what: str = "payload") -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays`, for untrusted bytes."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise InputError(f"{what}: {len(data)} bytes is over the {MAX_PAYLOAD_BYTES} byte limit")
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(data))
        table = reader.read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{what}: not an Arrow IPC stream ({exc})") from None
    meta = table.schema.metadata or {}
    if meta.get(b"better.wire") != str(WIRE_VERSION).encode():
        raise InputError(f"{what}: wire version {meta.get(b'better.wire')!r}, this station speaks {WIRE_VERSION}")
    out: dict[str, np.ndarray] = {}
    for f in table.schema:
        out[f.name] = _column(table.column(f.name), f, what)
    try:
        extra = json.loads(meta.get(b"better.extra", b"{}"))
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError):
        raise InputError(f"{what}: unreadable metadata") from None
    if not isinstance(extra, dict):
        raise InputError(f"{what}: unreadable metadata")
    for name, spec in extra.items():
        out[name] = _extra_array(name, spec, what)
    return out


def encode_state(arrays: dict[str, np.ndarray], n_rows: int | None = None) -> str:
    """Round state for :attr:`TaskRequest.state`."""
    return base64.b64encode(encode_arrays(arrays, n_rows)).decode()


def decode_state(state: str | None) -> dict[str, np.ndarray]:
    """The arrays of :attr:`TaskRequest.state` (empty without state)."""
    if state is None:
        return {}
    try:
        raw = base64.b64decode(state, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("task state: not base64") from None
    return decode_arrays(raw, "task state")


def _dtype_name(name: str, a: np.ndarray) -> str:
    if a.dtype.kind == "f":
        return "float64"
    if a.dtype.kind in "iu":
        return "int64"
    if a.dtype.kind == "b":
        return "bool"
    if a.dtype.kind in "UO":
        return "str"
    raise TypeError(f"array {name!r} of dtype {a.dtype} cannot travel")


def _column(col: pa.ChunkedArray, f: pa.Field, what: str) -> np.ndarray:
    try:
        shape = tuple(json.loads((f.metadata or {}).get(b"shape", b"[]")))
        if len(shape) > MAX_DIMS - 1 or not all(isinstance(d, int) and 0 < d <= 1 << 20 for d in shape):
            raise ValueError
    except (json.JSONDecodeError, ValueError, TypeError):
        raise InputError(f"{what}: column {f.name!r} has a bad shape") from None
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        raise InputError(f"{what}: column {f.name!r} has nulls")
    n = len(arr)
    if shape:
        if not pa.types.is_fixed_size_list(arr.type) or arr.type.list_size != math.prod(shape):
            raise InputError(f"{what}: column {f.name!r} does not match its shape {shape}")
        values = arr.flatten()
    else:
        values = arr
    if values.type not in _DTYPES.values():
        raise InputError(f"{what}: column {f.name!r} has type {values.type}, not one of {sorted(_DTYPES)}")
    if values.null_count:
        raise InputError(f"{what}: column {f.name!r} has nulls")
    flat = values.to_numpy(zero_copy_only=False)
    if pa.types.is_string(values.type):
        flat = flat.astype(str)
    return flat.reshape((n, *shape))


def _extra_array(name: str, spec: object, what: str) -> np.ndarray:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data"} or spec["dtype"] not in _DTYPES:
        raise InputError(f"{what}: entry {name!r} is malformed")
    shape = spec["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and 0 <= d <= MAX_ARRAY_VALUES for d in shape)
        or math.prod(shape) > MAX_ARRAY_VALUES
    ):
        raise InputError(f"{what}: entry {name!r} has a bad shape")
    size = math.prod(shape)
    if spec["dtype"] == "str":
        data = spec["data"]
        if len(shape) > 1 or not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise InputError(f"{what}: entry {name!r} is not a flat list of strings")
        if len(data) != size:
            raise InputError(f"{what}: entry {name!r} does not match its shape")
        return np.array(data, dtype=str).reshape(shape)
    dtype = {"float64": np.float64, "int64": np.int64, "bool": np.bool_}[spec["dtype"]]
    try:
        raw = base64.b64decode(str(spec["data"]), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: entry {name!r} is not base64") from None
    if len(raw) != size * np.dtype(dtype).itemsize:
        raise InputError(f"{what}: entry {name!r} has {len(raw)} bytes for shape {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
