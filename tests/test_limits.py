"""The policies beside the limits: per-address admission and refusal logging."""

from __future__ import annotations

from wschat.chat.limits import AddressCap, AddressRates, RefusalLog


def test_the_cap_counts_per_address_and_frees_on_release() -> None:
    """Up to `limit` connections per address; a release makes room; others are independent."""
    cap = AddressCap(2)
    assert cap.admit("10.0.0.1") and cap.admit("10.0.0.1")
    assert not cap.admit("10.0.0.1")
    assert cap.admit("10.0.0.2")
    cap.release("10.0.0.1")
    assert cap.admit("10.0.0.1")
    assert not cap.admit("10.0.0.1")
    for _ in range(2):
        cap.release("10.0.0.1")
    assert cap.admit("10.0.0.1") and cap.admit("10.0.0.1")
    assert not cap.admit("10.0.0.1")


def test_a_refusal_counts_nothing() -> None:
    """A refused connection is not counted, so its close releases nothing it never held."""
    cap = AddressCap(1)
    assert cap.admit("a")
    assert not cap.admit("a")
    cap.release("a")
    assert cap.admit("a")
    assert not cap.admit("a")


def test_zero_means_no_cap() -> None:
    """A limit of 0 admits any number from one address."""
    cap = AddressCap(0)
    assert all(cap.admit("a") for _ in range(1000))


def test_the_proxy_hint_is_given_once_and_only_for_private_addresses() -> None:
    """A public address never gets the --trust-proxies hint; the first private one does,
    and only once."""
    cap = AddressCap(1)
    assert not cap.proxy_hint("8.8.8.8")
    assert not cap.proxy_hint("tcp4:what")
    assert cap.proxy_hint("127.0.0.1")
    assert not cap.proxy_hint("10.1.2.3")
    assert not cap.proxy_hint("::1")


def test_only_the_first_refusal_of_each_kind_in_a_run_is_logged() -> None:
    """A flood of any one refusal logs one line per run, whatever its kind; each kind logs
    its first; being served ends a run; every refusal is counted."""
    log = RefusalLog()
    assert [log.refused("rate_limited") for _ in range(3)] == [True, False, False]
    assert [log.refused("bad_json") for _ in range(3)] == [True, False, False]
    assert not log.refused("rate_limited")
    assert log.refused("unknown_type")
    log.served()
    assert log.refused("bad_json")
    assert not log.refused("bad_json")
    assert log.count == 10


def test_address_rates_share_one_bucket_while_connections_hold_it() -> None:
    """Connections from one address get the same bucket; it goes with the last of them."""
    rates = AddressRates(2.0, 3)
    first = rates.hold("10.0.0.1", 0.0)
    second = rates.hold("10.0.0.1", 0.0)
    other = rates.hold("10.0.0.2", 0.0)
    assert first is second and first is not other
    assert [first is not None and first.take(0.0) for _ in range(4)] == [True] * 3 + [False]
    rates.release("10.0.0.1")
    assert rates.hold("10.0.0.1", 0.0) is first
    for _ in range(2):
        rates.release("10.0.0.1")
    rates.release("10.0.0.1")  # more releases than holds: nothing to forget, no error
    fresh = rates.hold("10.0.0.1", 0.0)
    assert fresh is not None and fresh is not first and fresh.take(0.0)
    assert rates.hold("10.0.0.2", 0.0) is other


def test_address_rates_off_by_default() -> None:
    """With no per-address rate a connection gets no shared bucket."""
    rates = AddressRates(0.0, 100)
    assert rates.hold("10.0.0.1", 0.0) is None
