"""The HistoryStore of record in PostgreSQL: for one node instead of SQLite, and shared by
several nodes (each room's ids are drawn in the database, in the transaction that stores).

Every statement runs in the link's threads (link.py), appends through the group commit
(commit.py); the reactor thread only queues work and gets Deferreds back. An append's result
means committed, with the durability the server's `synchronous_commit` gives
(docs/scaling.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wschat.chat.model import Message, Recovery, format_ts
from wschat.chat.ports import NewMessage, recovery
from wschat.chat.search import Query
from wschat.postgres.commit import GroupCommit
from wschat.postgres.link import PgLink, connect
from wschat.postgres.schema import migrate

# A `ref` is found again for this long after its message was stored (docs/protocol.md, `say`).
REF_WINDOW_S = 24 * 3600
# Refs past the window, and messages past --history-ttl, are deleted this often, in batches
# of SWEEP_BATCH (each its own transaction).
SWEEP_EVERY_S = 60.0
SWEEP_BATCH = 5000
_PRUNE_REFS = (
    "DELETE FROM refs WHERE ctid = ANY (ARRAY(SELECT ctid FROM refs WHERE at < %s LIMIT %s))"
)
_EXPIRE = (
    "DELETE FROM messages WHERE ctid = ANY (ARRAY("
    "SELECT ctid FROM messages WHERE ts < %s LIMIT %s))"
)
# A search reads this many of the newest messages in id order before it turns to the index
# (schema/v1.sql, wschat_search).
SEARCH_SCAN = 1000
# Above every id: a bigint.
MAX_ID = 2**63 - 1

_COLUMNS = 'id, name, text, ts, ref, "user", guest'
_log = Logger(namespace="wschat.postgres")

Row = tuple[Any, ...]


class PostgresHistory:
    def __init__(
        self,
        link: PgLink,
        keep: int,
        now_s: Callable[[], float] = time.time,
        ref_window_s: float = REF_WINDOW_S,
        ttl_s: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._link = link
        self._now_s = now_s
        self._ref_window_s = ref_window_s
        self._ttl_s = ttl_s
        self._commit = GroupCommit(link, keep, now_s, ref_window_s)
        # (LoopingCall runs a coroutine function through maybeDeferred, and waits for it.)
        self._sweeping = LoopingCall(self.sweep)
        self._sweeping.clock = clock if clock is not None else link.reactor

    @property
    def up(self) -> bool:
        """Whether the database answers (/healthz's `store`)."""
        return self._link.up

    def start(self) -> None:
        """Start the link's heartbeat and the sweeps, once the reactor runs."""
        self._link.start()
        self._sweeping.start(SWEEP_EVERY_S, now=False)

    async def append(self, room: str, new: NewMessage) -> tuple[Message, bool]:
        return await self._commit.append(room, new)

    async def find_ref(
        self, room: str, name: str, ref: str, application: bool = False
    ) -> Message | None:
        since_s = self._now_s() - self._ref_window_s
        rows = await self._read(
            'SELECT m.id, m.name, m.text, m.ts, m.ref, m."user", m.guest '
            "FROM refs f JOIN messages m ON m.room = f.room AND m.id = f.id "
            "WHERE f.room = %s AND f.application = %s AND f.name = %s AND f.ref = %s "
            "AND f.at >= %s",
            (room, application, name, ref, since_s),
            ref,
        )
        return _message(room, rows[0]) if rows else None

    async def latest(self, room: str, limit: int) -> list[Message]:
        return await self.page(room, None, None, limit)

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        def read(conn: psycopg.Connection[Any]) -> tuple[Row | None, list[Row]]:
            bounds = conn.execute(
                "SELECT r.last_id, (SELECT min(m.id) FROM messages m WHERE m.room = r.room) "
                "FROM rooms r WHERE r.room = %s",
                (room,),
            ).fetchone()
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = %s AND id > %s ORDER BY id LIMIT %s",
                (room, since, limit + 1),
            ).fetchall()
            return bounds, rows

        bounds, rows = await self._link.read(read)
        last_id, oldest = bounds if bounds is not None else (0, None)
        return recovery(since, last_id, oldest, [_message(room, r) for r in rows], limit)

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        if after is not None:
            rows = await self._read(
                f"SELECT {_COLUMNS} FROM messages WHERE room = %s AND id > %s ORDER BY id LIMIT %s",
                (room, after, limit),
            )
            return [_message(room, r) for r in rows]
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM messages WHERE room = %s AND id < %s "
            "ORDER BY id DESC LIMIT %s",
            (room, before if before is not None else MAX_ID, limit),
        )
        return [_message(room, r) for r in reversed(rows)]

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM wschat_search(%s, %s::tsquery, %s, %s, %s)",
            (room, ts_query(query), before if before is not None else MAX_ID, limit, SEARCH_SCAN),
        )
        return [_message(room, r) for r in rows]

    async def last_id(self, room: str) -> int:
        """The last id given out in `room` (0 for a room that never had a message): what a node
        of several compares an announcement with to see what it missed."""
        rows = await self._read("SELECT last_id FROM rooms WHERE room = %s", (room,))
        return int(rows[0][0]) if rows else 0

    async def epoch(self, room: str) -> str | None:
        # Ids are kept in the database for good; they never start over under a client.
        return None

    async def sweep(self) -> tuple[int, int]:
        """Delete the refs past the window, and with a TTL the messages past it, a batch at a
        time; how many of each. Housekeeping: one that fails is caught up by the next."""
        if not self._link.up:
            return 0, 0
        now_s = self._now_s()
        refs = messages = 0
        try:
            refs = await self._link.read(
                partial(_delete, sql=_PRUNE_REFS, cutoff=now_s - self._ref_window_s)
            )
            if self._ttl_s is not None:
                messages = await self._link.read(
                    partial(_delete, sql=_EXPIRE, cutoff=format_ts(now_s - self._ttl_s))
                )
        except Exception:
            pass
        if messages:
            _log.info(
                "history sweep: deleted {messages} messages older than {ttl_s:.0f}s",
                messages=messages,
                ttl_s=self._ttl_s,
            )
        return refs, messages

    def close(self) -> None:
        if self._sweeping.running:
            self._sweeping.stop()
        self._link.stop()

    def _read(
        self, sql: Any, params: tuple[Any, ...], ref: str | None = None
    ) -> Deferred[list[Row]]:
        def read(conn: psycopg.Connection[Any]) -> list[Row]:
            rows: list[Row] = conn.execute(sql, params).fetchall()
            return rows

        return self._link.read(read, ref)


def _delete(conn: psycopg.Connection[Any], *, sql: Any, cutoff: object) -> int:
    deleted = 0
    while True:
        cur = conn.execute(sql, (cutoff, SWEEP_BATCH))
        deleted += cur.rowcount
        if cur.rowcount < SWEEP_BATCH:
            return deleted


def ts_query(query: Query) -> str:
    """The tsquery of a search: every whole word, and the last word as a prefix (`:*`). Each is
    quoted, so PostgreSQL takes it as one lexeme as it is (a query's words, 200 characters at
    most, always fit in one)."""
    quoted = [_quote(term) for term in query.whole]
    quoted.append(f"{_quote(query.prefix)}:*")
    return " & ".join(quoted)


def _quote(term: str) -> str:
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


def open_store(
    conninfo: str,
    shown: str,
    reactor: Any,
    keep: int,
    now_s: Callable[[], float] = time.time,
    ref_window_s: float = REF_WINDOW_S,
    ttl_s: float | None = None,
) -> PostgresHistory:
    """Connect (at start-up, before the reactor runs), bring the schema up to date, and make
    the store (its threads start with its first piece of work); `start()` it once the reactor
    runs. psycopg.Error if the database is out of reach; SchemaTooNew if a newer wschat
    migrated it."""
    with connect(conninfo) as conn:
        from_version = migrate(conn, expiring=ttl_s is not None)
    if from_version == 0:
        _log.info("created the history schema in {url}", url=shown)
    return PostgresHistory(PgLink(conninfo, reactor, shown), keep, now_s, ref_window_s, ttl_s)


def _message(room: str, row: Row) -> Message:
    msg_id, name, text, ts, ref, user, guest = row
    return Message(room, int(msg_id), name, text, ts, ref, user, bool(guest))


class StoreService(Service):
    """Starts the store's timers with the service tree. ChatService closes the store at
    shutdown."""

    def __init__(self, store: PostgresHistory) -> None:
        self._store = store

    def startService(self) -> None:
        super().startService()
        self._store.start()
