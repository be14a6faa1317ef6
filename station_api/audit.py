"""The station's audit log: append-only, hash-chained, one JSON object a line.

Every row carries ``hash = sha256(seq, time, actor, action, detail, prev_hash)``, so editing a row breaks
its own hash and deleting one breaks the chain after it. The newest ``(seq, hash)`` is also written to
``audit.head``, so that deleting the newest rows shows too. Someone who can rewrite both files can
rewrite history: copy the head (``better station audit --verify`` prints it) somewhere they cannot, such
as the hospital's log server, to pin it.

The log is a file beside the catalog (``audit.jsonl``), not a catalog table: an append is a locked write
of one line (microseconds, and safe between the server and the CLI), where a DuckDB transaction costs
tens of milliseconds and holds the catalog's file lock. The catalog has a view ``audit`` over the file,
so administrators query it with SQL like the rest.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from better.genomics.store import Store

LOG_FILE = "audit.jsonl"
HEAD_FILE = "audit.head"
GENESIS = "0" * 64
FIELDS = ("seq", "logged_at", "actor", "action", "detail", "prev_hash", "hash")


def row_hash(seq: int, at: str, actor: str, action: str, detail: str, prev_hash: str) -> str:
    """The chained hash of one audit row (``detail`` as its canonical JSON text)."""
    return hashlib.sha256(json.dumps([seq, at, actor, action, detail, prev_hash]).encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    """The outcome of :meth:`AuditLog.verify`: ``ok``, the rows checked, and the first problem found."""

    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    problem: str = ""


class AuditLog:
    """Append to, read and verify a station's audit log."""

    _lock = threading.Lock()  # threads of this process; fcntl.flock orders processes

    def __init__(self, store: Store) -> None:
        self.store = store
        self.path = Path(store.path) / LOG_FILE
        self.head_path = Path(store.path) / HEAD_FILE
        #: Set when an append found the log's tail not matching its head (rows deleted, a torn line):
        #: the station keeps logging, chained from the head, and says that the log needs attention.
        self.damaged = ""

    @contextmanager
    def _locked(self) -> Iterator[BinaryIO]:
        with self._lock, open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def append(self, actor: str, action: str, detail: dict[str, Any]) -> int:
        """Add one row (flushed to disk before returning) and return its sequence number."""
        text = json.dumps(detail, sort_keys=True, default=str, separators=(",", ":"))
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._locked() as f:
            seq, prev = self._anchor(f)
            seq += 1
            digest = row_hash(seq, at, actor, action, text, prev)
            row = dict(zip(FIELDS, (seq, at, actor, action, text, prev, digest), strict=True))
            f.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
            tmp = self.head_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"seq": seq, "hash": digest}))
            tmp.replace(self.head_path)
        return seq

    def _anchor(self, f: BinaryIO) -> tuple[int, str]:
        """The (seq, hash) the next row chains from: the head's, which a deleted or torn tail cannot move
        (so a gap stays a gap, never healed by the next row). The log's last row serves when the head is
        missing, or is one row behind it (a crash between writing the row and the head)."""
        head = self._read_head()
        last = self._last_row(f)
        if head is None:
            if last is None and f.tell() > 0:
                self.damaged = f"{LOG_FILE} ends in a line that is not a row, and {HEAD_FILE} is missing"
            return (last[0], last[1]) if last is not None else (0, GENESIS)
        if last is not None and last[0] == head[0] + 1 and last[2] == head[1]:
            return last[0], last[1]
        if last is None or last[:2] != head:
            self.damaged = f"{LOG_FILE}'s last row does not match {HEAD_FILE} (rows deleted, or a line torn by a crash)"
        return head

    def _read_head(self) -> tuple[int, str] | None:
        try:
            head = json.loads(self.head_path.read_text())
            return int(head["seq"]), str(head["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _last_row(self, f: BinaryIO) -> tuple[int, str, str] | None:
        """The last line's (seq, hash, prev_hash) if it is a row; a torn last line gets its newline, so
        that the next row starts on a line of its own. ``f`` is left at the end."""
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) != b"\n":
            f.write(b"\n")
            f.flush()
            return None
        back = min(size, 1 << 16)
        while True:
            f.seek(size - back)
            lines = f.read(back).rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or back == size:
                break
            back = min(size, back * 4)
        f.seek(0, os.SEEK_END)
        try:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"]), str(last["prev_hash"])
        except (ValueError, KeyError, TypeError):
            return None

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, start=1):
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or set(row) != set(FIELDS) or type(row["seq"]) is not int:
                        raise ValueError
                except ValueError:
                    row = {"seq": -1, "unreadable_line": number}
                out.append(row)
        return out

    def last_seq(self) -> int:
        """Sequence number of the newest row (0 for an empty log)."""
        rows = self._read()
        return int(rows[-1]["seq"]) if rows else 0

    def rows(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Rows with ``seq > after``, oldest first, at most ``limit``, with ``detail`` parsed."""
        out = []
        for row in self._read():
            if row["seq"] > after and "detail" in row:
                out.append({**row, "detail": json.loads(row["detail"])})
                if len(out) >= limit:
                    break
        return out

    def verify(self) -> Verification:
        """Recompute the chain; report the first edited, missing or reordered row."""
        rows = self._read()
        prev, expected_seq = GENESIS, 1
        for row in rows:
            if "unreadable_line" in row:
                return Verification(
                    False, len(rows), expected_seq - 1, prev, f"line {row['unreadable_line']} is not a row"
                )
            seq = row["seq"]
            if seq != expected_seq:
                return Verification(
                    False, len(rows), seq, row["hash"], f"row {expected_seq} is missing (next is {seq})"
                )
            if row["prev_hash"] != prev:
                return Verification(False, len(rows), seq, row["hash"], f"row {seq} does not follow row {seq - 1}")
            fields = [row[k] for k in FIELDS[:-1]]
            if row_hash(*fields) != row["hash"]:
                return Verification(
                    False, len(rows), seq, row["hash"], f"row {seq} was edited (its hash does not match)"
                )
            prev, expected_seq = row["hash"], seq + 1
        head_seq = expected_seq - 1
        if self.head_path.exists():
            try:
                head = json.loads(self.head_path.read_text())
                pinned_seq, pinned_hash = int(head["seq"]), str(head["hash"])
            except (ValueError, KeyError, TypeError):
                return Verification(False, len(rows), head_seq, prev, f"{self.head_path.name} is unreadable")
            if pinned_seq > head_seq:
                return Verification(False, len(rows), head_seq, prev, f"rows {head_seq + 1}..{pinned_seq} were deleted")
            if pinned_seq == head_seq and pinned_hash != prev:
                return Verification(False, len(rows), head_seq, prev, f"row {head_seq} differs from {HEAD_FILE}")
        elif rows:
            return Verification(False, len(rows), head_seq, prev, f"{HEAD_FILE} is missing")
        return Verification(True, len(rows), head_seq, prev)

    def create_view(self) -> None:
        """(Re)create the catalog view ``audit`` over the log file, for SQL."""
        if not self.path.exists():
            self.path.touch()
        quoted = str(self.path).replace("'", "''")
        with self.store.catalog() as con:
            con.execute(
                f"CREATE OR REPLACE VIEW audit AS SELECT * FROM read_json('{quoted}', format = 'newline_delimited', "
                "columns = {seq: 'BIGINT', logged_at: 'VARCHAR', actor: 'VARCHAR', action: 'VARCHAR', "
                "detail: 'VARCHAR', prev_hash: 'VARCHAR', hash: 'VARCHAR'})"
            )
