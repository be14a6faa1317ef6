"""The station half of PCA: products with a basis, and the scores kept here.

A station standardises its genotypes of the task's variants (:mod:`better.engine.kernels.standardized`)
1,024 variants at a time, so that the products run as BLAS matrix products and memory stays bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from better.engine.accelerate import set_threads
from better.engine.design import KEY_COLUMNS, Block, Targets
from better.engine.errors import InputError
from better.engine.kernels.standardized import missing_per_sample, standardized_rows
from better.engine.rounds import Result, StationData, Task

#: Variants standardised at once (a block of 1,024 x 10,000 samples is 80 MB of float64).
CHUNK = 1024
#: A name the scores are stored under: an identifier, short enough for ``name50``.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,29}")
#: What the scores round releases per PC besides the count, summed over people ``j`` with ``u`` the
#: score, ``d`` the sum of squared standardised genotypes, ``m`` the missing calls, ``M`` the variants:
#: the centre turns them into PLINK's default eigenvalues (:func:`better.engine.analyses.pca.centre.plink_eigenvalues`).
MOMENTS = ("u2d", "u2d_over_called", "u2m", "u2md", "u2mm", "u2mmd")


def selected(data: StationData, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """The task's variants at this station: their packed rows ``(found, bytes)`` and their row in the task
    (a variant this station lacks is not among them: all its people are missing there, i.e. at the mean)."""
    columns = [np.asarray(task[f"key_{c}"]).tolist() for c in KEY_COLUMNS]
    wanted = {key: i for i, key in enumerate(zip(*columns, strict=True))}
    targets: Targets | None = {c: np.asarray(task[f"key_{c}"]) for c in KEY_COLUMNS} if len(wanted) <= 256 else None
    packed: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for b in data.blocks(targets):
        at = _rows_of(b, wanted)
        found = at >= 0
        if found.any():
            packed.append(np.ascontiguousarray(b.packed[found]))
            rows.append(at[found])
    if not packed:
        width = (data.design.include.shape[0] + 3) // 4
        return np.zeros((0, width), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return np.concatenate(packed), np.concatenate(rows)


def _rows_of(block: Block, wanted: dict[tuple[Any, ...], int]) -> np.ndarray:
    keys = zip(*(block.keys[c].tolist() for c in KEY_COLUMNS), strict=True)
    return np.fromiter((wanted.get(k, -1) for k in keys), dtype=np.int64, count=block.packed.shape[0])


def _chunks(rows: np.ndarray) -> list[np.ndarray]:
    return [np.arange(a, min(a + CHUNK, rows.shape[0])) for a in range(0, rows.shape[0], CHUNK)]


def _blas_threads() -> Any:
    """BLAS gets the station's share of threads (Numba's), not every core: stations sharing a machine
    would otherwise each spin a thread per core."""
    return threadpool_limits(limits=set_threads(None), user_api="blas")


def _standardized(
    packed: np.ndarray, rows: np.ndarray, task: Task, include: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The task rows of each chunk and their standardised genotypes, in one reused buffer (each chunk
    overwrites the last), with BLAS at the station's share of threads meanwhile."""
    mean, scale = np.asarray(task["mean"]), np.asarray(task["scale"])
    buffer = np.empty(min(CHUNK, rows.shape[0]) * include.shape[0])
    with _blas_threads():
        for part in _chunks(rows):
            r = rows[part]
            yield r, standardized_rows(packed, part, mean[r], scale[r], include, buffer)


def station_scores(
    data: StationData, task: Task, basis: np.ndarray, squares: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This station's people's scores ``X_s basis`` ``(samples, b)`` (0 for people not included), their
    sums of squared standardised genotypes (if ``squares``), and the packed rows and task rows they came
    from."""
    packed, rows = selected(data, task)
    include = np.ascontiguousarray(data.design.include, dtype=np.bool_)
    scores = np.zeros((include.shape[0], basis.shape[1]))
    sums = np.zeros(include.shape[0])
    for r, x in _standardized(packed, rows, task, include):
        scores += x.T @ basis[r]
        if squares:
            sums += np.einsum("vi,vi->i", x, x)
    return scores, sums, packed, rows


def product_station(task: Task, data: StationData) -> Result:
    """``X_s'(X_s Q)`` ``(rows, b)`` for the task's basis ``Q``: the scores stay here, their products with
    the genotypes leave (a sum over this station's people per variant)."""
    basis = np.asarray(task["basis"], dtype=np.float64)
    scores, _, packed, rows = station_scores(data, task, basis)
    return {"product": _products(packed, rows, task, data, scores, basis.shape)}


def _products(
    packed: np.ndarray, rows: np.ndarray, task: Task, data: StationData, scores: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """``X'scores`` on the task's rows found in ``packed`` (0 on the others)."""
    include = np.ascontiguousarray(data.design.include, dtype=np.bool_)
    product = np.zeros(shape)
    for r, x in _standardized(packed, rows, task, include):
        product[r] = x @ scores
    return product


def partial_scores(task: Task, data: StationData, before: Result) -> Result:
    """A part of the store's share of the scores ``X_s Q`` (the first pass of a product in pieces)."""
    scores, _, _, _ = station_scores(data, task, np.asarray(task["basis"], dtype=np.float64))
    return {"scores": scores}


def partial_products(task: Task, data: StationData, before: Result) -> Result:
    """A part of the store's share of the product, given every part's scores (the second pass)."""
    packed, rows = selected(data, task)
    basis_shape = np.asarray(task["basis"]).shape
    return {"product": _products(packed, rows, task, data, np.asarray(before["scores"]), basis_shape)}


def _scores_task(task: Task) -> tuple[str, np.ndarray, np.ndarray]:
    """The scores round's name, loadings and divisors, checked."""
    name = str(np.asarray(task["name"]).reshape(-1)[0])
    if name and not NAME_PATTERN.fullmatch(name):
        raise InputError(f"scores are stored under a name of letters, digits and _ (up to 30), not {name[:40]!r}")
    divisor = np.asarray(task["divisor"], dtype=np.float64)
    if np.any(divisor <= 0):
        raise InputError("task state: the divisors of the scores must be positive")
    return name, np.asarray(task["basis"], dtype=np.float64), divisor


def scores_sums(task: Task, data: StationData, before: Result) -> Result:
    """Per person, over the part's variants of the task: scores, sums of squared standardised genotypes
    and missing calls; and how many of the task's variants the part holds."""
    _, basis, _ = _scores_task(task)
    scores, squares, packed, rows = station_scores(data, task, basis, squares=True)
    missing = missing_per_sample(packed, data.design.include.shape[0])
    return {"scores": scores, "squares": squares, "missing": missing, "found": np.array(rows.shape[0])}


def scores_finish(task: Task, data: StationData, sums: Result) -> Result:
    """The scores round's release from its sums over the station's variants (:func:`scores_sums`): the
    scores are stored here, the number of people scored and the :data:`MOMENTS` leave."""
    name, _, divisor = _scores_task(task)
    scores = np.asarray(sums["scores"]) / divisor
    if not np.all(np.isfinite(scores)):
        raise InputError("task state: these loadings give scores that are not finite numbers")
    include = np.asarray(data.design.include, dtype=bool)
    n_rows = int(np.asarray(task["key_pos"]).shape[0])
    missing = np.asarray(sums["missing"]) + (n_rows - int(sums["found"]))  # lacked here: missing
    u2 = scores[include] ** 2
    d, m = np.asarray(sums["squares"])[include], missing[include].astype(np.float64)
    called = np.maximum(n_rows - m, 1.0)
    moments = np.stack([u2.T @ d, u2.T @ (d / called), u2.T @ m, u2.T @ (m * d), u2.T @ (m * m), u2.T @ (m * m * d)])
    if name:
        scores[~include] = np.nan
        data.save_covariates(name, scores)
    return {"n": np.array(int(include.sum())), "moments": moments}


def scores_station(task: Task, data: StationData) -> Result:
    """Each included person's scores ``X_s y / sqrt(theta)`` on the task's loadings, stored here as
    covariates ``name1..namek`` (if the task names them); the number of people scored and, per PC, the
    :data:`MOMENTS` leave."""
    return scores_finish(task, data, scores_sums(task, data, {}))
