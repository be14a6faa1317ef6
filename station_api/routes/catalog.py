"""``GET /station``: what the station holds (datasets, their variables and spans, rounded sample counts)
and the policy it applies."""

from typing import Any

import polars as pl
import pyarrow as pa
from fastapi import APIRouter

from better.genomics.store import Store
from better.station_api import __version__
from better.station_api.config import Policy
from better.station_api.routes.deps import Anyone, State

router = APIRouter(tags=["researcher"])


@router.get("/station", openapi_extra={"x-roles": ["researcher", "admin"]})
def station(_: Anyone, state: State) -> dict[str, Any]:
    """Datasets, their variables and types, sample counts rounded per policy, and the policy."""
    policy: Policy = state.config().policy
    step = max(10, policy.min_cell_count)
    return {
        "name": state.name,
        "software": f"better {__version__}",
        "public_key": state.public_key,
        "agreement_key": state.manager.masking.public_text,
        "datasets": [_dataset(state.store, d, step) for d in state.store.summary()],
        "policy": policy.model_dump(),
        "count_rounding": step,
        "audit": {k: v for k, v in state.manager.query_audit.describe().items() if k in ("scope", "group")},
        "audit_log": f"needs attention: {state.audit.damaged}" if state.audit.damaged else "ok",
    }


def _dataset(store: Store, d: dict[str, Any], step: int) -> dict[str, Any]:
    """One dataset of ``store.summary()`` as ``/station`` shows it, its sample count rounded to ``step``."""
    ds = store.dataset(d["name"])
    schema = ds.phenotypes().schema
    if ds.kind == "reads":  # the span of its targets (or bins)
        positions = pl.from_arrow(ds.table("targets", ["chrom", "start", "end"]))
        assert isinstance(positions, pl.DataFrame)
        positions = positions.select("chrom", (pl.col("start") + 1).alias("pos"), pl.col("end"))
        extra = {"targets": positions.height}
    else:
        positions = pl.from_arrow(ds.variants(columns=["chrom", "pos"]))
        assert isinstance(positions, pl.DataFrame)
        positions = positions.with_columns(pl.col("pos").alias("end"))
        extra = {"dosages": ds.has_dosages}  # analysed on ALT dosages (imputed data), as PLINK 2 does
    spans = positions.group_by("chrom", maintain_order=True).agg(
        pl.col("pos").min().alias("lo"), pl.col("end").max().alias("hi")
    )
    return {
        "name": d["name"],
        "kind": ds.kind,
        **extra,
        "samples_about": int(round(d["n_samples"] / step) * step),
        "variants": int(d["n_variants"]),
        "chromosomes": d["chromosomes"],
        "spans": {c: [int(lo), int(hi)] for c, lo, hi in spans.iter_rows()},
        "source_sha256": d["source_sha256"],
        "variables": variables(schema),
    }


def variables(schema: pa.Schema) -> dict[str, str]:
    """A dataset's phenotype columns (its ``phenotypes()`` schema) and their kinds, as the catalog names
    them; the sample id and index are not variables."""
    return {f.name: variable_kind(str(f.type)) for f in schema if f.name not in ("sample_id", "sample_index")}


def variable_kind(arrow_type: str) -> str:
    """A phenotype column's Arrow type as the catalog names it (integer, number, text)."""
    if arrow_type.startswith(("int", "uint")):
        return "integer"
    if arrow_type in ("float", "double", "halffloat"):
        return "number"
    if arrow_type in ("string", "large_string"):
        return "text"
    return arrow_type
