"""Named numpy arrays as an Arrow IPC stream: the round's state in a task, and a station's result.

Arrays with one row per variant become the columns of a table (matrices per variant as fixed-size
lists), the others (a ``k x k`` total, a count) travel in the schema metadata. Results are served as
``application/vnd.apache.arrow.stream`` (zstd-compressed unless masked); in a task the state is that
stream in base64. Everything decoded here may come from an attacker: sizes, types and shapes are
checked, and any failure is an :class:`~better.engine.errors.InputError` that says what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

import numpy as np
import pyarrow as pa

from better.engine.errors import InputError

WIRE_VERSION = 1
ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: Hard ceilings on what a payload may declare, whatever the HTTP layer let through.
MAX_PAYLOAD_BYTES = 512 << 20
MAX_ARRAY_VALUES = 1 << 28
MAX_DIMS = 4
_DTYPES = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(), "str": pa.string()}


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
            values = flat.reshape(-1) if a.ndim > 1 else flat
            if dtype == "str":  # Arrow converts numpy's fixed-width unicode slowly, Python objects fast
                values = values.astype(object)
            base = pa.array(values, type=_DTYPES[dtype])
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
