"""Redis alone keeps history by the operator's policy: `--history-keep` bounds each room's
stream (0 keeps every message), and the ref index stays bounded whatever is kept (refs are
remembered REF_WINDOW_S, and no more of them than `keep`); on a real redis-server."""

from __future__ import annotations

import pytest_twisted

from wschat.chat.ports import NewMessage
from wschat.redis.keys import client_name, room_channel, room_keys
from wschat.redis.stream import REF_WINDOW_S, RedisStream

from .conftest import RedisNodeFactory
from .e2e.redis import RedisServer

T0_S = 1_800_000_000.0


class FakeTime:
    """The node's clock, moved by the test."""

    def __init__(self) -> None:
        self.now_s = T0_S

    def __call__(self) -> float:
        return self.now_s


async def stream(make_node: RedisNodeFactory, keep: int, time: FakeTime) -> RedisStream:
    node = await make_node("n0", keep)
    return RedisStream(node.link, keep, time)


def said(i: int, ref: str | None = None) -> NewMessage:
    return NewMessage("alice", f"m{i}", "2026-11-27T00:00:00.000Z", ref)


def sizes(redis: RedisServer, room: str) -> tuple[int, int, int]:
    """The room's stream length, refs hash length and refs index length."""
    keys = room_keys(room)
    return (
        int(redis.cli("XLEN", keys.log)),
        int(redis.cli("HLEN", keys.refs)),
        int(redis.cli("ZCARD", keys.refz)),
    )


@pytest_twisted.ensureDeferred
async def test_keep_0_keeps_every_message(
    redis_nodes: RedisNodeFactory, redis_server: RedisServer
) -> None:
    """With --history-keep 0 nothing is trimmed: the first message is still there after
    1,500 (today's `MAXLEN ~ 0` would have kept none)."""
    store = await stream(redis_nodes, 0, FakeTime())
    for i in range(1500):
        await store.append("lobby", said(i + 1))
    assert sizes(redis_server, "lobby")[0] == 1500
    first = await store.page("lobby", None, 0, 1)
    assert [(m.id, m.text) for m in first] == [(1, "m1")]
    assert (await store.after("lobby", 0, 2000)).complete


@pytest_twisted.ensureDeferred
async def test_keep_n_trims_the_stream_to_about_n(
    redis_nodes: RedisNodeFactory, redis_server: RedisServer
) -> None:
    """With --history-keep 100 the stream keeps at least the newest 100 messages and not
    many more (Redis trims whole nodes of 100 entries)."""
    store = await stream(redis_nodes, 100, FakeTime())
    for i in range(1000):
        await store.append("lobby", said(i + 1))
    length = sizes(redis_server, "lobby")[0]
    assert 100 <= length <= 200
    assert [m.id for m in await store.latest("lobby", 100)] == list(range(901, 1001))


@pytest_twisted.ensureDeferred
async def test_a_ref_is_remembered_for_the_window_and_not_a_millisecond_more(
    redis_nodes: RedisNodeFactory,
) -> None:
    """A resend REF_WINDOW_S (24 h) after the first is the stored message again; 1 ms later it
    is a new message, and that new one is what the ref finds from then on."""
    time = FakeTime()
    store = await stream(redis_nodes, 0, time)
    first, fresh = await store.append("lobby", said(1, "r1"))
    assert fresh
    time.now_s = T0_S + REF_WINDOW_S
    assert await store.append("lobby", said(1, "r1")) == (first, False)
    assert await store.find_ref("lobby", "alice", "r1") == first
    time.now_s = T0_S + REF_WINDOW_S + 0.001
    assert await store.find_ref("lobby", "alice", "r1") is None
    again, fresh = await store.append("lobby", said(1, "r1"))
    assert fresh and again.id == first.id + 1
    assert await store.append("lobby", said(1, "r1")) == (again, False)
    assert await store.find_ref("lobby", "alice", "r1") == again


@pytest_twisted.ensureDeferred
async def test_refs_out_of_the_window_are_forgotten_when_every_message_is_kept(
    redis_nodes: RedisNodeFactory, redis_server: RedisServer
) -> None:
    """Keeping every message, the ref index holds only the refs of the last 24 h: 200 refs
    a day old are gone after a few more says (64 forgotten a say), the messages stay."""
    time = FakeTime()
    store = await stream(redis_nodes, 0, time)
    for i in range(200):
        await store.append("lobby", said(i + 1, f"old{i}"))
    assert sizes(redis_server, "lobby") == (200, 200, 200)
    time.now_s = T0_S + REF_WINDOW_S + 1
    for i in range(10):
        await store.append("lobby", said(201 + i, f"new{i}"))
    assert sizes(redis_server, "lobby") == (210, 10, 10)


@pytest_twisted.ensureDeferred
async def test_no_more_refs_than_keep_are_remembered(
    redis_nodes: RedisNodeFactory, redis_server: RedisServer
) -> None:
    """With --history-keep 50 the ref index holds the newest 50 refs: those of the kept
    messages, which a resend still finds; an older ref is a new message again."""
    store = await stream(redis_nodes, 50, FakeTime())
    for i in range(300):
        await store.append("lobby", said(i + 1, f"r{i + 1}"))
    assert sizes(redis_server, "lobby")[1:] == (50, 50)
    kept, fresh = await store.append("lobby", said(251, "r251"))
    assert (kept.id, kept.text, fresh) == (251, "m251", False)
    assert (await store.append("lobby", said(250, "r250")))[1]


@pytest_twisted.ensureDeferred
async def test_refs_indexed_by_the_previous_release_are_forgotten(
    redis_nodes: RedisNodeFactory, redis_server: RedisServer
) -> None:
    """A room written before the refs were indexed by time (scored by id) goes on: its ids
    continue, and its old refs count as out of the window and are forgotten."""
    keys = room_keys("lobby")
    store = await stream(redis_nodes, 0, FakeTime())
    for i in range(1, 4):
        redis_server.cli("XADD", keys.log, f"{i}-0", "n", "alice", "t", f"m{i}", "ts", "t")
        redis_server.cli("HSET", keys.refs, f"alice\nr{i}", str(i))
        redis_server.cli("ZADD", keys.refz, str(i), f"alice\nr{i}")
    redis_server.cli("SET", keys.seq, "3")
    msg, fresh = await store.append("lobby", said(4, "r1"))
    assert fresh and msg.id == 4
    assert sizes(redis_server, "lobby") == (4, 1, 1)


def test_connections_are_named_for_their_node() -> None:
    """CLIENT LIST shows which node a connection is, its name made printable ASCII."""
    assert client_name("web-1", "commands") == "wschat:web-1:commands"
    assert client_name("host é 2", "subscriber") == "wschat:host___2:subscriber"


def test_a_rooms_channel_alone_is_the_one_of_its_keys() -> None:
    """room_channel (said once per announcement) names the channel room_keys names."""
    for room in ("lobby", "é {x}", ""):
        assert room_channel(room) == room_keys(room).channel
