"""The SQLite history's checkpoints, handed to another thread so that the chat never waits
for a checkpoint's fsync.

With synchronous=NORMAL the only fsync is a checkpoint's, and SQLite's automatic one runs
inside whichever commit crosses 1,000 WAL pages: on the reactor thread, for as long as the disk
takes. Given a thread to run it in, the store checkpoints there instead, about as often.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from twisted.logger import Logger

_log = Logger(namespace="wschat.sqlite_history")
# About SQLite's 1,000 pages: a message is ~1.75 pages of WAL (its row, and its share of the
# batches of search index entries and refs).
CHECKPOINT_EVERY_MESSAGES = 500
# The WAL starts over only after a checkpoint that copied all of it; commits landing while the
# thread copies leave a tail, so it tries a few passes. If traffic never lets one finish, SQLite's
# own checkpoint, at this many pages, still bounds the WAL (and its tail is small by then).
CHECKPOINT_PASSES = 4
BACKSTOP_WAL_PAGES = 4000


class Checkpointer:
    """Counts stored messages and hands one checkpoint at a time to `in_thread`."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: str,
        busy_timeout_s: float,
        in_thread: Callable[[Callable[[], None]], object],
    ) -> None:
        # SQLite's own checkpoint only as a backstop.
        db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_WAL_PAGES}")
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._in_thread = in_thread
        self._running = threading.Lock()
        self._since = 0

    def stored(self) -> None:
        """A message was committed."""
        self._since += 1
        if self._since >= CHECKPOINT_EVERY_MESSAGES and self._running.acquire(blocking=False):
            self._since = 0
            try:
                self._in_thread(self._checkpoint)
            except Exception:
                # The message is stored; the backstop checkpoint keeps the WAL bounded.
                self._running.release()
                _log.failure("could not start a checkpoint thread")

    def _checkpoint(self) -> None:
        """Runs in another thread, on a connection of its own; a PASSIVE checkpoint never
        blocks the writer."""
        try:
            db = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout_s)
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
            self._running.release()
