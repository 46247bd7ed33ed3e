"""The Redis link's pieces that need no Redis: URLs, and which reply parser it runs on."""

from __future__ import annotations

from pathlib import Path

import txredisapi

from wschat.redis.link import _ProtocolFactory, _Subscriber, parse_redis_url


def test_urls_give_host_port_db_credentials_and_tls(tmp_path: Path) -> None:
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


def test_replies_are_parsed_by_hiredis() -> None:
    """txredisapi's own parser leaves the rest of a read to the next reactor turn after every
    bulk string, so messages stop sharing a turn (and a write per client): the fan-out through
    Redis measured 10x slower without hiredis (docs/scaling.md)."""
    address = parse_redis_url("redis://127.0.0.1:6379/0")
    for protocol_class in (txredisapi.RedisProtocol, _Subscriber):
        protocol = _ProtocolFactory(protocol_class, address).buildProtocol(None)
        assert isinstance(protocol, txredisapi.HiredisProtocol)
