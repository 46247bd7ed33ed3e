"""Names and presence across real `twistd -n wschat --redis` nodes on one real redis-server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ..jwtkit import write_secret
from .client import Chat, signed_chat, token
from .conftest import ServerFactory
from .process import CLEAN_STOP_CODES
from .redis import RedisServer, nodes_on

pytestmark = pytest.mark.e2e

# docs/scaling.md: a node's lease is 12 s, renewed every 3 s, and every node looks for ended
# leases every 3 s: a dead node's members leave within 15 s, plus a presence interval and a
# few round trips (15.6 s measured here); 20 s leaves room for a loaded CI machine and is
# still well inside the 30 s the issue allows.
DEAD_NODE_BOUND_S = 20.0


def quiet_for(chat: Chat, seconds: float) -> list[dict[str, Any]]:
    """Everything that arrives within `seconds` (a test that expects nothing asserts [])."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(chat.recv(left))
        except TimeoutError:
            break
    return got


def test_a_name_is_unique_in_a_room_across_three_nodes(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    node = nodes_on(wschat_server, redis)
    a, b, c = node("a"), node("b"), node("c")
    Chat(a.ws_url).join("lobby", "alice")
    others = [Chat(b.ws_url), Chat(c.ws_url)]
    for other in others:
        other.send(type="join", room="lobby", name="alice")
        assert other.expect("error")["code"] == "name_taken"
    # Another room, another name space (and unique there too).
    assert others[0].join("hall", "alice")["count"] == 1
    others[1].send(type="join", room="hall", name="alice")
    assert others[1].expect("error")["code"] == "name_taken"
    # Two joins of one name at once on two nodes: exactly one gets it.
    racers = [Chat(b.ws_url), Chat(c.ws_url)]
    for racer in racers:
        racer.send(type="join", room="lobby", name="bob")
    outcomes = sorted(racer.recv()["type"] for racer in racers)
    assert outcomes == ["error", "welcome"]


def test_names_that_read_the_same_are_one_name_across_nodes(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """José (NFC) on one node makes its NFD form, a Cyrillic-o look-alike and JOSÉ taken on the
    other; admin/ADMIN the same the other way round; two look-alikes joining at once on two
    nodes: one gets in; everyone is shown as typed."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    Chat(a.ws_url).join("lobby", "José")
    Chat(b.ws_url).join("lobby", "admin")
    for url, alike in [
        (b.ws_url, "Jose\u0301"),
        (b.ws_url, "J\u043es\u00e9"),
        (b.ws_url, "JOSÉ"),
        (a.ws_url, "ADMIN"),
    ]:
        other = Chat(url)
        other.send(type="join", room="lobby", name=alike)
        assert other.expect("error")["code"] == "name_taken"
    racers = [Chat(a.ws_url), Chat(b.ws_url)]
    for racer, alike in zip(racers, ["bob", "B\u043eB"], strict=True):
        racer.send(type="join", room="lobby", name=alike)
    outcomes = sorted(racer.recv()["type"] for racer in racers)
    assert outcomes == ["error", "welcome"]
    welcome = Chat(b.ws_url).join("lobby", "carol")
    assert welcome["count"] == 4
    assert {"José", "admin", "carol"} <= set(welcome["users"])


def test_count_users_and_who_cover_every_node(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    node = nodes_on(wschat_server, redis)
    a, b, c = node("a"), node("b"), node("c")
    Chat(a.ws_url).join("lobby", "alice")
    Chat(b.ws_url).join("lobby", "bob")
    carol = Chat(c.ws_url)
    welcome = carol.join("lobby", "carol")
    assert welcome["count"] == 3
    assert welcome["users"] == ["alice", "bob", "carol"]
    carol.send(type="who", room="lobby", limit=2)
    first = carol.expect("members")
    assert (first["names"], first["count"]) == (["alice", "bob"], 3)
    carol.send(type="who", room="lobby", after=first["next"], limit=2)
    assert carol.expect("members")["names"] == ["carol"]


def test_presence_crosses_nodes_in_batches(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """Joins on two nodes reach a member on a third as batches, at most one per presence
    interval (0.25 s), each with the cluster-wide count."""
    node = nodes_on(wschat_server, redis)
    a, b, c = node("a"), node("b"), node("c")
    watcher = Chat(c.ws_url)
    watcher.join("lobby", "watcher")
    names = [f"user{i:02}" for i in range(30)]
    chats = []
    started = time.monotonic()
    for i, name in enumerate(names):
        chat = Chat((a if i % 2 else b).ws_url)
        chat.join("lobby", name)
        chats.append(chat)
    batches = []
    seen: set[str] = set()
    while seen != set(names):
        batch = watcher.expect("presence")
        batches.append((time.monotonic(), batch))
        seen |= set(batch.get("joined", ()))
        assert not batch.get("left")
    elapsed = batches[-1][0] - started
    assert len(batches) <= elapsed / 0.25 + 2, (len(batches), elapsed)
    assert batches[-1][1]["count"] == 31
    for chat in chats[:5]:
        chat.close()
    last = watcher.expect_presence(left=names[:5], timeout=5)
    assert last["count"] == 26


def test_a_killed_node_has_its_members_leave_within_the_bound(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    watcher = Chat(a.ws_url)
    watcher.join("lobby", "watcher")
    doomed = ["d1", "d2", "d3"]
    chats = [Chat(b.ws_url) for _ in doomed]
    for chat, name in zip(chats, doomed, strict=True):
        chat.join("lobby", name)
    watcher.expect_presence(joined=doomed)
    b.kill()
    killed = time.monotonic()
    last = watcher.expect_presence(left=doomed, timeout=35)
    took = time.monotonic() - killed
    assert took <= DEAD_NODE_BOUND_S, f"left after {took:.1f}s"
    assert last["count"] == 1
    # Their names are free again, on the surviving node.
    assert Chat(a.ws_url).join("lobby", "d1")["count"] == 2
    assert "stopped renewing its lease" in a.log()
    # All along, the live node's subscription answered its probes (wschat/redis/link.py).
    assert "went silent" not in a.log()


def test_a_node_restarted_under_its_name_frees_its_old_names_at_once(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """systemd's Restart=always with a stable --node-name: the new process lets go of what
    the killed one held as soon as it is up, without waiting for the lease to end."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    watcher = Chat(a.ws_url)
    watcher.join("lobby", "watcher")
    Chat(b.ws_url).join("lobby", "bob")
    watcher.expect_presence(joined=["bob"])
    b.kill()
    killed = time.monotonic()
    b.start()
    watcher.expect_presence(left=["bob"], timeout=DEAD_NODE_BOUND_S)
    took = time.monotonic() - killed
    assert took < 9.0, f"left after {took:.1f}s: that is the lease, not the restart"
    assert Chat(b.ws_url).join("lobby", "bob")["count"] == 2


def test_a_token_takeover_across_nodes_is_silent(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """A client that comes back on another node with its resume token gets its name; the
    old connection is closed with 4001 and the others see no presence change, in the room of
    the takeover nor in the other room the client rejoins."""
    node = nodes_on(wschat_server, redis)
    a, b, c = node("a"), node("b"), node("c")
    watcher = Chat(c.ws_url)
    watcher.join("lobby", "watcher")
    watcher.join("hall", "watcher")
    old = Chat(a.ws_url)
    token = old.join("lobby", "alice")["token"]
    old.join("hall", "alice", token=token)
    watcher.expect_presence(joined=["alice"])
    watcher.expect_presence(joined=["alice"])
    thief = Chat(b.ws_url)
    thief.send(type="join", room="lobby", name="alice", token="not-the-token")
    assert thief.expect("error")["code"] == "name_taken"
    new = Chat(b.ws_url)
    welcome = new.join("lobby", "alice", token=token)
    assert (welcome["count"], welcome["token"]) == (2, token)
    assert old.expect_close()[0] == 4001
    # The client rejoins its other room on the new node too: that name moves silently as well.
    assert new.join("hall", "alice", token=token)["count"] == 2
    assert quiet_for(watcher, 1.0) == []
    new.say("lobby", "still me")
    assert watcher.expect("message")["text"] == "still me"
    new.close()
    assert watcher.expect_presence(left=["alice"])["count"] == 1


def test_names_survive_a_redis_restart_without_persistence(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """Redis comes back empty: each node claims its members' names again, so a name stays
    unique and the counts stay whole."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    alice = Chat(a.ws_url)
    alice.join("lobby", "alice")
    Chat(b.ws_url).join("lobby", "bob")
    redis.kill()
    redis.start()
    deadline = time.monotonic() + 20
    while True:
        late = Chat(b.ws_url)
        late.send(type="join", room="lobby", name="alice")
        event = late.recv()
        if event["type"] == "error" and event["code"] == "name_taken":
            break
        assert event["type"] == "error" and event["code"] == "unavailable", event
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert Chat(b.ws_url).join("lobby", "carol")["users"] == ["alice", "bob", "carol"]
    alice.expect_presence(joined=["carol"])


def test_signed_users_across_nodes_share_their_name_and_keep_their_subs(
    wschat_server: ServerFactory, redis: RedisServer, tmp_path: Path
) -> None:
    """--auth with --redis: one user's tabs on two nodes share the name (it leaves when the
    last one does), another user cannot take it, and `subs` reach the other node."""
    secret = str(write_secret(tmp_path))
    node = nodes_on(wschat_server, redis)
    a, b = node("a", "--jwt-secret-file", secret), node("b", "--jwt-secret-file", secret)
    watcher, _ = signed_chat(a.ws_url, token("u-watch", name="Watcher"))
    watcher.join("lobby")
    tab1, _ = signed_chat(a.ws_url, token(name="Alice"))
    tab2, _ = signed_chat(b.ws_url, token(name="Alice"))
    tab1.join("lobby")
    welcome = tab2.join("lobby")
    assert (welcome["count"], welcome["subs"]) == (2, {"Alice": "u-alice", "Watcher": "u-watch"})
    batch = watcher.expect_presence(joined=["Alice"])
    assert batch["subs"] == {"Alice": "u-alice"}
    other, _ = signed_chat(b.ws_url, token("u-mallory", name="Alice"))
    other.send(type="join", room="lobby")
    assert other.expect("error")["code"] == "name_taken"
    tab2.close()
    assert quiet_for(watcher, 1.0) == []
    tab1.close()
    assert watcher.expect_presence(left=["Alice"])["count"] == 1


def test_a_node_stopped_gracefully_lets_go_of_its_names_at_once(
    wschat_server: ServerFactory, redis: RedisServer
) -> None:
    """SIGTERM drains the node: its members' connections close, their names are let go in
    Redis then, not a lease later, and its log has no outage in it."""
    node = nodes_on(wschat_server, redis)
    a, b = node("a"), node("b")
    watcher = Chat(a.ws_url)
    watcher.join("lobby", "watcher")
    Chat(b.ws_url).join("lobby", "bob")
    watcher.expect_presence(joined=["bob"])
    stopped = time.monotonic()
    assert b.stop() in CLEAN_STOP_CODES
    watcher.expect_presence(left=["bob"], timeout=DEAD_NODE_BOUND_S)
    took = time.monotonic() - stopped
    assert took < 6.0, f"left after {took:.1f}s: that is the lease, not the drain"
    assert "out of reach" not in b.log()
