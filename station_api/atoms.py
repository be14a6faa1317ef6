"""The people a station has answered about, grouped into atoms of identical set membership.

Each recorded sample set is a **column**; each person's row of memberships is their pattern; people with
the same pattern form an **atom**. The partition keeps, per atom, its pattern and its size (pooled over a
group of stations, or this station's own), and per person (a station-wide person number) the atom they
are in, ``-1`` for people in no recorded set. A new query's sets **refine** it: each atom splits by
membership in the new sets, and the sizes of the parts come from counts (this station's, or the sum of
every group member's: :meth:`Partition.refine`). Stations of a group that refine with the same counts
hold the same atoms, which a digest chain confirms.

:func:`better.engine.isolation.isolation_check` then decides on the atoms whether the answered columns can be
combined to single out fewer than ``k`` people.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from better.engine.isolation import Verdict, isolation_check

#: Atoms a partition may hold; a refinement beyond it is refused (errs on the patient's side).
MAX_ATOMS = 4096
#: Columns (distinct sample sets) a partition may hold.
MAX_COLUMNS = 4096
GENESIS = hashlib.sha256(b"better audit partition v1").hexdigest()


@dataclass(frozen=True)
class Partition:
    """Atoms over recorded sample sets; immutable (a refinement returns a new one).

    Attributes
    ----------
    person_atom
        ``(persons,)`` int32 atom of each person, -1 if in no column; people registered after the last
        refinement are beyond the end (in no column).
    bits
        ``(atoms, columns)`` bool membership of each atom.
    size
        ``(atoms,)`` int64 people per atom.
    columns
        Column ids (the query round that recorded the set).
    answered
        ``(columns,)`` bool: this station released statistics over that set.
    digest
        Hash chain over every refinement (ids and counts), equal at stations that refined alike.
    """

    person_atom: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    bits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    size: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    columns: tuple[str, ...] = ()
    answered: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    digest: str = GENESIS

    @property
    def n_atoms(self) -> int:
        return int(self.size.shape[0])

    def atoms_of(self, n_persons: int) -> np.ndarray:
        """Atom of each of ``n_persons`` people; the index ``n_atoms`` stands for "in no column"."""
        out = np.full(n_persons, self.n_atoms, dtype=np.int64)
        known = min(n_persons, self.person_atom.shape[0])
        own = self.person_atom[:known].astype(np.int64)
        out[:known] = np.where(own >= 0, own, self.n_atoms)
        return out

    def _combos(self, members: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Each person's atom and combination of new-set memberships (bit ``j``: in set ``j``); people
        registered after ``members`` was taken are in none of the new sets."""
        n = max([self.person_atom.shape[0], *(m.shape[0] for m in members)])
        combo = np.zeros(n, dtype=np.int64)
        for j, m in enumerate(members):
            combo[: m.shape[0]] |= m.astype(np.int64) << j
        return self.atoms_of(n), combo

    def counts(self, members: list[np.ndarray]) -> np.ndarray:
        """This station's people per (atom or "no column", combination of the new sets).

        ``members``: one ``(persons,)`` bool array per new set. Returns ``(atoms + 1, 2 ** sets)`` int64;
        combination ``c`` has bit ``j`` set when the person is in new set ``j``. People in no column and
        in no new set are not counted (nobody needs their number).
        """
        atom, combo = self._combos(members)
        out = np.zeros((self.n_atoms + 1, 1 << len(members)), dtype=np.int64)
        np.add.at(out, (atom, combo), 1)
        out[self.n_atoms, 0] = 0
        return out

    def matches(self, member: np.ndarray) -> list[int]:
        """Columns whose membership, over this station's people, equals ``member``."""
        atom, _ = self._combos([member])
        wanted = np.zeros(atom.shape[0], dtype=bool)
        wanted[: member.shape[0]] = member
        inside = np.zeros(self.n_atoms + 1, dtype=bool)
        out = []
        for j in range(len(self.columns)):
            inside[:-1] = self.bits[:, j]
            if np.array_equal(inside[atom], wanted):
                out.append(j)
        return out

    def refine(self, ids: list[str], members: list[np.ndarray], counts: np.ndarray) -> Partition:
        """Split every atom by membership in the new sets ``members`` (recorded as columns ``ids``).

        ``counts`` is :meth:`counts` summed over the stations whose atoms these are (for a station alone,
        its own). Parts nobody is in are dropped; the new columns start unanswered.
        """
        r = len(members)
        a = self.n_atoms
        if counts.shape != (a + 1, 1 << r):
            raise ValueError(f"refinement counts {counts.shape} do not fit {a} atoms and {r} sets")
        if a and not np.array_equal(counts[:a].sum(axis=1), self.size):
            raise ValueError("refinement counts do not add up to the atoms' sizes")
        combos = (np.arange(1 << r)[:, None] >> np.arange(r)[None, :]) & 1
        parent = np.repeat(np.arange(a + 1), 1 << r)
        combo = np.tile(np.arange(1 << r), a + 1)
        keep = (counts.reshape(-1) > 0) & ~((parent == a) & (combo == 0))
        new_index = np.full((a + 1) * (1 << r), -1, dtype=np.int64)
        new_index[keep] = np.arange(int(keep.sum()))
        old_bits = np.vstack([self.bits, np.zeros((1, self.bits.shape[1]), dtype=bool)])
        bits = np.hstack([old_bits[parent[keep]], combos[combo[keep]].astype(bool)])
        atom, person_combo = self._combos(members)
        flat = atom * (1 << r) + person_combo
        person_atom = new_index[flat].astype(np.int32)
        chain = hashlib.sha256(
            f"{self.digest}\n{'|'.join(ids)}\n".encode() + np.ascontiguousarray(counts, dtype="<i8").tobytes()
        ).hexdigest()
        return Partition(
            person_atom=person_atom,
            bits=bits,
            size=counts.reshape(-1)[keep].astype(np.int64),
            columns=(*self.columns, *ids),
            answered=np.concatenate([self.answered, np.zeros(r, dtype=bool)]),
            digest=chain,
        )

    def check(self, columns: list[int], k: int) -> Verdict:
        """Whether answering ``columns`` too (besides those already answered) keeps every combination of
        the answered sets at ``k`` people or more."""
        answered = self.answered.copy()
        answered[columns] = True
        return isolation_check(self.bits[:, answered], self.size, k)

    def with_answered(self, columns: list[int]) -> Partition:
        answered = self.answered.copy()
        answered[columns] = True
        return replace(self, answered=answered)

    def column_sizes(self, columns: list[int]) -> list[int]:
        """People in each of ``columns`` (pooled where the sizes are)."""
        return [int(self.size[self.bits[:, j]].sum()) for j in columns]
