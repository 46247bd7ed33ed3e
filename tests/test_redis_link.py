"""The Redis link's pieces that need no Redis: URLs, which reply parser it runs on, and how
it connects again (against a fake Redis on a Clock)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import pytest
import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from wschat.redis.link import (
    RETRY_MAX_S,
    RedisLink,
    Script,
    _ProtocolFactory,
    _Subscriber,
    parse_redis_url,
)


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
        protocol = _ProtocolFactory(protocol_class, address, lambda _: None).buildProtocol(None)
        assert isinstance(protocol, txredisapi.HiredisProtocol)


def _commands(data: bytes) -> list[list[bytes]]:
    """The RESP commands in what a client wrote."""
    commands = []
    lines = data.split(b"\r\n")
    i = 0
    while i < len(lines) - 1:
        count = int(lines[i][1:])
        commands.append([lines[i + 2 + 2 * k] for k in range(count)])
        i += 1 + 2 * count
    return commands


class _Connection(StringTransport):
    """One connection to the fake Redis: closing it tells the protocol on the next turn, as
    a real transport does."""

    def __init__(self, protocol: Any, clock: Clock) -> None:
        super().__init__()
        self.protocol = protocol
        self._clock = clock

    def loseConnection(self) -> None:
        if not self.disconnected:
            self.disconnected = True
            self._clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))

    abortConnection = loseConnection

    def answer(self, script_reply: bytes | None = None) -> None:
        """Answer every command sent so far as Redis does (SCRIPT LOAD with `script_reply`)."""
        sent, _ = self.value(), self.clear()
        for command in _commands(sent):
            if command[0] == b"SUBSCRIBE":
                for n, channel in enumerate(command[1:], 1):
                    self.protocol.dataReceived(
                        b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n"
                        % (len(channel), channel, n)
                    )
            elif command[0] == b"SCRIPT":
                sha = hashlib.sha1(command[2]).hexdigest().encode()
                self.protocol.dataReceived(script_reply or b"$40\r\n%s\r\n" % sha)
            else:
                self.protocol.dataReceived(b"+OK\r\n")


@implementer(IStreamClientEndpoint)
class _FakeRedis:
    """An endpoint standing for Redis: it refuses while down, and records each attempt."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.down = False
        # When each connection (by its protocol class) was tried.
        self.attempts: dict[type, list[float]] = {}
        self.connections: list[_Connection] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        # (ClientService's wrapper of our factory hands attribute reads on to it.)
        self.attempts.setdefault(factory._class, []).append(self._clock.seconds())
        if self.down:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        connection = _Connection(protocol, self._clock)
        protocol.makeConnection(connection)
        self.connections.append(connection)
        return succeed(protocol)

    def open(self) -> list[_Connection]:
        return [c for c in self.connections if not c.disconnected]


def _link(clock: Clock, redis: _FakeRedis) -> RedisLink:
    link = RedisLink(parse_redis_url("redis://127.0.0.1:6379/0"), clock, "a", redis)
    link.preload(Script("return 1"))
    link.startService()
    return link


def test_a_connection_lost_while_being_made_ready_is_tried_again_without_an_error() -> None:
    """Redis gone while a new connection loads its scripts: no NoTransition from
    ClientService's state machine (it used to raise from connectionLost), and both
    connections are made again within a second once Redis answers."""
    clock = Clock()
    redis = _FakeRedis(clock)
    link = _link(clock, redis)
    for _ in range(2):
        for connection in redis.open():
            connection.answer()  # SELECT, CLIENT SETNAME; the commands' SCRIPT LOAD is next
    commands = redis.connections[0]
    assert b"SCRIPT" in commands.value() and not link.up
    commands.loseConnection()
    clock.advance(0)
    clock.advance(RETRY_MAX_S)
    while redis.open() and not link.up:
        for connection in redis.open():
            connection.answer()
    assert link.up and len(redis.open()) == 2


def test_a_connection_that_cannot_be_made_ready_is_closed_and_tried_again() -> None:
    """A connection whose SCRIPT LOAD fails (Redis still loading its data) is closed, not left
    open beside the next one; the next one is ready, and losing everything later is
    an outage like any other."""
    clock = Clock()
    redis = _FakeRedis(clock)
    link = _link(clock, redis)
    first = redis.connections[0]
    first.answer()  # SELECT
    first.answer()  # CLIENT SETNAME
    first.answer(b"-LOADING Redis is loading the dataset in memory\r\n")
    clock.advance(0)
    assert first.disconnected
    clock.advance(RETRY_MAX_S)
    while not link.up:
        for connection in redis.open():
            connection.answer()
    assert len(redis.open()) == 2
    for connection in redis.open():
        connection.loseConnection()
    clock.advance(0)
    assert not link.up


def test_while_redis_is_down_it_is_tried_at_least_once_a_second_with_jitter() -> None:
    """Redis down for a minute: each connection is tried again at most RETRY_MAX_S (1 s)
    after the last attempt, at varying intervals, so chat is back within a second of Redis."""
    clock = Clock()
    redis = _FakeRedis(clock)
    redis.down = True
    link = _link(clock, redis)
    for _ in range(1200):
        clock.advance(0.05)
    assert len(redis.attempts) == 2
    for attempts in redis.attempts.values():
        assert attempts[-1] > 59
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
        assert max(gaps) <= RETRY_MAX_S
        assert len(set(gaps)) > 5, "the attempts are in step"
    redis.down = False
    clock.advance(RETRY_MAX_S)
    while not link.up:
        for connection in redis.open():
            connection.answer()
    assert link.up
