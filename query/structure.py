"""PCA and PRUNE over the stations: the pooled counts round, LD pruning, then the PCA rounds.

The variants are those of the query's regions that pass its variant filter on pooled counts and that no
station's rules withheld (rare variants: their sums would point at their carriers). PRUNE keeps
PLINK 2's ``--indep-pairwise`` set of them; PCA runs on what is left (pruned, if asked), and with
``AS name`` the stations store the scores.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from better.engine.analyses.counts import CountsProtocol, pooled_summary
from better.engine.analyses.ld_prune import PruneProtocol, uninformative
from better.engine.analyses.pca import PCAProtocol, PCAResult, missing_correction
from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.protocol import Protocol
from better.query.planner import Plan

Drive = Callable[[str, Protocol], Awaitable[dict[str, np.ndarray]]]


@dataclass
class Structure:
    """What a PCA or PRUNE query left besides its table: the PCA (loadings, for ``--out``) and notes."""

    pca: PCAResult | None = None
    variants: int = 0
    pruned: int = 0
    stored: int | None = None


async def run_structure(p: Plan, drive: Drive, ids: dict[tuple, str], into: Structure) -> pl.DataFrame:
    """Run a PCA or PRUNE plan (``drive`` runs one protocol over the stations) and return its table."""
    q = p.query
    counts = CountsProtocol(groups=1)
    await drive("counts", counts)
    assert counts.counts is not None
    pooled = counts.counts.sum(axis=1)  # (variants, 4): hom-ref, het, hom-alt, missing
    keep = ~counts.withheld & (pooled[:, :3].sum(axis=1) > 0)
    if p.variant_filter.conditions:
        keep &= p.variant_filter.mask(*pooled_summary(counts.counts))
    keys = {c: counts.keys[c][keep] for c in KEY_COLUMNS}
    genotypes, missing = pooled[keep, :3], pooled[keep, 3]
    into.variants = int(keep.sum())
    if q.prune is not None:
        pruning = PruneProtocol(
            keys=keys, genotypes=genotypes, window=q.prune.window, step=q.prune.step, r2=q.prune.r2, kb=q.prune.kb
        )
        table = await drive("prune", pruning)
        assert pruning.removed is not None
        into.pruned = int(pruning.removed.sum())
        if q.verb == "prune":
            return _prune_table(table, ids)
        kept = ~pruning.removed
        keys, genotypes, missing = {c: v[kept] for c, v in keys.items()}, genotypes[kept], missing[kept]
    people = int(pooled[0].sum()) if pooled.shape[0] else 0
    informative = ~uninformative(genotypes)
    if informative.sum() <= q.pcs:
        raise InputError(
            f"PCA {q.pcs} needs more than {q.pcs} variants with two alleles seen; the selection has "
            f"{int(informative.sum())}: widen the regions or the variant filter"
        )
    pca = PCAProtocol(
        keys={c: v[informative] for c, v in keys.items()},
        genotypes=genotypes[informative],
        k=q.pcs,
        name=q.store_as.text if q.store_as is not None else None,
        variants=int(genotypes.shape[0]),  # PLINK counts monomorphic variants in M
        missing_pairs=missing_correction(missing, people),
    )
    table = await drive("pca", pca)
    into.pca = pca.pca()
    into.stored = pca.scored
    return pl.DataFrame(
        {
            "PC": list(table["PC"]),
            "EIGENVALUE": table["EIGENVALUE"],
            "EIGENVALUE_MEANIMPUTE": table["EIGENVALUE_MEANIMPUTE"],
            "VARIANCE_EXPLAINED": table["VARIANCE_EXPLAINED"],
            "RESIDUAL": table["RESIDUAL"],
        }
    )


def _prune_table(res: dict[str, np.ndarray], ids: dict[tuple, str]) -> pl.DataFrame:
    keys = list(zip(*(res[c].tolist() for c in KEY_COLUMNS), strict=True))
    return pl.DataFrame(
        {
            "#CHROM": [str(c) for c in res["chrom"]],
            "POS": np.asarray(res["pos"], dtype=np.int64),
            "ID": [ids.get(k, ".") for k in keys],
            "REF": [str(r) for r in res["ref"]],
            "ALT": [str(a) for a in res["alt"]],
            "PRUNE": list(res["PRUNE"]),
        }
    )


def loadings_frame(pca: PCAResult, ids: dict[tuple, str]) -> pl.DataFrame:
    """The loadings (unit eigenvectors of ``X'X``, one row per variant) with each variant's pooled ALT
    frequency: what projects a new station's people onto these PCs (``PROJECT``)."""
    keys = list(zip(*(pca.keys[c].tolist() for c in KEY_COLUMNS), strict=True))
    cols: dict[str, object] = {
        "#CHROM": [str(c) for c in pca.keys["chrom"]],
        "POS": np.asarray(pca.keys["pos"], dtype=np.int64),
        "ID": [ids.get(k, ".") for k in keys],
        "REF": [str(r) for r in pca.keys["ref"]],
        "ALT": [str(a) for a in pca.keys["alt"]],
        "ALT_FREQ": pca.alt_freq,
    }
    for i in range(pca.loadings.shape[1]):
        cols[f"PC{i + 1}"] = pca.loadings[:, i]
    return pl.DataFrame(cols)
