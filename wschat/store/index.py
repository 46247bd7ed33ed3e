"""The SQLite history's search index: an FTS5 table of every kept message's folded words.

A room's entries are one rowid range, rowid = (room number << ID_BITS) | id, the number from
the `rooms` table. A search is `MATCH ? AND rowid BETWEEN lo AND hi ORDER BY rowid DESC LIMIT
?`: FTS5 walks the words' entries of that room only, newest first, and stops at the limit; it
never reads the room's messages. One- to three-letter prefixes are indexed too (the last word
of a query is a prefix, and an unindexed short one would merge the entries of every word it
begins, in every room).

The table is contentless: it keeps no copy of the text. Taking a message out (FTS5's
'delete') needs the very words it was indexed with, read back from messages.text and folded
again; every path that deletes a message or changes its text goes through remove() or
replace(). Folding follows Python's Unicode tables, so the index records their version and is
built again when it changes (a Python upgrade): taking out other words than were put in would
corrupt it.

An FTS5 insert in a transaction of its own writes a segment (about 3x the cost of storing the
message), so messages are indexed together: every INDEX_EVERY_MESSAGES (or INDEX_EVERY_CHARS of
text, as folding a long text takes a while), and before anything reads or deletes entries (a
search, a trim, a sweep). `rooms.indexed` is the id up to which a
room's messages are in the index; what a crash left out is indexed at the next start.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Iterable

from wschat.chat.search import Query, indexed_text
from wschat.store.transaction import transaction

ID_BITS = 36
# A room's ids and the rooms' numbers share SQLite's signed 64-bit rowid.
MAX_ID = (1 << ID_BITS) - 1
MAX_ROOM_NO = (1 << (63 - ID_BITS)) - 1
INDEX_EVERY_MESSAGES = 64
# Folding costs ~0.3 us a character (0.6 ms for a 2,000-character message): a batch stops at
# this much text, so that indexing one holds the reactor for a few milliseconds at most.
INDEX_EVERY_CHARS = 16_384
# Messages indexed per transaction when a start catches up (or builds the whole index).
CATCH_UP_BATCH_MESSAGES = 10_000
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


class SearchIndex:
    """Keeps the `search` table in step with `messages` on the store's connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        # The rooms' numbers, once used (only a room with messages has one).
        self._numbers: dict[str, int] = {}
        # Stored, not yet indexed: (rowid, text), and each room number's highest id among them.
        self._pending: list[tuple[int, str]] = []
        self._pending_chars = 0
        self._tops: dict[int, int] = {}

    def start(self) -> int:
        """Build the index again if Python's Unicode tables changed since it was built (or it
        never was: a database from before v5), and index what a crash left out. Returns how
        many messages it indexed."""
        (built_with,) = self._db.execute("SELECT unicode FROM search_state").fetchone()
        if built_with != unicodedata.unidata_version:
            with transaction(self._db):
                self._db.execute("INSERT INTO search (search) VALUES ('delete-all')")
                self._db.execute("UPDATE rooms SET indexed = 0")
                self._db.execute(
                    "UPDATE search_state SET unicode = ?", (unicodedata.unidata_version,)
                )
        indexed = 0
        for no, room, since in self._db.execute("SELECT no, room, indexed FROM rooms").fetchall():
            while True:
                rows = self._db.execute(
                    "SELECT id, text FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
                    (room, since, CATCH_UP_BATCH_MESSAGES),
                ).fetchall()
                if not rows:
                    break
                for msg_id, text in rows:
                    self.add(no, msg_id, text)
                if len(self._pending) >= CATCH_UP_BATCH_MESSAGES:
                    self.flush()
                indexed += len(rows)
                since = rows[-1][0]
        self.flush()
        return indexed

    def number(self, room: str) -> int | None:
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
        no = self.number(room)
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

    def add(self, no: int, msg_id: int, text: str) -> None:
        """A message stored in room `no` (committed), to be indexed with the next batch."""
        self._pending.append(((no << ID_BITS) | msg_id, text))
        self._pending_chars += len(text)
        self._tops[no] = msg_id

    def flush_if_due(self) -> None:
        """Index the pending messages once there are INDEX_EVERY_MESSAGES of them, or
        INDEX_EVERY_CHARS of text."""
        if len(self._pending) >= INDEX_EVERY_MESSAGES or self._pending_chars >= INDEX_EVERY_CHARS:
            try:
                self.flush()
            except sqlite3.Error:
                # They stay pending; the next batch, or whatever reads the index, tries again.
                pass

    def flush(self) -> None:
        """Index every pending message now, in one transaction."""
        if not self._pending:
            return
        with transaction(self._db):
            self._db.executemany(
                _INSERT, [(rowid, indexed_text(text)) for rowid, text in self._pending]
            )
            self._db.executemany(
                "UPDATE rooms SET indexed = ? WHERE no = ?",
                [(top, no) for no, top in self._tops.items()],
            )
        self._pending.clear()
        self._pending_chars = 0
        self._tops.clear()

    def remove(self, no: int, rows: Iterable[tuple[int, str]]) -> None:
        """Take messages (id, stored text) of room `no` out of the index, inside the
        transaction that deletes them, after flush()."""
        assert not self._pending, "flush() before taking entries out"
        self._db.executemany(
            _DELETE, [((no << ID_BITS) | msg_id, indexed_text(text)) for msg_id, text in rows]
        )

    def replace(self, no: int, msg_id: int, old_text: str, new_text: str) -> None:
        """Index message `msg_id` of room `no` by `new_text` instead of `old_text`, inside the
        transaction that changes its text, after flush()."""
        self.remove(no, [(msg_id, old_text)])
        self._db.execute(_INSERT, ((no << ID_BITS) | msg_id, indexed_text(new_text)))

    def forget(self, room: str) -> None:
        """The sweeps forget the room: its number is free once it has no message left (nor
        entry), inside the transaction that deleted them."""
        self._db.execute(
            "DELETE FROM rooms WHERE room = ? AND NOT EXISTS "
            "(SELECT 1 FROM messages WHERE room = ?)",
            (room, room),
        )
        self._numbers.pop(room, None)
