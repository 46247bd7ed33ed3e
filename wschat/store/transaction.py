"""One transaction on a connection opened with isolation_level=None (autocommit between them)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


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
