"""Rows the stations finished themselves (:mod:`better.station_api.finishing`), laid over the analysis' result.

Their sums never reached the coordinator: the analysis' own result has them as withheld. The stations
released their final statistics instead, which replace those rows' columns here; a variant filter the
plan evaluates on pooled sums is evaluated for them on the counts that came with the statistics.
"""

from __future__ import annotations

import numpy as np

from better.engine.design import KEY_COLUMNS
from better.engine.filters import VariantFilter


class FinishedRows:
    """Final statistics of finished rows, by variant key."""

    def __init__(self) -> None:
        self.rows: dict[tuple[object, ...], dict[str, object]] = {}

    def add(self, keys: dict[str, np.ndarray], columns: dict[str, np.ndarray]) -> None:
        for i, key in enumerate(zip(*(np.asarray(keys[c]).tolist() for c in KEY_COLUMNS), strict=True)):
            self.rows[key] = {name: col[i] for name, col in columns.items()}

    def overlay(self, res: dict[str, np.ndarray], vf: VariantFilter | None = None) -> dict[str, np.ndarray]:
        """``res`` with the finished rows' columns replaced; those failing ``vf`` left out (an ``r2``
        condition is not judged on them: the stations release their allele and call counts, not the sums of
        squared dosages, so such a row stays)."""
        if not self.rows:
            return res
        if vf is not None:
            vf = VariantFilter(tuple(c for c in vf.conditions if c.name != "r2"))
        out = {name: np.array(col, copy=True) for name, col in res.items()}
        keys = list(zip(*(np.asarray(res[c]).tolist() for c in KEY_COLUMNS), strict=True))
        keep = np.ones(len(keys), dtype=bool)
        for i, key in enumerate(keys):
            done = self.rows.get(key)
            if done is None:
                continue
            for name, value in done.items():
                if name in out:
                    if out[name].dtype.kind in "iub" and isinstance(value, float):
                        out[name] = out[name].astype(float)
                    out[name][i] = value
            if vf is not None and vf.conditions:
                counts = (np.array([done["ALT_CT"]]), np.array([done["CALLED_CT"]]), np.array([done["MISSING_CT"]]))
                keep[i] = bool(vf.mask(*counts)[0])
        return out if keep.all() else {name: col[keep] for name, col in out.items()}
