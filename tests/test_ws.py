"""The Autobahn adapter on in-memory transports, with a task.Clock for time."""

from __future__ import annotations

import ast
import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from wschat.chat.limits import Limits
from wschat.server import connection
from wschat.server.admission import origin_allowed
from wschat.server.connection import Connection
from wschat.server.factory import ChatFactory
from wschat.server.output import Sink
from wschat.server.protocol import ChatProtocol
from wschat.server.settings import WsSettings
from wschat.testing import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    Client,
    client_frame,
    close_code,
    make_factory,
    parse_frames,
    text,
)
from wschat.wire import CLOSE_INTERNAL_ERROR, CLOSE_REPLACED, CLOSE_SLOW_CONSUMER, REQUEST_TYPES

from .missing import missing


def test_handshake_selects_our_subprotocol_when_offered(factory: ChatFactory) -> None:
    """wschat.v1 is selected when offered; a client offering none is served anyway."""
    offered = Client(factory, protocols="other, wschat.v1")
    assert offered.response.startswith(b"HTTP/1.1 101")
    assert b"Sec-WebSocket-Protocol: wschat.v1" in offered.response
    plain = Client(factory)
    assert plain.response.startswith(b"HTTP/1.1 101")
    assert b"Sec-WebSocket-Protocol" not in plain.response


def test_foreign_origin_is_refused_before_the_upgrade(factory: ChatFactory) -> None:
    """A browser page from another origin gets 403 (CSWSH); same host and no Origin pass."""
    assert Client(factory, origin="https://evil.example").response.startswith(b"HTTP/1.1 403")
    assert Client(factory, origin="http://chat.example:8080").response.startswith(b"HTTP/1.1 101")
    assert Client(factory).response.startswith(b"HTTP/1.1 101")


def test_origin_rules() -> None:
    """Explicit --allowed-origin replaces the same-host default; '*' allows all."""
    assert origin_allowed(None, "h:1", ())
    assert origin_allowed("http://h:1", "h:1", ())
    assert not origin_allowed("http://h:2", "h:1", ())
    assert not origin_allowed("null", "h:1", ())
    assert origin_allowed(
        "https://chat.example.com", "internal:8080", ("https://chat.example.com",)
    )
    assert not origin_allowed("http://h:1", "h:1", ("https://chat.example.com",))
    assert origin_allowed("http://anything", "h:1", ("*",))


def test_chat_round_trip_frames_the_broadcast_once(
    factory: ChatFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """join/say/ack/message flow over frames; a broadcast is framed once for all members."""
    alice, bob = Client(factory), Client(factory)
    alice.join("lobby", "alice")
    alice.clock.advance(0.25)
    welcome = bob.join("lobby", "bob")
    assert welcome["users"] == ["alice", "bob"]
    alice.clock.advance(0.25)
    assert alice.events() == [
        {"type": "presence", "room": "lobby", "joined": ["bob"], "left": [], "count": 2}
    ]
    prepared: list[bytes] = []
    original = factory.prepareMessage

    def recording(payload: bytes) -> Any:
        prepared.append(payload)
        return original(payload)

    monkeypatch.setattr(factory, "prepareMessage", recording)
    bob.send(text({"type": "say", "room": "lobby", "text": "hi", "ref": "c1"}))
    ack, message = bob.events()
    assert ack == {"type": "ack", "room": "lobby", "ref": "c1", "id": 1}
    assert message["type"] == "message" and message["text"] == "hi" and message["id"] == 1
    assert alice.events() == [message]
    assert len([p for p in prepared if b'"type":"message"' in p]) == 1


def test_errors_keep_the_connection_open(
    factory: ChatFactory, log_events: EventLoggingObserver
) -> None:
    """Refused requests get an error frame with the code, are logged by kind, and the
    connection keeps working; the message text is never logged."""
    client = Client(factory)
    client.send(client_frame(OP_TEXT, b"{nope"))
    client.send(text({"type": "say", "room": "lobby", "text": "secret words", "ref": "r1"}))
    errors = client.events()
    assert [(e["code"], e["ref"]) for e in errors] == [("bad_json", None), ("not_in_room", "r1")]
    assert client.join("lobby", "alice")["name"] == "alice"
    kinds = [
        e.get("kind") for e in log_events if e.get("log_format", "").startswith("refused {kind}")
    ]
    assert kinds == ["bad_json", "not_in_room"]
    assert not any("secret words" in repr(e) for e in log_events)


def test_a_client_over_its_rate_is_not_read_until_its_bucket_refills(
    clock: Clock, log_events: EventLoggingObserver
) -> None:
    """Ten joins in one read with --request-burst 3 (--request-rate 2): three welcomes and one
    rate_limited, the other six unanswered and reading paused; every 0.5 s the next one is
    served and the one after refused. Once the flood is worked off, a client that slows down
    is served as before, and reading runs again."""
    factory = make_factory(clock, limits=Limits(request_rate_per_s=2, request_burst=3))
    client = Client(factory)

    def answers() -> list[str]:
        events = client.events()
        return [e.get("code", e["type"]) for e in events if e["type"] in ("welcome", "error")]

    joins = [text({"type": "join", "room": f"r{i}", "name": "flo"}) for i in range(11)]
    client.send(b"".join(joins[:10]))
    assert answers() == ["welcome"] * 3 + ["rate_limited"]
    assert client.transport.producerState == "paused"
    # What a TLS transport delivers after the pause waits behind the unparsed frames.
    client.send(joins[10])
    clock.advance(0.49)
    assert answers() == []
    for _ in range(3):
        clock.advance(0.01)
        assert answers() == ["welcome", "rate_limited"]
        assert client.transport.producerState == "paused"
        clock.advance(0.49)
    clock.advance(0.01)
    assert answers() == ["welcome"]
    assert client.transport.producerState == "producing"
    clock.advance(0.5)
    assert client.join("lobby")["room"] == "lobby"
    refusals = [e for e in log_events if e.get("log_format", "").startswith("refused {kind}")]
    assert len(refusals) == 4


def test_welcomes_over_the_burst_hold_input_until_the_debt_is_paid(clock: Clock) -> None:
    """Welcomes are charged by their bytes as sent: the join whose welcome overdraws
    --welcome-burst is answered, then nothing the client sent after it is served (input held,
    nothing refused) until the debt is paid back at --welcome-rate; then the next join and the
    say behind it are answered, in order, each in its turn."""
    rate, burst = 2000, 8000
    factory = make_factory(
        clock, WsSettings(welcome_rate_bytes_per_s=rate, welcome_burst_bytes=burst)
    )
    writer = Client(factory)
    writer.join("big", "writer")
    for i in range(10):
        writer.send(text({"type": "say", "room": "big", "text": "x" * 500, "ref": f"w{i}"}))
    assert [e["type"] for e in writer.events()].count("ack") == 10
    client = Client(factory)
    join = text({"type": "join", "room": "big", "name": "flo"})
    say = text({"type": "say", "room": "big", "text": "hi", "ref": "r1"})
    client.send(join * 3 + say)

    def answers() -> list[tuple[str, int]]:
        # Each text frame: its type and its length on the wire (a 2-byte head, 2 more
        # for a length of 126 to 65535).
        return [
            (json.loads(p)["type"], len(p) + (4 if len(p) >= 126 else 2))
            for op, p in client.frames()
            if op == OP_TEXT and json.loads(p)["type"] in ("welcome", "ack", "error")
        ]

    first, second = answers()
    assert first[0] == second[0] == "welcome"
    # Each welcome is about 5.6 KB: the second overdraws the burst.
    debt = first[1] + second[1] - burst
    assert 0 < debt < rate * 3
    assert client.transport.producerState == "paused"
    clock.advance(debt / rate - 0.01)
    assert answers() == []
    clock.advance(0.02)
    [(kind, size)] = answers()
    assert kind == "welcome"
    # That welcome is a debt of its own: the say behind it waits for it, is not refused.
    clock.advance(size / rate - 0.02)
    assert answers() == []
    clock.advance(0.03)
    assert [kind for kind, _ in answers()] == ["ack"]
    clock.advance(1)
    assert client.transport.producerState == "producing"


def test_binary_frame_closes_1003(factory: ChatFactory) -> None:
    """Binary frames are refused with close code 1003."""
    client = Client(factory)
    client.send(client_frame(OP_BINARY, b"\x00\x01"))
    [(op, payload)] = client.frames()
    assert op == OP_CLOSE and close_code(payload) == 1003


def test_oversized_message_closes_1009(clock: Clock) -> None:
    """A message over --max-message-bytes is refused with close code 1009."""
    client = Client(make_factory(clock, WsSettings(max_message_bytes=100)))
    client.send(client_frame(OP_TEXT, b"x" * 101))
    [(op, payload)] = client.frames()
    assert op == OP_CLOSE and close_code(payload) == 1009


def test_invalid_utf8_closes_1007(factory: ChatFactory) -> None:
    """A text frame that is not UTF-8 is refused with close code 1007."""
    client = Client(factory)
    client.send(client_frame(OP_TEXT, b'{"type":"\xff"}'))
    [(op, payload)] = client.frames()
    assert op == OP_CLOSE and close_code(payload) == 1007


def test_unanswered_pings_drop_the_peer_and_announce_leave(clock: Clock) -> None:
    """A peer that does not answer pings is dropped after interval + timeout; others see leave."""
    factory = make_factory(clock, WsSettings(ping_interval_s=10, ping_timeout_s=5))
    alice, ghost = Client(factory), Client(factory)
    alice.join("lobby", "alice")
    ghost.join("lobby", "ghost")
    alice.events()
    for _ in range(10):
        clock.advance(1)
    assert any(op == OP_PING for op, _ in ghost.frames())
    # alice answers her pings through the protocol machinery: pong with the same payload.
    for op, payload in alice.frames():
        if op == OP_PING:
            alice.send(client_frame(0xA, payload))
    for _ in range(7):
        clock.advance(1)
    assert ghost.transport.disconnecting or ghost.protocol.state == ChatProtocol.STATE_CLOSED
    ghost.protocol.connectionLost(Failure(ConnectionDone()))
    clock.advance(0.25)
    assert {
        "type": "presence",
        "room": "lobby",
        "joined": [],
        "left": ["ghost"],
        "count": 1,
    } in alice.events()
    assert [m[0] for m in factory.hub.members_of("lobby")] == ["alice"]


def test_slow_consumer_is_closed_4008_and_others_keep_receiving(
    clock: Clock, log_events: EventLoggingObserver
) -> None:
    """Once the transport is full, output beyond --max-output-bytes closes that client only,
    logged once, with nothing queued behind its close frame."""
    factory = make_factory(
        clock, WsSettings(max_output_bytes=2000), Limits(rate_per_s=1000, burst=1000)
    )
    slow, fast = Client(factory), Client(factory)
    slow.join("lobby", "slow")
    fast.join("lobby", "fast")
    slow.frames()
    # What a TCP transport does when its buffer passes its high-water mark:
    slow.protocol.pauseProducing()
    for i in range(30):
        fast.send(text({"type": "say", "room": "lobby", "text": f"message {i:03d} " + "x" * 80}))
    got = [e["text"][:11] for e in fast.events() if e["type"] == "message"]
    assert got == [f"message {i:03d}" for i in range(30)]
    frames = slow.frames()
    closes = [p for op, p in frames if op == OP_CLOSE]
    assert [close_code(p) for p in closes] == [CLOSE_SLOW_CONSUMER]
    assert frames[-1][0] == OP_CLOSE
    assert len([e for e in log_events if "slow consumer" in e.get("log_format", "")]) == 1


def test_a_slow_consumer_that_never_answers_its_close_is_aborted(clock: Clock) -> None:
    """A slow consumer that never answers its 4008 is aborted at the closing-handshake timeout."""
    factory = make_factory(
        clock, WsSettings(max_output_bytes=2000), Limits(rate_per_s=1000, burst=1000)
    )
    stuck, sender = Client(factory), Client(factory)
    stuck.join("lobby", "stuck")
    sender.join("lobby", "sender")
    stuck.protocol.pauseProducing()
    for i in range(30):
        sender.send(text({"type": "say", "room": "lobby", "text": f"message {i:03d} " + "x" * 80}))
    closes = [p for op, p in stuck.frames() if op == OP_CLOSE]
    assert [close_code(p) for p in closes] == [CLOSE_SLOW_CONSUMER]
    clock.advance(factory.settings.close_handshake_timeout_s - 0.1)
    assert not stuck.transport.disconnecting
    clock.advance(0.2)
    assert stuck.transport.disconnected  # aborted: StringTransport.abortConnection


def test_resumed_transport_resets_the_count(clock: Clock) -> None:
    """Output counts only while the transport is full; a drained buffer starts over."""
    factory = make_factory(
        clock, WsSettings(max_output_bytes=2000), Limits(rate_per_s=1000, burst=1000)
    )
    reader, sender = Client(factory), Client(factory)
    reader.join("lobby", "reader")
    sender.join("lobby", "sender")
    for _ in range(30):
        reader.protocol.pauseProducing()
        sender.send(text({"type": "say", "room": "lobby", "text": "y" * 100}))
        reader.protocol.resumeProducing()
    assert not any(op == OP_CLOSE for op, _ in reader.frames())


def test_takeover_closes_the_old_connection_4001(factory: ChatFactory) -> None:
    """A join with the name's token replaces the old connection, which is closed with 4001."""
    old, bob = Client(factory), Client(factory)
    token = old.join("lobby", "alice")["token"]
    bob.join("lobby", "bob")
    new = Client(factory)
    assert new.join("lobby", "alice", token=token)["users"] == ["alice", "bob"]
    closes = [close_code(p) for op, p in old.frames() if op == OP_CLOSE]
    assert closes == [CLOSE_REPLACED]
    old.protocol.connectionLost(Failure(ConnectionDone()))
    assert bob.events() == []


def test_going_away_sends_1001(factory: ChatFactory) -> None:
    """Shutdown closes every open connection with 1001."""
    clients = [Client(factory) for _ in range(3)]
    for i, client in enumerate(clients):
        client.join("lobby", f"user{i}")
    factory.go_away()
    for client in clients:
        closes = [close_code(p) for op, p in client.frames() if op == OP_CLOSE]
        assert closes == [1001]


def test_output_of_one_turn_is_one_write(
    factory: ChatFactory, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything queued for a connection during a reactor turn reaches its transport in a
    single write at the end of the turn."""
    reader, sender = Client(factory), Client(factory)
    reader.join("lobby", "reader")
    sender.join("lobby", "sender")
    reader.frames()
    writes: list[bytes] = []
    original = reader.transport.write

    def recording(data: bytes) -> None:
        writes.append(data)
        original(data)

    monkeypatch.setattr(reader.transport, "write", recording)
    for i in range(3):
        sender.send(text({"type": "say", "room": "lobby", "text": f"m{i}"}))
    assert writes == []
    clock.advance(0)
    assert len(writes) == 1
    assert [e["text"] for e in reader.events()] == ["m0", "m1", "m2"]


def test_frames_autobahn_writes_itself_go_after_queued_output(factory: ChatFactory) -> None:
    """A close frame (or pong) written by Autobahn never overtakes queued messages."""
    reader, sender = Client(factory), Client(factory)
    reader.join("lobby", "reader")
    sender.join("lobby", "sender")
    reader.frames()
    sender.send(text({"type": "say", "room": "lobby", "text": "before the close"}))
    factory.go_away()
    frames = reader.frames()
    assert [op for op, _ in frames] == [OP_TEXT, OP_CLOSE]
    assert json.loads(frames[0][1])["text"] == "before the close"


def test_flush_skips_what_was_already_sent(factory: ChatFactory) -> None:
    """flush_many reports how much of a connection's output went out before its socket
    filled; the protocol writes the rest, and only the rest."""
    client = Client(factory)
    client.join("lobby", "reader")
    client.protocol.outbox.pending = [b"abc", b"defg"]
    factory.output.flush(client.protocol.outbox, 2)
    assert client.transport.value() == b"cdefg"
    assert client.protocol.outbox.pending is None


def test_a_failing_c_write_loop_falls_back_to_python(
    factory: ChatFactory, monkeypatch: pytest.MonkeyPatch, log_events: EventLoggingObserver
) -> None:
    """If flush_many raises (it can only run out of memory), every connection of the turn is
    written from Python: the message still arrives, and the failure is logged."""
    reader, sender = Client(factory), Client(factory)
    reader.join("lobby", "reader")
    sender.join("lobby", "sender")
    reader.frames()

    def out_of_memory(outboxes: list[Any]) -> list[tuple[Any, int]]:
        raise MemoryError

    monkeypatch.setattr("wschat.server.output.flush_many", out_of_memory)
    sender.send(text({"type": "say", "room": "lobby", "text": "still here"}))
    assert [e["text"] for e in reader.events()] == ["still here"]
    assert any(e.get("log_failure") and "C write loop" in e["log_format"] for e in log_events)


def test_a_member_known_writable_is_queued_inline_and_written_to_its_socket(
    factory: ChatFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broadcast's short way: a member whose outbox has a descriptor gets the frame
    queued without a call into its protocol, and flush_many writes it to that socket; a
    member without one (here the sender, on a plain transport) is asked admit_output."""
    try:
        import wschat.server._sendmany  # noqa: F401
    except ImportError:
        missing("wschat.server._sendmany is not built (pip install -e . with a C compiler)")
    reader, sender = Client(factory), Client(factory)
    reader.join("lobby", "reader")
    sender.join("lobby", "sender")
    reader.frames()
    sender.frames()
    called: list[ChatProtocol] = []
    for client in (reader, sender):

        def recorded(
            size: int,
            protocol: ChatProtocol = client.protocol,
            original: Any = client.protocol.admit_output,
        ) -> bool:
            called.append(protocol)
            return bool(original(size))

        monkeypatch.setattr(client.protocol, "admit_output", recorded)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        reader.protocol.outbox.fd = ours.fileno()
        sender.send(text({"type": "say", "room": "lobby", "text": "direct"}))
        assert set(called) == {sender.protocol}
        reader.clock.advance(0)
        theirs.settimeout(5)
        [(op, payload)] = parse_frames(theirs.recv(65536))
    assert op == OP_TEXT
    assert json.loads(payload)["text"] == "direct"
    assert reader.transport.value() == b""
    assert [e["type"] for e in sender.events()] == ["ack", "message"]


def test_no_direct_send_after_autobahn_writes_or_the_connection_goes(
    factory: ChatFactory,
) -> None:
    """flush_many may write to the socket itself only while Twisted's buffer is known to be
    empty and the connection open: anything Autobahn writes, a drop and a loss end that."""
    client = Client(factory)
    client.join("lobby", "reader")
    protocol = client.protocol
    out = protocol.outbox
    out.fd = 99
    protocol.sendPing()
    assert out.fd == -1
    out.fd = 99
    protocol.dropConnection(abort=True)
    assert out.fd == -1
    out.fd = 99
    protocol.connectionLost(Failure(ConnectionDone()))
    assert out.fd == -1
    # and the outbox no longer holds the protocol: the two form no reference cycle
    assert out.sink is None


def test_one_connections_failing_write_drops_only_that_connection(
    factory: ChatFactory, monkeypatch: pytest.MonkeyPatch, log_events: EventLoggingObserver
) -> None:
    """If writing one member's output raises, the members after it still get the broadcast in
    the same turn; that one is logged and closed with 1011."""
    broken, *readers = [Client(factory) for _ in range(3)]
    broken.join("lobby", "broken")
    for i, reader in enumerate(readers):
        reader.join("lobby", f"reader{i}")
    sender = Client(factory)
    sender.join("lobby", "sender")
    for client in (broken, *readers):
        client.frames()
    original = broken.transport.write
    failures = iter([RuntimeError("disk on fire")])

    def write_once_failing(data: bytes) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        original(data)

    monkeypatch.setattr(broken.transport, "write", write_once_failing)
    sender.send(text({"type": "say", "room": "lobby", "text": "hello"}))
    broken.clock.advance(0)
    for reader in readers:
        assert [e["text"] for e in reader.events() if e["type"] == "message"] == ["hello"]
    closes = [close_code(p) for op, p in broken.frames() if op == OP_CLOSE]
    assert closes == [CLOSE_INTERNAL_ERROR]
    assert any(e.get("log_failure") and "output failed" in e["log_format"] for e in log_events)


def test_an_unexpected_handshake_failure_is_a_plain_500(
    factory: ChatFactory, monkeypatch: pytest.MonkeyPatch, log_events: EventLoggingObserver
) -> None:
    """A bug in onConnect answers HTTP 500 without the exception's text, and is logged."""

    def broken(address: str) -> bool:
        raise ValueError("internal detail 0xdeadbeef")

    monkeypatch.setattr(factory.admission.addresses, "admit", broken)
    response = Client(factory).response
    assert response.startswith(b"HTTP/1.1 500")
    assert b"deadbeef" not in response and b"ValueError" not in response
    assert any(e.get("log_failure") and "handshake" in e["log_format"] for e in log_events)


def test_the_handshake_names_wschat_without_a_version(factory: ChatFactory) -> None:
    """The upgrade's Server header is 'wschat': no Autobahn version for scanners."""
    headers = Client(factory).response.split(b"\r\n")
    assert b"Server: wschat" in headers
    assert not any(b"autobahn" in h.lower() for h in headers)


def test_permessage_deflate_is_declined(factory: ChatFactory) -> None:
    """A client offering compression is served uncompressed: broadcasts are framed once."""
    client = Client(factory, extensions="permessage-deflate; client_max_window_bits")
    assert client.response.startswith(b"HTTP/1.1 101")
    assert b"sec-websocket-extensions" not in client.response.lower()
    assert client.join("lobby", "alice")["name"] == "alice"


def option(protocol: ChatProtocol, name: str) -> object:
    """An Autobahn option as a connection sees it: ChatFactory bakes the options into a
    subclass at run time, so they are not attributes mypy knows."""
    return getattr(protocol, name)


def test_options_set_after_construction_reach_new_connections(factory: ChatFactory) -> None:
    """setProtocolOptions after the factory is built applies to connections opened later."""
    factory.setProtocolOptions(autoPingInterval=3.5, openHandshakeTimeout=7)
    protocol = Client(factory).protocol
    assert option(protocol, "autoPingInterval") == 3.5
    assert option(protocol, "openHandshakeTimeout") == 7
    factory.resetProtocolOptions()
    assert option(Client(factory).protocol, "autoPingInterval") == 0


def test_the_write_paths_hooks_are_not_shadowed_by_autobahn(factory: ChatFactory) -> None:
    """An open connection's Sink methods are ChatProtocol's own, not an attribute Autobahn
    set on the instance under the same name (it has an `is_open` Deferred, for one)."""
    protocol = Client(factory).protocol
    for name in ("admit_output", "output_open", "output_failed"):
        assert name in vars(Sink)
        assert name not in vars(protocol)
        assert getattr(protocol, name).__func__ is getattr(ChatProtocol, name)
    assert protocol.output_open() is True


def test_every_request_type_has_one_handler() -> None:
    """Each request type the codec decodes is served by a handle_<type> method."""
    for kind in REQUEST_TYPES:
        assert callable(getattr(Connection, f"handle_{kind}", None)), kind


def test_the_connection_logic_imports_no_autobahn() -> None:
    """server/connection.py reaches its wire only through its Transport interface."""
    tree = ast.parse(Path(connection.__file__).read_text("utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and not [m for m in imported if m and m.startswith("autobahn")]


def test_an_origin_refusal_says_what_it_compared(
    factory: ChatFactory, log_events: EventLoggingObserver
) -> None:
    """The log line of a refused Origin names the Host it was compared with, so that a proxy
    dropping the port (nginx's $host) is visible at once."""
    Client(factory, origin="https://chat.example:8443")
    [line] = [e for e in log_events if "not allowed" in e.get("log_format", "")]
    assert line["origin"] == "https://chat.example:8443"
    assert line["against"] == "host 'chat.example:8080'"


def test_client_strings_reach_the_log_escaped(
    factory: ChatFactory, log_events: EventLoggingObserver
) -> None:
    """A refused Origin with C1 characters (NEL, CSI), and a close reason forging a log line,
    are written escaped: no control character reaches a log line."""
    Client(factory, origin="https://evil.example\x85\x9b2J")
    client = Client(factory)
    client.join("lobby", "alice")
    forged = "bye\r\n2030-01-01T00:00:00+0000 [wschat] admin signed in\x1b[31m"
    client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000) + forged.encode()))
    client.protocol.connectionLost(Failure(ConnectionDone()))
    lines = [formatEvent(e) for e in log_events]
    [refused] = [line for line in lines if line.startswith("refused ")]
    [closed] = [line for line in lines if line.startswith("closed ")]
    assert "\\x85" in refused and "\\x9b2J" in refused and "\\r\\n2030-01-01" in closed
    assert all(line.isprintable() for line in lines), lines


def test_the_cap_hints_at_trust_proxies_once_for_a_private_address(
    clock: Clock, log_events: EventLoggingObserver
) -> None:
    """When the per-address cap refuses a loopback address (likely a proxy's), one warning
    names --trust-proxies; further refusals do not repeat it."""
    factory = make_factory(clock, WsSettings(max_connections_per_ip=1))
    assert Client(factory).response.startswith(b"HTTP/1.1 101")
    for _ in range(3):
        assert Client(factory).response.startswith(b"HTTP/1.1 429")
    hints = [e for e in log_events if "--trust-proxies" in e.get("log_format", "")]
    assert len(hints) == 1


def test_connection_log_lines_keep_the_chatprotocol_namespace(
    factory: ChatFactory, log_events: EventLoggingObserver
) -> None:
    """Admission, connection and protocol lines all log under wschat.ws.ChatProtocol, the
    namespace operators filter on."""
    Client(factory, origin="https://evil.example")
    client = Client(factory)
    client.join("lobby", "alice")
    client.send(text({"type": "say", "room": "nowhere", "text": "x"}))
    client.frames()
    client.protocol.connectionLost(Failure(ConnectionDone()))
    ours = [e for e in log_events if not e["log_namespace"].startswith("autobahn.")]
    namespaces = {e["log_format"][:10]: e["log_namespace"] for e in ours}
    assert namespaces == {
        "refused {c": "wschat.ws.ChatProtocol",  # the origin, from admission.py
        "refused {k": "wschat.ws.ChatProtocol",  # not_in_room, from connection.py
        "closed {cl": "wschat.ws.ChatProtocol",
    }
