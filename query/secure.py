"""The coordinator's part of secure aggregation: one session per query run, its rounds and variant lists.

A :class:`SecureSession` numbers the query's rounds (every round gets fresh masks), names the
participants with their agreement keys, and holds the shared row lists: before the first round with
per-variant arrays, a ``variant_keys`` round asks each station for its variants, and every later round
of that query lays its arrays on their union (targets likewise). Stations that leave the query (a dropout)
start a new session: masks are never shared across participant sets.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from better.engine.design import KEY_COLUMNS
from better.engine.key_union import union_keys
from better.wire.messages import Participant, Secure

#: Stations secure aggregation needs at the least: with two, each could subtract its own share from the
#: sum and read the other's.
MIN_STATIONS = 3

Rows = dict[str, np.ndarray]


@dataclass
class SecureSession:
    """Masks for one run of one query over fixed participants ``(name, agreement key)``."""

    participants: list[tuple[str, str]]
    session: str = field(default_factory=lambda: secrets.token_hex(16))
    rounds: int = 0
    _shared: dict[tuple[object, ...], Rows] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Held for each sealed round: a session's sealed rounds run one after the other.
    sealing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def next_round(self) -> Secure:
        """The ``secure`` block of the next round (a new round number, so new masks)."""
        spec = Secure(
            session=self.session,
            round=self.rounds,
            participants=[Participant(name=n, agreement_key=k) for n, k in self.participants],
        )
        self.rounds += 1
        return spec

    async def shared_rows(
        self,
        scope: tuple[object, ...],
        fetch: Callable[[], Awaitable[list[dict[str, np.ndarray]]]],
        columns: tuple[str, ...] = KEY_COLUMNS,
    ) -> Rows:
        """The union of the stations' rows (variants or targets) over ``scope``, fetched once."""
        async with self._lock:
            if scope not in self._shared:
                keys = await fetch()
                self._shared[scope] = union_keys([{c: r[f"key_{c}"] for c in columns} for r in keys], columns).keys
            return self._shared[scope]
