"""A node's connections to PostgreSQL, used from threads of the link's own, never from the
reactor thread; and whether the database is up.

psycopg's connections block, so each piece of work runs in a thread on a connection of its own
and its result comes back to the reactor as a Deferred. Writes and reads have a pool of threads
each, so that a burst of searches never holds a say back. When the database is out of reach (it
refused or dropped a connection, shut down, or is a standby after a failover) the link goes down:
work asked for meanwhile fails at once with StorageUnavailable, and the link tries again with
backoff until a connection answers. The outage is logged once when it starts and once when it
ends. While up, a heartbeat every few seconds notices a database that went away while idle.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from wschat.chat.errors import StorageUnavailable

T = TypeVar("T")
Work = Callable[[psycopg.Connection[Any]], T]
Connect = Callable[[str], psycopg.Connection[Any]]

WRITE_THREADS = 3
READ_THREADS = 4
# Reconnection attempts: 0.1 s after the outage began, then twice as long each time up to
# this, plus up to RETRY_JITTER_S so that several nodes do not knock in step.
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
RETRY_JITTER_S = 0.25
HEARTBEAT_S = 5.0
OUT_OF_REACH = "the history database is out of reach; retry later"
_log = Logger(namespace="wschat.postgres")
# Errors after which the connection is no use, whatever state libpq thinks it is in: the server
# shut down or is starting, or is a read-only standby (a failover left us on the old primary).
_DOWN_ERRORS: tuple[type[Exception], ...] = (
    psycopg.errors.AdminShutdown,
    psycopg.errors.CrashShutdown,
    psycopg.errors.CannotConnectNow,
    psycopg.errors.ReadOnlySqlTransaction,
)


class Down(Exception):
    """Raised in a thread: the work failed because the database is out of reach."""


def connect(conninfo: str) -> psycopg.Connection[Any]:
    """Each statement is its own transaction (autocommit): one that returns has committed."""
    return psycopg.connect(conninfo, autocommit=True)


class PgLink:
    def __init__(
        self,
        conninfo: str,
        reactor: Any,
        shown: str,
        connect: Connect = connect,
        write_threads: int = WRITE_THREADS,
        read_threads: int = READ_THREADS,
    ) -> None:
        self._conninfo = conninfo
        self.reactor = reactor
        self.shown = shown
        self._connect = connect
        self._writers = ThreadPool(1, write_threads, "wschat-pg-write")
        self._readers = ThreadPool(1, read_threads, "wschat-pg-read")
        # Idle connections, each with the generation it was made in: an outage starts a new
        # generation, and connections of an older one are closed rather than used again.
        self._idle: list[tuple[int, psycopg.Connection[Any]]] = []
        self._lock = threading.Lock()
        self._generation = 0
        self.up = True
        self._down_since: float | None = None
        self._retry_s = RETRY_FIRST_S
        self._timer: IDelayedCall | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the heartbeat (the threads start with the first piece of work: never before
        twistd forked into a daemon, whoever uses the link)."""
        self._schedule(HEARTBEAT_S, self._heartbeat)

    def _threads(self) -> None:
        if not self._writers.started:
            self._writers.start()
            self._readers.start()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._writers.started:
            self._writers.stop()
            self._readers.stop()
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()

    def write(self, work: Work[T], ref: str | None = None) -> Deferred[T]:
        return self._run(self._writers, work, ref)

    def read(self, work: Work[T], ref: str | None = None) -> Deferred[T]:
        return self._run(self._readers, work, ref)

    def _run(self, pool: ThreadPool, work: Work[T], ref: str | None) -> Deferred[T]:
        if not self.up:
            return fail(StorageUnavailable(OUT_OF_REACH, ref))
        self._threads()
        done: Deferred[T] = deferToThreadPool(self.reactor, pool, self._in_thread, work)
        done.addErrback(self._failed, ref)
        return done

    # In a thread of the pools.

    def _take(self) -> tuple[int, psycopg.Connection[Any]]:
        with self._lock:
            generation = self._generation
            while self._idle:
                made, conn = self._idle.pop()
                if made == generation and not conn.closed:
                    return made, conn
                conn.close()
        try:
            return generation, self._connect(self._conninfo)
        except psycopg.Error as exc:
            raise Down(str(exc).strip()) from None

    def _in_thread(self, work: Work[T]) -> T:
        made, conn = self._take()
        try:
            result = work(conn)
        except psycopg.Error as exc:
            if conn.broken or conn.closed or isinstance(exc, _DOWN_ERRORS):
                conn.close()
                raise Down(str(exc).strip()) from None
            self._give_back(made, conn)
            raise
        except BaseException:
            conn.close()
            raise
        self._give_back(made, conn)
        return result

    def _give_back(self, made: int, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if made == self._generation and not self._stopped:
                self._idle.append((made, conn))
                return
        conn.close()

    # Back on the reactor thread.

    def _failed(self, failure: Failure, ref: str | None) -> Failure:
        if failure.check(Down):
            self._went_down(str(failure.value))
            raise StorageUnavailable(OUT_OF_REACH, ref) from None
        if failure.check(psycopg.Error):
            _log.failure("a history statement failed", failure)
            raise StorageUnavailable("the history database refused; retry later", ref) from None
        return failure

    def _went_down(self, reason: str) -> None:
        if not self.up:
            return
        self.up = False
        self._down_since = self.reactor.seconds()
        with self._lock:
            self._generation += 1
        _log.error(
            "the history database at {url} is out of reach: {reason}",
            url=self.shown,
            reason=reason,
        )
        self._retry_s = RETRY_FIRST_S
        self._schedule(self._retry_s, self._try_again)

    def _try_again(self) -> None:
        self._timer = None
        self._threads()
        probe = deferToThreadPool(self.reactor, self._readers, self._in_thread, _ping)
        probe.addCallbacks(self._came_back, self._still_down)

    def _came_back(self, _: object) -> None:
        if self._stopped:
            return
        outage_s = self.reactor.seconds() - (self._down_since or self.reactor.seconds())
        self.up = True
        self._down_since = None
        _log.info(
            "the history database at {url} is back after {outage_s:.1f}s",
            url=self.shown,
            outage_s=outage_s,
        )
        self._schedule(HEARTBEAT_S, self._heartbeat)

    def _still_down(self, failure: Failure) -> None:
        if not failure.check(Down, psycopg.Error):
            _log.failure("reconnecting to the history database", failure)
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        self._schedule(self._retry_s + random.uniform(0, RETRY_JITTER_S), self._try_again)

    def _heartbeat(self) -> None:
        self._timer = None
        if not self.up:
            return
        beat = self.read(_ping)
        beat.addErrback(lambda _: None)
        beat.addCallback(self._beaten)

    def _beaten(self, _: object) -> None:
        if self.up:
            self._schedule(HEARTBEAT_S, self._heartbeat)

    def _schedule(self, delay_s: float, call: Callable[[], None]) -> None:
        if self._stopped:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay_s, call)


def _ping(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT 1")
