"""Every error code of docs/protocol.md, triggered against the real server."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .client import Chat
from .conftest import ServerFactory
from .process import ServerProcess

pytestmark = pytest.mark.e2e

# A hang guard, far beyond the 2 s a token takes to come back at --rate 0.5.
REFILL_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with default limits for the errors that need no special option."""
    server = ServerProcess(tmp_path_factory.mktemp("errors")).start()
    yield server
    server.kill()


def refused(chat: Chat, code: str, ref: str | None = None) -> dict[str, Any]:
    """The next event is an error with `code` and the request's ref; the connection stays open."""
    error = chat.expect("error")
    assert error["code"] == code, error
    assert error["ref"] == ref
    assert isinstance(error["message"], str) and error["message"]
    return error


def still_open(chat: Chat) -> None:
    """The connection still answers after the refusals (here: a join of a fresh room)."""
    chat.send(type="join", room="still-open")
    assert chat.expect("welcome")["room"] == "still-open"


def test_bad_json(shared: ServerProcess) -> None:
    """A frame that is not JSON, or JSON but not an object, gets bad_json."""
    chat = Chat(shared.ws_url)
    for frame in ("not json", "{", "[1, 2]", '"join"', "null"):
        chat.ws.send(frame)
        refused(chat, "bad_json")
    chat.join("lobby", "ann")
    still_open(chat)


def test_unknown_type(shared: ServerProcess) -> None:
    """A missing or unknown `type` gets unknown_type, with the ref echoed."""
    chat = Chat(shared.ws_url)
    chat.send(type="dance", room="lobby", ref="r1")
    refused(chat, "unknown_type", "r1")
    chat.send(room="lobby")
    refused(chat, "unknown_type")
    chat.send(type=7)
    refused(chat, "unknown_type")
    chat.join("lobby", "ben")
    still_open(chat)


def test_invalid_field(shared: ServerProcess) -> None:
    """Missing or mistyped fields, and `since`/`ref`/`token` out of range, get invalid_field."""
    chat = Chat(shared.ws_url)
    for bad in (
        {"type": "join", "name": "cat"},
        {"type": "join", "room": 5, "name": "cat"},
        {"type": "join", "room": "lobby", "name": 5},
        {"type": "join", "room": "lobby", "name": "cat", "since": -1},
        {"type": "join", "room": "lobby", "name": "cat", "since": "3"},
        {"type": "join", "room": "lobby", "name": "cat", "since": True},
        {"type": "join", "room": "lobby", "name": "cat", "since": 2**63},
        {"type": "join", "room": "lobby", "name": "cat", "token": ""},
        {"type": "join", "room": "lobby", "name": "cat", "token": "x" * 129},
        {"type": "say", "room": "lobby"},
        {"type": "say", "room": "lobby", "text": ["hi"]},
        {"type": "leave"},
    ):
        chat.ws.send(json.dumps(bad))
        refused(chat, "invalid_field")
    # A bad ref cannot be echoed; a good ref is echoed with another field's error.
    chat.send(type="say", room="lobby", text="hi", ref="x" * 65)
    refused(chat, "invalid_field")
    chat.send(type="say", room="lobby", text="hi", ref=12)
    refused(chat, "invalid_field")
    chat.send(type="say", room="lobby", text=None, ref="r2")
    refused(chat, "invalid_field", "r2")
    chat.join("lobby", "cat")
    still_open(chat)


def test_room_invalid(shared: ServerProcess) -> None:
    """Room names outside 1-64 of letters, digits, '_', '-', '.' get room_invalid."""
    chat = Chat(shared.ws_url)
    for room in ("", "has space", "slash/room", "x" * 65, "émoji😀", "tab\t"):
        chat.send(type="join", room=room, name="dan")
        refused(chat, "room_invalid")
    assert chat.join("A-z_0.9", "dan")["room"] == "A-z_0.9"
    assert chat.join("x" * 64)["room"] == "x" * 64


def test_name_required_and_invalid(shared: ServerProcess) -> None:
    """A first join without name: name_required; a bad or different name: name_invalid."""
    chat = Chat(shared.ws_url)
    chat.send(type="join", room="lobby")
    refused(chat, "name_required")
    for name in ("", "bell\x07", "x" * 33, " padded", "padded ", "zero\u200bwidth", "line\n"):
        chat.send(type="join", room="lobby", name=name)
        refused(chat, "name_invalid")
    assert chat.join("lobby", "Zoë 😀")["name"] == "Zoë 😀"
    chat.send(type="join", room="other", name="somebody-else")
    refused(chat, "name_invalid")
    assert chat.join("other")["name"] == "Zoë 😀"


def test_name_taken(shared: ServerProcess) -> None:
    """A name held by another member of the room gets name_taken; other rooms are free."""
    first = Chat(shared.ws_url)
    first.join("taken-room", "eve")
    second = Chat(shared.ws_url)
    second.send(type="join", room="taken-room", name="eve")
    refused(second, "name_taken")
    assert second.join("free-room", "eve")["users"] == ["eve"]


def test_not_in_room(shared: ServerProcess) -> None:
    """`say` or `leave` for a room the connection has not joined gets not_in_room."""
    chat = Chat(shared.ws_url)
    chat.send(type="say", room="lobby", text="hi", ref="r3")
    refused(chat, "not_in_room", "r3")
    chat.join("lobby", "fay")
    chat.send(type="say", room="elsewhere", text="hi")
    refused(chat, "not_in_room")
    chat.send(type="leave", room="elsewhere")
    refused(chat, "not_in_room")
    chat.send(type="leave", room="lobby")
    chat.expect("left")
    chat.send(type="leave", room="lobby")
    refused(chat, "not_in_room")


def test_text_errors(shared: ServerProcess) -> None:
    """Blank text: text_empty; over 2000 chars: text_too_long; control chars: text_invalid."""
    chat = Chat(shared.ws_url)
    chat.join("texts", "gus")
    for text in ("", "   ", "\n\t "):
        chat.send(type="say", room="texts", text=text, ref="e")
        refused(chat, "text_empty", "e")
    chat.send(type="say", room="texts", text="x" * 2001, ref="l")
    refused(chat, "text_too_long", "l")
    for text in ("nul\x00", "esc\x1b[31m", "del\x7f", "bell\x07", "lone \ud800 surrogate"):
        chat.send(type="say", room="texts", text=text, ref="i")
        refused(chat, "text_invalid", "i")
    ok = "line\n\tindented " + "😀" * 1985
    assert len(ok) == 2000
    chat.say("texts", ok)
    assert chat.expect("message")["text"] == ok


def test_limits(wschat_server: ServerFactory) -> None:
    """--rate/--burst give rate_limited, --max-rooms too_many_rooms, --max-members room_full."""
    # --rate 0.5: the burst's first token is back 2 s after it was spent, so the two says
    # after the burst are refused even on a slow machine; the refill itself is pinned on
    # a fake clock in test_hub.py and test_ratelimit.py.
    server = wschat_server(
        "--rate", "0.5", "--burst", "2", "--max-rooms", "2", "--max-members", "2"
    )
    hal = Chat(server.ws_url)
    hal.join("r1", "hal")
    hal.join("r2")
    hal.send(type="join", room="r3")
    refused(hal, "too_many_rooms")
    hal.send(type="leave", room="r2")
    hal.expect("left")
    assert hal.join("r3")["room"] == "r3"

    for i in range(2):
        hal.say("r1", f"burst {i}")
        hal.expect("message")
    hal.send(type="say", room="r1", text="too fast", ref="fast")
    refused(hal, "rate_limited", "fast")
    hal.send(type="say", room="r1", text="still too fast")
    refused(hal, "rate_limited")
    # Time gives the allowance back: retry until the refusals stop.
    deadline = time.monotonic() + REFILL_DEADLINE_S
    while True:
        hal.send(type="say", room="r1", text="after a pause", ref="pause")
        answer = hal.recv()
        if answer["type"] == "ack":
            break
        assert (answer["type"], answer["code"]) == ("error", "rate_limited"), answer
        assert time.monotonic() < deadline, "the rate limit never let a say through again"
        time.sleep(0.1)
    assert hal.expect("message")["text"] == "after a pause"

    ivy = Chat(server.ws_url)
    ivy.join("r1", "ivy")
    jon = Chat(server.ws_url)
    jon.send(type="join", room="r1", name="jon")
    refused(jon, "room_full")
    ivy.send(type="leave", room="r1")
    ivy.expect("left")
    assert jon.join("r1", "jon")["users"] == ["hal", "jon"]


def test_storage_unavailable(wschat_server: ServerFactory) -> None:
    """A locked database gives storage_unavailable, no ack; the retried ref is stored once."""
    server = wschat_server()
    kim = Chat(server.ws_url)
    kim.join("lobby", "kim")
    lou = Chat(server.ws_url)
    lou.join("lobby", "lou")
    kim.expect_presence(joined=["lou"])
    first = kim.say("lobby", "before the lock", ref="a")
    kim.expect("message")
    lou.expect("message")

    locker = sqlite3.connect(server.db_path, isolation_level=None, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        kim.send(type="say", room="lobby", text="during the lock", ref="b")
        # Refused once the server's SQLite busy timeout has passed.
        refused(kim, "storage_unavailable", "b")
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    ack = kim.say("lobby", "during the lock", ref="b")
    assert ack["id"] == first["id"] + 1
    assert kim.expect("message")["id"] == ack["id"]
    # Lou's next message is the retried one: the refused attempt was never broadcast.
    assert lou.expect("message")["text"] == "during the lock"
    assert kim.say("lobby", "during the lock", ref="b") == ack
    history = Chat(server.ws_url).join("lobby", "max")["history"]
    assert [m["text"] for m in history] == ["before the lock", "during the lock"]
