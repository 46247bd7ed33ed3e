"""Several real `twistd -n wschat --redis` nodes on one real redis-server of the test's own."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .client import Chat
from .conftest import ServerFactory
from .redis import (
    RedisServer,
    Sender,
    health,
    join_when_available,
    messages_until,
    nodes_on,
)

pytestmark = pytest.mark.e2e


def say_reading(
    chat: Chat, text: str, inbox: list[dict[str, Any]] | None = None, **fields: Any
) -> int:
    """Say; the ack's id. Messages that arrive before the ack go to `inbox` (if given)."""
    chat.send(type="say", room="lobby", text=text, **fields)
    while True:
        event = chat.recv()
        if event["type"] == "ack":
            return int(event["id"])
        if event["type"] == "message":
            if inbox is not None:
                inbox.append(event)
        else:
            assert event["type"] == "presence", event


def test_two_nodes_share_a_room_with_the_same_ids_in_the_same_order(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """Clients on two nodes see each other's messages once, with the same ids in the same
    order; a sender's ack comes before its own copy."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    alice, bob = Chat(a.ws_url), Chat(b.ws_url)
    alice.join("lobby", "alice")
    bob.join("lobby", "bob")
    inboxes: dict[Chat, list[dict[str, Any]]] = {alice: [], bob: []}
    acks = []
    for i in range(20):
        sender = alice if i % 2 == 0 else bob
        acks.append(say_reading(sender, f"m{i}", inboxes[sender], ref=f"r{i}"))
        assert acks[-1] not in [m["id"] for m in inboxes[sender]], "own copy before the ack"
    for chat, inbox in inboxes.items():
        got = inbox + messages_until(chat, 20 - len(inbox))
        assert [m["text"] for m in got] == [f"m{i}" for i in range(20)]
        assert [m["id"] for m in got] == acks
    assert acks == list(range(1, 21))


def test_a_ref_resent_to_the_other_node_is_stored_once(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """The ref idempotency check is in Redis: a resend through another node is acked with
    the first id and not broadcast again."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    watcher = Chat(b.ws_url)
    watcher.join("lobby", "watcher")
    first = Chat(a.ws_url)
    first.join("lobby", "alice")
    ack = say_reading(first, "only once", ref="uuid-1")
    first.close()
    again = Chat(b.ws_url)
    again.join("lobby", "alice")
    assert say_reading(again, "only once", ref="uuid-1") == ack
    marker = say_reading(again, "after")
    assert [m["id"] for m in messages_until(watcher, 2)] == [ack, marker]


def test_since_on_the_other_node_gets_exactly_the_missed_messages(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """A client that moves from node a to node b with `since` and the epoch gets exactly what
    it missed, recovered: true."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    writer = Chat(a.ws_url)
    writer.join("lobby", "writer")
    mover = Chat(a.ws_url)
    welcome = mover.join("lobby", "mover")
    assert isinstance(welcome["epoch"], str) and welcome["epoch"]
    seen = say_reading(writer, "seen")
    messages_until(mover, 1)
    mover.close()
    missed = [say_reading(writer, f"missed {i}") for i in range(3)]
    back = Chat(b.ws_url)
    rejoin = back.join("lobby", "mover", since=seen, epoch=welcome["epoch"])
    assert rejoin["recovered"] is True
    assert [m["id"] for m in rejoin["history"]] == missed
    assert rejoin["epoch"] == welcome["epoch"]


def test_a_lost_history_is_a_new_epoch_and_never_answers_an_old_since(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """Redis restarted without persistence: ids start over under a new epoch, a `since` from
    the old epoch gets recovered: false, and a member who stayed connected is told to resync."""
    node = nodes_on(wschat_server, redis)
    a = node("a")
    stayer = Chat(a.ws_url)
    old = stayer.join("lobby", "stayer")
    inbox: list[dict[str, Any]] = []
    for i in range(3):
        say_reading(stayer, f"old {i}", inbox)
    messages_until(stayer, 3 - len(inbox))
    redis.kill()
    redis.start()
    # The node reconnects, sees the room's ids went back, and tells its member.
    event = stayer.recv(timeout=20)
    while event["type"] == "presence":
        event = stayer.recv(timeout=20)
    assert event == {"type": "resync", "room": "lobby"}
    writer = Chat(a.ws_url)
    join_when_available(writer, "lobby", "writer")
    say_reading(writer, "new 1")
    late = Chat(a.ws_url)
    welcome = join_when_available(late, "lobby", "late", since=2, epoch=old["epoch"])
    assert welcome["recovered"] is False
    assert welcome["epoch"] != old["epoch"]
    assert [m["text"] for m in welcome["history"]] == ["new 1"]


def test_redis_killed_during_traffic_loses_nothing_acked(
    wschat_server: ServerFactory, durable_redis: RedisServer
) -> None:
    """Redis SIGKILLed and restarted while clients on both nodes talk: during the outage a say
    gets `unavailable` (never silence, never an ack), /healthz says 503 "redis": "down",
    and afterwards every client has every acked message, in order, once."""
    node = nodes_on(wschat_server, durable_redis)
    a, b = node("a"), node("b")
    alice, bob = Chat(a.ws_url), Chat(b.ws_url)
    alice.join("lobby", "alice")
    bob.join("lobby", "bob")
    acked: list[int] = []
    inboxes: dict[Chat, list[dict[str, Any]]] = {alice: [], bob: []}
    for i in range(5):
        sender = alice if i % 2 else bob
        acked.append(say_reading(sender, f"before {i}", inboxes[sender], ref=f"b{i}"))
    durable_redis.kill()
    alice.send(type="say", room="lobby", text="into the void", ref="void")
    error = alice.recv(timeout=15)
    while error["type"] != "error":
        assert error["type"] in ("message", "presence"), error
        if error["type"] == "message":
            inboxes[alice].append(error)
        error = alice.recv(timeout=15)
    assert (error["code"], error["ref"]) == ("unavailable", "void")
    status, body = health(a)
    assert status == 503 and body["redis"] == "down" and body["node"] == "a"
    durable_redis.start()
    deadline = time.monotonic() + 20
    while health(b)[0] != 200:
        assert time.monotonic() < deadline, "node b did not see Redis come back"
        time.sleep(0.1)
    while health(a)[0] != 200:
        assert time.monotonic() < deadline, "node a did not see Redis come back"
        time.sleep(0.1)
    for i in range(5):
        sender = alice if i % 2 else bob
        acked.append(say_reading(sender, f"after {i}", inboxes[sender], ref=f"a{i}"))
    # The unacked one may be resent with its ref: stored once.
    acked.append(say_reading(alice, "into the void", inboxes[alice], ref="void"))
    for chat, inbox in inboxes.items():
        got = [m["id"] for m in inbox + messages_until(chat, len(acked) - len(inbox), 20)]
        assert got == acked
    assert acked == sorted(acked) and len(set(acked)) == len(acked)
    assert "is out of reach" in a.log() and "is back after" in a.log()


def test_redis_killed_under_concurrent_traffic_from_both_nodes(
    wschat_server: ServerFactory, durable_redis: RedisServer
) -> None:
    """Senders on both nodes keep talking while Redis is SIGKILLed and restarted: they get
    `unavailable` meanwhile (and retry with the same ref), nothing hangs, and a listener on
    each node ends with exactly the acked messages, in id order, once each."""
    node = nodes_on(wschat_server, durable_redis)
    # A history longer than the run: a listener whose node was back later than the other must
    # be able to fill its gap from the stream (a gap past the kept history is a resync).
    limits = ("--rate", "1000", "--burst", "1000", "--history-size", "20000")
    a, b = (node(name, *limits) for name in ("a", "b"))
    listeners = [Chat(a.ws_url), Chat(b.ws_url)]
    for i, listener in enumerate(listeners):
        listener.join("lobby", f"listener{i}")
    senders = [Sender(a.ws_url, "sa"), Sender(b.ws_url, "sb")]
    for sender in senders:
        sender.start()
    time.sleep(1.0)
    durable_redis.kill()
    time.sleep(1.5)
    durable_redis.start()
    deadline = time.monotonic() + 20
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
        assert sender.unavailable > 0, f"{sender.name} saw no outage"
    acked = sorted(i for sender in senders for i in sender.acked)
    assert len(set(acked)) == len(acked)
    for listener in listeners:
        got = [m["id"] for m in messages_until(listener, len(acked), timeout=20)]
        assert got == acked


def test_a_cut_subscription_is_filled_from_the_stream(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """CLIENT KILL TYPE pubsub cuts every node's subscription: what was said meanwhile on the
    other node is read from the stream, so the members see no hole and no duplicate."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    reader, writer = Chat(a.ws_url), Chat(b.ws_url)
    reader.join("lobby", "reader")
    writer.join("lobby", "writer")
    ids = [say_reading(writer, "before")]
    redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
    ids += [say_reading(writer, f"during {i}") for i in range(10)]
    got = [m["id"] for m in messages_until(reader, len(ids), timeout=20)]
    assert got == ids


def test_a_node_started_while_redis_is_down_waits_for_it(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """With Redis down a node starts anyway, says so on /healthz (503) and to a join
    (`unavailable`), and serves as soon as Redis is up."""
    redis.kill()
    node = nodes_on(wschat_server, redis)("a", healthy=False)
    status, body = health(node)
    assert (status, body["redis"]) == (503, "down")
    early = Chat(node.ws_url)
    early.send(type="join", room="lobby", name="early")
    assert early.expect("error")["code"] == "unavailable"
    redis.start()
    deadline = time.monotonic() + 20
    while health(node)[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert early.join("lobby", "early")["count"] == 1


def test_a_percent_encoded_redis_password_is_not_logged(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """--redis with the password `s3cr@t` written as `s3cr%40t`: the node signs in with it,
    and its log shows the URL with *** and never the password, encoded or decoded."""
    redis.cli("CONFIG", "SET", "requirepass", "s3cr@t")
    url = f"redis://:s3cr%40t@127.0.0.1:{redis.port}/0"
    node = wschat_server("--redis", url, "--node-name", "a")
    assert Chat(node.ws_url).join("lobby", "alice")["count"] == 1
    log = node.log()
    assert f"redis://:***@127.0.0.1:{redis.port}/0" in log
    assert "s3cr" not in log


@pytest.fixture
def slow_loading_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A durable redis-server that takes a while to load its data when it restarts (5,000 keys,
    50 µs each): meanwhile it accepts connections and answers SELECT and SUBSCRIBE, but
    SCRIPT LOAD gets `LOADING`, as a Redis with much data does."""
    server = RedisServer(
        tmp_path / "slow-redis", persistent=True, extra_args=("--key-load-delay", "50")
    ).start()
    server.cli("EVAL", "for i = 1, 5000 do redis.call('SET', 'filler:' .. i, i) end", "0")
    yield server
    server.kill()


def test_redis_killed_and_restarted_20_times_in_a_row_logs_no_traceback(
    wschat_server: ServerFactory, slow_loading_redis: RedisServer
) -> None:
    """Redis SIGKILLed and restarted 20 times, each time at a different moment of the nodes'
    reconnecting, and loading its data for a while on each start: no traceback in either
    node's log (ClientService raised automat's NoTransition for a connection lost after it
    could not be made ready), and chat goes on after."""
    node = nodes_on(wschat_server, slow_loading_redis)
    a, b = node("a"), node("b")
    alice, bob = Chat(a.ws_url), Chat(b.ws_url)
    alice.join("lobby", "alice")
    bob.join("lobby", "bob")
    moments = random.Random(20)
    for _ in range(20):
        slow_loading_redis.kill()
        slow_loading_redis.start()  # returns once loaded (PING answers)
        time.sleep(moments.uniform(0.0, 1.0))
    deadline = time.monotonic() + 20
    while health(a)[0] != 200 or health(b)[0] != 200:
        assert time.monotonic() < deadline, "the nodes did not see Redis come back"
        time.sleep(0.1)
    acked = say_reading(alice, "after 20 restarts", ref="after")
    assert [m["id"] for m in messages_until(bob, 1)] == [acked]
    for server in (a, b):
        log = server.log()
        assert "Traceback" not in log and "Unhandled Error" not in log, log


def test_chat_is_back_within_1_5_s_of_redis(
    wschat_server: ServerFactory, durable_redis: RedisServer
) -> None:
    """Twice, Redis down for 5 s: a say is acked within 1.5 s of Redis accepting connections
    again (the node tries at least once a second, where it used to back off to 5 s)."""
    node = nodes_on(wschat_server, durable_redis)("a", "--rate", "1000", "--burst", "1000")
    alice = Chat(node.ws_url)
    alice.join("lobby", "alice")
    for outage in range(2):
        durable_redis.kill()
        time.sleep(5.0)
        durable_redis.start()
        back = time.monotonic()
        ref = f"back{outage}"
        while True:
            alice.send(type="say", room="lobby", text="back?", ref=ref)
            event = alice.recv()
            while event["type"] in ("message", "presence"):
                event = alice.recv()
            assert time.monotonic() - back < 1.5, "chat was not back within 1.5 s of Redis"
            if event["type"] == "ack":
                break
            assert event["code"] == "unavailable", event
            time.sleep(0.05)
