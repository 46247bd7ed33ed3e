"""`python -m wschat.migrate SQLITE_PATH POSTGRES_URL`: copy a node's SQLite history into
PostgreSQL, for a chat that outgrows one node.

Every message keeps its room, id, name, text, timestamp, ref, user, guest and application mark;
each room's ids go on from the highest copied. Rooms are copied in id order, a batch per
transaction: an interrupted run is started again and goes on from each room's highest id
already copied, and nothing is stored twice. Run it before any node writes to the PostgreSQL
database (stop the node, copy, start it with `--history-db postgresql://...`). The SQLite file
is opened read-only and left as it was.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from wschat.postgres.commit import lexemes
from wschat.postgres.link import connect
from wschat.postgres.schema import SchemaTooNew, migrate
from wschat.postgres.store import REF_WINDOW_S
from wschat.postgres.url import conninfo, redacted

BATCH = 5000
# The columns a message has in today's schema, and what an older file's rows had instead.
_COLUMNS = {
    "name": None,
    "text": None,
    "ts": None,
    "ref": None,
    "user": "NULL",
    "guest": "0",
    "application": "0",
}

_INSERT = (
    'INSERT INTO messages (room, id, name, text, ts, ref, "user", guest, application, tsv) '
    "SELECT %s, b.id, b.name, b.text, b.ts, b.ref, b.usr, b.guest, b.app, "
    "array_to_tsvector(string_to_array(b.words, ' ')) "
    "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::boolean[], %s::boolean[], %s::text[]) "
    "AS b(id, name, text, ts, ref, usr, guest, app, words) "
    "ON CONFLICT (room, id) DO NOTHING"
)
_ROOM = (
    "INSERT INTO rooms (room, last_id) VALUES (%s, %s) "
    "ON CONFLICT (room) DO UPDATE SET last_id = greatest(rooms.last_id, excluded.last_id)"
)
_REF = (
    "INSERT INTO refs (room, application, name, ref, id, at) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (room, application, name, ref) DO UPDATE SET id = excluded.id, at = excluded.at "
    "WHERE refs.at < excluded.at"
)


@dataclass
class Copied:
    rooms: int = 0
    messages: int = 0


def open_sqlite(path: str) -> sqlite3.Connection:
    """Read-only: the file is neither migrated nor written (nor created if it is not there)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def select_list(db: sqlite3.Connection) -> str:
    """The message columns to read, in _COLUMNS' order, with defaults for an older schema's."""
    present = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    if not present:
        raise ValueError("the SQLite file holds no wschat history (no messages table)")
    parts = []
    for column, default in _COLUMNS.items():
        if column in present:
            parts.append(f'"{column}"')
        elif default is not None:
            parts.append(default)
        else:
            raise ValueError(f"the SQLite history has no {column!r} column")
    return ", ".join(parts)


def copy(db: sqlite3.Connection, pg: psycopg.Connection[Any], now_s: float) -> Copied:
    """Copy every room not yet fully in PostgreSQL; `pg` in autocommit mode, migrated."""
    columns = select_list(db)
    copied = Copied()
    rooms = db.execute("SELECT room, max(id) FROM messages GROUP BY room ORDER BY room")
    for room, last_id in rooms.fetchall():
        row = pg.execute(
            "SELECT coalesce(max(id), 0) FROM messages WHERE room = %s AND id <= %s",
            (room, last_id),
        ).fetchone()
        done = int(row[0]) if row else 0
        copied.rooms += 1
        for batch in _batches(db, columns, room, done):
            with pg.transaction():
                _store(pg, room, batch, now_s)
            copied.messages += len(batch)
    return copied


def _batches(
    db: sqlite3.Connection, columns: str, room: str, after: int
) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        batch = db.execute(
            f"SELECT id, {columns} FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
            (room, after, BATCH),
        ).fetchall()
        if not batch:
            return
        yield batch
        after = batch[-1][0]


def _store(
    pg: psycopg.Connection[Any], room: str, batch: list[tuple[Any, ...]], now_s: float
) -> None:
    ids, names, texts, stamps, refs, users, guests, apps = (
        list(c) for c in zip(*batch, strict=True)
    )
    pg.execute(
        _INSERT,
        (
            room,
            ids,
            names,
            texts,
            stamps,
            refs,
            users,
            [bool(g) for g in guests],
            [bool(a) for a in apps],
            [lexemes(text) for text in texts],
        ),
    )
    pg.execute(_ROOM, (room, ids[-1]))
    # The refs of the last window, so that a client's resend after the move is still known.
    for msg_id, name, ref, app, ts in zip(ids, names, refs, apps, stamps, strict=True):
        at = _seconds(ts)
        if ref is not None and at is not None and at >= now_s - REF_WINDOW_S:
            pg.execute(_REF, (room, bool(app), name, ref, msg_id, at))


def _seconds(ts: str) -> float | None:
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wschat.migrate",
        description=(
            "Copy a wschat SQLite history into PostgreSQL (ids, refs, timestamps and senders "
            "kept). Run it with the node stopped, before any node writes to PostgreSQL; an "
            "interrupted copy is resumed by running it again."
        ),
    )
    parser.add_argument("sqlite_path", help="the node's --history-db file (read, not changed)")
    parser.add_argument(
        "postgres_url", help="postgresql://user@host:5432/db?sslmode=verify-full&... (no password)"
    )
    parser.add_argument(
        "--password-file", help="file holding the PostgreSQL password (or PGPASSFILE, ~/.pgpass)"
    )
    args = parser.parse_args(argv)
    try:
        info = conninfo(args.postgres_url, args.password_file)
        db = open_sqlite(args.sqlite_path)
        started = time.monotonic()
        with connect(info) as pg:
            migrate(pg)
            copied = copy(db, pg, time.time())
    except (ValueError, OSError, sqlite3.Error, psycopg.Error, SchemaTooNew) as exc:
        print(f"wschat.migrate: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(
        f"copied {copied.messages} messages of {copied.rooms} rooms into "
        f"{redacted(args.postgres_url)} in {time.monotonic() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
