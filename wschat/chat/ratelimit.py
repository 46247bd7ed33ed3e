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


class ByteBudget:
    """`rate` bytes a second, at most `burst` saved up, charged after the fact: what a reply
    weighs is known only once it is encoded, so a spend beyond what is left is allowed and
    leaves a debt, paid back at the rate."""

    __slots__ = ("_balance", "_burst", "_last", "_rate")

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._balance = float(burst)
        self._last = now_s

    def spend(self, size: int, now_s: float) -> float:
        """Take `size` bytes; returns the seconds until the balance is back to zero (0.0: it
        was not overdrawn)."""
        elapsed = now_s - self._last
        if elapsed > 0:
            self._balance = min(self._burst, self._balance + elapsed * self._rate)
            self._last = now_s
        self._balance -= size
        if self._balance >= 0:
            return 0.0
        return -self._balance / self._rate if self._rate > 0 else float("inf")
