"""GWAS LOGISTIC: logistic regression of a binary trait on each variant, PLINK 2's logistic-Firth hybrid.

The station half of each round is in :mod:`.station`, the centre's state machine in :mod:`.centre`;
this module declares the three round kinds: ``logistic_null`` (the null model's sums at the current
coefficients), ``logistic_score`` (per-variant score-test sums and allele counts under the null fit)
and ``logistic_newton`` (per-variant Newton and Firth sums at each variant's coefficients).
"""

from __future__ import annotations

import numpy as np

from better.engine.analyses.logistic import station
from better.engine.analyses.logistic.centre import LogisticProtocol
from better.engine.design import KEY_COLUMNS
from better.engine.pieces import whole
from better.engine.rounds import (
    Analysis,
    Finishing,
    Result,
    RoundKind,
    SharedRows,
    Split,
    StateArray,
    StationData,
    Task,
)

#: A Newton round naming at most this many variants reads only the blocks that hold them.
TARGETED_MAX = 256


def null_round(task: Task, data: StationData) -> Result:
    return station.null_station(data.design, np.asarray(task["beta"], dtype=float))


def score_round(task: Task, data: StationData) -> Result:
    return station.score_station(data.design, np.asarray(task["beta"], dtype=float), data.blocks(None))


def newton_round(task: Task, data: StationData) -> Result:
    few = len(task["key_pos"]) <= TARGETED_MAX
    targets = {c: np.asarray(task[f"key_{c}"]) for c in KEY_COLUMNS} if few else None
    return station.newton_station(data.design, data.blocks(targets), task)


def score_calls(result: Result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Called and missing samples and ALT alleles per variant, from the score round's allele counts."""
    c = np.asarray(result["counts"]).sum(axis=1)  # called samples, ALT alleles, missing samples
    return c[:, 0], c[:, 2], c[:, 1]


_BETA = StateArray(np.float64, ("k",), finite=True)
_RULES = ("minor_allele_count", "missing_genotypes", "case_control_cells")
_SCORE_ROWS = ("u", "gwg", "cwg", "m_cwc", "m_cr", "counts", "cg", "gg", "n_miss", "m_cc")
_NEWTON_ROWS = ("xwx", "score", "loglik")

ROUNDS = (
    RoundKind("logistic_null", null_round, state={"beta": _BETA}, scope="none", sealed="first", case_control=True),
    RoundKind(
        "logistic_score",
        score_round,
        state={"beta": _BETA},
        case_control=True,
        shared=SharedRows(
            "variant_keys",
            KEY_COLUMNS,
            {
                **dict.fromkeys(("u", "gwg", "cwg", "cg", "gg", "counts", "withheld")),
                **{"n_miss": "n", "m_cc": "cc", "m_cwc": "cwc", "m_cr": "cr"},
            },
        ),
        rules=_RULES,
        judged_groups=2,
        zeroed=_SCORE_ROWS,
        calls=score_calls,
        finishing=Finishing(_SCORE_ROWS, ("cwc", "cr", "cc", "n", "group_size"), "logistic"),
        split=Split(whole(score_round), rows=_SCORE_ROWS),
    ),
    RoundKind(
        "logistic_newton",
        newton_round,
        state={
            **{f"key_{c}": StateArray(np.int64 if c == "pos" else str, ("rows",)) for c in KEY_COLUMNS},
            "beta": StateArray(np.float64, ("rows", "k+1"), finite=True),
            "firth": StateArray(np.bool_, ("rows",)),
            "loglik": StateArray(np.bool_, ("rows",)),
            "inv": StateArray(np.float64, ("rows", "k+1", "k+1"), finite=True),
        },
        scope="task",
        sealed="never",
        case_control=True,
        rules=_RULES,
        judged_groups=2,
        zeroed=_NEWTON_ROWS,
        dropped=("counts",),
        finishing=Finishing(_NEWTON_ROWS, (), "logistic"),
        rules_from="logistic_score",
    ),
)
ANALYSES = (
    Analysis(
        "gwas_logistic",
        ("variant_keys", "counts", "logistic_null", "logistic_score", "logistic_newton"),
        needs_phenotype=True,
    ),
)

__all__ = ["ANALYSES", "ROUNDS", "TARGETED_MAX", "LogisticProtocol", "station"]
