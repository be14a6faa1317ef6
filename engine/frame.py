"""Put a station's per-variant result on a shared list of variants (the round's *frame*).

Secure aggregation adds the stations' arrays element by element, so every station must release arrays
over the same variants in the same order. A variant the station does not hold is filled in as if all its
analysed samples had a missing genotype there: exactly how the centre treats such a variant when it
aligns plain results (:func:`engine.protocol.combine_counts`, :func:`engine.linear.combine_linear`).
So a sum of conformed results equals the plain combination, variant for variant.
"""

from __future__ import annotations

import numpy as np

from engine.align import align
from engine.design import KEY_COLUMNS
from engine.errors import InputError

#: Round kinds whose results have one row per variant of the station (and so need a frame).
FRAME_KINDS = ("counts", "linear", "logistic_score")

#: Per kind: the arrays with one row per variant, and for a variant the station lacks, the total each
#: takes (all samples missing there; the others are zero). ``counts`` gets the group sizes in its last,
#: "missing", code.
_PER_VARIANT: dict[str, dict[str, str | None]] = {
    "counts": {"counts": None, "withheld": None},
    "linear": {
        **dict.fromkeys(("cg", "gg", "gy", "withheld")),
        **{"n_miss": "n", "m_cc": "cc", "m_cy": "cy", "m_yy": "yy"},
    },
    "logistic_score": {
        **dict.fromkeys(("u", "gwg", "cwg", "cg", "gg", "counts", "withheld")),
        **{"n_miss": "n", "m_cc": "cc", "m_cwc": "cwc", "m_cr": "cr"},
    },
}


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
    if kind not in _PER_VARIANT:
        raise ValueError(f"a {kind!r} result has no per-variant rows to conform")
    mine = {c: np.asarray(result[f"key_{c}"]) for c in KEY_COLUMNS}
    m = int(np.asarray(frame["pos"]).shape[0])
    al = align([frame, mine])
    if al.n != m:
        raise InputError(
            f"this station holds {al.n - m} variant(s) that the round's variant list lacks; the coordinator "
            "must send the union of every station's variants (run the variant_keys round again)"
        )
    rows = al.index[1]
    absent = np.ones(m, dtype=bool)
    absent[rows] = False
    per_variant = _PER_VARIANT[kind]
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
