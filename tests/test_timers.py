"""The shared bucket timer behind Autobahn's pings and handshake timeouts."""

from __future__ import annotations

from twisted.internet.task import Clock

from wschat.server.timers import BUCKET_S, BucketTimer


def test_fires_never_early_and_at_most_one_bucket_late() -> None:
    """A 0.5 s deadline fires between 0.5 s and 0.5 s + BUCKET_S, not rounded to seconds."""
    clock = Clock()
    clock.advance(1000.03)
    timer = BucketTimer(clock)
    fired: list[float] = []
    timer.call_later(0.5, lambda: fired.append(clock.seconds()))
    clock.advance(0.49)
    assert fired == []
    clock.advance(BUCKET_S)
    assert len(fired) == 1 and 1000.53 <= fired[0] <= 1000.53 + BUCKET_S


def test_one_delayed_call_per_bucket() -> None:
    """Many deadlines in the same bucket share one reactor timer."""
    clock = Clock()
    timer = BucketTimer(clock)
    fired: list[int] = []
    for i in range(1000):
        timer.call_later(10.0, fired.append, i)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(10.0)
    assert fired == list(range(1000))


def test_cancel_is_idempotent_and_safe_after_firing() -> None:
    """Cancelled calls never run; cancelling twice or after firing does nothing."""
    clock = Clock()
    timer = BucketTimer(clock)
    fired: list[str] = []
    kept = timer.call_later(1.0, fired.append, "kept")
    dropped = timer.call_later(1.0, fired.append, "dropped")
    dropped.cancel()
    dropped.cancel()
    clock.advance(2.0)
    kept.cancel()
    assert fired == ["kept"]


def test_cancelled_call_lets_go_of_its_target() -> None:
    """A cancelled deadline does not keep its connection alive until its bucket fires."""
    import gc
    import weakref

    class Connection:
        def ping(self) -> None:
            raise AssertionError("cancelled")

    clock = Clock()
    timer = BucketTimer(clock)
    connection = Connection()
    gone = weakref.ref(connection)
    timer.call_later(60.0, connection.ping).cancel()
    del connection
    gc.collect()
    assert gone() is None
    clock.advance(61.0)
