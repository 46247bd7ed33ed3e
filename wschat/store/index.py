"""The SQLite history's search index: an FTS5 table of every kept message's folded words.

A room's entries are one rowid range, rowid = (room number << ID_BITS) | id, the number from
the `rooms` table. A search is `MATCH ? AND rowid BETWEEN lo AND hi ORDER BY rowid DESC LIMIT
?`: FTS5 walks the words' entries of that room only, newest first, and stops at the limit; it
never reads the room's messages. Prefixes of one to six letters are indexed too: the last word
of a query is a prefix, and FTS5 (3.40) answers an unindexed prefix by merging the entries of
every word it begins, in every room, before it returns the first (tens of milliseconds for a
common word in a million messages).

The table is contentless: it keeps no copy of the text. Taking a message out (FTS5's
'delete') needs the very words it was indexed with, read back from messages.text and folded
again; every path that deletes a message or changes its text goes through remove() or
replace(). Folding follows Python's Unicode tables, so the index records their version and is
built again when it changes (a Python upgrade): taking out other words than were put in would
corrupt it. Messages are put in by store/backlog.py, in batches.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Iterable

from wschat.chat.search import Query, indexed_text
from wschat.store.refs import MESSAGE_COLUMNS

ID_BITS = 36
# A room's ids and the rooms' numbers share SQLite's signed 64-bit rowid.
MAX_ID = (1 << ID_BITS) - 1
MAX_ROOM_NO = (1 << (63 - ID_BITS)) - 1
_INSERT = "INSERT INTO search (rowid, text) VALUES (?, ?)"
_DELETE = "INSERT INTO search (search, rowid, text) VALUES ('delete', ?, ?)"
# The smallest number no room has, once the numbers reached MAX_ROOM_NO.
_FREE_NUMBER = (
    "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM rooms WHERE no = 1) "
    "UNION ALL SELECT no + 1 FROM rooms "
    "WHERE no < ? AND NOT EXISTS (SELECT 1 FROM rooms AS next WHERE next.no = rooms.no + 1) "
    "ORDER BY 1 LIMIT 1"
)


def match_expression(query: Query) -> str:
    """The FTS5 query: each whole word and the prefix as quoted tokens (a word holds only
    letters, digits and _, never a quote), all of them required."""
    return " ".join([*(f'"{word}"' for word in query.whole), f'"{query.prefix}"*'])


def rowid_range(no: int, before: int | None) -> tuple[int, int]:
    """The rowids of room `no`'s messages, below id `before` if given (an empty range if
    `before` is 0 or less)."""
    low = no << ID_BITS
    top = MAX_ID if before is None else min(before - 1, MAX_ID)
    return low, low + top


def search(
    room: str, no: int, query: Query, before: int | None, limit: int
) -> tuple[str, tuple[object, ...]]:
    """The statement (and its parameters) that reads the room's messages matching `query`,
    newest first: CROSS JOIN keeps the index outside, each of its matches looked up in
    messages, never the room's messages scanned for words."""
    low, high = rowid_range(no, before)
    return (
        f"SELECT {MESSAGE_COLUMNS} FROM search CROSS JOIN messages AS m "
        "ON m.room = ? AND m.id = search.rowid - ? "
        "WHERE search MATCH ? AND search.rowid BETWEEN ? AND ? "
        "ORDER BY search.rowid DESC LIMIT ?",
        (room, low, match_expression(query), low, high, limit),
    )


def add(db: sqlite3.Connection, no: int, rows: Iterable[tuple[int, str]]) -> None:
    """Put messages (id, text) of room `no` in the index."""
    db.executemany(
        _INSERT, [((no << ID_BITS) | msg_id, indexed_text(text)) for msg_id, text in rows]
    )


def remove(db: sqlite3.Connection, no: int, rows: Iterable[tuple[int, str]]) -> None:
    """Take messages (id, stored text) of room `no` out of the index, inside the transaction
    that deletes them; they must be in it (the backlog flushed)."""
    db.executemany(
        _DELETE, [((no << ID_BITS) | msg_id, indexed_text(text)) for msg_id, text in rows]
    )


def replace(db: sqlite3.Connection, no: int, msg_id: int, old_text: str, new_text: str) -> None:
    """Index message `msg_id` of room `no` by `new_text` instead of `old_text`, inside the
    transaction that changes its text (the backlog flushed)."""
    remove(db, no, [(msg_id, old_text)])
    add(db, no, [(msg_id, new_text)])


def folded_elsewhere(db: sqlite3.Connection) -> bool:
    """Whether the index was built with other Unicode tables than this Python's (or never
    built: a database from before v5)."""
    (built_with,) = db.execute("SELECT unicode FROM search_state").fetchone()
    return bool(built_with != unicodedata.unidata_version)


def empty(db: sqlite3.Connection) -> None:
    """Take every entry out, to build the index again with this Python's tables (inside a
    transaction that marks every room unindexed)."""
    db.execute("INSERT INTO search (search) VALUES ('delete-all')")
    db.execute("UPDATE search_state SET unicode = ?", (unicodedata.unidata_version,))


class RoomNumbers:
    """Each room's number, from the `rooms` table, cached once used (only a room with
    messages has one)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._numbers: dict[str, int] = {}

    def of(self, room: str) -> int | None:
        """The room's number, if it has one (it has messages, or had some)."""
        no = self._numbers.get(room)
        if no is None:
            row = self._db.execute("SELECT no FROM rooms WHERE room = ?", (room,)).fetchone()
            if row is None:
                return None
            no = self._numbers[room] = row[0]
        return no

    def enter(self, room: str) -> int:
        """The room's number, given now if it has none: inside the transaction that stores
        the room's message (if that one fails, call drop())."""
        no = self.of(room)
        if no is None:
            (top,) = self._db.execute("SELECT max(no) FROM rooms").fetchone()
            no = (top or 0) + 1
            if no > MAX_ROOM_NO:
                # Rooms forgotten by the sweeps left their numbers free.
                found = self._db.execute(_FREE_NUMBER, (MAX_ROOM_NO,)).fetchone()
                if found is None:
                    raise sqlite3.OperationalError(f"all {MAX_ROOM_NO} room numbers are taken")
                (no,) = found
            self._db.execute("INSERT INTO rooms (no, room) VALUES (?, ?)", (no, room))
            self._numbers[room] = no
        return no

    def drop(self, room: str) -> None:
        """Forget the cached number: the transaction that gave it may not have committed."""
        self._numbers.pop(room, None)

    def forget(self, room: str) -> None:
        """The sweeps forget the room: its number is free once it has no message left (nor
        entry), inside the transaction that deleted them."""
        self._db.execute(
            "DELETE FROM rooms WHERE room = ? AND NOT EXISTS "
            "(SELECT 1 FROM messages WHERE room = ?)",
            (room, room),
        )
        self._numbers.pop(room, None)
