"""Token bucket: `rate` tokens a second, at most `burst` saved up; time is passed in."""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now_s

    def take(self, now_s: float) -> bool:
        """Spend one token if there is one; False means the caller is over its rate."""
        elapsed = now_s - self._last
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now_s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds from the last `take` until the bucket holds a whole token again."""
        missing = 1.0 - self._tokens
        if missing <= 0:
            return 0.0
        return missing / self._rate if self._rate > 0 else float("inf")
