"""Covariates a station computes for a dataset (PCA scores), kept beside its phenotypes.

``PCA k ... AS name`` stores each person's scores as ``name1..namek``. They go into the dataset's folder
as ``covariates-<name>.parquet`` (``sample_index`` and one float64 column per component, null where a
person was not scored), written to a temporary file and renamed over the old one, so a crash leaves the
old scores or the new ones. :meth:`better.genomics.store.Dataset.phenotypes` joins them to the ingested
phenotypes, so they are in the catalog's ``phenotypes_<dataset>`` view, in ``better store info``, and
usable in GWAS formulas and WHERE like any phenotype.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from better.engine.errors import InputError

PREFIX = "covariates-"
#: Most sets of covariates a dataset keeps (each ``PCA ... AS name`` with a new name adds one).
MAX_SETS = 16
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,29}")


def covariate_files(folder: Path) -> list[Path]:
    """The dataset's stored covariate files, by name."""
    return sorted(folder.glob(f"{PREFIX}*.parquet"))


def columns_of(name: str, k: int) -> list[str]:
    """The column names ``name1..namek``."""
    return [f"{name}{i + 1}" for i in range(k)]


def write_covariates(folder: Path, ingested: list[str], name: str, values: np.ndarray) -> Path:
    """Store ``values`` ``(samples, k)`` (NaN: not scored) as ``name1..namek`` in ``folder``, replacing
    earlier covariates of that name; a name that clashes with an ingested phenotype is an error."""
    if not _NAME.fullmatch(name):
        raise InputError(f"covariates are named with letters, digits and _ (up to 30), not {name[:40]!r}")
    columns = columns_of(name, values.shape[1])
    clash = sorted(set(columns) & set(ingested))
    if clash:
        raise InputError(
            f"the dataset's phenotypes already have {', '.join(clash)}; store the scores under another name (AS ...)"
        )
    stored = covariate_files(folder)
    if len(stored) >= MAX_SETS and folder / f"{PREFIX}{name}.parquet" not in stored:
        raise InputError(
            f"the dataset keeps at most {MAX_SETS} sets of stored covariates; store the scores under a name "
            "used before (it replaces them)"
        )
    for other in stored:
        taken = set(pq.read_schema(other).names) - {"sample_index"}
        if other.name != f"{PREFIX}{name}.parquet" and taken & set(columns):
            raise InputError(f"covariates {', '.join(sorted(taken & set(columns)))} are already stored by {other.name}")
    arrays = [pa.array(np.arange(values.shape[0]), pa.int32())]
    arrays += [pa.array(values[:, c], pa.float64(), mask=np.isnan(values[:, c])) for c in range(values.shape[1])]
    table = pa.Table.from_arrays(arrays, names=["sample_index", *columns])
    final = folder / f"{PREFIX}{name}.parquet"
    tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def with_covariates(phenotypes: pa.Table, samples: pa.Table, folder: Path) -> pa.Table:
    """``phenotypes`` with the stored covariates joined on ``sample_index`` (a person scored but without
    phenotypes gets a row of their own, with their ``sample_id``)."""
    files = covariate_files(folder)
    if not files:
        return phenotypes
    n = samples.num_rows
    index = np.asarray(phenotypes.column("sample_index").to_numpy(zero_copy_only=False), dtype=np.int64)
    have = np.zeros(n, dtype=bool)
    have[index] = True
    extra = np.flatnonzero(~have)
    if extra.size:  # people without phenotypes: rows of nulls, so that their scores have a place
        ids = samples.column("sample_id").take(pa.array(extra))
        filler = {
            f.name: pa.nulls(extra.size, f.type)
            for f in phenotypes.schema
            if f.name not in ("sample_id", "sample_index")
        }
        filler["sample_id"] = ids.cast(phenotypes.schema.field("sample_id").type)
        filler["sample_index"] = pa.array(extra, phenotypes.schema.field("sample_index").type)
        phenotypes = pa.concat_tables(
            [phenotypes, pa.table(filler).select(phenotypes.schema.names).cast(phenotypes.schema)]
        )
    order = np.asarray(phenotypes.column("sample_index").to_numpy(zero_copy_only=False), dtype=np.int64)
    for path in files:
        table = pq.read_table(path)
        if table.num_rows != n:
            continue  # written for another version of the dataset: not this one's people
        for name in table.column_names[1:]:
            if name not in phenotypes.column_names:
                phenotypes = phenotypes.append_column(name, table.column(name).take(pa.array(order)))
    return phenotypes
