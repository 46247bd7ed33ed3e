"""Two real `twistd -n wschat --redis ... --history-db postgresql://...` nodes: PostgreSQL is
the store of record, Redis the bus, presence and names."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ..pgkit import PgServer
from .client import Chat
from .conftest import ServerFactory
from .redis import RedisServer, Sender, health, messages_until, nodes_on

pytestmark = pytest.mark.e2e

FAST = ("--rate", "1000", "--burst", "1000", "--request-rate", "1000", "--request-burst", "1000")


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of this test's own, to kill and start again."""
    server = PgServer().start()
    yield server
    server.remove()


def stored_ids(url: str, room: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id FROM messages WHERE room = %s ORDER BY id", (room,))
        return [int(row[0]) for row in rows.fetchall()]


def request(chat: Chat, answer: str, **fields: Any) -> dict[str, Any]:
    """Send a request; its answer (presence and messages on the way are skipped)."""
    chat.send(**fields)
    while True:
        event = chat.recv()
        if event["type"] == answer:
            return event
        assert event["type"] in ("presence", "message"), event


def say_acked(chat: Chat, text: str, ref: str) -> int:
    return int(request(chat, "ack", type="say", room="lobby", text=text, ref=ref)["id"])


def test_history_written_through_one_node_is_paged_and_searched_through_the_other(
    wschat_server: ServerFactory, redis: RedisServer, pg_url: str
) -> None:
    """130 says through node a: a client of node b gets the newest 100 in its welcome, pages
    back to the first, searches them (accents folded, the last word a prefix), and Redis
    holds none of it (only the bus, presence and names)."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a", "--history-db", pg_url, *FAST), node("b", "--history-db", pg_url, *FAST)
    alice = Chat(a.ws_url)
    alice.join("lobby", "alice")
    acked = [
        say_acked(alice, f"Résumé {i} of the deploy" if i % 10 == 0 else f"line {i}", f"r{i}")
        for i in range(1, 131)
    ]
    assert acked == list(range(1, 131))
    bob = Chat(b.ws_url)
    welcome = bob.join("lobby", "bob")
    assert [m["id"] for m in welcome["history"]] == list(range(31, 131))
    assert welcome.get("epoch") is None
    paged = [m["id"] for m in welcome["history"]]
    more = True
    while more:
        page = request(bob, "page", type="history", room="lobby", before=paged[0], limit=50)
        paged = [m["id"] for m in page["messages"]] + paged
        more = page["more"]
    assert paged == acked
    found = request(bob, "results", type="search", room="lobby", q="resume depl", limit=5)
    assert [m["id"] for m in found["messages"]] == [130, 120, 110, 100, 90]
    rest = request(
        bob, "results", type="search", room="lobby", q="resume depl", before=found["next"]
    )
    assert [m["id"] for m in rest["messages"]] == [80, 70, 60, 50, 40, 30, 20, 10]
    assert rest["next"] is None
    assert int(redis.cli("EXISTS", "wschat:{lobby}:log")) == 0
    status, body = health(b)
    assert status == 200 and (body["redis"], body["store"]) == ("up", "up")


def test_since_works_across_nodes_and_live_messages_cross_them(
    wschat_server: ServerFactory, redis: RedisServer, pg_url: str
) -> None:
    """A client leaves node a after id 3 and comes back on node b with `since`: it gets
    exactly what was said meanwhile, recovered; and what it says there reaches node a live."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a", "--history-db", pg_url, *FAST), node("b", "--history-db", pg_url, *FAST)
    mover, stayer = Chat(a.ws_url), Chat(b.ws_url)
    mover.join("lobby", "mover")
    stayer.join("lobby", "stayer")
    last = [say_acked(mover, f"before {i}", f"m{i}") for i in range(3)][-1]
    mover.close()
    missed = [say_acked(stayer, f"meanwhile {i}", f"s{i}") for i in range(5)]
    back = Chat(b.ws_url)
    welcome = back.join("lobby", "mover", since=last)
    assert welcome["recovered"] is True
    assert [m["id"] for m in welcome["history"]] == missed
    watcher = Chat(a.ws_url)
    watcher.join("lobby", "watcher")
    said = say_acked(back, "from b", "b1")
    assert [m["id"] for m in messages_until(watcher, 1)] == [said]


def test_postgres_killed_during_traffic_loses_nothing_acked(
    wschat_server: ServerFactory, redis: RedisServer, own_pg: PgServer
) -> None:
    """PostgreSQL SIGKILLed and restarted while senders on both nodes talk: they get
    `storage_unavailable` meanwhile (and resend with the same ref), /healthz says 503 "store":
    "down"; afterwards PostgreSQL holds every acked message once, ids 1..N without a hole,
    and a listener on each node has had exactly those, in order."""
    url = own_pg.url(own_pg.create_database())
    node = nodes_on(wschat_server, redis)
    a, b = node("a", "--history-db", url, *FAST), node("b", "--history-db", url, *FAST)
    listeners = [Chat(a.ws_url), Chat(b.ws_url)]
    for i, listener in enumerate(listeners):
        listener.join("lobby", f"listener{i}")
    codes = ("storage_unavailable",)
    senders = [Sender(a.ws_url, "sa", codes), Sender(b.ws_url, "sb", codes)]
    for sender in senders:
        sender.start()
    time.sleep(1.0)
    own_pg.kill()
    deadline = time.monotonic() + 15
    while health(a)[0] != 503 or any(s.unavailable == 0 for s in senders):
        assert time.monotonic() < deadline, "the outage went unnoticed"
        time.sleep(0.05)
    status, body = health(a)
    assert status == 503 and (body["store"], body["redis"]) == ("down", "up")
    time.sleep(1.0)
    own_pg.start()
    deadline = time.monotonic() + 30
    after = [len(sender.acked) for sender in senders]
    while any(len(s.acked) < n + 20 for s, n in zip(senders, after, strict=True)):
        assert time.monotonic() < deadline, "the senders did not get going again"
        assert all(s.failure is None for s in senders), [s.failure for s in senders]
        time.sleep(0.1)
    for sender in senders:
        sender.stop.set()
    for sender in senders:
        sender.join(timeout=20)
        assert not sender.is_alive() and sender.failure is None, sender.failure
    acked = sorted(i for sender in senders for i in sender.acked)
    assert acked == list(range(1, len(acked) + 1))
    assert stored_ids(url, "lobby") == acked
    for listener in listeners:
        got = [m["id"] for m in messages_until(listener, len(acked), timeout=20)]
        assert got == acked
    assert health(a)[0] == health(b)[0] == 200


def test_with_redis_down_a_say_is_still_committed_and_crosses_once_it_is_back(
    wschat_server: ServerFactory, redis: RedisServer, pg_url: str
) -> None:
    """Redis killed (PostgreSQL up): a say on node a is committed and acked and reaches a's
    members at once; /healthz says 503 "redis": "down", "store": "up"; once Redis is back
    (empty) the member on node b gets those messages, in order, without a resync."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a", "--history-db", pg_url, *FAST), node("b", "--history-db", pg_url, *FAST)
    alice, bob = Chat(a.ws_url), Chat(b.ws_url)
    alice.join("lobby", "alice")
    bob.join("lobby", "bob")
    first = say_acked(alice, "before", "r0")
    assert [m["id"] for m in messages_until(bob, 1)] == [first]
    redis.kill()
    deadline = time.monotonic() + 15
    while health(a)[0] != 503:
        assert time.monotonic() < deadline, "node a did not see Redis go"
        time.sleep(0.05)
    assert (health(a)[1]["redis"], health(a)[1]["store"]) == ("down", "up")
    during = [say_acked(alice, f"during {i}", f"r{i + 1}") for i in range(3)]
    assert during == [first + 1, first + 2, first + 3]
    redis.start()
    assert [m["id"] for m in messages_until(bob, 3, timeout=20)] == during
