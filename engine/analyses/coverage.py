"""COVERAGE per target over a dataset of aligned reads: one round of per-target depth sums.

The ``target_keys`` round lists each station's targets overlapping the query's regions, in the clear
(the capture design, or bins, which is not about anyone): secure aggregation lays every station's
per-target arrays on their union. Per target, the stations sum over their selected samples the bases
and summed depth (mean depth), the bases at >= 10x, 20x, 30x, and the samples whose mean depth
reaches each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from better.engine.analyses.counts import withheld_of
from better.engine.design import TARGET_COLUMNS
from better.engine.kernels.read_metrics import THRESHOLDS
from better.engine.key_union import union_keys
from better.engine.protocol import OneRoundProtocol
from better.engine.rounds import Analysis, Result, RoundKind, SharedRows, StationData, Task


# -- station side ----------------------------------------------------------------------------------------
def coverage_station(
    targets: dict[str, np.ndarray], sample: np.ndarray, target: np.ndarray, sums: np.ndarray, include: np.ndarray
) -> Result:
    """Per target, sums over the included samples: samples, bases, summed depth, bases and samples at
    or above each threshold.

    ``sample``, ``target`` index the rows of ``sums`` = ``[bases, summed depth, bases >= T...]``; ``targets``
    holds the key columns (0-based, half-open) of the targets asked for, in order.
    """
    m = int(targets["start"].shape[0])
    keep = include[sample]
    t, v = target[keep], sums[keep]
    bases = np.bincount(t, weights=v[:, 0], minlength=m).astype(np.int64)
    depth = np.bincount(t, weights=v[:, 1], minlength=m).astype(np.int64)
    n_t = len(THRESHOLDS)
    bases_ge = np.stack([np.bincount(t, weights=v[:, 2 + h], minlength=m) for h in range(n_t)], axis=1).astype(np.int64)
    mean = v[:, 1] / np.maximum(v[:, 0], 1)
    samples_ge = np.stack(
        [np.bincount(t, weights=(mean >= th).astype(float), minlength=m) for th in THRESHOLDS], axis=1
    ).astype(np.int64)
    samples = np.bincount(t, minlength=m).astype(np.int64)
    return {
        **{f"key_{c}": targets[c] for c in TARGET_COLUMNS},
        "samples": samples,
        "bases": bases,
        "sum_depth": depth,
        "bases_ge": bases_ge,
        "samples_ge": samples_ge,
        "n": np.array(int(include.sum())),
    }


def coverage_round(task: Task, data: StationData) -> Result:
    """The station half of the ``coverage`` round, over the targets of the task's regions."""
    return coverage_station(*data.target_depth(), data.design.include)


def target_keys_round(task: Task, data: StationData) -> Result:
    """The station's targets in the task's regions, as key columns."""
    return {f"key_{c}": v for c, v in data.target_keys().items()}


def coverage_people(result: Result) -> np.ndarray:
    """The samples behind each target's sums: covered, and at each depth threshold."""
    return np.concatenate([result["samples"][:, None], result["samples_ge"]], axis=1).astype(np.int64)


# -- central side ----------------------------------------------------------------------------------------
@dataclass
class CoverageProtocol(OneRoundProtocol):
    """One round: per-target sums, added over stations by target."""

    kind = "coverage"

    total: Result | None = None

    def combine(self, results: list[Result]) -> None:
        al = union_keys([{c: r[f"key_{c}"] for c in TARGET_COLUMNS} for r in results], TARGET_COLUMNS)
        total: Result = {f"key_{c}": v for c, v in al.keys.items()}
        for name in ("samples", "bases", "sum_depth", "bases_ge", "samples_ge"):
            acc = np.zeros((al.n, *results[0][name].shape[1:]), dtype=np.int64)
            for r, idx in zip(results, al.index, strict=True):
                acc[idx] += r[name]
            total[name] = acc
        total["withheld"] = withheld_of(results, al)
        self.total = total

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        t = self.total
        hide = t["withheld"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out: dict[str, np.ndarray] = {
                "CHROM": t["key_chrom"],
                "START": t["key_start"] + 1,  # 1-based, inclusive, as positions are shown everywhere
                "END": t["key_end"],
                "NAME": t["key_name"],
                "SAMPLES": t["samples"].astype(float),
                "MEAN_DEPTH": t["sum_depth"] / t["bases"],
            }
            for h, th in enumerate(THRESHOLDS):
                out[f"FRAC_BASES_GE_{th}X"] = t["bases_ge"][:, h] / t["bases"]
            for h, th in enumerate(THRESHOLDS):
                out[f"FRAC_SAMPLES_GE_{th}X"] = t["samples_ge"][:, h] / t["samples"]
        for name in list(out)[4:]:
            out[name] = np.where(hide, np.nan, out[name])
        out["WITHHELD"] = hide
        return out


_SUMS = ("samples", "bases", "sum_depth", "bases_ge", "samples_ge")
ROUNDS = (
    RoundKind("target_keys", target_keys_round, data="reads", scope="targets", lists_keys=True, sealed="never"),
    RoundKind(
        "coverage",
        coverage_round,
        data="reads",
        scope="targets",
        # a target the station did not measure: no samples, no bases
        shared=SharedRows("target_keys", TARGET_COLUMNS, dict.fromkeys((*_SUMS, "withheld"))),
        rules=("small_cells",),
        zeroed=_SUMS,
        people=coverage_people,
    ),
)
ANALYSES = (Analysis("coverage", ("target_keys", "coverage"), data="reads"),)
