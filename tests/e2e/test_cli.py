"""wschat-cli in a real terminal (tmux: send-keys, capture-pane) against the real twistd."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..jwtkit import claims, hs256, write_secret
from .client import Chat
from .conftest import ServerFactory
from .process import ServerProcess, count_rows
from .terminal import Terminal

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).with_name("wschat-cli"))
OpenTerminal = Callable[..., Terminal]


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[OpenTerminal]:
    """`terminal(*cli_args)`: wschat-cli with those arguments in a tmux session of its own."""
    opened: list[Terminal] = []

    def open_(*args: str) -> Terminal:
        term = Terminal([CLI, *args], tmp_path)
        opened.append(term)
        return term

    yield open_
    for term in opened:
        term.close()


def token_file(path: Path, sub: str = "u-alice", ttl_s: float = 3600, **extra: Any) -> Path:
    path.write_text(hs256(claims(sub, exp=int(time.time() + ttl_s), **extra)) + "\n")
    return path


def test_a_terminal_chat(wschat_server: ServerFactory, terminal: OpenTerminal) -> None:
    """Typed lines are said, the room's messages and presence are shown, and /who, /join,
    /leave and /quit do what they say."""
    server = wschat_server()
    bob = Chat(server.ws_url)
    bob.join("lobby", "bob")
    alice = terminal(server.ws_url, "--room", "lobby", "--name", "alice")
    alice.wait_for("* joined #lobby as alice (2 members: alice, bob)")
    bob.expect_presence(joined=["alice"])
    alice.type("hello from the terminal")
    got = bob.expect("message")
    assert (got["name"], got["text"]) == ("alice", "hello from the terminal")
    alice.wait_for("[lobby] <alice> hello from the terminal")
    bob.say("lobby", "hi alice")
    bob.expect("message")
    alice.wait_for("[lobby] <bob> hi alice")
    alice.type("/who")
    alice.wait_for("* #lobby: alice, bob (2 in all)")
    alice.type("/join dev")
    alice.wait_for("* joined #dev as alice (1 members: alice)")
    alice.type("in dev now")
    alice.wait_for("[dev] <alice> in dev now")
    alice.type("/leave")
    alice.wait_for("* you left #dev")
    carol = Chat(server.ws_url)
    carol.join("lobby", "carol")
    alice.wait_for("* carol joined #lobby")
    alice.type("/quit")
    assert alice.exit_status() == 0
    bob.expect_presence(left=["alice"])


def test_reconnect_shows_what_was_missed_once(
    wschat_server: ServerFactory, terminal: OpenTerminal
) -> None:
    """The server restarts: the client reconnects with backoff, rejoins with `since`, shows
    each message once (the ones sent while it was away too) and sends what was typed while
    offline, stored once."""
    server = wschat_server()
    alice = terminal(server.ws_url, "--room", "lobby", "--name", "alice")
    alice.wait_for("* joined #lobby")
    bob = Chat(server.ws_url)
    bob.join("lobby", "bob")
    bob.say("lobby", "before the restart")
    alice.wait_for("<bob> before the restart")
    bob.close()
    server.stop()
    alice.wait_for("reconnecting in")
    alice.type("typed while offline")
    server.start()
    bob = Chat(server.ws_url)
    bob.join("lobby", "bob")
    bob.say("lobby", "after the restart")
    alice.wait_for("<bob> after the restart")
    alice.wait_for("<alice> typed while offline")
    time.sleep(1.0)  # anything shown twice would be by now
    assert len(alice.lines_with("<bob> before the restart")) == 1
    assert len(alice.lines_with("<bob> after the restart")) == 1
    assert len(alice.lines_with("<alice> typed while offline")) == 1
    assert (
        count_rows(server, "SELECT count(*) FROM messages WHERE text = ?", "typed while offline")
        == 1
    )


def test_signed_in_from_a_token_file_and_refreshed(
    wschat_server: ServerFactory, terminal: OpenTerminal, tmp_path: Path
) -> None:
    """--token-file signs the client in (named by the token); a new token written to the file
    is sent as a refresh before the old one expires, so the connection outlives it."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)), "--jwt-grace", "1")
    path = token_file(tmp_path / "alice.jwt", ttl_s=5, name="Alice")
    alice = terminal(server.ws_url, "--room", "lobby", "--token-file", str(path))
    alice.wait_for("* signed in as Alice (u-alice)")
    alice.wait_for("* joined #lobby as Alice")
    token_file(path, ttl_s=3600, name="Alice")
    alice.wait_for("* signed in as Alice (u-alice)", count=2, timeout=10)
    time.sleep(3.0)  # past the first token's exp + grace
    alice.type("still here")
    alice.wait_for("[lobby] <Alice> still here")
    assert not alice.lines_with("disconnected")


def test_a_refused_token_ends_the_client(
    wschat_server: ServerFactory, terminal: OpenTerminal, tmp_path: Path
) -> None:
    """A token the server refuses (4401) ends the client with status 2, saying why; it does
    not retry forever."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)))
    path = tmp_path / "bad.jwt"
    path.write_text(hs256(claims(exp=int(time.time()) + 60), b"another-secret-" * 3))
    alice = terminal(server.ws_url, "--room", "lobby", "--token-file", str(path))
    assert alice.exit_status() == 2
    assert alice.lines_with("4401") and alice.lines_with("signature")


def test_wss_with_ca_or_insecure(wschat_server: ServerFactory, terminal: OpenTerminal) -> None:
    """wss:// verifies the certificate: trusted with --ca, refused without it, and accepted
    unverified with --insecure."""
    server = wschat_server(tls=True)
    trusted = terminal(
        server.wss_url, "--room", "lobby", "--name", "alice", "--ca", str(server.cert_path)
    )
    trusted.wait_for("* joined #lobby as alice")
    untrusted = terminal(server.wss_url, "--room", "lobby", "--name", "bob")
    untrusted.wait_for("certificate verify failed")
    assert not untrusted.lines_with("joined")
    insecure = terminal(server.wss_url, "--room", "lobby", "--name", "carol", "--insecure")
    insecure.wait_for("* joined #lobby as carol")


def test_json_lines_piped_before_the_connection_opens_are_sent(
    wschat_server: ServerFactory,
) -> None:
    """`echo '{...}' | wschat-cli --json`: lines read, and stdin closed, before the WebSocket
    is open are sent once it is, in order, and the client then exits with 0."""
    server = wschat_server()
    lines = [
        {"type": "join", "room": "lobby", "name": "ci"},
        {"type": "say", "room": "lobby", "text": "build passed", "ref": "ci1"},
    ]
    done = subprocess.run(
        [CLI, server.ws_url, "--json"],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert count_rows(server, "SELECT count(*) FROM messages WHERE text = ?", "build passed") == 1


def test_json_mode_pipes_frames(wschat_server: ServerFactory) -> None:
    """--json: frames typed on stdin are sent as they are, every frame received is one JSON
    line on stdout, status goes to stderr, and closing stdin ends the client with 0."""
    server = wschat_server()
    proc = subprocess.Popen(
        [CLI, server.ws_url, "--json", "--room", "lobby", "--name", "script"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        welcome = json.loads(proc.stdout.readline())
        assert welcome["type"] == "welcome" and welcome["name"] == "script"
        proc.stdin.write(json.dumps({"type": "say", "room": "lobby", "text": "beep", "ref": "b1"}))
        proc.stdin.write("\nnot json\n")
        proc.stdin.flush()
        ack = json.loads(proc.stdout.readline())
        message = json.loads(proc.stdout.readline())
        assert ack == {"type": "ack", "room": "lobby", "ref": "b1", "id": 1}
        assert (message["type"], message["text"]) == ("message", "beep")
        proc.stdin.close()
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        status = proc.stderr.read()
        assert "connected to" in status and "not a JSON object" in status
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


# Room for the whole test's history in memory (searchable there), and welcomes and pages of
# about 20 short messages: a join shows the newest ones only.
HISTORY_ARGS = ("--history-db", ":memory:", "--history-size", "500")
SMALL_PAGES = ("--welcome-history-bytes", "2500", "--rate", "1000", "--burst", "1000")


def said(server: ServerProcess, texts: list[str]) -> None:
    """`texts` said in lobby by bob, in order (ids 1..n), all acked."""
    bob = Chat(server.ws_url)
    bob.join("lobby", "bob")
    for i, text in enumerate(texts):
        bob.send(type="say", room="lobby", text=text, ref=f"b{i}")
    acks = 0
    while acks < len(texts):
        acks += bob.recv()["type"] == "ack"
    bob.close()


def test_history_scrolls_back_to_the_first_message(
    wschat_server: ServerFactory, terminal: OpenTerminal
) -> None:
    """/history N shows the N messages before the oldest shown, marked as history, and
    /history again goes on until no older one is kept: every message is then on the screen
    exactly once, in order."""
    server = wschat_server(*HISTORY_ARGS, *SMALL_PAGES)
    said(server, [f"msg {i:02d}" for i in range(1, 61)])
    alice = terminal(server.ws_url, "--room", "lobby", "--name", "alice")
    screen = alice.wait_for("<bob> msg 60")
    welcomed = [int(line.split()[-1]) for line in screen.splitlines() if "<bob> msg" in line]
    oldest = welcomed[0]
    assert welcomed == list(range(oldest, 61)) and oldest > 10
    alice.type("/history 5")
    alice.wait_for("* #lobby: 5 older messages; /history for more")
    paged = [line for line in alice.screen().splitlines() if line.startswith("[lobby] history")]
    assert [line.split()[2] for line in paged] == [f"#{i}" for i in range(oldest - 5, oldest)]
    assert paged[-1].endswith(f"<bob> msg {oldest - 1:02d}")
    pages = 1
    while not alice.lines_with("none before them is kept"):
        alice.type("/history")
        pages += 1
        alice.wait_for("older messages;", count=pages)
        assert pages < 10, alice.screen()
    alice.type("/history")
    alice.wait_for("* #lobby: no older messages are kept")
    lines = alice.screen().splitlines()
    shown = [int(line.split()[-1]) for line in lines if "<bob> msg" in line]
    history = [line for line in lines if line.startswith("[lobby] history")]
    assert sorted(shown) == list(range(1, 61)) and len(history) == oldest - 1


def test_search_lists_results_newest_first_and_more_pages_on(
    wschat_server: ServerFactory, terminal: OpenTerminal
) -> None:
    """/search WORDS lists the room's matches (every word, any case, the last as a prefix)
    newest first with their ids, and /more pages on until no older result is left."""
    server = wschat_server(*HISTORY_ARGS, *SMALL_PAGES)
    said(server, [f"build {i:02d} " + ("FAILED" if i % 10 == 0 else "ok") for i in range(1, 61)])
    alice = terminal(server.ws_url, "--room", "lobby", "--name", "alice")
    alice.wait_for("<bob> build 60")
    alice.type("/search Build fail")
    alice.wait_for('* #lobby: no older results for "Build fail"')
    found = [line.split()[2] for line in alice.lines_with("[lobby] found")]
    assert found == ["#60", "#50", "#40", "#30", "#20", "#10"]
    alice.type("/search build")
    alice.wait_for('/more for older results for "build"')
    rounds = 0
    while not alice.lines_with('no older results for "build"'):
        rounds += 1
        alice.type("/more")
        alice.wait_for('results for "build"', count=rounds + 1)
        assert rounds < 10, alice.screen()
    ids = [int(line.split()[2][1:]) for line in alice.lines_with("[lobby] found")][6:]
    assert ids == list(range(60, 0, -1)) and rounds >= 2
    alice.type("/more")
    alice.wait_for("! no more results: /search WORDS")


def test_json_mode_passes_history_and_search_through(wschat_server: ServerFactory) -> None:
    """--json: `history` and `search` typed as frames are sent as they are, and `page` and
    `results` come back as JSON lines."""
    server = wschat_server(*HISTORY_ARGS)
    said(server, ["deploy one", "deploy two", "something else"])
    requests = [
        {"type": "history", "room": "lobby", "before": 3, "limit": 1},
        {"type": "search", "room": "lobby", "q": "DEPL"},
    ]
    done = subprocess.run(
        [CLI, server.ws_url, "--json", "--room", "lobby", "--name", "script"],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    frames = [json.loads(line) for line in done.stdout.splitlines()]
    answers = {f["type"]: f for f in frames if f["type"] in ("page", "results")}
    assert "page" in answers, (done.stdout, done.stderr)
    assert answers["page"]["more"] is True
    assert [m["text"] for m in answers["page"]["messages"]] == ["deploy two"]
    assert [m["id"] for m in answers["results"]["messages"]] == [2, 1]
    assert answers["results"]["next"] is None
