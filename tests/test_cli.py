"""wschat-cli's logic without a terminal or a socket: typed lines to frames, frames to lines,
what a reconnect sends, and the command line (tests/e2e/test_cli.py runs it in tmux)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, timedelta, timezone
from typing import Any, cast

import pytest
from twisted.internet.task import Clock

from wschat.cli import parse_args
from wschat.cli.client import ANSWER_WAIT_S, Cli
from wschat.cli.state import HELP, ChatState, shown_time, ws_url

TS = "2026-12-07T10:00:00.000Z"


def state(name: str | None = "alice", *rooms: str) -> ChatState:
    counter = itertools.count(1)
    chat = ChatState(name, new_ref=lambda: f"r{next(counter)}", tz=UTC)
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
    return {"type": "message", "room": room, "id": id_, "name": name, "text": text, "ts": TS}


def numbered(room: str, ids: range) -> list[dict[str, object]]:
    return [message(room, i, text=f"m{i}") for i in ids]


def page(room: str, ids: range, more: bool) -> dict[str, object]:
    return {"type": "page", "room": room, "messages": numbered(room, ids), "more": more}


def results(q: str, ids: list[int], after: int | None) -> dict[str, object]:
    found = [message("lobby", i, text=f"deploy {i}") for i in ids]
    return {"type": "results", "room": "lobby", "q": q, "messages": found, "next": after}


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
        "* #lobby: some messages were missed while offline (/history)",
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


def test_history_asks_for_what_is_before_the_oldest_message_shown() -> None:
    """/history [N] asks for N (default 50, 1-200) messages before the oldest one shown in the
    current room, the newest N when none was shown; anything else is refused here."""
    chat = state("alice", "lobby")
    assert chat.typed("/history") == (
        [],
        [{"type": "history", "room": "lobby", "limit": 50}],
        False,
    )
    chat.received(welcome("lobby", history=numbered("lobby", range(41, 51))))
    chat.received(message("lobby", 51))
    assert chat.typed("/history")[1] == [
        {"type": "history", "room": "lobby", "limit": 50, "before": 41}
    ]
    assert chat.typed("/history 200")[1][0]["limit"] == 200
    assert chat.typed("/history 7")[1][0]["limit"] == 7
    for bad in ("/history 0", "/history 201", "/history -3", "/history ten"):
        lines, frames, _ = chat.typed(bad)
        assert frames == [] and lines == ["! /history [N]: N is a number from 1 to 200"], bad
    assert state("zed").typed("/history")[0] == ["! join a room first: /join ROOM"]


def test_a_page_is_shown_in_order_and_marked_as_history() -> None:
    """A page's messages are shown oldest first, each marked `history` with its id and time;
    the next /history goes on from the oldest of them, and a last line says whether more
    are kept. The live position (`since` of a rejoin) does not move."""
    chat = state("alice", "lobby")
    chat.received(welcome("lobby", history=numbered("lobby", range(41, 51))))
    lines, answers = chat.received(page("lobby", range(38, 41), more=True))
    assert answers == []
    assert lines == [
        "[lobby] history #38 2026-12-07 10:00 <bob> m38",
        "[lobby] history #39 2026-12-07 10:00 <bob> m39",
        "[lobby] history #40 2026-12-07 10:00 <bob> m40",
        "* #lobby: 3 older messages; /history for more",
    ]
    assert chat.typed("/history 3")[1][0]["before"] == 38
    lines, _ = chat.received(page("lobby", range(36, 38), more=False))
    assert lines[-1] == "* #lobby: 2 older messages; none before them is kept"
    assert chat.received(page("lobby", range(0), more=False))[0] == [
        "* #lobby: no older messages are kept"
    ]
    assert chat.opening(None)[0]["since"] == 50


def test_a_page_shows_nothing_already_shown() -> None:
    """A page that overlaps what is shown (asked before any message was, while live ones
    came) shows only the older ones; multi-line texts stay indented under their head."""
    chat = state("alice", "lobby")
    chat.received(welcome("lobby"))
    frame = chat.typed("/history 3")[1][0]
    assert "before" not in frame
    chat.received(message("lobby", 5))
    messages = [message("lobby", 3, text="two\nlines"), *numbered("lobby", range(4, 6))]
    lines, _ = chat.received({"type": "page", "room": "lobby", "messages": messages, "more": True})
    head = "[lobby] history #3 2026-12-07 10:00 <bob> "
    assert lines == [
        head + "two",
        " " * len(head) + "lines",
        "[lobby] history #4 2026-12-07 10:00 <bob> m4",
        "* #lobby: 2 older messages; /history for more",
    ]
    assert chat.typed("/history")[1][0]["before"] == 3


def test_after_missed_messages_history_pages_back_from_the_new_ones() -> None:
    """A rejoin that could not recover everything says so and points at /history, which
    then pages back from the first message shown after the gap."""
    chat = state("alice", "lobby")
    chat.received(welcome("lobby", history=numbered("lobby", range(1, 4))))
    gap = welcome("lobby", recovered=False, history=numbered("lobby", range(90, 101)))
    lines, _ = chat.received(gap)
    assert lines[0] == "* #lobby: some messages were missed while offline (/history)"
    assert chat.typed("/history")[1][0]["before"] == 90


def test_search_and_more() -> None:
    """/search WORDS asks the current room; results are shown newest first with ids and times
    (`found`), and /more asks for the next page (once) until `next` is null."""
    chat = state("alice", "lobby")
    chat.received(welcome("lobby"))
    assert chat.typed("/search deploy  failed")[1] == [
        {"type": "search", "room": "lobby", "q": "deploy  failed"}
    ]
    lines, _ = chat.received(results("deploy  failed", [30, 20], 20))
    assert lines == [
        '* #lobby: found for "deploy  failed", newest first:',
        "[lobby] found #30 2026-12-07 10:00 <bob> deploy 30",
        "[lobby] found #20 2026-12-07 10:00 <bob> deploy 20",
        '* #lobby: /more for older results for "deploy  failed"',
    ]
    assert chat.typed("/more")[1] == [
        {"type": "search", "room": "lobby", "q": "deploy  failed", "before": 20}
    ]
    assert chat.typed("/more") == (["! no more results: /search WORDS"], [], False)
    lines, _ = chat.received(results("deploy  failed", [10], None))
    assert lines[-1] == '* #lobby: no older results for "deploy  failed"'
    assert chat.typed("/more")[1] == []
    assert chat.received(results("nothing", [], None))[0] == [
        '* #lobby: nothing found for "nothing"'
    ]
    assert chat.opening(None)[0].get("since") is None


def test_results_of_another_search_do_not_move_more() -> None:
    """Results for an earlier query (answered late) are shown but /more follows the last
    /search; leaving its room forgets it."""
    chat = state("alice", "lobby")
    chat.received(welcome("lobby"))
    chat.typed("/search first")
    chat.typed("/search second")
    chat.received(results("first", [9], 9))
    assert chat.typed("/more")[1] == []
    chat.received(results("second", [8], 8))
    assert chat.typed("/more")[1][0]["before"] == 8
    chat.received(results("second", [7], 7))
    chat.received({"type": "left", "room": "lobby"})
    assert chat.typed("/more")[0] == ["! no more results: /search WORDS"]


def test_search_needs_words_and_a_room_and_escapes_what_it_echoes() -> None:
    """/search without words or without a room is refused here; the echoed query is escaped
    like any text from the server."""
    chat = state("alice", "lobby")
    assert chat.typed("/search")[0] == ["! /search WORDS: the words to find"]
    assert chat.typed("/search   ")[0] == ["! /search WORDS: the words to find"]
    assert state("zed").typed("/search x")[0] == ["! join a room first: /join ROOM"]
    lines, _ = chat.received(results("a\u202eb", [], None))
    assert lines == ['* #lobby: nothing found for "a\\u202eb"']


def test_times_are_shown_in_the_zone_asked() -> None:
    """A message's ts is shown to the minute in the client's zone; one that is not an ISO
    time with a zone is shown as it is, escaped."""
    assert shown_time(TS, UTC) == "2026-12-07 10:00"
    assert shown_time("2026-12-31T23:59:59.999Z", timezone(timedelta(hours=1))) == (
        "2027-01-01 00:59"
    )
    assert shown_time("yesterday\x1b", UTC) == "yesterday\\u001b"
    assert shown_time("2026-12-07T10:00:00", UTC) == "2026-12-07T10:00:00"


def test_help_lists_history_search_and_more(capsys: pytest.CaptureFixture[str]) -> None:
    """/help and --help name /history, /search and /more."""
    chat = state("alice", "lobby")
    assert chat.typed("/help")[0] == HELP
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    for shown in ("\n".join(HELP), " ".join(capsys.readouterr().out.split())):
        assert all(command in shown for command in ("/history [N]", "/search WORDS", "/more"))


class FakeWebSocket:
    """What Cli uses of its Autobahn protocol: the frames sent, and whether it closed."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed_with: int | None = None

    def sendMessage(self, payload: bytes) -> None:
        self.sent.append(json.loads(payload))

    def sendClose(self, code: int) -> None:
        self.closed_with = code


def json_cli(clock: Clock) -> tuple[Cli, FakeWebSocket]:
    cli = Cli(clock, parse_args(["ws://h/ws", "--json", "--room", "lobby", "--name", "s"]))
    return cli, FakeWebSocket()


def frame(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_json_mode_quits_once_what_it_sent_is_answered() -> None:
    """--json with stdin closed (here before the connection opened): the frames are sent, and
    the client closes once each has had its answer (broadcasts are none), not before."""
    clock = Clock()
    cli, ws = json_cli(clock)
    cli.typed(json.dumps({"type": "history", "room": "lobby", "limit": 2}))
    cli.stdin_closed()
    cli.opened(cast(Any, ws))
    assert [f["type"] for f in ws.sent] == ["join", "history"]
    cli.received(frame(type="welcome", room="lobby", name="s", count=1, history=[]))
    cli.received(frame(type="message", room="lobby", id=1, name="b", text="t", ts=TS))
    cli.received(frame(type="left", room="lobby", reason="kicked"))
    assert ws.closed_with is None
    cli.received(frame(type="page", room="lobby", messages=[], more=False))
    assert ws.closed_with == 1000


def test_json_mode_waits_for_answers_at_most_a_while() -> None:
    """An answer that never comes holds the client at most ANSWER_WAIT_S after stdin closed;
    with nothing unanswered it closes at once."""
    clock = Clock()
    cli, ws = json_cli(clock)
    cli.opened(cast(Any, ws))
    cli.received(frame(type="welcome", room="lobby", name="s", count=1, history=[]))
    cli.typed(json.dumps({"type": "search", "room": "lobby", "q": "x"}))
    cli.stdin_closed()
    clock.advance(ANSWER_WAIT_S - 0.1)
    assert ws.closed_with is None
    clock.advance(0.1)
    assert ws.closed_with == 1000
    idle, quiet = json_cli(clock)
    idle.opened(cast(Any, quiet))
    idle.received(frame(type="welcome", room="lobby", name="s", count=1, history=[]))
    idle.stdin_closed()
    assert quiet.closed_with == 1000
