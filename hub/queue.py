"""The hub's persistent state: enrolled stations, queued envelopes and their replies, and an event log.

One SQLite file (``hub.sqlite``, write-ahead log, every commit synchronous) holds the stations, the
messages' routing metadata and an event log; the envelopes themselves are files in ``frames/``
(``ID.task``, ``ID.reply``), each written to a temporary name (tasks also synced to disk) and renamed
before the database row that names it commits. A hub killed at any moment restarts with every queued
task and every reply not yet fetched. Envelopes are stored as they came: sealed, so that the hub's
disk holds routing metadata (ids, station names, the researchers' public keys, times, sizes) and
ciphertext, never a request, a token or a result.

A message moves ``queued`` → ``leased`` (handed to its station, back to ``queued`` if the station does
not answer within the lease) → ``replied`` (the station's sealed reply waits for its researcher) and is
deleted when the researcher acknowledges the reply, withdraws the task, or it expires.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from better.station_api.auth import secret_digest

DB_FILE = "hub.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stations (
    name TEXT PRIMARY KEY,
    credential_id TEXT NOT NULL,
    salt TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    signing_key TEXT,
    card TEXT,
    enrolled_at REAL NOT NULL,
    last_seen REAL
);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    station TEXT NOT NULL,
    sender TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    state TEXT NOT NULL,
    leased_until REAL,
    size INTEGER NOT NULL,
    replied_at REAL
);
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages (sender, state);
CREATE INDEX IF NOT EXISTS messages_by_station ON messages (station, state, created);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Delivery:
    """A queued envelope handed to its station: its id and its file."""

    id: str
    path: Path


@dataclass(frozen=True)
class Quotas:
    """What one station's queue and one researcher key may hold waiting at once."""

    per_station: int = 2000
    per_station_bytes: int = 4 << 30
    per_sender: int = 1000


class HubQueue:
    """The hub's SQLite file, used from any thread (one connection behind a lock).

    Parameters
    ----------
    hub_dir : Path
        The hub directory (``better hub init``).
    """

    def __init__(self, hub_dir: Path) -> None:
        self.path = Path(hub_dir) / DB_FILE
        self.frames = Path(hub_dir) / "frames"
        self.frames.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def clean_up(self) -> int:
        """Delete frame files no message names (left by a hub stopped between writing and committing)."""
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT id FROM messages")}
        gone = 0
        for path in self.frames.iterdir():
            if path.name.split(".")[0] not in known or path.suffix == ".tmp":
                path.unlink(missing_ok=True)
                gone += 1
        return gone

    def _frame(self, message_id: str, kind: str) -> Path:
        return self.frames / f"{message_id}.{kind}"

    def stage(self, frame: bytes, sync: bool = True) -> Path:
        """Write ``frame`` to a temporary file (outside the lock: frames can be large), synced to disk if
        ``sync``. Tasks are; replies are not: a reply lost to a power cut (not to a restart of the hub)
        costs a query that times out and is run again, where syncing every result costs each query time."""
        tmp = self.frames / f"{secrets.token_hex(16)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(frame)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _place(self, staged: Path, final: Path) -> None:
        staged.replace(final)
        dir_fd = os.open(self.frames, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- stations ------------------------------------------------------------------------------------------
    def enrol(self, station: str) -> str:
        """A fresh credential for ``station`` (replacing any earlier one and unbinding its key)."""
        credential_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        with self._tx() as db:
            db.execute(
                "INSERT INTO stations (name, credential_id, salt, sha256, enrolled_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET credential_id = excluded.credential_id, salt = excluded.salt, "
                "sha256 = excluded.sha256, signing_key = NULL, card = NULL, enrolled_at = excluded.enrolled_at",
                (station, credential_id, salt, secret_digest(salt, secret), time.time()),
            )
            self._event(db, "admin", "station.enrolled", {"station": station, "credential": credential_id})
        return f"bhc_{credential_id}_{secret}"

    def station_for(self, credential: str) -> str | None:
        """The station a credential belongs to, or None."""
        parts = credential.split("_", 2)
        if len(parts) != 3 or parts[0] != "bhc" or len(parts[1]) != 12:
            return None
        _, credential_id, secret = parts
        with self._lock:
            row = self._db.execute(
                "SELECT name, salt, sha256 FROM stations WHERE credential_id = ?", (credential_id,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[2], secret_digest(row[1], secret)):
            return None
        return str(row[0])

    def bind_key(self, station: str, key: str) -> bool:
        """Bind ``station`` to its signing key at first contact; False if it is bound to another key."""
        with self._tx() as db:
            (bound,) = db.execute("SELECT signing_key FROM stations WHERE name = ?", (station,)).fetchone()
            if bound is None:
                db.execute("UPDATE stations SET signing_key = ? WHERE name = ?", (key, station))
                self._event(db, station, "station.key_bound", {"key": key})
                return True
            return bool(bound == key)

    def signing_key(self, station: str) -> str | None:
        """The signing key ``station`` is bound to, or None (not enrolled, or not yet seen)."""
        with self._lock:
            row = self._db.execute("SELECT signing_key FROM stations WHERE name = ?", (station,)).fetchone()
        return None if row is None else row[0]

    def set_card(self, station: str, card: dict[str, Any]) -> None:
        """Keep the station's signed card (its keys, as it states them)."""
        with self._tx() as db:
            db.execute(
                "UPDATE stations SET card = ?, last_seen = ? WHERE name = ?", (json.dumps(card), time.time(), station)
            )

    def seen(self, station: str) -> None:
        with self._lock:
            self._db.execute("UPDATE stations SET last_seen = ? WHERE name = ?", (time.time(), station))

    def directory(self) -> list[dict[str, Any]]:
        """Every enrolled station: name, signed card (or None), when last seen, and messages waiting (for
        the hub's operator; researchers see names and cards only)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.name, s.card, s.last_seen, "
                "(SELECT count(*) FROM messages m WHERE m.station = s.name AND m.state != 'replied') "
                "FROM stations s ORDER BY s.name"
            ).fetchall()
        return [
            {"name": n, "card": json.loads(c) if c else None, "last_seen": seen, "waiting": waiting}
            for n, c, seen, waiting in rows
        ]

    # -- messages ------------------------------------------------------------------------------------------
    def enqueue(
        self, message_id: str, station: str, sender: str, expires: float, frame: bytes, quotas: Quotas
    ) -> str | None:
        """Queue an envelope; the reason it is refused (``duplicate``, ``queue_full``, ``sender_quota``,
        ``unknown_station``), or None."""
        staged = self.stage(frame)
        try:
            with self._tx() as db:
                if db.execute("SELECT 1 FROM stations WHERE name = ?", (station,)).fetchone() is None:
                    return "unknown_station"
                if db.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone() is not None:
                    return "duplicate"
                waiting, waiting_bytes = db.execute(
                    "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE station = ? AND state != 'replied'",
                    (station,),
                ).fetchone()
                if waiting >= quotas.per_station or waiting_bytes + len(frame) > quotas.per_station_bytes:
                    return "queue_full"
                (mine,) = db.execute(
                    "SELECT count(*) FROM messages WHERE sender = ? AND state != 'replied'", (sender,)
                ).fetchone()
                if mine >= quotas.per_sender:
                    return "sender_quota"
                self._place(staged, self._frame(message_id, "task"))
                db.execute(
                    "INSERT INTO messages (id, station, sender, created, expires, state, size) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                    (message_id, station, sender, time.time(), expires, len(frame)),
                )
                self._event(db, sender, "message.queued", {"id": message_id, "station": station, "bytes": len(frame)})
            return None
        finally:
            staged.unlink(missing_ok=True)

    def lease(self, station: str, lease_seconds: float, max_bytes: int, fresh: bool = False) -> list[Delivery]:
        """Hand ``station`` its waiting envelopes (oldest first, up to ``max_bytes`` but at least one),
        leased for ``lease_seconds``. ``fresh``: the station just started and holds nothing, so its earlier
        leases end now."""
        now = time.time()
        with self._tx() as db:
            if fresh:
                db.execute("UPDATE messages SET state = 'queued' WHERE station = ? AND state = 'leased'", (station,))
            rows = db.execute(
                "SELECT id, size FROM messages WHERE station = ? AND expires > ? AND "
                "(state = 'queued' OR (state = 'leased' AND leased_until < ?)) ORDER BY created LIMIT 64",
                (station, now, now),
            ).fetchall()
            taken: list[str] = []
            total = 0
            for message_id, size in rows:
                if taken and total + size > max_bytes:
                    break
                taken.append(str(message_id))
                total += size
            for message_id in taken:
                db.execute(
                    "UPDATE messages SET state = 'leased', leased_until = ? WHERE id = ?",
                    (now + lease_seconds, message_id),
                )
            db.execute("UPDATE stations SET last_seen = ? WHERE name = ?", (now, station))
            if taken:
                self._event(db, station, "message.delivered", {"ids": taken})
        return [Delivery(i, self._frame(i, "task")) for i in taken]

    def reply(self, message_id: str, station: str, frame: bytes) -> bool:
        """Store the station's reply (its task's frame is deleted); False if no such task of it waits."""
        staged = self.stage(frame, sync=False)
        try:
            with self._tx() as db:
                done = db.execute(
                    "UPDATE messages SET state = 'replied', replied_at = ? "
                    "WHERE id = ? AND station = ? AND state != 'replied'",
                    (time.time(), message_id, station),
                ).rowcount
                if done:
                    self._place(staged, self._frame(message_id, "reply"))
                    self._event(db, station, "message.replied", {"id": message_id, "bytes": len(frame)})
        finally:
            staged.unlink(missing_ok=True)
        if done:
            self._frame(message_id, "task").unlink(missing_ok=True)
        return bool(done)

    def sender(self, message_id: str) -> str | None:
        """Who queued a message (its researcher's key), or None if there is no such message."""
        with self._lock:
            row = self._db.execute("SELECT sender FROM messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else str(row[0])

    def reply_path(self, message_id: str) -> Path | None:
        """The file of the reply to a message, if it came."""
        with self._lock:
            row = self._db.execute("SELECT state FROM messages WHERE id = ?", (message_id,)).fetchone()
        return self._frame(message_id, "reply") if row is not None and row[0] == "replied" else None

    def remove(self, message_id: str, who: str, action: str) -> bool:
        """Delete a message and its files (its reply acknowledged, or the task withdrawn)."""
        with self._tx() as db:
            gone = db.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount
            if gone:
                self._event(db, who, action, {"id": message_id})
        if gone:
            for kind in ("task", "reply"):
                self._frame(message_id, kind).unlink(missing_ok=True)
        return bool(gone)

    def expire(self, reply_ttl: float, keep_events: int = 100_000) -> int:
        """Delete expired tasks, replies nobody fetched within ``reply_ttl`` seconds, and all but the last
        ``keep_events`` events."""
        now = time.time()
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM messages WHERE (state != 'replied' AND expires < ?) "
                    "OR (state = 'replied' AND replied_at < ?)",
                    (now, now - reply_ttl),
                )
            ]
            db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            if ids:
                self._event(db, "hub", "message.expired", {"count": len(ids)})
            db.execute("DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - ?", (keep_events,))
        for message_id in ids:
            for kind in ("task", "reply"):
                self._frame(message_id, kind).unlink(missing_ok=True)
        return len(ids)

    def counts(self) -> dict[str, int]:
        """Messages by state."""
        with self._lock:
            return {s: int(n) for s, n in self._db.execute("SELECT state, count(*) FROM messages GROUP BY state")}

    # -- events --------------------------------------------------------------------------------------------
    def log(self, who: str, action: str, detail: dict[str, Any]) -> None:
        """Write one event (what the hub refused, and why)."""
        with self._tx() as db:
            self._event(db, who, action, detail)

    def events(self, last: int = 50) -> list[dict[str, Any]]:
        """The last ``last`` events, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, who, action, detail FROM events ORDER BY seq DESC LIMIT ?", (last,)
            ).fetchall()
        return [
            {"seq": s, "at": at, "who": w, "action": a, "detail": json.loads(d)} for s, at, w, a, d in reversed(rows)
        ]

    @staticmethod
    def _event(db: sqlite3.Connection, who: str, action: str, detail: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO events (at, who, action, detail) VALUES (?, ?, ?, ?)",
            (time.time(), who[:200], action, json.dumps(detail, sort_keys=True)),
        )
