"""A toy analysis, ALLELE SUM, declared as any analysis is: one module with its station half, its central
state machine and its round kind. ``tests/test_round_registry.py`` registers it and runs it through the
station's task manager (wire, policy, audit) and the coordinator's protocol driver."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from better.engine.analyses.counts import withheld_of
from better.engine.design import KEY_COLUMNS, concat_keys
from better.engine.kernels.counts import genotype_counts
from better.engine.key_union import union_keys
from better.engine.protocol import OneRoundProtocol
from better.engine.rounds import Analysis, Result, RoundKind, SharedRows, StationData, Task


def allele_sum_station(task: Task, data: StationData) -> Result:
    """Per variant: ALT alleles and called samples among the included samples."""
    group = data.design.groups(1)
    keys, alt, called = [], [], []
    for b in data.blocks(None):
        c = genotype_counts(np.ascontiguousarray(b.packed), group, 1)[:, 0, :]
        keys.append(b.keys)
        alt.append(c[:, 1] + 2 * c[:, 2])
        called.append(c[:, :3].sum(axis=1))
    out = {f"key_{k}": v for k, v in concat_keys(keys).items() if k in KEY_COLUMNS}
    out["alt"] = np.concatenate(alt) if alt else np.zeros(0, dtype=np.int64)
    out["called"] = np.concatenate(called) if called else np.zeros(0, dtype=np.int64)
    return out


@dataclass
class AlleleSumProtocol(OneRoundProtocol):
    """One round: ALT alleles and called samples, added over stations by variant."""

    kind = "allele_sum"

    keys: Result = field(default_factory=dict)
    total: Result | None = None
    withheld: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def combine(self, results: list[Result]) -> None:
        al = union_keys([{c: r[f"key_{c}"] for c in KEY_COLUMNS} for r in results])
        self.keys, self.total = al.keys, {}
        for name in ("alt", "called"):
            acc = np.zeros(al.n, dtype=np.int64)
            for r, idx in zip(results, al.index, strict=True):
                acc[idx] += r[name]
            self.total[name] = acc
        self.withheld = withheld_of(results, al)

    def result(self) -> dict[str, np.ndarray]:
        assert self.total is not None
        hide = self.withheld
        return {
            **self.keys,
            "ALT_CT": np.where(hide, np.nan, self.total["alt"].astype(float)),
            "CALLED_CT": np.where(hide, np.nan, self.total["called"].astype(float)),
            "WITHHELD": hide,
        }


ROUNDS = (
    RoundKind(
        "allele_sum",
        allele_sum_station,
        shared=SharedRows("variant_keys", KEY_COLUMNS, {"alt": None, "called": None, "withheld": None}),
        rules=("minor_allele_count",),
        judged_groups=1,  # judged on genotype counts the station computes beside the kernel
        zeroed=("alt", "called"),
    ),
)
ANALYSES = (Analysis("allele_sum", ("variant_keys", "allele_sum")),)
