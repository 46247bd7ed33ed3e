"""The chat as a client sees it, against the real `twistd -n wschat` process."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .client import Chat
from .conftest import ServerFactory
from .process import CLEAN_STOP_CODES, ServerProcess, count_rows
from .rawws import RawWs

pytestmark = pytest.mark.e2e


def marker(sender: Chat, room: str, *watchers: Chat) -> None:
    """Say a marker and check it is the next thing every watcher receives: proves that
    nothing else (presence, a duplicate broadcast) was sent to them in between."""
    ack = sender.say(room, "--marker--")
    assert sender.expect("message")["id"] == ack["id"]
    for watcher in watchers:
        event = watcher.recv()
        assert (event["type"], event["text"]) == ("message", "--marker--"), event


def test_join_welcome(server: ServerProcess) -> None:
    """A join is answered with a welcome holding the room, name, users, empty history, token."""
    alice = Chat(server.ws_url)
    welcome = alice.join("lobby", "alice")
    assert welcome["room"] == "lobby"
    assert welcome["name"] == "alice"
    assert welcome["users"] == ["alice"]
    assert welcome["history"] == []
    assert isinstance(welcome["token"], str) and len(welcome["token"]) >= 16
    assert "recovered" not in welcome
    bob = Chat(server.ws_url)
    assert bob.join("lobby", "bob")["users"] == ["alice", "bob"]


def test_broadcast_to_three(server: ServerProcess) -> None:
    """Each message reaches all 3 members once; the sender gets its ack before its copy."""
    names = ["alice", "bob", "carol"]
    clients = {n: Chat(server.ws_url) for n in names}
    for n in names:
        clients[n].join("lobby", n)
    # Drain the presence batches of those who came later.
    for i, n in enumerate(names):
        if names[i + 1 :]:
            assert clients[n].expect_presence(joined=names[i + 1 :])["count"] == 3
    received: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for n in names:
        clients[n].send(type="say", room="lobby", text=f"hello from {n}", ref=f"r-{n}")
        ack = clients[n].expect("ack")
        assert ack["ref"] == f"r-{n}" and ack["room"] == "lobby"
        for m in names:
            msg = clients[m].expect("message")
            received[m].append(msg)
            assert msg["id"] == ack["id"]
    texts = [f"hello from {n}" for n in names]
    for n in names:
        assert [m["text"] for m in received[n]] == texts
        assert [m["name"] for m in received[n]] == names
        assert received[n] == received["alice"]
    ids = [m["id"] for m in received["alice"]]
    assert ids == sorted(set(ids)) and all(isinstance(i, int) for i in ids)
    assert all(m["ts"].endswith("Z") for m in received["alice"])
    assert "hello from" not in server.log(), "message text must not be logged at info level"


def test_presence_join_leave_and_drop(server: ServerProcess) -> None:
    """Others see presence batches of joins and leaves: on leave, on a clean close and on a
    dropped TCP; the subject never hears of its own join."""
    alice = Chat(server.ws_url)
    alice.join("lobby", "alice")
    bob = Chat(server.ws_url)
    assert bob.join("lobby", "bob")["count"] == 2
    assert alice.expect("presence") == {
        "type": "presence",
        "room": "lobby",
        "joined": ["bob"],
        "left": [],
        "count": 2,
    }
    bob.send(type="leave", room="lobby")
    assert bob.expect("left") == {"type": "left", "room": "lobby"}
    assert alice.expect("presence")["left"] == ["bob"]

    carol = RawWs(server.port)
    carol.join("lobby", "carol")
    assert alice.expect("presence")["joined"] == ["carol"]
    carol.close()  # TCP gone, no close frame
    assert alice.expect("presence") == {
        "type": "presence",
        "room": "lobby",
        "joined": [],
        "left": ["carol"],
        "count": 1,
    }

    dave = Chat(server.ws_url)
    dave.join("lobby", "dave")
    assert alice.expect("presence")["joined"] == ["dave"]
    dave.close()  # a clean close
    assert alice.expect("presence")["left"] == ["dave"]
    # One log line per connection, when it closes, with the peer, how long and why.
    log = server.log()
    closed = [line for line in log.splitlines() if "closed tcp4:127.0.0.1:" in line]
    assert len(closed) == 2, closed
    assert re.search(r"after \d+\.\ds: code=1006 ", closed[0]), closed
    assert re.search(r"after \d+\.\ds: code=1000 ", closed[1]), closed


def test_subprotocol(server: ServerProcess) -> None:
    """wschat.v1 is selected when offered; clients offering none or others are served too."""
    offered = Chat(server.ws_url, subprotocols=["wschat.v1"])
    assert offered.ws.subprotocol == "wschat.v1"
    assert offered.join("lobby", "a")["users"] == ["a"]
    plain = Chat(server.ws_url)
    assert plain.ws.subprotocol is None
    assert plain.join("lobby", "b")["users"] == ["a", "b"]
    other = RawWs(server.port, headers={"Sec-WebSocket-Protocol": "other.v9"})
    assert other.join("lobby", "c")["users"] == ["a", "b", "c"]


def test_history_survives_restart(wschat_server: ServerFactory) -> None:
    """After SIGTERM and a restart a joiner gets the same history; `since` still works."""
    server = wschat_server()
    alice = Chat(server.ws_url)
    alice.join("lobby", "alice")
    for i in range(5):
        alice.say("lobby", f"m{i}", ref=f"ref{i}")
        alice.expect("message")
    alice.say("lobby", "ünïcödé ✓ 😀\nsecond line\ttab")
    alice.expect("message")
    before = Chat(server.ws_url).join("lobby", "bob")["history"]
    assert len(before) == 6

    assert server.stop() in CLEAN_STOP_CODES
    server.start()
    after = Chat(server.ws_url).join("lobby", "carol")
    assert after["history"] == before
    since = Chat(server.ws_url).join("lobby", "dave", since=before[2]["id"])
    assert since["recovered"] is True
    assert since["history"] == before[3:]
    # Ids go on from where they were: strictly increasing across the restart.
    alice = Chat(server.ws_url)
    alice.join("lobby", "alice")
    assert alice.say("lobby", "after restart")["id"] > before[-1]["id"]


def test_since_recovery(wschat_server: ServerFactory) -> None:
    """`since` gives exactly the missed messages, or recovered false and the latest ones."""
    server = wschat_server("--history-size", "5")
    alice = Chat(server.ws_url)
    alice.join("lobby", "alice")
    ids = []
    for i in range(3):
        ids.append(alice.say("lobby", f"m{i}")["id"])
        alice.expect("message")

    bob = Chat(server.ws_url)
    welcome = bob.join("lobby", "bob", since=ids[0])
    assert welcome["recovered"] is True
    assert [m["text"] for m in welcome["history"]] == ["m1", "m2"]
    bob.close()
    alice.expect_presence(left=["bob"])  # bob's join and leave, in one batch or two

    up_to_date = Chat(server.ws_url).join("lobby", "carol", since=ids[-1])
    assert (up_to_date["recovered"], up_to_date["history"]) == (True, [])
    alice.expect_presence(joined=["carol"])

    for i in range(3, 9):
        alice.say("lobby", f"m{i}")
        alice.expect("message")
    # 6 missed, only 5 are sent on join: never a partial set presented as complete.
    behind = Chat(server.ws_url).join("lobby", "dave", since=ids[-1])
    assert behind["recovered"] is False
    assert [m["text"] for m in behind["history"]] == [f"m{i}" for i in range(4, 9)]

    ahead = Chat(server.ws_url).join("lobby", "erin", since=1000)
    assert ahead["recovered"] is False
    assert [m["text"] for m in ahead["history"]] == [f"m{i}" for i in range(4, 9)]

    exactly = Chat(server.ws_url).join("lobby", "frank", since=ids[-1] + 1)
    assert exactly["recovered"] is True
    assert [m["text"] for m in exactly["history"]] == [f"m{i}" for i in range(4, 9)]


def test_ref_idempotency(server: ServerProcess) -> None:
    """A resent ref is acked with the original id, not broadcast again, stored once."""
    alice = Chat(server.ws_url)
    alice.join("lobby", "alice")
    bob = Chat(server.ws_url)
    bob.join("lobby", "bob")
    alice.expect_presence(joined=["bob"])

    first = alice.say("lobby", "only once", ref="uuid-1")
    assert bob.expect("message")["id"] == first["id"]
    alice.expect("message")
    again = alice.say("lobby", "only once", ref="uuid-1")
    assert again == first
    marker(alice, "lobby", bob)

    alice.close()
    bob.expect_presence(left=["alice"])
    alice = Chat(server.ws_url)
    alice.join("lobby", "alice")
    bob.expect_presence(joined=["alice"])
    assert alice.say("lobby", "only once", ref="uuid-1") == first
    marker(alice, "lobby", bob)

    # The same ref from another name is another message.
    other = bob.say("lobby", "only once", ref="uuid-1")
    assert other["id"] != first["id"]
    assert count_rows(server, "SELECT count(*) FROM messages WHERE ref = 'uuid-1'") == 2
    assert count_rows(server, "SELECT count(*) FROM messages WHERE name = 'alice'") == 3


def test_token_takeover(server: ServerProcess) -> None:
    """The token takes the name over (old one closed 4001, no presence); else name_taken."""
    alice = Chat(server.ws_url)
    token = alice.join("lobby", "alice")["token"]
    alice.join("side", "alice")
    bob = Chat(server.ws_url)
    bob.join("lobby", "bob")
    bob.join("side", "bob")
    rooms = {alice.expect_presence(joined=["bob"])["room"] for _ in range(2)}
    assert rooms == {"lobby", "side"}

    intruder = Chat(server.ws_url)
    intruder.send(type="join", room="lobby", name="alice")
    error = intruder.expect("error")
    assert error["code"] == "name_taken"
    intruder.send(type="join", room="lobby", name="alice", token="not-the-token")
    assert intruder.expect("error")["code"] == "name_taken"

    again = Chat(server.ws_url)
    welcome = again.join("lobby", "alice", token=token)
    assert welcome["users"] == ["alice", "bob"]
    assert welcome["token"] == token
    assert alice.expect_close() == (4001, "replaced by a newer connection")
    # The new connection holds the old one's other room too, without joining it.
    again.say("side", "still here")
    assert again.expect("message")["room"] == "side"
    event = bob.recv()
    assert (event["type"], event["text"], event["room"]) == ("message", "still here", "side")
    marker(again, "lobby", bob)
