"""Fixtures shared by the tests that run without a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from wschat.server.factory import ChatFactory
from wschat.testing import autobahn_clock, make_factory


@pytest.fixture
def log_events() -> Iterator[EventLoggingObserver]:
    """Every event logged during the test (by any Logger)."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    yield events
    globalLogPublisher.removeObserver(events)


@pytest.fixture
def clock() -> Iterator[Clock]:
    """A task.Clock for the test's time; Autobahn's timers (pings, handshakes) run on it too."""
    clock = Clock()
    with autobahn_clock(clock):
        yield clock


@pytest.fixture
def factory(clock: Clock) -> ChatFactory:
    """An in-memory server with the production settings (wschat.testing.make_factory)."""
    return make_factory(clock)
