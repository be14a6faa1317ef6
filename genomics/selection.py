"""Select samples by conditions on phenotype columns.

A sample filter is a conjunction of :class:`Condition` objects, built by the query layer from the
DSL's ``WHERE`` clause. Samples without a phenotype row, or with the column missing, never satisfy a
comparison.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from better.engine.errors import InputError, NotFoundError

Op = Literal["=", "!=", "<", "<=", ">", ">=", "in", "is_missing", "not_missing"]
_OPS = {"=", "!=", "<", "<=", ">", ">=", "in", "is_missing", "not_missing"}


@dataclass(frozen=True)
class Condition:
    """``column op value``, e.g. ``Condition("age", ">", 60)``."""

    column: str
    op: Op
    value: float | int | str | tuple[float | int | str, ...] | None = None


def suggest(name: str, choices: Sequence[str]) -> str:
    """A ' (did you mean ...?)' hint naming the closest choice, or an empty string.

    Examples
    --------
    >>> suggest("agee", ["age", "sex"])
    " (did you mean 'age'?)"
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _expression(cond: Condition, schema: pa.Schema) -> pl.Expr:
    names = [n for n in schema.names if n not in ("sample_id", "sample_index")]
    if cond.column not in names:
        raise NotFoundError(
            f"no phenotype column {cond.column!r}{suggest(cond.column, names)}; columns: {', '.join(names)}"
        )
    if cond.op not in _OPS:
        raise InputError(f"unknown comparison {cond.op!r}")
    col = pl.col(cond.column)
    if cond.op == "is_missing":
        return col.is_null()
    if cond.op == "not_missing":
        return col.is_not_null()
    is_text = pa.types.is_string(schema.field(cond.column).type)
    values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
    for v in values:
        if v is None or isinstance(v, str) != is_text or isinstance(v, bool):
            kind = "text" if is_text else "numbers"
            raise InputError(f"column {cond.column!r} holds {kind}; cannot compare it with {v!r}")
    if cond.op == "in":
        return col.is_in(list(values))
    v = values[0]
    return {
        "=": col == v,
        "!=": col != v,
        "<": col < v,
        "<=": col <= v,
        ">": col > v,
        ">=": col >= v,
    }[cond.op]


def sample_mask(phenotypes: pa.Table, n_samples: int, conditions: Sequence[Condition]) -> np.ndarray:
    """Boolean mask over a dataset's samples (VCF order) of those meeting every condition.

    ``phenotypes`` is the dataset's phenotype table with its ``sample_index`` column.

    Examples
    --------
    >>> t = pa.table({"sample_id": ["a", "c"], "sample_index": pa.array([0, 2], pa.int32()), "age": [70, 50]})
    >>> sample_mask(t, 3, [Condition("age", ">", 60)]).tolist()
    [True, False, False]
    >>> sample_mask(t, 3, []).tolist()
    [True, True, True]
    """
    if not conditions:
        return np.ones(n_samples, dtype=bool)
    expr = pl.lit(True)
    for cond in conditions:
        expr = expr & _expression(cond, phenotypes.schema)
    frame = pl.from_arrow(phenotypes)
    assert isinstance(frame, pl.DataFrame)
    chosen = frame.filter(expr.fill_null(False)).get_column("sample_index").to_numpy()
    mask = np.zeros(n_samples, dtype=bool)
    mask[chosen] = True
    return mask
