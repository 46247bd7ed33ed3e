"""Fixtures shared by the tests that run without a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher


@pytest.fixture
def log_events() -> Iterator[EventLoggingObserver]:
    """Every event logged during the test (by any Logger)."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    yield events
    globalLogPublisher.removeObserver(events)
