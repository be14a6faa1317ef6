"""The query ledger: which sample sets each user has had statistics on, to stop differencing attacks.

Two answers about sample sets that differ by one person give that person's data by subtraction (a count,
a sum, a regression's sufficient statistics). The ledger keeps, per user and dataset, every distinct
sample set a task was accepted for (a bitset), and refuses a new set that differs from a recorded one by
1 to ``min_cell_count - 1`` samples. The refusal says which rule, never the number. The bitsets live in
the catalog (table ``ledger``), so a restart forgets nothing.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from genomics.store import Store
from station_api.policy import PolicyRefusalError

_SQL = """
CREATE TABLE IF NOT EXISTS ledger (
    user_name VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    n_samples INTEGER NOT NULL,
    digest VARCHAR NOT NULL,
    bits BLOB NOT NULL,
    PRIMARY KEY (user_name, dataset, digest)
)
"""


class QueryLedger:
    """Check and record the sample sets of accepted tasks."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sets: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()
        with store.catalog() as con:
            con.execute(_SQL)

    def _load(self, user: str, dataset: str) -> dict[str, np.ndarray]:
        key = (user, dataset)
        if key not in self._sets:
            with self.store.catalog() as con:
                rows = con.execute(
                    "SELECT digest, bits, n_samples FROM ledger WHERE user_name = ? AND dataset = ?", [user, dataset]
                ).fetchall()
            self._sets[key] = {
                d: np.unpackbits(np.frombuffer(b, np.uint8), count=int(n)).astype(bool) for d, b, n in rows
            }
        return self._sets[key]

    def admit(self, user: str, dataset: str, include: np.ndarray, min_difference: int) -> None:
        """Refuse ``include`` if it is within ``1 .. min_difference - 1`` samples of a set ``user`` had
        before; otherwise record it."""
        packed = np.packbits(include.astype(bool))
        digest = hashlib.sha256(packed.tobytes() + str(include.size).encode()).hexdigest()
        with self._lock:
            known = self._load(user, dataset)
            if digest in known:
                return
            for earlier in known.values():
                if earlier.size == include.size:
                    differ = int(np.count_nonzero(earlier != include))
                    if 0 < differ < min_difference:
                        raise PolicyRefusalError(
                            "differencing_guard",
                            "this task's samples differ from those of one of your earlier tasks at this station "
                            "by too few people: comparing the two would describe them. Use the same sample "
                            "filter and covariates as before, or one that differs by more people",
                        )
            with self.store.catalog() as con:
                con.execute(
                    "INSERT OR IGNORE INTO ledger VALUES (?, ?, ?, ?, ?)",
                    [user, dataset, int(include.size), digest, packed.tobytes()],
                )
            known[digest] = include.astype(bool).copy()
