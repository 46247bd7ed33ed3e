"""The graceful drain on in-memory transports with a task.Clock: 503, 1012 spread, timeout."""

from __future__ import annotations

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from wschat.app.lifecycle import Drain, DrainingService, closes_due
from wschat.server.factory import ChatFactory
from wschat.testing import OP_CLOSE, Client, client_frame, close_code, text
from wschat.wire import CLOSE_SERVICE_RESTART


class Peer(Client):
    """A client that remembers when the server's close frame came."""

    def __init__(self, factory: ChatFactory) -> None:
        super().__init__(factory)
        self.status: bytes = self.response.split(b"\r\n", 1)[0]
        self.closed_at: float | None = None
        self.close_code: int | None = None

    def poll(self) -> None:
        for opcode, payload in self.frames():
            if opcode == OP_CLOSE and self.closed_at is None:
                self.closed_at, self.close_code = self.clock.seconds(), close_code(payload)

    def answer_close(self) -> None:
        """Reply to the close frame, and let the TCP connection end as the server then asks."""
        self.protocol.dataReceived(client_frame(OP_CLOSE, CLOSE_SERVICE_RESTART.to_bytes(2, "big")))
        self.protocol.connectionLost(Failure(ConnectionDone()))


def peers(factory: ChatFactory, count: int) -> list[Peer]:
    connected = [Peer(factory) for _ in range(count)]
    for i, peer in enumerate(connected):
        peer.protocol.dataReceived(text({"type": "join", "room": "lobby", "name": f"u{i}"}))
        peer.poll()
    return connected


def test_closes_due_are_even_over_the_window() -> None:
    """The i-th of n closes is due at i * drain / n; 0 s (or past the end) means all of them."""
    assert [closes_due(200, 5.0, t) for t in (0.0, 0.024, 0.025, 2.5, 4.98, 5.0)] == [
        1,
        1,
        2,
        101,
        200,
        200,
    ]
    assert closes_due(3, 0.0, 0.0) == 3
    assert closes_due(0, 5.0, 1.0) == 0


def test_drain_closes_each_connection_1012_evenly_and_fires_when_all_are_gone(
    factory: ChatFactory, clock: Clock, log_events: EventLoggingObserver
) -> None:
    """A 5 s drain sends 1012 every 0.5 s to 10 clients, upgrades get 503; done when all left."""
    connected = peers(factory, 10)
    drained = Drain(factory, clock, drain_s=5.0, timeout_s=30.0).run()
    assert factory.draining
    late = Peer(factory)
    assert late.status.startswith(b"HTTP/1.1 503 ")
    for _ in range(120):
        for peer in connected:
            peer.poll()
            if peer.closed_at is not None and peer.protocol in factory.protocols:
                peer.answer_close()
        clock.advance(0.05)
    assert [p.close_code for p in connected] == [CLOSE_SERVICE_RESTART] * 10
    times = sorted(p.closed_at or 0.0 for p in connected)
    assert times == pytest.approx([0.5 * i for i in range(10)], abs=0.051)
    assert drained.called and not factory.protocols
    assert [e["log_format"].split(":")[0] for e in log_events if "count" in e] == [
        "draining",
        "drained",
    ]


def test_drain_of_zero_seconds_closes_all_at_once(factory: ChatFactory, clock: Clock) -> None:
    """--drain-seconds 0 tells every connection in the same turn."""
    connected = peers(factory, 5)
    Drain(factory, clock, drain_s=0.0, timeout_s=30.0).run()
    for peer in connected:
        peer.poll()
    assert {p.closed_at for p in connected} == {0.0}


def test_shutdown_timeout_aborts_connections_that_do_not_close(
    factory: ChatFactory, clock: Clock, log_events: EventLoggingObserver
) -> None:
    """Peers that never answer the close are aborted at the timeout, and the drain ends."""
    connected = peers(factory, 3)
    drained = Drain(factory, clock, drain_s=1.0, timeout_s=2.0).run()
    clock.advance(1.99)
    assert not drained.called
    clock.advance(0.01)
    assert drained.called
    assert all(p.transport.disconnected for p in connected)
    [warning] = [e for e in log_events if e["log_level"] == LogLevel.warn and "count" in e]
    assert warning["count"] == 3 and warning["timeout_s"] == 2.0


def test_a_drain_with_no_connections_ends_at_once(factory: ChatFactory, clock: Clock) -> None:
    """Nothing to close: the drain is over before any timer runs."""
    drained = Drain(factory, clock, drain_s=5.0, timeout_s=30.0).run()
    assert drained.called and not clock.getDelayedCalls()


class Recorder(Service):
    def __init__(self, stops: list[str]) -> None:
        self.stops = stops

    def stopService(self) -> None:
        super().stopService()
        self.stops.append("child")


def test_the_children_stop_only_after_the_drain() -> None:
    """DrainingService keeps every child (the listening ports) running until the drain ends."""
    stops: list[str] = []
    drain: Deferred[None] = Deferred()
    top = DrainingService(lambda: drain)
    Recorder(stops).setServiceParent(top)
    top.startService()
    stopped = top.stopService()
    assert stops == [] and not stopped.called
    drain.callback(None)
    assert stops == ["child"] and stopped.called
