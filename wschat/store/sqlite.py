"""The durable HistoryStore: SQLite in WAL mode, its schema from versioned files in schema/."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from twisted.logger import Logger

from wschat.chat.errors import SearchUnavailable, StorageUnavailable
from wschat.chat.model import Message, Recovery
from wschat.chat.ports import NewMessage, recovery
from wschat.chat.search import Query

SCHEMA_VERSION = 4
_log = Logger(namespace="wschat.sqlite_history")
# Trimming on every insert would double the write cost; a room briefly keeps up to
# this many extra messages, which `after` handles (it looks at what is really kept).
TRIM_EVERY_MESSAGES = 64
MEMORY = ":memory:"
# Above every id: SQLite's INTEGER is a signed 64-bit value.
MAX_ID = 2**63 - 1
_COLUMNS = "id, name, text, ts, ref, user, guest"
# Every statement runs on the reactor thread, so SQLite's busy wait (5 s by default in Python)
# would stall every connection while another process holds a lock on the database. Wait only
# long enough for someone else's short transaction, then refuse with storage_unavailable.
BUSY_TIMEOUT_S = 0.1
# With synchronous=NORMAL the only fsync is a checkpoint's, and SQLite's automatic one runs
# inside whichever commit crosses 1,000 WAL pages: on the reactor thread, for as long as the disk
# takes. Given a thread to run it in, the store checkpoints there instead, about as often
# (a message is ~2 pages of WAL).
CHECKPOINT_EVERY_MESSAGES = 400
# The WAL starts over only after a checkpoint that copied all of it; commits landing while the
# thread copies leave a tail, so it tries a few passes. If traffic never lets one finish, SQLite's
# own checkpoint, at this many pages, still bounds the WAL (and its tail is small by then).
CHECKPOINT_PASSES = 4
BACKSTOP_WAL_PAGES = 4000


def _schema(version: int) -> str:
    return resources.files("wschat.store").joinpath(f"schema/v{version}.sql").read_text("utf-8")


class SqliteHistory:
    """Runs in the reactor thread: each statement takes microseconds, and a commit in WAL mode
    with synchronous=NORMAL survives a crash of the process (not of the OS), which is what an
    ack promises (docs/protocol.md)."""

    def __init__(
        self,
        path: str,
        keep: int,
        in_thread: Callable[[Callable[[], None]], object] | None = None,
        track_rooms: bool = False,
        expiring: bool = False,
    ) -> None:
        # The checkpoint thread opens the file again later: twistd may have changed directory.
        self._path = path if path == MEMORY else os.path.abspath(path)
        self._keep = keep
        self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        if path != MEMORY:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._in_thread = in_thread if path != MEMORY else None
        if self._in_thread is not None:
            self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_WAL_PAGES}")
        self._checkpointing = threading.Lock()
        self._since_checkpoint = 0
        self._migrate()
        self._last_id: dict[str, int] = {}
        self._since_trim: dict[str, int] = {}
        if expiring:
            # The TTL sweep deletes the oldest messages first, a batch at a time. An index more
            # per insert: about half as many WAL pages again per message, so made only when
            # asked for (once; it stays, harmless, if the TTL is later turned off).
            self._db.execute("CREATE INDEX IF NOT EXISTS messages_ts ON messages (ts)")
        (self._forgotten_high_id,) = self._db.execute("SELECT high_id FROM forgotten").fetchone()
        # Each room's newest timestamp, least recently written first: kept only for the
        # sweeps (track_rooms), read from the file once at start.
        self._recent: OrderedDict[str, str] | None = None
        if track_rooms:
            self._recent = OrderedDict()
            for room, last_id, last_ts in self._db.execute(
                "SELECT room, max(id), max(ts) FROM messages GROUP BY room ORDER BY 3"
            ):
                self._recent[room] = last_ts
                self._last_id[room] = last_id

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"history database has schema v{version}; this wschat knows up to v{SCHEMA_VERSION}"
            )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            self._db.executescript(
                f"BEGIN;\n{_schema(step)}\nPRAGMA user_version = {step};\nCOMMIT;"
            )

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
            kept = await self.find_ref(room, new.name, ref, new.application)
            if kept is not None:
                return kept, False
        try:
            msg_id = self._room_last_id(room) + 1
            self._db.execute(
                "INSERT INTO messages (room, id, name, text, ts, ref, user, guest, application) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            # Re-read the room's last id next time: we don't know what the failure left.
            self._last_id.pop(room, None)
            raise StorageUnavailable(
                f"the message was not stored ({exc}); retry later", ref
            ) from None
        self._last_id[room] = msg_id
        recent = self._recent
        if recent is not None:
            recent[room] = new.ts
            recent.move_to_end(room)
        count = self._since_trim.get(room, 0) + 1
        if count >= TRIM_EVERY_MESSAGES:
            count = 0
            self._trim(room, msg_id)
        self._since_trim[room] = count
        self._since_checkpoint += 1
        if (
            self._in_thread is not None
            and self._since_checkpoint >= CHECKPOINT_EVERY_MESSAGES
            and self._checkpointing.acquire(blocking=False)
        ):
            self._since_checkpoint = 0
            try:
                self._in_thread(self._checkpoint)
            except Exception:
                # The message is stored; the backstop checkpoint keeps the WAL bounded.
                self._checkpointing.release()
                _log.failure("could not start a checkpoint thread")
        return Message(room, msg_id, new.name, new.text, new.ts, ref, new.user, new.guest), True

    def _checkpoint(self) -> None:
        """Runs in another thread, on a connection of its own; a PASSIVE checkpoint never
        blocks the writer."""
        try:
            db = sqlite3.connect(self._path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            try:
                for _ in range(CHECKPOINT_PASSES):
                    busy, wal_pages, copied = db.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                    if busy or copied >= wal_pages:
                        break
            finally:
                db.close()
        except sqlite3.Error:
            # Housekeeping, like trimming: the next one, or SQLite's backstop, catches up.
            pass
        finally:
            self._checkpointing.release()

    def _trim(self, room: str, last_id: int) -> None:
        try:
            self._db.execute(
                "DELETE FROM messages WHERE room = ? AND id <= ?", (room, last_id - self._keep)
            )
        except sqlite3.Error:
            # Trimming is housekeeping; a failed one is retried after the next batch.
            pass

    # The sweeps (wschat/sweep.py), each a small transaction on the reactor thread.

    @property
    def room_count(self) -> int:
        """Rooms with messages kept (needs track_rooms)."""
        assert self._recent is not None, "SqliteHistory(track_rooms=True) counts its rooms"
        return len(self._recent)

    def expire(self, before_ts: str, batch: int) -> Swept:
        """Delete up to `batch` of the oldest messages stamped before `before_ts`; once none
        is left, forget the rooms that had no newer one. `done` when nothing is left."""
        deleted = self._db.execute(
            "DELETE FROM messages WHERE (room, id) IN "
            "(SELECT room, id FROM messages WHERE ts < ? ORDER BY ts LIMIT ?)",
            (before_ts, batch),
        ).rowcount
        if deleted >= batch:
            return Swept(deleted, 0, done=False)
        rooms = []
        recent = self._recent
        while recent and next(iter(recent.values())) < before_ts:
            rooms.append(recent.popitem(last=False)[0])
        self._forget(rooms)
        return Swept(deleted, len(rooms), done=True)

    def evict(self, max_rooms: int, batch: int) -> Swept:
        """Forget the histories of up to `batch` rooms, least recently written first, while
        more than `max_rooms` have one. `done` when no more than `max_rooms` are left."""
        recent = self._recent
        assert recent is not None, "SqliteHistory(track_rooms=True) can evict"
        taken = [recent.popitem(last=False) for _ in range(min(batch, len(recent) - max_rooms))]
        rooms = [room for room, _ in taken]
        deleted = 0
        if rooms:
            try:
                self._db.execute("BEGIN")
                for room in rooms:
                    deleted += self._db.execute(
                        "DELETE FROM messages WHERE room = ?", (room,)
                    ).rowcount
                self._forget(rooms)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                # Still there: first in line for the next sweep.
                for room, ts in reversed(taken):
                    recent[room] = ts
                    recent.move_to_end(room, last=False)
                raise
        return Swept(deleted, len(rooms), done=len(recent) <= max_rooms)

    def _forget(self, rooms: list[str]) -> None:
        if not rooms:
            return
        high = self._forgotten_high_id
        for room in rooms:
            high = max(high, self._last_id.pop(room, 0))
            self._since_trim.pop(room, None)
        if high != self._forgotten_high_id:
            self._db.execute("UPDATE forgotten SET high_id = ?", (high,))
            self._forgotten_high_id = high

    async def find_ref(
        self, room: str, name: str, ref: str, application: bool = False
    ) -> Message | None:
        row = self._read(
            f"SELECT {_COLUMNS} FROM messages "
            "WHERE room = ? AND name = ? AND ref = ? AND application = ? LIMIT 1",
            (room, name, ref, int(application)),
            ref,
        )
        return _message(room, row[0]) if row else None

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
            (room, before if before is not None else MAX_ID, limit),
        )
        return [_message(room, r) for r in reversed(rows)]

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        raise SearchUnavailable("not yet indexed")

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
