"""Put a station's per-variant (or per-target) result on a shared list of keys (the round's *frame*).

Secure aggregation adds the stations' arrays element by element, so every station must release arrays
over the same variants in the same order. A variant the station does not hold is filled in as if all its
analysed samples had a missing genotype there: exactly how the centre treats such a variant when it
aligns plain results (:func:`better.engine.protocol.combine_counts`, :func:`better.engine.linear.combine_linear`).
So a sum of conformed results equals the plain combination, variant for variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.key_union import union_keys

#: Key columns of a coverage target (0-based, half-open, and its name).
TARGET_COLUMNS = ("chrom", "start", "end", "name")


@dataclass(frozen=True)
class FrameSpec:
    """How one kind of round is laid on a frame.

    ``keys_round``: the round that lists each station's rows (in the clear); ``columns``: the key
    columns; ``per_row``: the arrays with one row per key and, for a row the station lacks, the total
    it takes there (``None``: zero). ``counts`` arrays get the group sizes in their last, "missing",
    code instead.
    """

    keys_round: str
    columns: tuple[str, ...]
    per_row: dict[str, str | None]


FRAMES: dict[str, FrameSpec] = {
    "counts": FrameSpec("variant_keys", KEY_COLUMNS, {"counts": None, "withheld": None}),
    "linear": FrameSpec(
        "variant_keys",
        KEY_COLUMNS,
        {**dict.fromkeys(("cg", "gg", "gy", "withheld")), "n_miss": "n", "m_cc": "cc", "m_cy": "cy", "m_yy": "yy"},
    ),
    "logistic_score": FrameSpec(
        "variant_keys",
        KEY_COLUMNS,
        {
            **dict.fromkeys(("u", "gwg", "cwg", "cg", "gg", "counts", "withheld")),
            **{"n_miss": "n", "m_cc": "cc", "m_cwc": "cwc", "m_cr": "cr"},
        },
    ),
    # a target the station did not measure: no samples, no bases
    "coverage": FrameSpec(
        "target_keys",
        TARGET_COLUMNS,
        dict.fromkeys(("samples", "bases", "sum_depth", "bases_ge", "samples_ge", "withheld")),
    ),
}
#: Round kinds whose results have one row per key of the station (and so need a frame).
FRAME_KINDS = tuple(FRAMES)


def frame_rows(
    result: dict[str, np.ndarray],
    frame: dict[str, np.ndarray],
    columns: tuple[str, ...] = KEY_COLUMNS,
    keys_round: str = "variant_keys",
) -> np.ndarray:
    """Where each of the result's rows (its ``key_*`` columns) is in the frame.

    Stations that hold the same rows as the frame (the usual case) skip the join.
    """
    mine = {c: np.asarray(result[f"key_{c}"]) for c in columns}
    m = int(np.asarray(frame[columns[1]]).shape[0])
    if all(mine[c].shape[0] == m and np.array_equal(mine[c], np.asarray(frame[c])) for c in columns):
        return np.arange(m)
    al = union_keys([frame, mine], columns)
    if al.n != m:
        raise InputError(
            f"this station holds {al.n - m} row(s) that the round's list lacks; the coordinator must send the "
            f"union of every station's rows (run the {keys_round} round again)"
        )
    return al.index[1]


def conform(kind: str, result: dict[str, np.ndarray], frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``result`` (with ``key_*`` columns) re-laid on ``frame`` (key columns), without the keys.

    Every variant of the result must be in the frame: the frame is the union the coordinator collected
    from all stations.

    Examples
    --------
    >>> frame = {"chrom": np.array(["1", "1"]), "pos": np.array([5, 9]), "ref": np.array(["A", "C"]),
    ...          "alt": np.array(["G", "T"])}
    >>> mine = {"key_chrom": np.array(["1"]), "key_pos": np.array([9]), "key_ref": np.array(["C"]),
    ...         "key_alt": np.array(["T"]), "counts": np.array([[[3, 2, 0, 1]]]), "group_size": np.array([6])}
    >>> conform("counts", mine, frame)["counts"].tolist()
    [[[0, 0, 0, 6]], [[3, 2, 0, 1]]]
    """
    if kind not in FRAMES:
        raise ValueError(f"a {kind!r} result has no per-row keys to conform")
    spec = FRAMES[kind]
    m = int(np.asarray(frame[spec.columns[1]]).shape[0])
    rows = frame_rows(result, frame, spec.columns, spec.keys_round)
    absent = np.ones(m, dtype=bool)
    absent[rows] = False
    per_variant = spec.per_row
    out: dict[str, np.ndarray] = {}
    for name, value in result.items():
        a = np.asarray(value)
        if name.startswith("key_"):
            continue
        if name not in per_variant:  # a total, the same whatever the variants
            out[name] = a
            continue
        full = np.zeros((m, *a.shape[1:]), dtype=a.dtype)
        full[rows] = a
        total = per_variant[name]
        if total is not None:
            full[absent] = np.asarray(result[total], dtype=a.dtype)
        elif name == "counts":  # the last code counts missing samples, per group
            full[absent, :, -1] = np.asarray(result["group_size"], dtype=a.dtype)
        out[name] = full
    return out
