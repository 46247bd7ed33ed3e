"""The SQLite history's `ref` idempotency window: the refs of the last REF_WINDOW_S of
messages, in a table of their own.

While everything is kept, the history cannot be the window (its index of refs would grow with
it). The `refs` table holds a row per message said with a ref (written with the search index's
batches, store/backlog.py), and the sweeper deletes the rows older than the window every
second, oldest first: it holds a day's refs at most (a second more between two sweeps). A
resend is recognised when its ref's row is inside the window counted back from the resend's
own stamp, and the message is still kept.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from wschat.chat.ports import NewMessage

# Long enough for a client that was offline overnight to resend what it typed.
REF_WINDOW_S = 24 * 3600.0
MESSAGE_COLUMNS = "m.id, m.name, m.text, m.ts, m.ref, m.user, m.guest"


def window_start(ts: str) -> str:
    """The oldest stamp a resend stamped `ts` is still recognised against (to the
    millisecond, as stamps are; chat.model.format_ts)."""
    start = datetime.fromisoformat(ts) - timedelta(seconds=REF_WINDOW_S)
    return start.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def find(
    db: sqlite3.Connection, room: str, name: str, ref: str, application: bool, not_before_ts: str
) -> tuple[object, ...] | None:
    """The kept message (MESSAGE_COLUMNS) whose ref this is, stored at `not_before_ts` or
    later."""
    row: tuple[object, ...] | None = db.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM refs AS r JOIN messages AS m "
        "ON m.room = r.room AND m.id = r.id "
        "WHERE r.room = ? AND r.name = ? AND r.application = ? AND r.ref = ? AND r.ts >= ?",
        (room, name, int(application), ref, not_before_ts),
    ).fetchone()
    return row


def remember(db: sqlite3.Connection, stored: list[tuple[str, NewMessage, int]]) -> None:
    """Rows for messages (room, message, id) said with a ref, in the order stored. Each
    replaces the row of an older message with its ref: gone, or out of the window."""
    db.executemany(
        "INSERT OR REPLACE INTO refs (room, name, application, ref, id, ts) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (room, new.name, int(new.application), new.ref, msg_id, new.ts)
            for room, new, msg_id in stored
        ],
    )


def forget(db: sqlite3.Connection, before_ts: str, batch: int) -> int:
    """Delete up to `batch` of the oldest rows stored before `before_ts`; how many."""
    deleted: int = db.execute(
        "DELETE FROM refs WHERE (room, name, application, ref) IN "
        "(SELECT room, name, application, ref FROM refs WHERE ts < ? ORDER BY ts LIMIT ?)",
        (before_ts, batch),
    ).rowcount
    return deleted
