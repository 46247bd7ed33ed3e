"""The Redis link's pieces that need no Redis: URLs, and which reply parser it runs on."""

from __future__ import annotations

from pathlib import Path

import pytest
import txredisapi

from wschat.redis.link import _ProtocolFactory, _Subscriber, parse_redis_url


def test_urls_give_host_port_db_credentials_and_tls(tmp_path: Path) -> None:
    """A URL's host, port, db, credentials and scheme become the address; a password file wins."""
    plain = parse_redis_url("redis://:s3cret@db.example:6380/2")
    assert (plain.host, plain.port, plain.db, plain.password, plain.tls) == (
        "db.example",
        6380,
        2,
        "s3cret",
        False,
    )
    assert plain.shown == "redis://:***@db.example:6380/2"
    secret = tmp_path / "pass"
    secret.write_text("from-file\n")
    tls = parse_redis_url("rediss://user@db.example", str(secret), "/etc/ca.pem")
    assert (tls.username, tls.password, tls.tls, tls.port, tls.ca_file) == (
        "user",
        "from-file",
        True,
        6379,
        "/etc/ca.pem",
    )
    unix = parse_redis_url("unix:///run/redis.sock?db=3")
    assert (unix.path, unix.db) == ("/run/redis.sock", 3)


def test_a_percent_encoded_password_is_never_shown() -> None:
    """The shown URL is rebuilt with *** for the password as written (percent-encoded or not),
    and so is the URL in a usage error."""
    cases = {
        "redis://:s3cr%40t@db.example:6380/2": "redis://:***@db.example:6380/2",
        "rediss://us%3Aer:p%3Aw@[::1]:7000": "rediss://us%3Aer:***@[::1]:7000",
        "unix://:s3cr%40t@/run/redis.sock?db=3": "unix://:***@/run/redis.sock?db=3",
        "redis://user@db.example": "redis://user@db.example",
    }
    for url, shown in cases.items():
        assert parse_redis_url(url).shown == shown
    with pytest.raises(ValueError) as refused:
        parse_redis_url("http://:s3cr%40t@db.example")
    assert "s3cr" not in str(refused.value) and "***" in str(refused.value)


def test_replies_are_parsed_by_hiredis() -> None:
    """txredisapi's own parser leaves the rest of a read to the next reactor turn after every
    bulk string, so messages stop sharing a turn (and a write per client): the fan-out through
    Redis measured 10x slower without hiredis (docs/scaling.md)."""
    address = parse_redis_url("redis://127.0.0.1:6379/0")
    for protocol_class in (txredisapi.RedisProtocol, _Subscriber):
        protocol = _ProtocolFactory(protocol_class, address).buildProtocol(None)
        assert isinstance(protocol, txredisapi.HiredisProtocol)
