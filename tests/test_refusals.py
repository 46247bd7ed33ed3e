"""Refusal log lines: one address retrying a refused upgrade or request makes a line a minute,
not a line a try, and addresses rotated by an attacker grow neither the memory nor the log."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent

from wschat.chat.refusals import OTHER_ADDRESSES, RefusalThrottle
from wschat.server.factory import ChatFactory
from wschat.testing import Client

ORIGIN = "https://evil.example"


def test_the_first_is_logged_and_the_rest_of_the_window_summed_up() -> None:
    """Per address and kind: the first refusal at once, the others counted, and one summary
    with the count and the latest's detail when the window ends."""
    throttle: RefusalThrottle[int] = RefusalThrottle(window_s=60)
    assert throttle.refused("192.0.2.1", "origin", 1, now_s=0)
    assert not any(throttle.refused("192.0.2.1", "origin", n, now_s=n) for n in range(2, 51))
    assert throttle.refused("192.0.2.1", "connections", 0, now_s=1)
    assert throttle.refused("192.0.2.2", "origin", 0, now_s=2)
    assert throttle.due(59.9) == []
    [summary] = throttle.due(60)
    assert (summary.address, summary.kind, summary.count, summary.latest) == (
        "192.0.2.1",
        "origin",
        49,
        50,
    )
    assert summary.window_s == 60


def test_a_steady_attacker_gets_one_line_a_window_and_a_quiet_one_is_forgotten() -> None:
    """Refusals that go on are summed up once a window; after a window without any, the entry
    is gone and the next refusal is logged at once again."""
    throttle: RefusalThrottle[str] = RefusalThrottle(window_s=60)
    assert throttle.refused("192.0.2.1", "origin", "first", now_s=0)
    assert not throttle.refused("192.0.2.1", "origin", "second", now_s=30)
    assert [s.count for s in throttle.due(60)] == [1]
    assert not throttle.refused("192.0.2.1", "origin", "third", now_s=90)
    assert throttle.next_due_s() == 120
    assert [s.latest for s in throttle.due(120)] == ["third"]
    assert throttle.due(180) == [] and len(throttle) == 0
    assert throttle.next_due_s() is None
    assert throttle.refused("192.0.2.1", "origin", "again", now_s=181)


def test_rotating_addresses_are_counted_together_past_the_bound() -> None:
    """Past max_addresses, new addresses share one entry per kind: its first refusal is logged,
    the rest summed up, and the table never grows past the bound plus that entry."""
    throttle: RefusalThrottle[str] = RefusalThrottle(window_s=60, max_addresses=10)
    logged = [throttle.refused(f"10.0.{n // 256}.{n % 256}", "origin", "x", 0) for n in range(5000)]
    assert logged.count(True) == 11
    assert len(throttle) == 11
    [others] = throttle.due(60)
    assert (others.address, others.count) == (OTHER_ADDRESSES, 5000 - 11)
    assert throttle.due(120) == [] and len(throttle) == 0


def refusal_lines(log_events: EventLoggingObserver) -> list[str]:
    """What a refused handshake wrote at info or above, by any logger (Autobahn's included)."""
    return [
        formatEvent(e)
        for e in log_events
        if e["log_level"] >= LogLevel.info
        and ("evil.example" in formatEvent(e) or e["log_namespace"].startswith("autobahn."))
    ]


def test_300_refused_handshakes_make_one_line_and_one_summary(
    factory: ChatFactory, clock: Clock, log_events: EventLoggingObserver
) -> None:
    """300 upgrades from one address with a foreign Origin, each answered 403: one line at once
    (admission.py's, nothing from Autobahn), then one summary naming the 299 others."""
    for _ in range(300):
        assert Client(factory, origin=ORIGIN).response.startswith(b"HTTP/1.1 403")
    [first] = refusal_lines(log_events)
    assert first.startswith("refused tcp4:192.168.1.1:54321: origin 'https://evil.example' not")
    clock.advance(60)
    [_, summary] = refusal_lines(log_events)
    assert summary.endswith("(and 299 more such refusals from 192.168.1.1 in the last 60 s)")
    clock.advance(120)
    assert len(refusal_lines(log_events)) == 2


def test_autobahn_handshake_failures_are_throttled_too(
    factory: ChatFactory, clock: Clock, log_events: EventLoggingObserver
) -> None:
    """Upgrades Autobahn itself fails (here, over --max-connections: 503) are logged by us,
    once for the address, instead of Autobahn's info and warning for each."""
    factory.setProtocolOptions(maxConnections=1)
    Client(factory)
    for _ in range(50):
        assert Client(factory).response.startswith(b"HTTP/1.1 503")
    autobahn = [e for e in log_events if e["log_namespace"].startswith("autobahn.")]
    assert [e for e in autobahn if e["log_level"] >= LogLevel.info] == []
    lines = [formatEvent(e) for e in log_events if "maximum number" in formatEvent(e)]
    assert lines == [
        "refused tcp4:192.168.1.1:54321: 'maximum number of connections reached' (503)"
    ]
    clock.advance(60)
    lines = [formatEvent(e) for e in log_events if "maximum number" in formatEvent(e)]
    assert lines[1].endswith("(and 49 more such refusals from 192.168.1.1 in the last 60 s)")
