"""PCA: principal components of the pooled, variance-standardised genotypes, with the sample scores kept
at the stations.

Let ``X`` be the pooled ``people x variants`` matrix of standardised genotypes (PLINK 2's ``--pca``:
``(g - 2p) / sqrt(2p(1 - p))`` with ``p`` the pooled ALT frequency, 0 for a missing call). Its principal
components are the eigenvectors of ``A = X'X = sum over stations of X_s'X_s`` (variants x variants).
No one holds ``X``; each station can multiply by its own ``X_s``. A ``pca_product`` round sends a basis
``Q`` (variants x b) and each station returns ``X_s'(X_s Q)``: it computes its people's scores ``X_s Q``
and keeps them, releasing only their products with its genotypes, a sum over its people per variant.
Masked, the coordinator sees only ``A Q``.

The centre (:mod:`.centre`) runs block Lanczos with full reorthogonalisation on those products; the last
round, ``pca_scores``, sends the loadings ``y``: each station computes its people's scores
``X_s y / sqrt(theta)`` (PLINK 2's unit-norm ``.eigenvec``) and, if the query names them, stores them as
covariates ``name1..namek`` of the dataset; only the number of people scored and a few sums per PC over
them leave (:data:`.station.MOMENTS`, from which the centre gets PLINK's default eigenvalues).
"""

from __future__ import annotations

import numpy as np

from better.engine.analyses.pca.centre import (
    MAX_BASIS,
    MAX_PCS,
    PCAProtocol,
    PCAResult,
    ProjectProtocol,
    plink_eigenvalues,
    standardization,
)
from better.engine.analyses.pca.station import (
    partial_products,
    partial_scores,
    product_station,
    scores_finish,
    scores_station,
    scores_sums,
    selected,
)
from better.engine.design import KEY_COLUMNS
from better.engine.rounds import Analysis, RoundKind, Split, StateArray

_ROWS = {f"key_{c}": StateArray(np.int64 if c == "pos" else str, ("rows",)) for c in KEY_COLUMNS}
_STANDARDIZE = {name: StateArray(np.float64, ("rows",), finite=True) for name in ("mean", "scale")}

ROUNDS = (
    RoundKind(
        "pca_product",
        product_station,
        state={**_ROWS, **_STANDARDIZE, "basis": StateArray(np.float64, ("rows", "cols"), finite=True)},
        scope="task",
        sealed="never",
        rules=("minor_allele_count",),
        judged_groups=1,
        zeroed=("product",),
        excludes="scale",
        rules_from="counts",
        hard_calls=True,
        max_cols=MAX_BASIS,
        split=Split(partial_scores, sums=("scores",), then=Split(partial_products, sums=("product",))),
    ),
    RoundKind(
        "pca_scores",
        scores_station,
        state={
            **_ROWS,
            **_STANDARDIZE,
            "basis": StateArray(np.float64, ("rows", "cols"), finite=True),
            "divisor": StateArray(np.float64, ("cols",), finite=True),
            "name": StateArray(str, (1,)),
        },
        scope="task",
        sealed="never",
        whole_count=True,
        rules=("minor_allele_count",),
        judged_groups=1,
        excludes="scale",
        rules_from="counts",
        hard_calls=True,
        max_cols=MAX_PCS,
        split=Split(scores_sums, sums=("scores", "squares", "missing", "found"), finish=scores_finish),
    ),
)
#: PCA may prune first (``PCA ... PRUNE``), so its rounds include LD pruning's.
ANALYSES = (Analysis("pca", ("variant_keys", "counts", "ld_pairs", "pca_product", "pca_scores")),)

__all__ = [
    "ANALYSES",
    "MAX_BASIS",
    "MAX_PCS",
    "ROUNDS",
    "PCAProtocol",
    "PCAResult",
    "ProjectProtocol",
    "plink_eigenvalues",
    "selected",
    "standardization",
]
