"""A variant's final statistics as numbers that secure aggregation can carry, and back.

Some variants' sums may not reach the coordinator (a few people lack a call there, and the sums that drop
them from the model would describe just them). The stations then compute those variants' results
themselves and release only the final statistics, masked like every release, so as numbers alone: text
columns (``ERRCODE``, ``FIRTH?``) travel as codes. P-values travel as ``LOG10_P`` (the fixed-point
encoding keeps absolute precision, which a P of 1e-30 would lose). The counts that variant filters need
(ALT alleles, called and missing samples) come along.
"""

from __future__ import annotations

import numpy as np

from better.engine.analyses.linear import ERRCODE_NAMES

#: Every ERRCODE either model writes (linear's, then logistic's own); a final's code is its index here.
ERRCODES = (*ERRCODE_NAMES, "VIF_INFINITE", "FIRTH_CONVERGE_FAIL", "UNFINISHED")
#: The numeric columns of each model's final statistics (besides the codes).
NUMBERS = {
    "linear": ("OBS_CT", "BETA", "SE", "T_STAT", "LOG10_P", "A1_FREQ"),
    "logistic": ("OBS_CT", "OR", "LOG(OR)_SE", "Z_STAT", "LOG10_P", "A1_FREQ"),
}
#: Counts a variant filter is evaluated on.
FILTER_COUNTS = ("ALT_CT", "CALLED_CT", "MISSING_CT")


def encode(model: str, result: dict[str, np.ndarray], counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``result`` (a finalizer's columns) and filter ``counts`` as finite-or-NaN-free numbers.

    NaN is not carried: each numeric column comes with a ``<name>?`` flag that it is a number.

    >>> out = encode("linear", {"OBS_CT": np.array([9]), "BETA": np.array([np.nan]), "SE": np.array([1.0]),
    ...     "T_STAT": np.array([2.0]), "LOG10_P": np.array([1.5]), "A1_FREQ": np.array([0.1]),
    ...     "ERRCODE": np.array([""], dtype=object)}, {"ALT_CT": np.array([2]), "CALLED_CT": np.array([9]),
    ...     "MISSING_CT": np.array([1])})
    >>> decode("linear", out)["BETA"].tolist(), decode("linear", out)["ERRCODE"].tolist()
    ([nan], [''])
    """
    out: dict[str, np.ndarray] = {}
    for name in NUMBERS[model]:
        value = np.asarray(result[name], dtype=np.float64)
        finite = np.isfinite(value)
        out[name] = np.where(finite, value, 0.0)
        out[f"{name}?"] = finite
    out["ERRCODE"] = np.array([ERRCODES.index(str(e)) for e in result["ERRCODE"]], dtype=np.int64)
    if model == "logistic":
        out["FIRTH"] = np.asarray(result["FIRTH?"]) == "Y"
    for name in FILTER_COUNTS:
        out[name] = np.asarray(counts[name], dtype=np.int64)
    return out


def decode(model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode`: the finalizer's columns (``P`` from ``LOG10_P``) and the filter counts."""
    out: dict[str, np.ndarray] = {}
    for name in NUMBERS[model]:
        out[name] = np.where(np.asarray(arrays[f"{name}?"], dtype=bool), np.asarray(arrays[name], float), np.nan)
    out["OBS_CT"] = np.rint(np.nan_to_num(out["OBS_CT"])).astype(np.int64)
    out["P"] = 10.0 ** -out["LOG10_P"]
    codes = np.clip(np.asarray(arrays["ERRCODE"], dtype=np.int64), 0, len(ERRCODES) - 1)
    out["ERRCODE"] = np.array([ERRCODES[c] for c in codes], dtype=object)
    if model == "logistic":
        out["FIRTH?"] = np.where(np.asarray(arrays["FIRTH"], dtype=bool), "Y", "N").astype(object)
    for name in FILTER_COUNTS:
        out[name] = np.asarray(arrays[name], dtype=np.int64)
    return out
