"""Group commit: the appends that arrive while a transaction is in flight go together into the
next one.

One transaction per say would spend a commit (a WAL flush, milliseconds on a real disk) and a
thread hop per message. Here every append is queued on the reactor thread; whenever one of the
writer connections is free, everything queued goes into one call of `wschat_append` (a single
statement, so a single round trip and commit) and each append's Deferred fires once that
statement has returned, that is once the batch is committed.

Order: a room with a message in a transaction in flight waits for it before its next messages
go out (they join a later batch), so this node's messages of a room get ids in the order they
were said; rooms in different transactions commit in any order. Idempotency: a `ref` repeated
within one batch is found by the statement itself and stored once.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from wschat.chat.errors import StorageUnavailable
from wschat.chat.model import Message
from wschat.chat.ports import NewMessage
from wschat.chat.search import words
from wschat.postgres.link import OUT_OF_REACH, WRITE_THREADS, PgLink

# Messages in one transaction at most: a larger batch holds its rooms' locks longer.
MAX_BATCH = 512
# Appends waiting for a free connection at most; beyond, a say is refused rather than queued
# without bound while the database is slow.
MAX_QUEUED = 20_000
# A lexeme is less than 2 KiB in PostgreSQL; a longer word (a 2,000-character one can weigh
# 8 KB) is indexed by its beginning, which is all a query (200 characters at most) can ask for.
MAX_LEXEME_BYTES = 2047

_ASCII_WORD_RE = re.compile(r"\w+")
_APPEND_SQL = (
    'SELECT ord, id, fresh, text, ts, "user", guest FROM wschat_append('
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::boolean[], %s::boolean[], %s, %s, %s)"
)

Appended = tuple[Message, bool]
_log = Logger(namespace="wschat.postgres")


def lexemes(text: str) -> str:
    """What the index gets for `text`: its folded words (chat/search.py), space separated, each
    cut to what a lexeme may weigh (a cut word still matches as a prefix, and no whole query
    word is that long)."""
    # ASCII folds to its lower case (NFKD leaves it be, it has no accents): a third of the
    # cost of a 140-character message, which fold() reads a character at a time.
    found = _ASCII_WORD_RE.findall(text.lower()) if text.isascii() else words(text)
    return " ".join(
        w if len(w) * 4 <= MAX_LEXEME_BYTES else _cut(w, MAX_LEXEME_BYTES) for w in found
    )


def _cut(word: str, max_bytes: int) -> str:
    return word.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


@dataclass(slots=True)
class _Queued:
    room: str
    new: NewMessage
    done: Deferred[Appended]


class GroupCommit:
    def __init__(
        self,
        link: PgLink,
        keep: int,
        now_s: Callable[[], float],
        ref_window_s: float,
        connections: int = WRITE_THREADS,
    ) -> None:
        self._link = link
        self._keep = keep
        self._now_s = now_s
        self._ref_window_s = ref_window_s
        self._connections = connections
        self._queued: deque[_Queued] = deque()
        self._in_flight = 0
        self._busy: set[str] = set()

    def append(self, room: str, new: NewMessage) -> Deferred[Appended]:
        if not self._link.up:
            return fail(StorageUnavailable(OUT_OF_REACH, new.ref))
        if len(self._queued) >= MAX_QUEUED:
            return fail(StorageUnavailable("the history database is behind; retry later", new.ref))
        done: Deferred[Appended] = Deferred()
        self._queued.append(_Queued(room, new, done))
        self._pump()
        return done

    def _pump(self) -> None:
        while self._in_flight < self._connections and self._queued:
            batch = self._take()
            if not batch:
                return
            rooms = {q.room for q in batch}
            self._busy |= rooms
            self._in_flight += 1
            now_s = self._now_s()
            args = _arguments(batch, now_s, now_s - self._ref_window_s, self._keep)
            stored = self._link.write(partial(_store, args=args))
            stored.addBoth(self._stored, batch, rooms)

    def _take(self) -> list[_Queued]:
        """The queued appends whose rooms have nothing in flight, oldest first; once one of a
        room's stays queued, so do its later ones."""
        taken: list[_Queued] = []
        left: deque[_Queued] = deque()
        held = set(self._busy)
        for queued in self._queued:
            if len(taken) < MAX_BATCH and queued.room not in held:
                taken.append(queued)
            else:
                left.append(queued)
                held.add(queued.room)
        self._queued = left
        return taken

    def _stored(
        self, result: list[tuple[Any, ...]] | Failure, batch: list[_Queued], rooms: set[str]
    ) -> None:
        self._in_flight -= 1
        self._busy -= rooms
        if isinstance(result, Failure):
            reason = (
                result.value.message
                if isinstance(result.value, StorageUnavailable)
                else "the message was not stored; retry later"
            )
            if not result.check(StorageUnavailable):
                _log.failure("storing a batch of messages", result)
            waiting = batch
            if not self._link.up:
                # Everything queued would fail the same way: say so now, not one by one.
                waiting = batch + list(self._queued)
                self._queued.clear()
            self._pump()
            for queued in waiting:
                queued.done.errback(StorageUnavailable(reason, queued.new.ref))
            return
        self._pump()
        for ord_, msg_id, fresh, text, ts, user, guest in result:
            queued = batch[ord_ - 1]
            new = queued.new
            msg = Message(queued.room, msg_id, new.name, text, ts, new.ref, user, guest)
            queued.done.callback((msg, fresh))


def _arguments(
    batch: list[_Queued], now_s: float, ref_since_s: float, keep: int
) -> tuple[Any, ...]:
    news = [q.new for q in batch]
    return (
        [q.room for q in batch],
        [n.name for n in news],
        [n.text for n in news],
        None,
        [n.ts for n in news],
        [n.ref for n in news],
        [n.user for n in news],
        [n.guest for n in news],
        [n.application for n in news],
        now_s,
        ref_since_s,
        keep,
    )


def _store(conn: psycopg.Connection[Any], *, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """In a writer thread: the words are folded here, off the reactor thread."""
    texts = args[2]
    with_words = (*args[:3], [lexemes(text) for text in texts], *args[4:])
    return conn.execute(_APPEND_SQL, with_words).fetchall()
