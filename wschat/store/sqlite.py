"""The durable HistoryStore: SQLite in WAL mode, its schema from versioned files in schema/.

Messages are kept until a retention rule removes them (--history-keep per room, --history-ttl,
--max-history-rooms); every path that deletes one takes it out of the search index too
(store/index.py). Refs are remembered for a day (store/refs.py), however much is kept. Both
are written in batches after the ack (store/backlog.py).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from wschat.chat.errors import StorageUnavailable
from wschat.chat.model import Message, Recovery, format_ts
from wschat.chat.ports import NewMessage, recovery
from wschat.chat.search import Query
from wschat.store import index, refs
from wschat.store.backlog import Backlog
from wschat.store.checkpoint import Checkpointer
from wschat.store.index import MAX_ID, RoomNumbers
from wschat.store.refs import REF_WINDOW_S
from wschat.store.sql import migrate, transaction

SCHEMA_VERSION = 5
# Trimming on every insert would double the write cost; a room briefly keeps up to
# this many extra messages, which `after` handles (it looks at what is really kept).
TRIM_EVERY_MESSAGES = 64
MEMORY = ":memory:"
_COLUMNS = "id, name, text, ts, ref, user, guest"
# Every statement runs on the reactor thread, so SQLite's busy wait (5 s by default in Python)
# would stall every connection while another process holds a lock on the database. Wait only
# long enough for someone else's short transaction, then refuse with storage_unavailable.
BUSY_TIMEOUT_S = 0.1


class SqliteHistory:
    """Runs in the reactor thread: each statement takes microseconds, and a commit in WAL mode
    with synchronous=NORMAL survives a crash of the process (not of the OS), which is what an
    ack promises (docs/protocol.md). `keep`: messages kept per room (0: all); `now_s`: the
    clock for the refs written at start."""

    def __init__(
        self,
        path: str,
        keep: int,
        in_thread: Callable[[Callable[[], None]], object] | None = None,
        track_rooms: bool = False,
        expiring: bool = False,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        # The checkpoint thread opens the file again later: twistd may have changed directory.
        self._path = path if path == MEMORY else os.path.abspath(path)
        self._keep = keep
        self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        if path != MEMORY:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._checkpoints = (
            Checkpointer(self._db, self._path, BUSY_TIMEOUT_S, in_thread)
            if in_thread is not None and path != MEMORY
            else None
        )
        migrate(self._db, SCHEMA_VERSION)
        self._numbers = RoomNumbers(self._db)
        self._backlog = Backlog(self._db)
        # What a crash (or a release before v5) left out is written now; refs only from the
        # last day.
        self._backlog.start(format_ts(now_s() - REF_WINDOW_S))
        self._last_id: dict[str, int] = {}
        self._since_trim: dict[str, int] = {}
        if expiring:
            # The TTL sweep deletes the oldest messages first, a batch at a time. An index more
            # per insert: about half as many WAL pages again per message, so made only when
            # asked for (once; it stays, harmless, if the TTL is later turned off).
            self._db.execute("CREATE INDEX IF NOT EXISTS messages_ts ON messages (ts)")
        (self._forgotten_high_id,) = self._db.execute("SELECT high_id FROM forgotten").fetchone()
        # Each room's newest timestamp, least recently written first: kept only for the
        # sweeps (track_rooms), read from the file once at start (a lookup per room).
        self._recent: OrderedDict[str, str] | None = None
        if track_rooms:
            self._recent = OrderedDict()
            for room, last_id, last_ts in self._db.execute(
                "SELECT r.room, m.id, m.ts FROM rooms AS r CROSS JOIN messages AS m "
                "ON m.room = r.room AND m.id = (SELECT max(id) FROM messages WHERE room = r.room) "
                "ORDER BY m.ts"
            ):
                self._recent[room] = last_ts
                self._last_id[room] = last_id

    def _room_last_id(self, room: str) -> int:
        last = self._last_id.get(room)
        if last is None:
            (found,) = self._db.execute(
                "SELECT max(id) FROM messages WHERE room = ?", (room,)
            ).fetchone()
            if not found:
                # A room without messages starts above every room the sweeps forgot (it may be
                # one of them coming back); not cached, so that joins of rooms nobody writes
                # to cost no memory.
                return int(self._forgotten_high_id)
            last = self._last_id[room] = found
        return last

    async def append(self, room: str, new: NewMessage) -> tuple[Message, bool]:
        ref = new.ref
        if ref is not None:
            kept = self._find_ref(room, new.name, ref, new.application, refs.window_start(new.ts))
            if kept is not None:
                return kept, False
        try:
            msg_id = self._room_last_id(room) + 1
            if msg_id > MAX_ID:
                raise sqlite3.OperationalError(f"the room has used all {MAX_ID} ids")
            with transaction(self._db):
                no = self._numbers.enter(room)
                self._db.execute(
                    "INSERT INTO messages (room, id, name, text, ts, ref, user, guest, "
                    "application) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        room,
                        msg_id,
                        new.name,
                        new.text,
                        new.ts,
                        ref,
                        new.user,
                        int(new.guest),
                        int(new.application),
                    ),
                )
        except sqlite3.Error as exc:
            # Re-read the room's last id (and number) next time: we don't know what the
            # failure left.
            self._last_id.pop(room, None)
            self._numbers.drop(room)
            raise StorageUnavailable(
                f"the message was not stored ({exc}); retry later", ref
            ) from None
        self._last_id[room] = msg_id
        self._backlog.add(no, room, msg_id, new)
        recent = self._recent
        if recent is not None:
            recent[room] = new.ts
            recent.move_to_end(room)
        if self._keep:
            count = self._since_trim.get(room, 0) + 1
            if count >= TRIM_EVERY_MESSAGES:
                count = 0
                self._trim(room, msg_id)
            self._since_trim[room] = count
        self._backlog.flush_if_due()
        if self._checkpoints is not None:
            self._checkpoints.stored()
        return Message(room, msg_id, new.name, new.text, new.ts, ref, new.user, new.guest), True

    def _trim(self, room: str, last_id: int) -> None:
        try:
            self._backlog.flush()
            rows = self._db.execute(
                "SELECT id, text FROM messages WHERE room = ? AND id <= ?",
                (room, last_id - self._keep),
            ).fetchall()
            with transaction(self._db):
                self._delete(room, rows)
        except sqlite3.Error:
            # Trimming is housekeeping; a failed one is retried after the next batch.
            pass

    def _delete(self, room: str, rows: list[tuple[int, str]]) -> None:
        """Delete these messages (id, text) of the room with their index entries: inside a
        transaction, once the index is flushed."""
        if not rows:
            return
        no = self._numbers.of(room)
        assert no is not None, f"room {room!r} has messages, hence a number"
        index.remove(self._db, no, rows)
        self._db.executemany(
            "DELETE FROM messages WHERE room = ? AND id = ?", [(room, row[0]) for row in rows]
        )

    # Edits (issue 22 builds on these): one message's text, and its index entry with it.

    def replace_text(self, room: str, msg_id: int, text: str) -> bool:
        """Give a kept message a new text, which search then finds it by instead of the old
        one. False if the room keeps no such message. sqlite3.Error if it failed."""
        self._backlog.flush()
        with transaction(self._db):
            row = self._db.execute(
                "SELECT text FROM messages WHERE room = ? AND id = ?", (room, msg_id)
            ).fetchone()
            if row is None:
                return False
            no = self._numbers.of(room)
            assert no is not None, f"room {room!r} has messages, hence a number"
            index.replace(self._db, no, msg_id, row[0], text)
            self._db.execute(
                "UPDATE messages SET text = ? WHERE room = ? AND id = ?", (text, room, msg_id)
            )
        return True

    def remove(self, room: str, ids: Iterable[int]) -> int:
        """Delete these messages of the room, and their index entries; how many were kept.
        sqlite3.Error if it failed."""
        self._backlog.flush()
        rows = []
        with transaction(self._db):
            for msg_id in ids:
                found = self._db.execute(
                    "SELECT text FROM messages WHERE room = ? AND id = ?", (room, msg_id)
                ).fetchone()
                if found is not None:
                    rows.append((msg_id, found[0]))
            self._delete(room, rows)
        return len(rows)

    # The sweeps (store/sweep.py), each a small transaction on the reactor thread.

    @property
    def room_count(self) -> int:
        """Rooms with messages kept (needs track_rooms)."""
        assert self._recent is not None, "SqliteHistory(track_rooms=True) counts its rooms"
        return len(self._recent)

    def forget_refs(self, before_ts: str, batch: int) -> Swept:
        """Delete up to `batch` of the oldest refs stored before `before_ts` (the window's
        start). `done` when none is left."""
        self._backlog.flush()
        deleted = refs.forget(self._db, before_ts, batch)
        return Swept(deleted, 0, done=deleted < batch)

    def expire(self, before_ts: str, batch: int) -> Swept:
        """Delete up to `batch` of the oldest messages stamped before `before_ts`; once none
        is left, forget the rooms that had no newer one. `done` when nothing is left."""
        self._backlog.flush()
        rows = self._db.execute(
            "SELECT room, id, text FROM messages WHERE ts < ? ORDER BY ts LIMIT ?",
            (before_ts, batch),
        ).fetchall()
        by_room: dict[str, list[tuple[int, str]]] = {}
        for room, msg_id, text in rows:
            by_room.setdefault(room, []).append((msg_id, text))
        rooms = []
        with transaction(self._db):
            for room, kept in by_room.items():
                self._delete(room, kept)
            recent = self._recent
            if len(rows) < batch and recent:
                for room, last_ts in recent.items():
                    if last_ts >= before_ts:
                        break
                    rooms.append(room)
                self._forget(rooms)
        if len(rows) >= batch:
            return Swept(len(rows), 0, done=False)
        self._forgotten(rooms)
        return Swept(len(rows), len(rooms), done=True)

    def evict(self, max_rooms: int, batch: int) -> Swept:
        """Delete up to `batch` messages of the rooms written to least recently, oldest first,
        while more than `max_rooms` have a history; a room left with none is forgotten.
        `done` when no more than `max_rooms` are left."""
        recent = self._recent
        assert recent is not None, "SqliteHistory(track_rooms=True) can evict"
        self._backlog.flush()
        deleted = 0
        emptied: list[str] = []
        with transaction(self._db):
            for room in recent:
                if len(recent) - len(emptied) <= max_rooms or deleted >= batch:
                    break
                budget = batch - deleted
                rows = self._db.execute(
                    "SELECT id, text FROM messages WHERE room = ? ORDER BY id LIMIT ?",
                    (room, budget),
                ).fetchall()
                self._delete(room, rows)
                deleted += len(rows)
                if len(rows) == budget:
                    break
                emptied.append(room)
            self._forget(emptied)
        self._forgotten(emptied)
        return Swept(deleted, len(emptied), done=len(recent) <= max_rooms)

    def _forget(self, rooms: list[str]) -> None:
        """The rooms' messages are deleted: free their numbers, and count any room that comes
        back on above their ids (inside the transaction that deleted the messages)."""
        high = self._forgotten_high_id
        for room in rooms:
            high = max(high, self._last_id.get(room, 0))
            self._numbers.forget(room)
        if high != self._forgotten_high_id:
            self._db.execute("UPDATE forgotten SET high_id = ?", (high,))

    def _forgotten(self, rooms: list[str]) -> None:
        """_forget's transaction committed: the rooms are gone from memory too."""
        for room in rooms:
            self._forgotten_high_id = max(self._forgotten_high_id, self._last_id.pop(room, 0))
            self._since_trim.pop(room, None)
            if self._recent is not None:
                self._recent.pop(room, None)

    async def find_ref(
        self, room: str, name: str, ref: str, application: bool = False
    ) -> Message | None:
        # The sweeper keeps the table within the window.
        return self._find_ref(room, name, ref, application, "")

    def _find_ref(
        self, room: str, name: str, ref: str, application: bool, not_before_ts: str
    ) -> Message | None:
        pending = self._backlog.find_ref(room, name, application, ref, not_before_ts)
        try:
            if pending is not None:
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id = ?", (room, pending)
                ).fetchone()
            else:
                row = refs.find(self._db, room, name, ref, application, not_before_ts)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"the history could not be read ({exc})", ref) from None
        return _message(room, row) if row is not None else None

    async def latest(self, room: str, limit: int) -> list[Message]:
        rows = self._read(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, limit),
        )
        return [_message(room, r) for r in reversed(rows)]

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        rows = self._read(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
            (room, since, limit + 1),
        )
        oldest = self._read("SELECT min(id) FROM messages WHERE room = ?", (room,))[0][0]
        assert oldest is None or isinstance(oldest, int)
        try:
            last = self._room_last_id(room)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"the history could not be read ({exc})") from None
        return recovery(since, last, oldest, [_message(room, r) for r in rows], limit)

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        if after is not None:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
                (room, after, limit),
            )
            return [_message(room, r) for r in rows]
        rows = self._read(
            f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (room, before if before is not None else MAX_ID + 1, limit),
        )
        return [_message(room, r) for r in reversed(rows)]

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        try:
            self._backlog.flush()
            no = self._numbers.of(room)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"the history could not be searched ({exc})") from None
        if no is None:
            return []
        rows = self._read(*index.search(room, no, query, before, limit))
        return [_message(room, r) for r in rows]

    def _read(
        self, sql: str, params: tuple[object, ...], ref: str | None = None
    ) -> list[tuple[object, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"the history could not be read ({exc})", ref) from None

    async def epoch(self, room: str) -> str | None:
        # One file, one history: ids never restart under a client (a reset database is
        # caught by `since` being ahead of the room).
        return None

    def close(self) -> None:
        try:
            self._backlog.flush()
        except sqlite3.Error:
            # Indexed at the next start, from rooms.indexed.
            pass
        self._db.close()


@dataclass(frozen=True, slots=True)
class Swept:
    """What one batch of a sweep did."""

    messages: int
    rooms: int
    done: bool


def _message(room: str, row: tuple[object, ...]) -> Message:
    msg_id, name, text, ts, ref, user, guest = row
    assert isinstance(msg_id, int) and isinstance(name, str) and isinstance(text, str)
    assert isinstance(ts, str) and (ref is None or isinstance(ref, str))
    assert (user is None or isinstance(user, str)) and isinstance(guest, int)
    return Message(room, msg_id, name, text, ts, ref, user, bool(guest))
