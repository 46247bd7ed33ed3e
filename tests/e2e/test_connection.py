"""The WebSocket connection itself: close codes, slow readers, dead peers, shutdown."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from .client import Chat
from .conftest import ServerFactory
from .process import CLEAN_STOP_CODES, ServerProcess
from .rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWs

pytestmark = pytest.mark.e2e

MAX_MESSAGE_BYTES = 1024
# How long a test waits for what must happen before it gives up: a guard against hangs, far
# beyond the timeouts involved, and no claim about how quickly the server does it.
HANG_GUARD_S = 30.0


def health(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as resp:
        status = json.load(resp)
    assert isinstance(status, dict)
    return status


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that accepts messages of at most MAX_MESSAGE_BYTES."""
    server = ServerProcess(
        tmp_path_factory.mktemp("close-codes"), "--max-message-bytes", str(MAX_MESSAGE_BYTES)
    ).start()
    yield server
    server.kill()


def test_binary_frame_closes_1003(small: ServerProcess) -> None:
    """A binary frame closes the connection with 1003 (unsupported data)."""
    chat = Chat(small.ws_url)
    chat.join("lobby", "bin")
    chat.ws.send(b'{"type": "say"}')
    code, _ = chat.expect_close()
    assert code == 1003


def test_oversize_closes_1009(small: ServerProcess) -> None:
    """A message over --max-message-bytes closes with 1009, fragmented or not."""
    chat = Chat(small.ws_url)
    chat.ws.send("x" * MAX_MESSAGE_BYTES)
    assert chat.expect("error")["code"] == "bad_json"
    chat.ws.send("x" * (MAX_MESSAGE_BYTES + 1))
    assert chat.expect_close()[0] == 1009

    fragmented = Chat(small.ws_url)
    fragmented.ws.send(iter(["x" * 600, "x" * 600]))
    assert fragmented.expect_close()[0] == 1009


def test_invalid_utf8_closes_1007(small: ServerProcess) -> None:
    """A text frame that is not UTF-8 closes with 1007, also in a continuation frame."""
    raw = RawWs(small.port)
    raw.join("lobby", "utf")
    raw.send_frame(OP_TEXT, b'{"type": "say", "room": "lobby", "text": "\xff\xfe"}')
    assert raw.recv_close()[0] == 1007

    fragments = RawWs(small.port)
    fragments.send_frame(OP_TEXT, b'{"type": "join", "room": "', fin=False)
    fragments.send_frame(OP_CONT, b'\xc3\x28"}')
    assert fragments.recv_close()[0] == 1007


def test_protocol_violation_closes_1002(small: ServerProcess) -> None:
    """A reserved opcode is any other protocol violation: close 1002."""
    raw = RawWs(small.port)
    raw.send_frame(0x3, b"")
    assert raw.recv_close()[0] == 1002


def test_slow_reader_cut_off(wschat_server: ServerFactory) -> None:
    """Slow readers are closed with 4008 and logged; a fast reader gets every message."""
    server = wschat_server("--max-output-bytes", "65536", "--rate", "100000", "--burst", "100000")
    # `late` reads its backlog once it is cut off; `stuck` never reads again.
    late = RawWs(server.port, recv_buffer_bytes=4096)
    late.join("flood", "late")
    stuck = RawWs(server.port, recv_buffer_bytes=4096)
    stuck.join("flood", "stuck")
    fast = Chat(server.ws_url, max_queue=None)
    fast.join("flood", "fast")
    sender = Chat(server.ws_url, max_queue=None)
    sender.join("flood", "sender")
    fast.expect_presence(joined=["sender"])
    assert health(server)["connections"] == 4

    # ~7 MB in all: the kernel's send buffer for a slow socket alone grows to 4 MiB
    # (net.ipv4.tcp_wmem), and only what Twisted holds beyond its own 64 KiB counts.
    count = 1200
    text = "€" * 1990  # 6 KB of UTF-8
    for i in range(count):
        sender.send(type="say", room="flood", text=f"{i} {text}")
    got = [fast.expect("message") for _ in range(count)]
    assert [int(m["text"].split()[0]) for m in got] == list(range(count))
    assert [m["id"] for m in got] == list(range(got[0]["id"], got[0]["id"] + count))

    # The close frame waits behind the backlog; read within the 5 s before the abort.
    code, reason = late.recv_close()
    assert (code, reason) == (4008, "slow consumer: too much output waiting")
    late.send_frame(OP_CLOSE, code.to_bytes(2, "big"))
    fast.expect_presence(left=["late"])
    # `stuck` never reads its close frame: the closing-handshake timeout aborts it (the log
    # line below says so; test_ws pins when, on a fake clock). The wait is a hang guard.
    fast.expect_presence(left=["stuck"], timeout=HANG_GUARD_S)
    assert health(server)["connections"] == 2
    log = server.log()
    assert log.count("closing slow consumer") == 2
    assert "peer did not finish the closing handshake in time" in log

    events = [sender.recv() for _ in range(2 * count + 2)]
    assert [e["type"] for e in events].count("ack") == count
    assert [e["type"] for e in events].count("message") == count
    # The others are unaffected.
    sender.say("flood", "after")
    assert fast.expect("message")["text"] == "after"


class PongingPeer:
    """A raw peer that answers every ping the server sends, at once, and counts them."""

    def __init__(self, port: int) -> None:
        self.raw = RawWs(port)
        self.pings = 0

    def next_event(self, timeout: float = HANG_GUARD_S) -> dict[str, Any]:
        """The next JSON event, answering the pings that come before it."""
        while True:
            opcode, payload = self.raw.recv_frame(timeout)
            if opcode == OP_PING:
                self.raw.send_frame(OP_PONG, payload)
                self.pings += 1
            elif opcode == OP_TEXT:
                event = json.loads(payload)
                assert isinstance(event, dict)
                return event
            else:
                raise AssertionError(f"unexpected frame {opcode}: {payload!r}")

    def expect_presence(
        self, joined: Iterable[str] = (), left: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Presence batches until every name of `joined` was seen joining and every one of
        `left` leaving, as Chat.expect_presence; returns the last batch."""
        want_joined, want_left = set(joined), set(left)
        while True:
            event = self.next_event()
            assert event["type"] == "presence", event
            want_joined -= set(event.get("joined", ()))
            want_left -= set(event.get("left", ()))
            if not want_joined and not want_left:
                return event

    def answer_pings(self, count: int) -> None:
        """Answer the next `count` pings; no event may arrive meanwhile."""
        until = self.pings + count
        while self.pings < until:
            opcode, payload = self.raw.recv_frame(HANG_GUARD_S)
            assert opcode == OP_PING, (opcode, payload)
            self.raw.send_frame(OP_PONG, payload)
            self.pings += 1


def test_dead_peer_found_by_ping(wschat_server: ServerFactory) -> None:
    """A peer that never answers pings is dropped and its leave broadcast; one that answers
    them stays."""
    server = wschat_server("--ping-interval", "0.5", "--ping-timeout", "1")
    alive = PongingPeer(server.port)
    alive.raw.send_json(type="join", room="lobby", name="alive")
    assert alive.next_event()["type"] == "welcome"
    dead = RawWs(server.port)
    dead.join("lobby", "dead")
    alive.expect_presence(joined=["dead"])
    # When it is dropped is pinned on a fake clock in test_ws.py; here it just has to be.
    assert alive.expect_presence(left=["dead"])["count"] == 1
    # Pings go on, each answered within --ping-timeout: alive is kept through them.
    alive.answer_pings(3)
    alive.raw.send_json(type="join", room="other")
    assert alive.next_event()["users"] == ["alive"]
    assert health(server)["connections"] == 1


def test_sigterm_closes_1012(wschat_server: ServerFactory) -> None:
    """SIGTERM with --drain-seconds 0: 1012 to all at once, clean exit, no WAL, history intact."""
    server = wschat_server("--drain-seconds", "0")
    clients = [Chat(server.ws_url) for _ in range(3)]
    for i, chat in enumerate(clients):
        chat.join("lobby", f"user{i}")
    writer = Chat(server.ws_url)
    writer.join("other", "writer")
    for i in range(3):
        writer.say("other", f"m{i}")
        writer.expect("message")
    raw = RawWs(server.port)
    raw.join("lobby", "raw")
    history = writer.join("other")["history"]
    assert [m["text"] for m in history] == ["m0", "m1", "m2"]

    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    for chat in [*clients, writer]:
        assert chat.expect_close() == (1012, "service restart")
    assert raw.recv_close() == (1012, "service restart")
    raw.send_frame(OP_CLOSE, (1012).to_bytes(2, "big"))
    assert server.stop() in CLEAN_STOP_CODES
    log = server.log()
    assert "stopped: connections closed, history database closed" in log
    assert "Server Shut Down." in log
    wal = server.db_path.with_name(server.db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    # Readable without the server, as a plain SQLite file.
    db = sqlite3.connect(server.db_path)
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (3,)
    db.close()

    server.start()
    assert Chat(server.ws_url).join("other", "again")["history"] == history


def test_acked_survives_kill(wschat_server: ServerFactory) -> None:
    """What was acked survives `kill -9` of the server (the ack's durability promise)."""
    server = wschat_server()
    chat = Chat(server.ws_url)
    chat.join("lobby", "kim")
    acks = []
    for i in range(5):
        acks.append(chat.say("lobby", f"m{i}", ref=f"r{i}")["id"])
        chat.expect("message")
    assert server.kill() == -signal.SIGKILL
    server.start()
    history = Chat(server.ws_url).join("lobby", "lou")["history"]
    assert [m["id"] for m in history] == acks
    assert [m["text"] for m in history] == [f"m{i}" for i in range(5)]


def test_binary_frame_opcode_raw(small: ServerProcess) -> None:
    """A raw binary frame mid-conversation also gets 1003 and the others see the leave."""
    watcher = Chat(small.ws_url)
    watcher.join("raw-bin", "watcher")
    raw = RawWs(small.port)
    raw.join("raw-bin", "raw")
    watcher.expect_presence(joined=["raw"])
    raw.send_frame(OP_BINARY, b"\x00\x01")
    assert raw.recv_close()[0] == 1003
    raw.send_frame(OP_CLOSE, (1003).to_bytes(2, "big"))
    watcher.expect_presence(left=["raw"])
