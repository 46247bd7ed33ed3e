"""The service tree's lifecycle: what must happen, in order, when twistd stops.

On SIGTERM (twistd stops the service tree) the drain runs first, before any port stops:
upgrades are refused with HTTP 503 and /healthz answers 503 "draining", so a load balancer
takes the instance out; the open connections are closed with 1012 ("service restart") one after
another over `drain_s`, so that their clients do not all reconnect in the same instant; then
the ports stop, and the chat service closes the database last. The whole drain is bounded by
`timeout_s`: connections still open then are aborted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from wschat.chat.ports import HistoryStore
from wschat.logger import NamedLogger
from wschat.server.factory import ChatFactory
from wschat.server.protocol import STATE_OPEN, ChatProtocol

DEFAULT_DRAIN_S = 5.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
# Closes due within this long of each other go out in one reactor turn (a timer per
# connection would be 10,000 timers for 10,000 connections, to no one's benefit).
DRAIN_TICK_S = 0.05


def closes_due(total: int, drain_s: float, elapsed_s: float) -> int:
    """How many of `total` connections are to be closed `elapsed_s` into a drain of
    `drain_s`: the i-th (from 0) at i * drain_s / total, evenly over the window."""
    if total == 0:
        return 0
    if drain_s <= 0 or elapsed_s >= drain_s:
        return total
    return min(total, math.floor(elapsed_s * total / drain_s) + 1)


class Drain:
    """One drain of a factory's connections; `run()` fires when all are closed."""

    _log = NamedLogger("wschat.drain.Drain")

    def __init__(
        self, factory: ChatFactory, clock: IReactorTime, drain_s: float, timeout_s: float
    ) -> None:
        self._factory = factory
        self._clock = clock
        self.drain_s = drain_s
        self.timeout_s = timeout_s
        self._queue: list[ChatProtocol] = []
        self._told = 0
        self._started_s = 0.0
        self._next: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._done: Deferred[None] = Deferred()

    def run(self) -> Deferred[None]:
        factory = self._factory
        factory.draining = True
        self._started_s = self._clock.seconds()
        self._queue = list(factory.protocols)
        self._log.info(
            "draining: refusing new WebSocket connections, closing {count} with 1012 over "
            "{drain_s}s (shutdown timeout {timeout_s}s)",
            count=len(self._queue),
            drain_s=self.drain_s,
            timeout_s=self.timeout_s,
        )
        self._deadline = self._clock.callLater(self.timeout_s, self._time_up)
        closed = [protocol.is_closed for protocol in self._queue]
        DeferredList(closed, consumeErrors=True).addCallback(self._all_closed)
        self._tick()
        return self._done

    def _tick(self) -> None:
        self._next = None
        total = len(self._queue)
        elapsed_s = self._clock.seconds() - self._started_s
        due = closes_due(total, self.drain_s, elapsed_s)
        while self._told < due:
            protocol = self._queue[self._told]
            self._told += 1
            if protocol.state == STATE_OPEN:
                protocol.restart()
        if self._told < total:
            next_s = self._told * self.drain_s / total
            self._next = self._clock.callLater(max(next_s - elapsed_s, DRAIN_TICK_S), self._tick)

    def _all_closed(self, _: object) -> None:
        if self._done.called:
            return  # after the timeout
        self._log.info(
            "drained: {count} connections closed in {elapsed_s:.1f}s",
            count=len(self._queue),
            elapsed_s=self._clock.seconds() - self._started_s,
        )
        self._finish()

    def _time_up(self) -> None:
        self._deadline = None
        left = [p for p in self._queue if not p.is_closed.called]
        self._log.warn(
            "shutdown timeout: {count} connections still open after {timeout_s}s; aborting them",
            count=len(left),
            timeout_s=self.timeout_s,
        )
        self._finish()
        for protocol in left:
            protocol.dropConnection(abort=True)

    def _finish(self) -> None:
        for call in (self._next, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._next = self._deadline = None
        self._done.callback(None)


class DrainingService(MultiService):
    """The top of wschat's service tree. Stopping it drains first, while every child (the
    listening ports among them) still runs; then it stops the children as MultiService does."""

    _log = NamedLogger("wschat.drain.DrainingService")

    def __init__(self, drain: Callable[[], Deferred[None]]) -> None:
        super().__init__()
        self._drain = drain

    def stopService(self) -> Deferred[None]:
        drained: Deferred[None] = maybeDeferred(self._drain)

        def failed(failure: Failure) -> None:
            self._log.failure("the drain failed; stopping anyway", failure)

        def stop_children(_: None) -> Deferred[None]:
            stopped: Deferred[None] = maybeDeferred(super(DrainingService, self).stopService)
            return stopped

        return drained.addErrback(failed).addCallback(stop_children)


class WschatService(DrainingService):
    """What makeService returns: the drain first on stop, then the children.

    twistd parents it to the application it makes for a plugin, then asks that application for
    an ILogObserver component before it begins logging; with --log-format json this service
    puts its observer there (logs.py)."""

    def __init__(
        self, drain: Callable[[], Deferred[None]], log_observer: ILogObserver | None = None
    ) -> None:
        super().__init__(drain)
        self._log_observer = log_observer

    def setServiceParent(self, parent: Any) -> None:
        if self._log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)


class ChatService(Service):
    """Owns the factory and the store. Added to the MultiService before the listening ports,
    so it stops after them (and after the drain): no new connections, then
    1001 to any client still open, then the database."""

    _log = NamedLogger("wschat.service.ChatService")

    def __init__(self, factory: ChatFactory, store: HistoryStore, reactor: IReactorTime) -> None:
        self.factory = factory
        self.store = store
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        # A Site does not start a factory wrapped in WebSocketResource; we do.
        self.factory.doStart()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        closing = [p.is_closed for p in self.factory.protocols]
        self.factory.go_away()
        done: Deferred[None] = Deferred()

        def closed(_: object = None) -> None:
            if not done.called:
                done.callback(None)

        DeferredList(closing, consumeErrors=True).addBoth(closed)
        # Autobahn aborts each connection after its close-handshake timeout, so the wait is
        # bounded anyway; this is the backstop.
        timeout = self._reactor.callLater(
            self.factory.settings.close_handshake_timeout_s + 1.0, closed
        )

        def finish(_: None) -> None:
            if timeout.active():
                timeout.cancel()
            self.factory.doStop()
            self.store.close()
            self._log.info("stopped: connections closed, history database closed")

        return done.addCallback(finish)
