"""A round's station half in pieces: each part of the store's variants computed alone, then combined.

A station whose variants are spread over many workers (a Dask cluster, see :mod:`better.station_api.executor`)
runs a kind's :class:`~better.engine.rounds.Split` once per part and combines the pieces here. The
combination is the same whatever the parts: rows are concatenated in the store's order and sums added,
so a station's result does not depend on how its work was spread (to the bit for per-variant rows; sums
over variants, PCA's, differ only in the order of their additions). The tests check each split against
its kind's ``execute`` on random parts (:func:`run_in_pieces`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from better.engine.rounds import Result, Split, StationData, Task


def whole(execute: Callable[[Task, StationData], Result]) -> Callable[[Task, StationData, Result], Result]:
    """A piece that is the kind's whole station half run on the part (a pass of one variant at a time)."""

    def piece(task: Task, data: StationData, before: Result) -> Result:
        return execute(task, data)

    return piece


def passes(split: Split) -> list[Split]:
    """A split's passes over the parts, in order.

    >>> one = Split(whole(lambda task, data: {}), then=Split(whole(lambda task, data: {})))
    >>> len(passes(one))
    2
    """
    out = [split]
    while out[-1].then is not None:
        out.append(out[-1].then)
    return out


def combine(split: Split, pieces: Sequence[Result]) -> Result:
    """One pass' pieces combined, in the parts' order: rows concatenated, sums added, the rest kept once.
    A piece of rows that read no variant is left out (unless all are).

    Combining is associative, so pieces may be combined in a tree (pairs of neighbours first).

    >>> s = Split(whole(lambda task, data: {}), rows=("x",), sums=("t",))
    >>> a = {"key_pos": np.array([1]), "x": np.array([10.0]), "t": np.array(1.0), "n": np.array(5)}
    >>> b = {"key_pos": np.array([2, 3]), "x": np.array([20.0, 30.0]), "t": np.array(2.0), "n": np.array(5)}
    >>> c = combine(s, [a, b])
    >>> c["key_pos"].tolist(), c["x"].tolist(), float(c["t"]), int(c["n"])
    ([1, 2, 3], [10.0, 20.0, 30.0], 3.0, 5)
    """
    if not pieces:
        raise ValueError("no pieces to combine")
    # a part with no variant of the task (row-group statistics may keep one) adds nothing; its empty key
    # columns have no type or labels to follow
    read = [p for p in pieces if "key_pos" not in p or np.asarray(p["key_pos"]).shape[0]]
    pieces = read or pieces[:1]
    first = pieces[0]
    out: Result = {}
    for name, value in first.items():
        if name.startswith("key_") or name in split.rows:
            out[name] = np.concatenate([np.asarray(p[name]) for p in pieces])
        elif name in split.sums:
            total = np.array(value, copy=True)
            for p in pieces[1:]:
                total = total + p[name]
            out[name] = total
        else:
            out[name] = value
    return out


def run_in_pieces(split: Split, task: Task, parts: Sequence[StationData], station: StationData) -> Result:
    """A split run serially over ``parts`` (each a :class:`StationData` holding some of the variants) and
    finished on ``station`` (the whole station's data): what an executor computes, without the workers."""
    before: Result = {}
    for step in passes(split):
        before = combine(step, [step.piece(task, part, before) for part in parts])
    return split.finish(task, station, before) if split.finish is not None else before
