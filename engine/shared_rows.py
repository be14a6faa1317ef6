"""Put a station's per-row result (per variant, or per target) on the round's shared row list.

Secure aggregation adds the stations' arrays element by element, so every station must release arrays
over the same rows in the same order: the union of every station's keys, which the coordinator collects
and sends with the round (a round kind's :class:`~better.engine.rounds.SharedRows` says how). A variant
the station does not hold is filled in as if all its analysed samples had a missing genotype there:
exactly how the centre treats such a variant when it adds plain results
(:func:`better.engine.analyses.counts.combine_counts`, :func:`better.engine.analyses.linear.combine_linear`).
So a sum of results on shared rows equals the plain combination, variant for variant.
"""

from __future__ import annotations

import numpy as np

from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.key_union import union_keys
from better.engine.rounds import SharedRows

#: How genotype counts ``(rows, groups, 4)`` lie on shared variant rows (the people a policy judges).
GENOTYPE_COUNTS = SharedRows("variant_keys", KEY_COLUMNS, {"counts": None})


def rows_in(
    result: dict[str, np.ndarray],
    shared: dict[str, np.ndarray],
    columns: tuple[str, ...] = KEY_COLUMNS,
    keys_round: str = "variant_keys",
) -> np.ndarray:
    """Where each of the result's rows (its ``key_*`` columns) is in the shared rows.

    Stations that hold the same rows as the shared list (the usual case) skip the join.
    """
    mine = {c: np.asarray(result[f"key_{c}"]) for c in columns}
    m = int(np.asarray(shared[columns[1]]).shape[0])
    if all(mine[c].shape[0] == m and np.array_equal(mine[c], np.asarray(shared[c])) for c in columns):
        return np.arange(m)
    al = union_keys([shared, mine], columns)
    if al.n != m:
        raise InputError(
            f"this station holds {al.n - m} row(s) that the round's list lacks; the coordinator must send the "
            f"union of every station's rows (run the {keys_round} round again)"
        )
    return al.index[1]


def conform(spec: SharedRows, result: dict[str, np.ndarray], shared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``result`` (with ``key_*`` columns) re-laid on the ``shared`` rows (key columns), without the keys.

    Every row of the result must be in the shared list: it is the union the coordinator collected from
    all stations.

    Examples
    --------
    >>> shared = {"chrom": np.array(["1", "1"]), "pos": np.array([5, 9]), "ref": np.array(["A", "C"]),
    ...           "alt": np.array(["G", "T"])}
    >>> mine = {"key_chrom": np.array(["1"]), "key_pos": np.array([9]), "key_ref": np.array(["C"]),
    ...         "key_alt": np.array(["T"]), "counts": np.array([[[3, 2, 0, 1]]]), "group_size": np.array([6])}
    >>> conform(GENOTYPE_COUNTS, mine, shared)["counts"].tolist()
    [[[0, 0, 0, 6]], [[3, 2, 0, 1]]]
    """
    m = int(np.asarray(shared[spec.columns[1]]).shape[0])
    rows = rows_in(result, shared, spec.columns, spec.keys_round)
    absent = np.ones(m, dtype=bool)
    absent[rows] = False
    out: dict[str, np.ndarray] = {}
    for name, value in result.items():
        a = np.asarray(value)
        if name.startswith("key_"):
            continue
        if name not in spec.per_row:  # a total, the same whatever the rows
            out[name] = a
            continue
        full = np.zeros((m, *a.shape[1:]), dtype=a.dtype)
        full[rows] = a
        total = spec.per_row[name]
        if total is not None:
            full[absent] = np.asarray(result[total], dtype=a.dtype)
        elif name in ("counts", "dosage_people"):  # the last code counts missing samples, per group
            full[absent, :, -1] = np.asarray(result["group_size"], dtype=a.dtype)
        out[name] = full
    return out
