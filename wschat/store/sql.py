"""SQLite plumbing for the history: its schema from the versioned files in schema/, and one
transaction on a connection opened with isolation_level=None (autocommit between them)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources


def migrate(db: sqlite3.Connection, latest: int) -> None:
    """Apply the schema files after the database's version, each in its own transaction; a
    database of a newer schema than `latest` is refused (RuntimeError), never misread."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > latest:
        raise RuntimeError(
            f"history database has schema v{version}; this wschat knows up to v{latest}"
        )
    for step in range(version + 1, latest + 1):
        schema = resources.files("wschat.store").joinpath(f"schema/v{step}.sql")
        db.executescript(
            f"BEGIN;\n{schema.read_text('utf-8')}\nPRAGMA user_version = {step};\nCOMMIT;"
        )


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN, then COMMIT, or ROLLBACK if the block or the commit fails (a failed COMMIT can
    leave the transaction open, and the next BEGIN would fail on it)."""
    db.execute("BEGIN")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
