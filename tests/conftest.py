"""Fixtures shared by the tests that run without a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from wschat.postgres.store import PostgresHistory, open_store
from wschat.postgres.url import conninfo
from wschat.redis.bus import BusStore
from wschat.redis.link import parse_redis_url
from wschat.redis.node import RedisNode, redis_node
from wschat.server.factory import ChatFactory
from wschat.testing import autobahn_clock, make_factory

from .e2e.redis import RedisServer
from .pgkit import PgServer


@pytest.fixture
def log_events() -> Iterator[EventLoggingObserver]:
    """Every event logged during the test (by any Logger)."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    yield events
    globalLogPublisher.removeObserver(events)


# A real redis-server for the tests that run the Redis engine's scripts (the contract suites of
# tests/test_history.py and tests/test_roster.py): one per session, emptied for each test.


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server without persistence; missing, it skips (fails with CI=true)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


RedisNodeFactory = Callable[..., Awaitable[RedisNode]]
REDIS_UP_TIMEOUT_S = 5.0


@pytest_twisted.async_yield_fixture
async def redis_nodes(redis_server: RedisServer) -> AsyncIterator[RedisNodeFactory]:
    """`await make(node_name, keep, store=None)`: a node's Redis engine, started and connected,
    on the emptied redis-server (its history in Redis, `keep` messages a room, or in `store`);
    every one is stopped after the test."""
    redis_server.cli("FLUSHALL")
    started: list[RedisNode] = []

    async def make(name: str, keep: int, store: BusStore | None = None) -> RedisNode:
        address = parse_redis_url(redis_server.url)
        node = redis_node(address, reactor, name, keep, store)
        for service in node.services:
            service.startService()
        started.append(node)
        waited = 0.0
        while not node.link.up:
            if waited > REDIS_UP_TIMEOUT_S:
                raise TimeoutError(f"{name} did not connect to redis")
            await deferLater(reactor, 0.01)
            waited += 0.01
        return node

    yield make
    for node in reversed(started):
        for service in reversed(node.services):
            await maybeDeferred(service.stopService)


# A real PostgreSQL for the PostgreSQL store's tests: one server per session (initdb takes
# seconds), a new database for each test (milliseconds).


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The tests' own PostgreSQL; missing, it skips (fails with CI=true)."""
    server = PgServer().start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of an empty database of this test's own."""
    return pg_server.url(pg_server.create_database())


PgStoreFactory = Callable[..., PostgresHistory]


@pytest.fixture
def pg_stores(pg_url: str) -> Iterator[PgStoreFactory]:
    """`make(keep=0, now_s=..., ref_window_s=...)`: a started store on the test's database
    (migrated); every one is closed after the test."""
    made: list[PostgresHistory] = []

    def make(keep: int = 0, **options: Any) -> PostgresHistory:
        store = open_store(conninfo(pg_url), "test", reactor, keep, **options)
        store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def clock() -> Iterator[Clock]:
    """A task.Clock for the test's time; Autobahn's timers (pings, handshakes) run on it too."""
    clock = Clock()
    with autobahn_clock(clock):
        yield clock


@pytest.fixture
def factory(clock: Clock) -> ChatFactory:
    """An in-memory server with the production settings (wschat.testing.make_factory)."""
    return make_factory(clock)
