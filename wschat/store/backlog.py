"""What the SQLite history derives from each stored message, written in batches after the ack:
its search index entry (store/index.py) and its ref's row (store/refs.py).

The ack waits for one commit, of the message's row alone. Each more page a commit writes costs
about as much again on the reactor thread (~40 us of CPU here), and an FTS5 insert in a
transaction of its own writes a new segment, so the derived rows are written together: every
BATCH_MESSAGES messages (or BATCH_CHARS of text: folding a 2,000-character message takes
~0.5 ms), and before anything reads or deletes them (a search, a trim, a sweep). Until then a
resend's ref is looked up here, in memory.

`rooms.indexed` is the id up to which a room's messages are in the index and the refs table:
what a crash left out is written at the next start, as is everything when the index is built
(a database from before v5, or new Unicode tables).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from twisted.logger import Logger

from wschat.chat.ports import NewMessage
from wschat.store import index, refs
from wschat.store.sql import transaction

_log = Logger(namespace="wschat.sqlite_history")
BATCH_MESSAGES = 64
BATCH_CHARS = 16_384
# Messages written per transaction when a start catches up (or builds the whole index).
CATCH_UP_BATCH_MESSAGES = 10_000
_RefKey = tuple[str, str, bool, str]


@dataclass(frozen=True, slots=True)
class _Stored:
    no: int
    room: str
    id: int
    new: NewMessage


class Backlog:
    """Messages stored, acked, and not yet in the index and the refs table."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._pending: list[_Stored] = []
        self._chars = 0
        # The pending refs: (room, name, application, ref) -> (id, ts).
        self._refs: dict[_RefKey, tuple[int, str]] = {}

    def start(self, refs_since_ts: str) -> None:
        """Build the index again if it was folded with other Unicode tables (or never built),
        then write what each room is missing (logged); refs only of messages stamped
        `refs_since_ts` or later (older ones are out of the window)."""
        started = time.monotonic()
        if index.folded_elsewhere(self._db):
            with transaction(self._db):
                index.empty(self._db)
                self._db.execute("UPDATE rooms SET indexed = 0")
        caught_up = 0
        for no, room, since in self._db.execute("SELECT no, room, indexed FROM rooms").fetchall():
            while True:
                rows = self._db.execute(
                    "SELECT id, name, text, ts, ref, application FROM messages "
                    "WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
                    (room, since, CATCH_UP_BATCH_MESSAGES),
                ).fetchall()
                for msg_id, name, text, ts, ref, application in rows:
                    kept_ref = ref if ts >= refs_since_ts else None
                    new = NewMessage(name, text, ts, kept_ref, application=bool(application))
                    self.add(no, room, msg_id, new)
                if len(self._pending) >= CATCH_UP_BATCH_MESSAGES:
                    self.flush()
                caught_up += len(rows)
                if len(rows) < CATCH_UP_BATCH_MESSAGES:
                    break
                since = rows[-1][0]
        self.flush()
        if caught_up:
            _log.info(
                "search index: indexed {count} messages kept before it (in {seconds:.1f} s)",
                count=caught_up,
                seconds=time.monotonic() - started,
            )

    def add(self, no: int, room: str, msg_id: int, new: NewMessage) -> None:
        """A message stored in room `no` (committed)."""
        self._pending.append(_Stored(no, room, msg_id, new))
        self._chars += len(new.text)
        if new.ref is not None:
            self._refs[(room, new.name, new.application, new.ref)] = (msg_id, new.ts)

    def find_ref(
        self, room: str, name: str, application: bool, ref: str, not_before_ts: str
    ) -> int | None:
        """The id of the pending message with this ref, stamped `not_before_ts` or later."""
        found = self._refs.get((room, name, application, ref))
        return found[0] if found is not None and found[1] >= not_before_ts else None

    def flush_if_due(self) -> None:
        """Write the batch once it holds BATCH_MESSAGES messages or BATCH_CHARS of text."""
        if len(self._pending) >= BATCH_MESSAGES or self._chars >= BATCH_CHARS:
            try:
                self.flush()
            except sqlite3.Error:
                # Still pending; the next batch, or whatever reads them, tries again.
                pass

    def flush(self) -> None:
        """Write every pending message's index entry and ref now, in one transaction."""
        if not self._pending:
            return
        by_room: dict[int, list[tuple[int, str]]] = {}
        for stored in self._pending:
            by_room.setdefault(stored.no, []).append((stored.id, stored.new.text))
        with transaction(self._db):
            for no, rows in by_room.items():
                index.add(self._db, no, rows)
            refs.remember(
                self._db,
                [(s.room, s.new, s.id) for s in self._pending if s.new.ref is not None],
            )
            self._db.executemany(
                "UPDATE rooms SET indexed = ? WHERE no = ?",
                [(rows[-1][0], no) for no, rows in by_room.items()],
            )
        self._pending.clear()
        self._chars = 0
        self._refs.clear()
