"""The token bucket behind --rate and --burst, and the byte budget behind --welcome-rate and
--welcome-burst."""

from __future__ import annotations

from wschat.chat.ratelimit import ByteBudget, TokenBucket


def test_burst_then_rate() -> None:
    """A full bucket allows `burst` at once, then one token per 1/rate seconds."""
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now_s=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.4)
    assert bucket.take(100.5)
    assert not bucket.take(100.5)


def test_refill_caps_at_burst() -> None:
    """A long idle time refills to `burst`, not beyond."""
    bucket = TokenBucket(rate_per_s=10.0, burst=2, now_s=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]


def test_clock_going_backwards_grants_nothing() -> None:
    """A clock step backwards neither refills nor breaks the bucket."""
    bucket = TokenBucket(rate_per_s=1.0, burst=1, now_s=50.0)
    assert bucket.take(50.0)
    assert not bucket.take(10.0)
    assert bucket.take(51.0)


def test_byte_budget_goes_into_debt_and_pays_it_back_at_the_rate() -> None:
    """Spends within the burst owe nothing; the one that overdraws is allowed and owes the
    seconds the rate takes to pay it back; the refill caps at the burst."""
    budget = ByteBudget(rate_per_s=1000.0, burst=3000, now_s=10.0)
    assert budget.spend(2000, 10.0) == 0.0
    assert budget.spend(1500, 10.0) == 0.5
    assert budget.spend(500, 10.5) == 0.5
    assert budget.spend(3000, 1000.0) == 0.0
    assert budget.spend(1, 1000.0) == 0.001
