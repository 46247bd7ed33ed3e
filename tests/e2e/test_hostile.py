"""Raw-socket abuse against the real server: each attack gets a clear HTTP status or close code,
and a well-behaved client on the same server keeps being served while and after it happens."""

from __future__ import annotations

import itertools
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from wschat.testing import OP_PING, OP_PONG, OP_TEXT, client_frame

from .abuse import health, http_exchange, ping, rss_mib, wait_for
from .client import Chat
from .conftest import ServerFactory
from .process import ServerProcess
from .rawws import OP_CONT, RawWs, request_head

pytestmark = pytest.mark.e2e

HANDSHAKE_TIMEOUT_S = 1.5
# How long a test waits for what must happen before it gives up: a guard against hangs (a
# stalled server), and no claim about speed. How fast the server answers while it is
# attacked is measured in bench/, not asserted here.
HANG_GUARD_S = 30.0


class Bystander:
    """A well-behaved client that proves the server still serves everyone else."""

    def __init__(self, server: ServerProcess, room: str = "bystanders", name: str = "ann") -> None:
        self.chat = Chat(server.ws_url, max_queue=None)
        self.room = room
        self.chat.join(room, name)
        self._count = 0

    def served(self) -> None:
        """Say something and receive its broadcast copy, after our earlier ones."""
        self._count += 1
        text = f"still here {self._count}"
        self.chat.send(type="say", room=self.room, text=text)
        while True:
            event = self.chat.recv(timeout=HANG_GUARD_S)
            if event["type"] == "message" and event["text"] == text:
                return
            assert event["type"] in ("ack", "message", "presence"), event

    def close(self) -> None:
        self.chat.close()


def drain_to(chat: Chat, type_: str) -> dict[str, Any]:
    """The next event of `type_`, skipping presence and broadcasts before it."""
    while (event := chat.recv())["type"] != type_:
        assert event["type"] in ("presence", "message", "ack"), event
    return event


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the attacks that need no option of their own; a short handshake timeout
    so that half-sent heads are dropped quickly, and no rate limit to get in the way."""
    server = ServerProcess(
        tmp_path_factory.mktemp("hostile"),
        "--handshake-timeout",
        str(HANDSHAKE_TIMEOUT_S),
        "--rate",
        "1000",
        "--burst",
        "1000",
    ).start()
    yield server
    server.kill()


@pytest.fixture
def ann(target: ServerProcess, request: pytest.FixtureRequest) -> Iterator[Bystander]:
    """A bystander on the shared server, in a room of its own."""
    bystander = Bystander(target, room=f"b{abs(hash(request.node.nodeid))}")
    yield bystander
    bystander.close()


def test_slowloris_handshakes_are_closed_after_the_handshake_timeout(
    wschat_server: ServerFactory,
) -> None:
    """Connections that trickle a request head byte by byte (also after a first complete
    request) are cut off after --handshake-timeout, and meanwhile others are served."""
    server = wschat_server(
        "--handshake-timeout", str(HANDSHAKE_TIMEOUT_S), "--rate", "1000", "--burst", "1000"
    )
    ann = Bystander(server)
    count = 40
    socks: list[socket.socket] = []
    # Each timeout is measured from its own connect, which is before the server starts the
    # clock, so that a slow set-up cannot make a close look early.
    opened: dict[socket.socket, float] = {}
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        opened[sock] = time.monotonic()
        sock.setblocking(False)
        if i % 2:
            # The deadline holds for every request head, not only the first one.
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.sendall(b"GET /ws HTTP/1.1\r\n")
        socks.append(sock)
    closed_after: dict[socket.socket, float] = {}
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    served_meanwhile = 0
    deadline = time.monotonic() + HANG_GUARD_S
    while len(closed_after) < count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                data = ready.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                closed_after[ready] = time.monotonic() - opened[ready]
                selector.unregister(ready)
        for sock in socks:
            if sock not in closed_after:
                try:
                    sock.send(b"X")  # one more byte of a header that never ends
                except OSError:
                    pass
        if len(closed_after) < count:
            ann.served()
            served_meanwhile += 1
    for sock in socks:
        sock.close()
    assert len(closed_after) == count, f"{count - len(closed_after)} slowloris still open"
    # Not before the timeout (a lower bound: a loaded machine only makes it later), and by
    # the handshake timeout, not some other one, which the log says.
    assert HANDSHAKE_TIMEOUT_S - 0.1 < min(closed_after.values())
    # One address: the first cut is logged, the rest of the minute goes into one summary line.
    assert server.log().count("no complete request head") == 1
    assert served_meanwhile > 0
    ann.served()


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x00\xff\xfe garbage \x01\x02\r\n\r\n", id="binary"),
        pytest.param(b"HELLO\r\n\r\n", id="not-a-request-line"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200), id="tls-hello"),
        pytest.param(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", id="100k-request-line"),
        pytest.param(
            b"GET /ws HTTP/1.1\r\n" + b"X-Junk: y\r\n" * 1000 + b"\r\n", id="1000-headers"
        ),
        pytest.param(request_head(1).replace(b"13", b"99"), id="bad-ws-version"),
        pytest.param(request_head(1).replace(b"Upgrade: websocket", b"Upgrade: junk"), id="no-ws"),
    ],
)
def test_garbage_instead_of_http_gets_400_or_a_close(
    target: ServerProcess, ann: Bystander, garbage: bytes
) -> None:
    """Bytes that are not a valid request head are answered with a 4xx status or the
    connection is closed (by --handshake-timeout if nothing else); nothing is upgraded and
    the server goes on serving."""
    connections = health(target)["connections"]
    # Without --handshake-timeout a head that never ends would stay open for Twisted's idle
    # timeout of hours: the exchange's timeout is far from both.
    answer = http_exchange(target.port, garbage, timeout=HANG_GUARD_S)
    assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 426")), answer[:200]
    ann.served()
    assert health(target)["connections"] == connections


RESERVED_OPCODES = [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]


@pytest.mark.parametrize(
    "junk",
    [pytest.param(client_frame(op, b"junk"), id=f"opcode-{op:x}") for op in RESERVED_OPCODES]
    + [
        pytest.param(b"\xc1\x84" + b"\x00" * 4 + b"junk", id="rsv1-without-extension"),
        pytest.param(b"\xb1\x84" + b"\x00" * 4 + b"junk", id="rsv2-rsv3"),
        pytest.param(client_frame(OP_CONT, b"junk"), id="continuation-without-start"),
        pytest.param(
            client_frame(OP_TEXT, b"{", fin=False) + client_frame(OP_TEXT, b"}"),
            id="new-message-inside-fragmented",
        ),
        pytest.param(client_frame(OP_PING, b"x", fin=False), id="fragmented-ping"),
        pytest.param(client_frame(OP_PING, b"x" * 126), id="126-byte-ping"),
        pytest.param(b"\x81\xfe\x00\x05" + b"\x00" * 9, id="non-minimal-length"),
        pytest.param(client_frame(OP_TEXT, b'{"type": "join"}', masked=False), id="unmasked"),
    ],
)
def test_junk_frames_after_a_valid_handshake_close_1002(
    target: ServerProcess, ann: Bystander, junk: bytes
) -> None:
    """Reserved opcodes and bits, broken fragmentation, bad control frames, non-minimal
    lengths and unmasked client frames each fail the connection with 1002; others stay served."""
    raw = RawWs(target.port, handshake=False)
    assert raw.upgrade() == 101
    raw.join("junk", "junk")
    raw.send(junk)
    assert raw.recv_close()[0] == 1002
    raw.close()
    ann.served()


def test_huge_length_headers_close_1009_or_1002(target: ServerProcess, ann: Bystander) -> None:
    """A frame header announcing 2^63 bytes (the top bit must be 0) is a protocol error
    (1002); 2^63 - 1 is over --max-message-bytes (1009). Nothing is allocated for either."""
    before = rss_mib(target)
    for length, code in ((1 << 63, 1002), ((1 << 63) - 1, 1009), (1 << 32, 1009)):
        raw = RawWs(target.port, handshake=False)
        assert raw.upgrade() == 101
        raw.send(b"\x81\xff" + struct.pack("!Q", length) + b"\x00" * 4 + b"x" * 1000)
        assert raw.recv_close()[0] == code, length
        raw.close()
    assert rss_mib(target) - before < 8
    ann.served()


def test_fragmented_message_with_interleaved_control_frames_is_processed(
    target: ServerProcess,
    ann: Bystander,
) -> None:
    """A say split over five fragments with a ping and an unsolicited pong between them: the
    ping is answered at once, then the reassembled say is acked and broadcast."""
    raw = RawWs(target.port, handshake=False)
    assert raw.upgrade() == 101
    raw.join("frag", "frag")
    say = b'{"type": "say", "room": "frag", "text": "in pieces \xf0\x9f\xa7\xa9", "ref": "f"}'
    # Cut inside the 4-byte emoji too: UTF-8 is validated across fragments.
    cuts = [0, 7, 20, 45, len(say) - 5, len(say)]
    pieces = [say[a:b] for a, b in itertools.pairwise(cuts)]
    # (frame, the pong it must get before anything more is sent). Waiting for each pong
    # proves the ping is answered in the middle of the message, and makes the server read
    # the message in three parts at least.
    steps: list[tuple[bytes, bytes | None]] = [
        (client_frame(OP_TEXT, pieces[0], fin=False), None),
        (ping(b"p1"), b"p1"),
        (client_frame(OP_CONT, pieces[1], fin=False), None),
        (client_frame(OP_PONG, b"unasked"), None),
        *((client_frame(OP_CONT, p, fin=False), None) for p in pieces[2:-1]),
        (ping(b"p2"), b"p2"),
        (client_frame(OP_CONT, pieces[-1]), None),
    ]
    for frame, pong in steps:
        raw.send(frame)
        if pong is not None:
            assert raw.recv_frame() == (OP_PONG, pong)
    assert raw.expect("ack")["ref"] == "f"
    assert raw.expect("message")["text"] == "in pieces 🧩"
    ann.served()


def test_a_ping_flood_that_reads_its_pongs_is_answered(
    target: ServerProcess, ann: Bystander
) -> None:
    """10,000 pings sent at once are answered with 10,000 pongs, in order, with the same
    payloads, while another client goes on being served."""
    raw = RawWs(target.port, handshake=False)
    assert raw.upgrade() == 101
    count = 10_000
    pongs: list[bytes] = []

    def read() -> None:
        while len(pongs) < count:
            opcode, payload = raw.recv_frame()
            if opcode == OP_PONG:
                pongs.append(payload)

    reader = threading.Thread(target=read)
    reader.start()
    raw.send(b"".join(ping(str(i).encode()) for i in range(count)))
    while reader.is_alive():
        ann.served()
    reader.join()
    assert pongs == [str(i).encode() for i in range(count)]
    ann.served()


def test_a_ping_flood_that_never_reads_is_cut_off(wschat_server: ServerFactory) -> None:
    """A client that floods pings and never reads the pongs is closed as a slow consumer
    (4008) once --max-output-bytes of pongs wait, instead of growing the server's memory
    until the ping timeout; others are served meanwhile."""
    server = wschat_server("--max-output-bytes", "262144")
    ann = Bystander(server)
    before = rss_mib(server)
    raw = RawWs(server.port, recv_buffer_bytes=4096, handshake=False)
    assert raw.upgrade() == 101
    batch = ping(b"x" * 125) * 2000  # 262 KB of pings, 254 KB of pongs
    sent = 0
    limit = 200 * 1024 * 1024
    start = time.monotonic()
    try:
        while sent < limit:
            raw.send(batch)
            sent += len(batch)
    except OSError:
        pass  # the server aborted the connection
    elapsed = time.monotonic() - start
    grown = rss_mib(server) - before
    print(f"ping flood: {sent / 1e6:.1f} MB sent in {elapsed:.1f}s; server RSS +{grown:.1f} MiB")
    assert sent < limit, "the server never closed the ping flood"
    log = server.log()
    assert "closing slow consumer" in log
    # What ends it is the closing-handshake timeout after the 4008 (when, is pinned on a fake
    # clock in test_ws.py), not the ping timeout.
    assert "peer did not finish the closing handshake in time" in log
    # Without the limit the pongs for everything sent would be buffered in the server.
    assert grown < 32
    ann.served()


def test_ten_thousand_says_as_fast_as_possible(wschat_server: ServerFactory) -> None:
    """One client fires 10,000 tiny says at once: beyond the burst the server refuses one
    and reads that connection no further until its bucket has a token again, so for two
    seconds it answers about --rate says a second and no more refusals than that, the rest
    left unread; another member of the same room keeps receiving its messages, in order."""
    server = wschat_server("--rate", "20", "--burst", "20")
    ann = Bystander(server, room="flood")
    raw = RawWs(server.port, handshake=False)
    assert raw.upgrade() == 101
    raw.join("flood", "flooder")
    count = 10_000
    answers: dict[str, int] = {"ack": 0, "rate_limited": 0}

    def read() -> None:
        try:
            while True:
                event = raw.recv_json(HANG_GUARD_S)
                if event["type"] == "ack":
                    answers["ack"] += 1
                elif event["type"] == "error":
                    assert event["code"] == "rate_limited", event
                    answers["rate_limited"] += 1
        except OSError:
            pass  # the socket was shut down at the end of the test

    flood = b"".join(
        client_frame(OP_TEXT, b'{"type":"say","room":"flood","text":"x","ref":"%d"}' % i)
        for i in range(count)
    )
    reader = threading.Thread(target=read)
    # The send may block: the server leaves the flood in the kernel's buffers.
    sender = threading.Thread(target=raw.send, args=(flood,), daemon=True)
    reader.start()
    start = time.monotonic()
    sender.start()
    served = 0
    while time.monotonic() - start < 2.0:
        ann.served()
        served += 1
        time.sleep(0.05)  # the bystander keeps within --rate 20 itself
    seen = dict(answers)
    elapsed = time.monotonic() - start
    raw.sock.shutdown(socket.SHUT_RDWR)
    reader.join()
    print(f"flood: {seen} in {elapsed:.2f}s; the bystander was served {served} times")
    # The burst plus --rate for the time the flood took (a loaded machine only loosens this).
    assert 20 <= seen["ack"] <= 20 + 20 * elapsed + 1
    # A refusal, then nothing read until a token is back: after the burst, about one refusal
    # per say served (twice that leaves room for a refill a rounding error short of a token),
    # where every frame used to be answered.
    assert 1 <= seen["rate_limited"] <= 2 * (seen["ack"] - 20 + 1)
    ann.served()


def test_connections_per_ip_are_capped_with_429(wschat_server: ServerFactory) -> None:
    """With --max-connections-per-ip 3 the 4th upgrade from the address is refused with 429
    before the upgrade; HTTP is still served, the three keep chatting, and a freed slot
    is reusable."""
    server = wschat_server("--max-connections-per-ip", "3")
    members = [Chat(server.ws_url) for _ in range(3)]
    for i, chat in enumerate(members):
        chat.join("capped", f"m{i}")
    fourth = RawWs(server.port, handshake=False)
    assert fourth.upgrade() == 429
    assert health(server)["connections"] == 3
    members[2].send(type="say", room="capped", text="still fine")
    assert drain_to(members[0], "message")["text"] == "still fine"
    members[0].close()
    wait_for(lambda: health(server)["connections"] == 2, HANG_GUARD_S, "the slot to be freed")
    fifth = RawWs(server.port, handshake=False)
    assert fifth.upgrade() == 101
    assert "too many connections from 127.0.0.1" in server.log()


def test_total_connections_are_capped_with_503(wschat_server: ServerFactory) -> None:
    """With --max-connections 3 the 4th upgrade is refused with 503; HTTP is still served,
    the three keep chatting, and a freed slot is reusable."""
    server = wschat_server("--max-connections", "3")
    members = [Chat(server.ws_url) for _ in range(3)]
    for i, chat in enumerate(members):
        chat.join("capped", f"m{i}")
    for _ in range(5):
        assert RawWs(server.port, handshake=False).upgrade() == 503
    assert health(server)["connections"] == 3
    members[2].send(type="say", room="capped", text="still fine")
    assert drain_to(members[1], "message")["text"] == "still fine"
    members[0].close()
    wait_for(lambda: health(server)["connections"] == 2, HANG_GUARD_S, "the slot to be freed")
    assert RawWs(server.port, handshake=False).upgrade() == 101


def test_room_and_member_limits(wschat_server: ServerFactory) -> None:
    """A connection that pipelines 1,000 joins gets --max-rooms welcomes, then too_many_rooms
    up to its request burst (40), then rate_limited, and is not read further until its bucket
    refills: the server holds only those rooms; a room at --max-members refuses newcomers with
    room_full while its members go on chatting."""
    server = wschat_server("--max-rooms", "5", "--max-members", "3")
    greedy = RawWs(server.port, handshake=False)
    assert greedy.upgrade() == 101
    greedy.send(
        b"".join(
            client_frame(OP_TEXT, b'{"type":"join","room":"r%d","name":"greedy"}' % i)
            for i in range(1000)
        )
    )
    answers: list[dict[str, Any]] = [greedy.recv_json() for _ in range(41)]
    assert [a["type"] for a in answers[:5]] == ["welcome"] * 5
    assert {a.get("code") for a in answers[5:40]} == {"too_many_rooms"}
    assert answers[40]["code"] == "rate_limited"
    assert health(server)["rooms"] == 5

    members = [Chat(server.ws_url) for _ in range(3)]
    for i, chat in enumerate(members):
        chat.join("full", f"m{i}")
    for i in range(10):
        late = RawWs(server.port, handshake=False)
        assert late.upgrade() == 101
        late.send_json(type="join", room="full", name=f"late{i}")
        assert late.expect("error")["code"] == "room_full"
    members[2].send(type="say", room="full", text="we three")
    for chat in members:
        assert drain_to(chat, "message")["text"] == "we three"


def test_a_welcome_larger_than_max_message_bytes_is_sent(wschat_server: ServerFactory) -> None:
    """--max-message-bytes limits what clients send, not what the server sends: a welcome
    whose history is far larger than it arrives whole (it used to fail with `internal`)."""
    server = wschat_server("--max-message-bytes", "1024", "--rate", "1000", "--burst", "1000")
    writer = Chat(server.ws_url)
    writer.join("big", "writer")
    texts = [f"{i} " + "y" * 800 for i in range(50)]
    for text in texts:
        writer.say("big", text)
        writer.expect("message")
    welcome = Chat(server.ws_url).join("big", "reader")
    assert [m["text"] for m in welcome["history"]] == texts
    # ...while a client frame over the limit still closes with 1009.
    raw = RawWs(server.port, handshake=False)
    assert raw.upgrade() == 101
    raw.send(client_frame(OP_TEXT, b"z" * 1025))
    assert raw.recv_close()[0] == 1009
