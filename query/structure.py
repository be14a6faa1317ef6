"""PCA and PRUNE over the stations: the pooled counts round, LD pruning, then the PCA rounds.

The variants are those of the query's regions that pass its variant filter on pooled counts and that no
station's rules withheld (rare variants: their sums would point at their carriers). PRUNE keeps
PLINK 2's ``--indep-pairwise`` set of them; PCA runs on what is left (pruned, if asked), and with
``AS name`` the stations store the scores.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from better.engine.analyses.counts import CountsProtocol
from better.engine.analyses.ld_prune import PruneProtocol
from better.engine.analyses.pca import MAX_PCS, PCAProtocol, PCAResult, ProjectProtocol
from better.engine.design import KEY_COLUMNS
from better.engine.errors import InputError
from better.engine.protocol import Protocol
from better.query.parser import Query
from better.query.planner import Plan

Drive = Callable[[str, Protocol], Awaitable[dict[str, np.ndarray]]]


@dataclass
class Structure:
    """What a PCA or PRUNE query left besides its table: the PCA (loadings, for ``--out``) and notes."""

    pca: PCAResult | None = None
    #: VCF IDs of the variants, for the weights file.
    ids: dict[tuple, str] = field(default_factory=dict)
    variants: int = 0
    pruned: int = 0
    #: Variants left out of pruning because 1 to ``min_cell_count - 1`` people lack a call there.
    left_out: int = 0
    stored: int | None = None


async def run_structure(p: Plan, drive: Drive, ids: dict[tuple, str], into: Structure) -> pl.DataFrame:
    """Run a PCA or PRUNE plan (``drive`` runs one protocol over the stations) and return its table."""
    q = p.query
    weights = read_weights(q.weights_file) if q.weights_file is not None else None
    counts = CountsProtocol(groups=1)
    await drive("counts", counts)  # the pooled counts (and, masked, the round that audits the selection)
    if weights is not None:
        return await _project(q, weights, counts, drive, into)
    assert counts.counts is not None
    pooled = counts.counts.sum(axis=1)  # (variants, 4): hom-ref, het, hom-alt, missing
    keep = ~counts.withheld
    if p.variant_filter.conditions:
        keep &= counts.keep(p.variant_filter)
    keys = {c: counts.keys[c][keep] for c in KEY_COLUMNS}
    genotypes = pooled[keep]
    into.variants = int(keep.sum())
    if q.prune is not None:
        pruning = PruneProtocol(
            keys=keys,
            genotypes=genotypes[:, :3],
            window=q.prune.window,
            step=q.prune.step,
            r2=q.prune.r2,
            kb=q.prune.kb,
        )
        table = await drive("prune", pruning)
        assert pruning.removed is not None
        into.pruned = int(pruning.removed.sum())
        into.left_out += pruning.left_out
        if q.verb == "prune":
            return _prune_table(table, ids)
        kept = pruning.origin[~pruning.removed]
        keys, genotypes = {c: v[kept] for c, v in keys.items()}, genotypes[kept]
    pca = PCAProtocol(keys=keys, genotypes=genotypes, k=q.pcs, name=q.store_as.text if q.store_as is not None else "")
    table = await drive("pca", pca)
    into.pca = pca.pca()
    into.ids = ids
    into.stored = pca.scored if q.store_as is not None else None
    return pl.DataFrame(
        {
            "PC": list(table["PC"]),
            "EIGENVALUE": table["EIGENVALUE"],
            "EIGENVALUE_MEANIMPUTE": table["EIGENVALUE_MEANIMPUTE"],
            "VARIANCE_EXPLAINED": table["VARIANCE_EXPLAINED"],
            "SEPARATED": table["SEPARATED"],
            "RESIDUAL": table["RESIDUAL"],
        }
    )


async def _project(
    q: Query,
    weights_of: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray],
    counts: CountsProtocol,
    drive: Drive,
    into: Structure,
) -> pl.DataFrame:
    """PROJECT: score every station's people on the weights of an earlier PCA and store the scores."""
    assert q.store_as is not None
    keys, alt_freq, weights = weights_of
    have = set(zip(*(counts.keys[c].tolist() for c in KEY_COLUMNS), strict=True))
    found = sum(1 for k in zip(*(keys[c].tolist() for c in KEY_COLUMNS), strict=True) if k in have)
    project = ProjectProtocol(keys=keys, alt_freq=alt_freq, weights=weights, name=q.store_as.text)
    await drive("project", project)
    into.variants, into.stored = found, project.scored
    return pl.DataFrame(
        {
            "SCORED": [project.scored],
            "COVARIATES": [f"{q.store_as.text}1..{q.store_as.text}{weights.shape[1]}"],
            "WEIGHT_VARIANTS": [int(weights.shape[0])],
            "FOUND_AT_STATIONS": [found],
        }
    )


def read_weights(path: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The keys, ALT frequencies and weights ``(variants, k)`` of a weights file (:func:`weights_frame`)."""
    try:
        frame = pl.read_csv(path, separator="\t", infer_schema_length=0)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"{path}: cannot read the weights file ({exc})") from None
    pcs = [c for c in frame.columns if c.startswith("PC") and c[2:].isdigit()]
    needed = ["#CHROM", "POS", "REF", "ALT", "ALT_FREQ"]
    missing = [c for c in needed if c not in frame.columns]
    if missing or not pcs or len(pcs) > MAX_PCS:
        raise InputError(
            f"{path}: a weights file has columns #CHROM POS ID REF ALT ALT_FREQ PC1..PCk (k <= {MAX_PCS}), as "
            '`better query "PCA ..." --out FILE` writes FILE.weights.tsv'
            + (f"; missing {', '.join(missing)}" if missing else "")
        )
    try:
        pos = frame["POS"].cast(pl.Int64).to_numpy()
        freq = frame["ALT_FREQ"].cast(pl.Float64).to_numpy()
        weights = np.column_stack([frame[c].cast(pl.Float64).to_numpy() for c in pcs])
    except pl.exceptions.PolarsError:
        raise InputError(f"{path}: POS, ALT_FREQ and PC columns must be numbers") from None
    if not (np.all(np.isfinite(weights)) and np.all((freq > 0) & (freq < 1))):
        raise InputError(f"{path}: weights must be finite and ALT_FREQ strictly between 0 and 1")
    keys = {
        "chrom": frame["#CHROM"].to_numpy().astype(str),
        "pos": pos,
        "ref": frame["REF"].to_numpy().astype(str),
        "alt": frame["ALT"].to_numpy().astype(str),
    }
    return keys, freq, weights


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


def weights_frame(pca: PCAResult, ids: dict[tuple, str], weights: bool = True) -> pl.DataFrame:
    """Per variant, its pooled ALT frequency and, per PC, its projection weight (``weights``: what
    ``PROJECT`` reads to score a new station's people on these PCs) or its loading (the unit eigenvector
    of ``X'X``)."""
    keys = list(zip(*(pca.keys[c].tolist() for c in KEY_COLUMNS), strict=True))
    cols: dict[str, object] = {
        "#CHROM": [str(c) for c in pca.keys["chrom"]],
        "POS": np.asarray(pca.keys["pos"], dtype=np.int64),
        "ID": [ids.get(k, ".") for k in keys],
        "REF": [str(r) for r in pca.keys["ref"]],
        "ALT": [str(a) for a in pca.keys["alt"]],
        "ALT_FREQ": pca.alt_freq,
    }
    values = pca.weights if weights else pca.loadings
    for i in range(values.shape[1]):
        cols[f"PC{i + 1}"] = values[:, i]
    return pl.DataFrame(cols)
