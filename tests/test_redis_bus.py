"""The bus of several nodes over a store of record that draws the ids itself (as PostgreSQL
does): two nodes on a real redis-server share one store; each says what it committed on the
room's channel, and every node hands its members every id in order, once, whatever
announcement was lost on the way. And the wiring of `--redis` with a PostgreSQL history."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.python import usage

from wschat.app.options import Options
from wschat.app.wiring import make_backend
from wschat.chat.errors import StorageUnavailable
from wschat.chat.memory import MemoryHistory
from wschat.chat.model import Message, Recovery
from wschat.chat.ports import NewMessage, RoomEvent
from wschat.postgres.store import PostgresHistory, StoreService
from wschat.redis.bus import ANNOUNCE_WAIT_S, MAX_GAP_READ, RedisBus
from wschat.redis.keys import client_name
from wschat.redis.node import RedisNode
from wschat.redis.stream import RedisStream

from .conftest import RedisNodeFactory
from .e2e.redis import RedisServer

WAIT_S = 10.0


class SharedHistory(MemoryHistory):
    """One in-process store for both nodes, which can be made to fail as a store of record
    that is out of reach does (at once, with StorageUnavailable)."""

    def __init__(self) -> None:
        super().__init__(100_000)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StorageUnavailable("the store is down (test)")

    async def append(self, room: str, new: NewMessage) -> tuple[Message, bool]:
        self._check()
        return await super().append(room, new)

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        self._check()
        return await super().after(room, since, limit)

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        self._check()
        return await super().page(room, before, after, limit)

    async def last_id(self, room: str) -> int:
        self._check()
        return await super().last_id(room)


@dataclass
class Member:
    """What one node hands its members of a room: message ids, and resyncs."""

    ids: list[int] = field(default_factory=list)
    resyncs: int = 0

    def deliver(self, room: str, event: RoomEvent) -> None:
        if isinstance(event, Message):
            self.ids.append(event.id)

    def resync(self, room: str) -> None:
        self.resyncs += 1


async def until(condition: Callable[[], bool], what: str) -> None:
    waited = 0.0
    while not condition():
        assert waited < WAIT_S, f"timed out waiting for {what}"
        await deferLater(reactor, 0.01)
        waited += 0.01


async def two_nodes(
    make_node: RedisNodeFactory, store: SharedHistory, room: str = "lobby"
) -> list[tuple[RedisNode, Member]]:
    nodes = []
    for i in range(2):
        node = await make_node(f"n{i}", 0, store)
        member = Member()
        node.broker.attach(member.deliver, member.resync)
        await node.broker.watch(room)
        nodes.append((node, member))
    return nodes


def say(i: int) -> NewMessage:
    return NewMessage("alice", f"m{i}", "t", f"r{i}")


def client_id(redis: RedisServer, name: str) -> str:
    for line in redis.cli("CLIENT", "LIST").splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("name") == name:
            return fields["id"]
    raise AssertionError(f"no client named {name}")


@pytest_twisted.ensureDeferred
async def test_both_nodes_hand_every_id_in_order_once(redis_nodes: RedisNodeFactory) -> None:
    """200 says through both nodes at once: each node's members get ids 1..200 in order, once
    each, and every say is acked with its id before its node's members get it."""
    store = SharedHistory()
    (n0, m0), (n1, m1) = await two_nodes(redis_nodes, store)
    # Each say's ack comes before its node's members get it.
    own: dict[int, list[int]] = {0: [], 1: []}

    def ack_on(i: int, member: Member) -> Callable[[Message, bool], None]:
        def stored(msg: Message, fresh: bool) -> None:
            assert msg.id not in member.ids
            own[i].append(msg.id)

        return stored

    await gatherResults(
        [
            Deferred.fromCoroutine(
                (n0 if i % 2 else n1).broker.publish(
                    "lobby", say(i), ack_on(i % 2, m0 if i % 2 else m1)
                )
            )
            for i in range(200)
        ]
    )
    await until(lambda: len(m0.ids) >= 200 and len(m1.ids) >= 200, "200 messages on both")
    assert m0.ids == m1.ids == list(range(1, 201))
    assert sorted(own[0] + own[1]) == list(range(1, 201))
    assert m0.resyncs == m1.resyncs == 0


@pytest_twisted.ensureDeferred
async def test_an_id_never_announced_is_read_from_the_store(
    redis_nodes: RedisNodeFactory,
) -> None:
    """Id 1 committed by a node that died before announcing it: once 2 is announced, both
    nodes read 1 from the store after ANNOUNCE_WAIT_S, and hand 1 then 2."""
    store = SharedHistory()
    (_n0, m0), (n1, m1) = await two_nodes(redis_nodes, store)
    await store.append("lobby", say(1))
    await n1.broker.publish("lobby", say(2))
    await deferLater(reactor, ANNOUNCE_WAIT_S / 2)
    # Still waiting for 1's announcement (it may be on its way from another node).
    assert m0.ids == m1.ids == []
    await until(lambda: len(m0.ids) == 2 and len(m1.ids) == 2, "both messages on both nodes")
    assert m0.ids == m1.ids == [1, 2]


@pytest_twisted.ensureDeferred
async def test_what_was_said_while_the_subscriptions_were_cut_is_caught_up(
    redis_nodes: RedisNodeFactory, redis_server: RedisServer
) -> None:
    """CLIENT KILL TYPE pubsub cuts both subscriptions; three says through n1 meanwhile are
    announced to nobody: once subscribed again, n0 reads them from the store (no later
    message needed), and n1's members have had them all along."""
    store = SharedHistory()
    (n0, m0), (n1, m1) = await two_nodes(redis_nodes, store)
    redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
    await until(lambda: not n0.link.up and not n1.link.up, "the subscriptions to drop")
    for i in range(1, 4):
        await n1.broker.publish("lobby", say(i))
    assert m1.ids == [1, 2, 3]
    await until(lambda: len(m0.ids) == 3, "n0 to catch up")
    assert m0.ids == [1, 2, 3]
    await n0.broker.publish("lobby", say(4))
    await until(lambda: len(m1.ids) == 4, "n1 to get 4")
    assert m0.ids == m1.ids == [1, 2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_an_announcement_that_failed_is_made_once_the_link_is_back(
    redis_nodes: RedisNodeFactory, redis_server: RedisServer
) -> None:
    """n1's command connection cut: its say is committed and acked, but its announcement
    fails; once n1 is connected again it announces it, and n0 (whose own subscription never
    dropped, so it had nothing to catch up) gets it without any later message."""
    store = SharedHistory()
    (n0, m0), (n1, m1) = await two_nodes(redis_nodes, store)
    redis_server.cli("CLIENT", "KILL", "ID", client_id(redis_server, client_name("n1", "commands")))
    await until(lambda: not n1.link.up, "n1's link to drop")
    acks: list[int] = []
    await n1.broker.publish("lobby", say(1), lambda msg, fresh: acks.append(msg.id))
    assert acks == [1] and m1.ids == [1]
    assert n0.link.up
    await until(lambda: m0.ids == [1], "n0 to get the late announcement")


@pytest_twisted.ensureDeferred
async def test_a_resend_of_a_message_never_announced_is_announced(
    redis_nodes: RedisNodeFactory,
) -> None:
    """A say committed whose answer never reached its node (so never announced) is resent
    with its ref: the resend is acked with the stored id and both nodes' members get the
    message, once."""
    store = SharedHistory()
    (n0, m0), (n1, m1) = await two_nodes(redis_nodes, store)
    committed, _ = await store.append("lobby", say(1))
    acks: list[tuple[int, bool]] = []
    await n0.broker.publish("lobby", say(1), lambda msg, fresh: acks.append((msg.id, fresh)))
    assert acks == [(committed.id, False)]
    await until(lambda: m0.ids == [1] and m1.ids == [1], "both nodes to get it")
    await n0.broker.publish("lobby", say(1))
    await n1.broker.publish("lobby", say(2))
    await until(lambda: m0.ids == [1, 2] and m1.ids == [1, 2], "2 on both nodes, 1 once")


@pytest_twisted.ensureDeferred
async def test_the_store_down_when_the_subscription_comes_back_is_tried_again(
    redis_nodes: RedisNodeFactory, redis_server: RedisServer
) -> None:
    """The store of record out of reach as the subscriptions come back: catching up fails,
    and is tried again each second until the store answers; then n0 has what n1 said."""
    store = SharedHistory()
    (n0, m0), (n1, _m1) = await two_nodes(redis_nodes, store)
    redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
    await until(lambda: not n0.link.up, "the subscriptions to drop")
    await n1.broker.publish("lobby", say(1))
    store.down = True
    await until(lambda: n0.link.up and n1.link.up, "both links back")
    await deferLater(reactor, 0.2)
    assert m0.ids == []
    store.down = False
    await until(lambda: m0.ids == [1], "n0 to catch up once the store is back")


@pytest_twisted.ensureDeferred
async def test_a_hole_longer_than_a_read_makes_the_members_resync(
    redis_nodes: RedisNodeFactory,
) -> None:
    """More than MAX_GAP_READ ids never announced: rather than hand them all out live, each
    node reads no more than that, tells its members to resync (they rejoin with `since`), and
    goes on from the next id."""
    store = SharedHistory()
    (_n0, m0), (n1, m1) = await two_nodes(redis_nodes, store)
    for i in range(MAX_GAP_READ + 1):
        await store.append("lobby", NewMessage("alice", f"m{i}", "t", None))
    await n1.broker.publish("lobby", say(MAX_GAP_READ + 2))
    await until(lambda: m0.resyncs == m1.resyncs == 1, "both nodes to resync")
    await until(lambda: len(m0.ids) == len(m1.ids) == 1, "the next id on both")
    assert m0.ids == m1.ids == [MAX_GAP_READ + 2]


def test_redis_with_a_postgresql_history_db_makes_postgres_the_store_and_redis_the_bus(
    redis_server: RedisServer, pg_url: str
) -> None:
    """`--redis` with `--history-db postgresql://...`: the hub's store is PostgreSQL (Redis
    keeps no history), its broker the Redis bus, and /healthz checks both; with a SQLite
    --history-db the history stays in Redis, as before."""
    options = Options()
    options.parseOptions(["--redis", redis_server.url, "--history-db", pg_url])
    backend = make_backend(options, reactor)
    try:
        assert isinstance(backend.store, PostgresHistory)
        assert isinstance(backend.broker, RedisBus)
        assert isinstance(backend.services[0], StoreService)
        assert [check()[0].keys() for check in backend.checks] == [
            {"node", "redis"},
            {"store"},
        ]
    finally:
        backend.store.close()
    options = Options()
    options.parseOptions(["--redis", redis_server.url, "--history-db", "h.sqlite3"])
    backend = make_backend(options, reactor)
    assert isinstance(backend.store, RedisStream) and isinstance(backend.broker, RedisBus)
    assert [check()[0].keys() for check in backend.checks] == [{"node", "redis"}]


def test_redis_with_postgresql_takes_the_postgresql_retention() -> None:
    """--history-ttl applies to a PostgreSQL history with --redis too (each node sweeps); with
    the history in Redis it is refused, and --max-history-rooms with PostgreSQL as alone."""
    redis, pg = "redis://127.0.0.1:6379/0", "postgresql://wschat@db.example/wschat"
    options = Options()
    options.parseOptions(["--redis", redis, "--history-db", pg, "--history-ttl", "30d"])
    assert options["history-ttl"] == 30 * 86400
    with pytest.raises(usage.UsageError, match="--history-keep"):
        Options().parseOptions(["--redis", redis, "--history-ttl", "30d"])
    with pytest.raises(usage.UsageError, match="not implemented for PostgreSQL"):
        Options().parseOptions(["--redis", redis, "--history-db", pg, "--max-history-rooms", "9"])
