"""wschat-cli's logic without a terminal or a socket: typed lines to frames, frames to lines,
what a reconnect sends, and the command line (tests/e2e/test_cli.py runs it in tmux)."""

from __future__ import annotations

import itertools

import pytest

from wschat.cli import parse_args
from wschat.cli.state import ChatState, ws_url


def state(name: str | None = "alice", *rooms: str) -> ChatState:
    counter = itertools.count(1)
    chat = ChatState(name, new_ref=lambda: f"r{next(counter)}")
    for room in rooms:
        chat.rooms[room] = None
        chat.current = room
    return chat


def welcome(room: str, name: str = "alice", **extra: object) -> dict[str, object]:
    return {
        "type": "welcome",
        "room": room,
        "name": name,
        "users": [name],
        "count": 1,
        "history": [],
        "token": "resume-1",
        **extra,
    }


def message(room: str, id_: int, name: str = "bob", text: str = "hi") -> dict[str, object]:
    return {"type": "message", "room": room, "id": id_, "name": name, "text": text, "ts": "t"}


def test_urls_people_type() -> None:
    """http(s) and bare host:port become ws(s) URLs on /ws; other schemes are refused."""
    assert ws_url("ws://h:1/ws") == "ws://h:1/ws"
    assert ws_url("https://chat.example") == "wss://chat.example/ws"
    assert ws_url("127.0.0.1:8080") == "ws://127.0.0.1:8080/ws"
    assert ws_url("wss://h/custom") == "wss://h/custom"
    with pytest.raises(ValueError):
        ws_url("ftp://h")


def test_the_first_connection_signs_in_and_joins() -> None:
    """A new connection sends auth (with a token) and a join per room, naming itself once."""
    chat = state("alice", "lobby", "dev")
    assert chat.opening(None) == [
        {"type": "join", "room": "lobby", "name": "alice"},
        {"type": "join", "room": "dev"},
    ]
    assert chat.opening("jwt")[0] == {"type": "auth", "token": "jwt"}


def test_a_reconnect_rejoins_with_since_and_resends_unacked_says() -> None:
    """After a drop the client rejoins each room after the last id it saw, with its resume
    token, and sends again what was not acked (same ref)."""
    chat = state("alice", "lobby")
    chat.received(welcome("lobby", history=[message("lobby", 4)]))
    chat.received(message("lobby", 5))
    _, frames, _ = chat.typed("are you there?")
    assert frames == [{"type": "say", "room": "lobby", "text": "are you there?", "ref": "r1"}]
    assert chat.opening(None) == [
        {"type": "join", "room": "lobby", "name": "alice", "since": 5, "token": "resume-1"},
        {"type": "say", "room": "lobby", "text": "are you there?", "ref": "r1"},
    ]
    chat.received({"type": "ack", "room": "lobby", "ref": "r1", "id": 6})
    assert chat.pending == {}


def test_messages_are_shown_once() -> None:
    """A rejoin's history overlapping the live messages shows each message once, in order."""
    chat = state("alice", "lobby")
    lines, _ = chat.received(welcome("lobby", history=[message("lobby", 1, text="one")]))
    assert lines == ["* joined #lobby as alice (1 members: alice)", "[lobby] <bob> one"]
    assert chat.received(message("lobby", 2, text="two"))[0] == ["[lobby] <bob> two"]
    again = welcome("lobby", recovered=True, history=[message("lobby", 2), message("lobby", 3)])
    assert chat.received(again)[0] == ["[lobby] <bob> hi"]
    assert chat.received(message("lobby", 3))[0] == []
    lost = welcome("lobby", recovered=False, history=[message("lobby", 9, text="nine")])
    assert chat.received(lost)[0] == [
        "* #lobby: some messages were missed while offline",
        "[lobby] <bob> nine",
    ]


def test_commands() -> None:
    """/join switches rooms, /leave and /who default to the current one, /quit quits, and
    something unknown is said to be so."""
    chat = state("alice", "lobby")
    chat.received(welcome("lobby"))
    assert chat.typed("/join dev")[1] == [
        {"type": "join", "room": "dev", "name": "alice", "token": "resume-1"}
    ]
    assert chat.current == "dev"
    assert chat.typed("hello")[1][0]["room"] == "dev"
    assert chat.typed("/who")[1] == [{"type": "who", "room": "dev", "limit": 1000}]
    assert chat.typed("/who lobby")[1][0]["room"] == "lobby"
    assert chat.typed("/leave")[1] == [{"type": "leave", "room": "dev"}]
    chat.received({"type": "left", "room": "dev"})
    assert chat.current == "lobby" and "dev" not in chat.rooms
    assert chat.typed("/kick mallory")[1] == [{"type": "kick", "room": "lobby", "name": "mallory"}]
    assert chat.typed("/quit")[2] is True
    assert chat.typed("/frobnicate")[0][0].startswith("! unknown")
    assert chat.typed("   ") == ([], [], False)
    nowhere = state("zed")
    assert nowhere.typed("hi")[0] == ["! join a room first: /join ROOM"]


def test_what_the_server_says_is_shown() -> None:
    """Presence, members (paged to the end), kicks, errors and sign-ins become lines."""
    chat = state("alice", "lobby")
    chat.received(welcome("lobby"))
    lines, _ = chat.received(
        {"type": "presence", "room": "lobby", "joined": ["bob"], "left": ["carol"], "count": 2}
    )
    assert lines == ["* bob joined #lobby", "* carol left #lobby"]
    page = {"type": "members", "room": "lobby", "names": ["a", "b"], "next": "b", "count": 3}
    lines, more = chat.received(page)
    assert lines == ["* #lobby: a, b (3 in all)"]
    assert more == [{"type": "who", "room": "lobby", "after": "b", "limit": 1000}]
    assert chat.received({"type": "error", "code": "rate_limited", "message": "slow"})[0] == [
        "! rate_limited: slow"
    ]
    assert chat.received({"type": "left", "room": "lobby", "reason": "kicked"})[0] == [
        "* you left #lobby (kicked)"
    ]
    assert chat.current is None
    signed = state(None, "lobby")
    lines, _ = signed.received({"type": "authed", "name": "Ann", "user": "u1", "expires_in": 60})
    assert lines == ["* signed in as Ann (u1)"]
    assert signed.opening("jwt")[1] == {"type": "join", "room": "lobby"}


def test_the_command_line() -> None:
    """A room and a name (or a token file) are needed, except in --json mode; the token is
    never an argument."""
    args = parse_args(["ws://h/ws", "--room", "lobby", "--name", "alice"])
    assert (args.room, args.name, args.json) == (["lobby"], "alice", False)
    assert parse_args(["ws://h/ws", "--json"]).json
    assert parse_args(["ws://h/ws", "--room", "r", "--token-file", "t"]).token_file == "t"
    for bad in (
        ["ws://h/ws", "--name", "alice"],
        ["ws://h/ws", "--room", "lobby"],
        ["ws://h/ws", "--room", "r", "--name", "a", "--ca", "c.pem", "--insecure"],
        ["ws://h/ws", "--room", "r", "--name", "a", "--token", "secret"],
        ["gopher://h", "--json"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_a_text_or_name_cannot_forge_another_users_line() -> None:
    """A newline's continuation is indented under its sender; bidi, format and control
    characters in names and texts show as \\uXXXX; emoji joiners and tabs stay."""
    chat = state("alice", "lobby")
    forged = message("lobby", 1, text="hi\n[lobby] <carol> I owe bob 100\u2028[lobby] <x> y")
    lines, _ = chat.received(forged)
    assert lines == [
        "[lobby] <bob> hi",
        "              [lobby] <carol> I owe bob 100\\u2028[lobby] <x> y",
    ]
    assert all(not line.startswith("[") for line in lines[1:])
    rlo = message("lobby", 2, name="eve\u202e", text="\u2066evil\u2069 \x1b[2J\rok\t👩\u200d💻")
    assert chat.received(rlo)[0] == [
        "[lobby] <eve\\u202e> \\u2066evil\\u2069 \\u001b[2J\\u000dok\t👩\u200d💻"
    ]
    presence = {"type": "presence", "room": "lobby", "joined": ["m\u202eallory"], "left": []}
    assert chat.received(presence)[0] == ["* m\\u202eallory joined #lobby"]
    members = {"type": "members", "room": "lobby", "names": ["a\u200fb"], "count": 1}
    assert chat.received(members)[0] == ["* #lobby: a\\u200fb (1 in all)"]
