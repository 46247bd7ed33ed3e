"""The chat runtime's lifecycle: what must happen, in order, when twistd stops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from wschat.app.drain import DrainingService
from wschat.chat.history import HistoryStore
from wschat.server.factory import ChatFactory


class WschatService(DrainingService):
    """What makeService returns: the drain first on stop (drain.py), then the children.

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
    so it stops after them (and after the drain, wschat/drain.py): no new connections, then
    1001 to any client still open, then the database."""

    _log = Logger(namespace="wschat.service.ChatService")

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
