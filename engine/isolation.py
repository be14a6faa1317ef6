"""Can answered sample sets be combined to single out fewer than ``k`` people?

Every number a station releases is a sum over a set of people. Anyone holding the answers for sets
``S_1 .. S_m`` can form any linear combination ``sum_j c_j * answer_j``: the sum over people weighted by
``v = sum_j c_j 1[S_j]``. If some nonzero ``v`` is supported on ``1 .. k-1`` people, those people's
values come out (``COUNT age<=a + COUNT age>=a - COUNT all`` is the classic tracker). This module decides,
exactly, whether the span of the answered sets holds such a vector.

People are grouped into **atoms**: people who are in exactly the same answered sets. Every vector in the
span is constant on an atom, so its support is a union of atoms, and only the atoms' sizes matter. An
atom of ``k`` people or more can never be part of a small support; so the question is whether the span
holds a nonzero vector that vanishes on every large atom and touches small atoms of fewer than ``k``
people in all. That is a finite search over at most ``k - 1`` small atoms, decided with exact rational
arithmetic (no rounding can hide a combination).

This module does no I/O; the station keeps the atoms (:mod:`better.station_api.query_audit`).

Examples
--------
Three sets over atoms ``{age < a}`` (40 people), ``{age = a}`` (1), ``{age > a}`` (50):

>>> import numpy as np
>>> le, ge, everyone = [1, 1, 0], [0, 1, 1], [1, 1, 1]
>>> sizes = np.array([40, 1, 50])
>>> isolation_check(np.array([le, ge]).T, sizes, 5).safe
True
>>> isolation_check(np.array([le, ge, everyone]).T, sizes, 5).safe
False
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: Small atoms that may take part in a combination, at most: beyond this the search is not attempted and
#: the answer is "not provably safe" (a refusal errs on the patient's side).
MAX_SMALL_ATOMS = 32

Matrix = list[list[Fraction]]


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`isolation_check`.

    ``safe``: no combination of the sets is supported on ``1 .. k-1`` people. ``reason`` when not safe:
    ``"isolates"`` (such a combination exists; ``atoms`` are the atoms of one) or ``"too_complex"`` (more
    small atoms than the search takes; refused without proof either way).
    """

    safe: bool
    reason: str = ""
    atoms: tuple[int, ...] = ()


def isolation_check(membership: np.ndarray, sizes: np.ndarray, k: int) -> Verdict:
    """Whether the span of the sets holds a nonzero vector supported on fewer than ``k`` people.

    Parameters
    ----------
    membership
        ``(atoms, sets)`` booleans: atom ``a`` is in set ``j``.
    sizes
        ``(atoms,)`` people per atom (atoms of size 0 may be given; they never count).
    k
        The smallest number of people a released combination may describe (``min_cell_count``).

    Returns
    -------
    Verdict
        ``safe`` when no such vector exists.

    Examples
    --------
    Two sets differing by one person:

    >>> import numpy as np
    >>> isolation_check(np.array([[1, 1], [1, 0]]), np.array([20, 1]), 5)
    Verdict(safe=False, reason='isolates', atoms=(1,))
    """
    member = np.asarray(membership, dtype=bool)
    size = np.asarray(sizes, dtype=np.int64)
    if member.ndim != 2 or size.shape != (member.shape[0],):
        raise ValueError(f"membership {member.shape} and sizes {size.shape} do not match")
    if k <= 1 or member.shape[1] == 0:
        return Verdict(True)
    present = (size > 0) & member.any(axis=1)  # an atom in no set is zero in every combination
    member, size = member[present], size[present]
    atom_ids = np.flatnonzero(present)
    small = size < k
    if not small.any():
        return Verdict(True)
    sets = np.unique(member, axis=1)  # a set given twice adds nothing to the span
    # Combinations that vanish on every large atom: lambda with sum_j lambda_j [a in S_j] = 0 there.
    large_rows = np.unique(sets[~small], axis=0) if (~small).any() else np.zeros((0, sets.shape[1]), bool)
    lam = nullspace(_fractions(large_rows), sets.shape[1])
    if not lam:
        return Verdict(True)
    # Their values on the small atoms span U: row i holds combination i's value on each small atom.
    small_rows = sets[small]
    values = [[sum((v[j] for j in np.flatnonzero(row)), Fraction(0)) for row in small_rows] for v in lam]
    basis, _ = rref(values)
    if not basis:
        return Verdict(True)
    active = [i for i in range(len(small_rows)) if any(row[i] != 0 for row in basis)]
    weights = size[small]
    if len(active) > MAX_SMALL_ATOMS:
        return Verdict(False, "too_complex")
    # x in U <=> x is orthogonal to null(basis); x supported on T <=> the rows T of that null basis are
    # linearly dependent.
    perp = nullspace([[row[i] for i in active] for row in basis], len(active))
    ys = [[vec[t] for vec in perp] for t in range(len(active))]
    for chosen in _light_subsets([int(weights[i]) for i in active], k - 1):
        if rank([ys[t] for t in chosen]) < len(chosen):
            small_ids = np.flatnonzero(small)
            return Verdict(False, "isolates", tuple(int(atom_ids[small_ids[active[t]]]) for t in chosen))
    return Verdict(True)


def _light_subsets(weights: Sequence[int], budget: int) -> Iterator[tuple[int, ...]]:
    """Index subsets whose weights sum to at most ``budget``, smallest first (sizes 1, 2, ...)."""
    order = sorted(range(len(weights)), key=lambda i: weights[i])
    for size in range(1, budget + 1):
        yield from _subsets_of_size(order, weights, size, budget, 0, ())


def _subsets_of_size(
    order: list[int], weights: Sequence[int], size: int, budget: int, start: int, chosen: tuple[int, ...]
) -> Iterator[tuple[int, ...]]:
    if size == 0:
        yield chosen
        return
    for pos in range(start, len(order)):
        i = order[pos]
        if weights[i] * size > budget:  # sorted ascending: every later one is as heavy at least
            return
        yield from _subsets_of_size(order, weights, size - 1, budget - weights[i], pos + 1, (*chosen, i))


# -- exact rational linear algebra on small matrices ------------------------------------------------------
def _fractions(a: np.ndarray) -> Matrix:
    return [[Fraction(int(x)) for x in row] for row in np.asarray(a, dtype=np.int64)]


def transpose(rows: Matrix, n_cols: int) -> Matrix:
    """The transpose of a ``len(rows) x n_cols`` matrix (``n_cols`` given so that no rows is fine)."""
    return [[rows[i][j] for i in range(len(rows))] for j in range(n_cols)]


def rref(rows: Matrix) -> tuple[Matrix, list[int]]:
    """Reduced row echelon form (nonzero rows only) and the pivot columns.

    >>> from fractions import Fraction as F
    >>> rref([[F(2), F(4)], [F(1), F(2)]])
    ([[Fraction(1, 1), Fraction(2, 1)]], [0])
    """
    a = [list(r) for r in rows]
    if not a:
        return [], []
    n = len(a[0])
    pivots: list[int] = []
    r = 0
    for c in range(n):
        p = next((i for i in range(r, len(a)) if a[i][c] != 0), None)
        if p is None:
            continue
        a[r], a[p] = a[p], a[r]
        inv = 1 / a[r][c]
        a[r] = [x * inv for x in a[r]]
        for i in range(len(a)):
            if i != r and a[i][c] != 0:
                f = a[i][c]
                a[i] = [x - f * y for x, y in zip(a[i], a[r], strict=True)]
        pivots.append(c)
        r += 1
        if r == len(a):
            break
    return a[:r], pivots


def rank(rows: Matrix) -> int:
    """Exact rank of a small rational matrix."""
    return len(rref(rows)[0]) if rows and rows[0] else 0


def nullspace(rows: Matrix, n_cols: int) -> Matrix:
    """A basis (list of vectors of length ``n_cols``) of ``{x : rows @ x = 0}``.

    >>> from fractions import Fraction as F
    >>> nullspace([[F(1), F(1)]], 2)
    [[Fraction(-1, 1), Fraction(1, 1)]]
    >>> len(nullspace([], 3))
    3
    """
    reduced, pivots = rref(rows) if rows else ([], [])
    free = [c for c in range(n_cols) if c not in pivots]
    basis = []
    for f in free:
        v = [Fraction(0)] * n_cols
        v[f] = Fraction(1)
        for row, p in zip(reduced, pivots, strict=True):
            v[p] = -row[f]
        basis.append(v)
    return basis
