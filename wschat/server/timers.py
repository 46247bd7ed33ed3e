"""Shared timers for Autobahn's per-connection deadlines (pings, handshakes).

Autobahn asks its factory's batched timer for every ping and handshake timeout; wschat/private.py
puts this one there. txaio's own quantizes to whole seconds (`int(now + delay)`), so a 0.5 s
timeout fires at once; one DelayedCall per connection instead costs ~600 bytes each at tens of
thousands of idle connections. This timer puts deadlines into buckets of BUCKET_S, rounded *up*:
nothing fires early, at most BUCKET_S late, and there is one DelayedCall per bucket.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

BUCKET_S = 0.1


def _nothing(*args: object, **kwargs: object) -> None:
    pass


class TimerCall:
    __slots__ = ("_args", "_func", "_kwargs", "cancelled")

    def __init__(
        self, func: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._func = func
        self._args = args
        self._kwargs = kwargs
        self.cancelled = False

    def cancel(self) -> None:
        """Idempotent, and harmless after the call fired (Autobahn cancels late sometimes)."""
        self.cancelled = True
        # Let go of the callable too: it is a bound method of a connection that may be gone,
        # and the bucket holding this call may fire only a ping interval from now.
        self._func = _nothing
        self._args = ()
        self._kwargs = {}

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._func(*self._args, **self._kwargs)


class BucketTimer:
    def __init__(self, clock: IReactorTime, bucket_s: float = BUCKET_S) -> None:
        self._clock = clock
        self._bucket_s = bucket_s
        self._buckets: dict[int, list[TimerCall]] = {}

    def call_later(
        self, delay: float, func: Callable[..., object], *args: Any, **kwargs: Any
    ) -> TimerCall:
        call = TimerCall(func, args, kwargs)
        now = self._clock.seconds()
        bucket = math.ceil((now + delay) / self._bucket_s)
        calls = self._buckets.get(bucket)
        if calls is None:
            calls = self._buckets[bucket] = []
            self._clock.callLater(max(0.0, bucket * self._bucket_s - now), self._fire, bucket)
        calls.append(call)
        return call

    def _fire(self, bucket: int) -> None:
        for call in self._buckets.pop(bucket, ()):
            call.fire()
