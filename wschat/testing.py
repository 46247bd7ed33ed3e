"""An in-memory wschat server for tests: the real factory, hub and protocol on a task.Clock,
and a client that speaks just enough RFC 6455 over a StringTransport, driven by hand.

    clock = Clock()
    with autobahn_clock(clock):
        factory = make_factory(clock)
        alice = Client(factory)
        welcome = alice.join("lobby", "alice")

No reactor runs: output queued during a "turn" is written when the clock advances by 0,
which `Client.frames()` does.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from wschat.chat.hub import Hub
from wschat.chat.limits import Limits
from wschat.chat.memory import LocalBroker, MemoryHistory
from wschat.chat.ports import HistoryStore
from wschat.server.factory import ChatFactory
from wschat.server.protocol import ChatProtocol
from wschat.server.settings import AuthSettings, WsSettings

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10
MASK = b"\x12\x34\x56\x78"
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 5000)


# Frames, as a client writes them and reads the server's.


def handshake(
    origin: str | None = None, protocols: str | None = None, extensions: str | None = None
) -> bytes:
    """An opening handshake for /ws on host chat.example:8080."""
    lines = [
        "GET /ws HTTP/1.1",
        "Host: chat.example:8080",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """One frame as a client sends it: masked unless told otherwise."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    size = len(payload)
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + body


def text(obj: Any) -> bytes:
    """A text frame carrying `obj` as JSON."""
    return client_frame(OP_TEXT, json.dumps(obj).encode())


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames; returns (opcode, payload) pairs."""
    frames = []
    pos = 0
    while pos < len(data):
        opcode = data[pos] & 0x0F
        size = data[pos + 1] & 0x7F
        pos += 2
        if size == 126:
            (size,) = struct.unpack("!H", data[pos : pos + 2])
            pos += 2
        elif size == 127:
            (size,) = struct.unpack("!Q", data[pos : pos + 8])
            pos += 8
        frames.append((opcode, data[pos : pos + size]))
        pos += size
    return frames


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload."""
    return int(struct.unpack("!H", payload[:2])[0])


# The server.


@contextmanager
def autobahn_clock(clock: Clock) -> Iterator[Clock]:
    """Run Autobahn's own timers (those it asks txaio for) on `clock` while inside."""
    # Set up by txaio at run time, so its type stubs do not know it.
    config: Any = txaio.config  # type: ignore[attr-defined]
    before = config.loop
    config.loop = clock
    try:
        yield clock
    finally:
        config.loop = before


def make_factory(
    clock: Clock,
    settings: WsSettings = WsSettings(),
    limits: Limits = Limits(),
    auth: AuthSettings = AuthSettings(),
    store: HistoryStore | None = None,
) -> ChatFactory:
    """A ChatFactory with a hub attached: one node, history in memory, time from `clock`."""
    factory = ChatFactory(settings, clock, auth)
    if store is None:
        store = MemoryHistory(limits.history_size)
    hub = Hub(
        store,
        LocalBroker(store),
        factory.fanout,
        clock.seconds,
        lambda: "tok",
        clock.callLater,
        limits,
    )
    factory.attach(hub)
    return factory


class TcpLikeTransport(StringTransport):
    """A StringTransport with two habits of a TCP transport: it lets a protocol unregister a
    producer it never registered (Autobahn does when it refuses a handshake), and it has the
    `protocol` attribute that Autobahn swaps for the WebSocket protocol on upgrade."""

    protocol: IProtocol | None = None

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class Client:
    """One connection: a ChatProtocol on a TcpLikeTransport, past its handshake."""

    def __init__(
        self,
        factory: ChatFactory,
        origin: str | None = None,
        protocols: str | None = None,
        extensions: str | None = None,
    ) -> None:
        # Twisted's buildProtocol returns a typing.Protocol that mypy does not match with
        # ChatProtocol (whose Autobahn base is untyped); narrowed from object, it does.
        protocol: object = factory.buildProtocol(CLIENT_ADDRESS)
        assert isinstance(protocol, ChatProtocol)
        assert isinstance(factory.clock, Clock)
        self.protocol: ChatProtocol = protocol
        self.transport = TcpLikeTransport()
        self.clock: Clock = factory.clock
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(handshake(origin, protocols, extensions))
        self.response, _, rest = self.transport.value().partition(b"\r\n\r\n")
        self.transport.clear()
        self._pending = rest

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame the server wrote since the last call, after the turn's output."""
        self.clock.advance(0)
        data, self._pending = self._pending + self.transport.value(), b""
        self.transport.clear()
        return parse_frames(data)

    def events(self) -> list[dict[str, Any]]:
        """The text frames of `frames()`, decoded."""
        return [json.loads(p) for op, p in self.frames() if op == OP_TEXT]

    def closes(self) -> list[tuple[int, bytes]]:
        """The close frames of `frames()`: (code, reason)."""
        return [(close_code(p), p[2:]) for op, p in self.frames() if op == OP_CLOSE]

    def join(self, room: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
        """Join `room` and return the welcome."""
        self.send(text({"type": "join", "room": room, "name": name, **extra}))
        [welcome] = [e for e in self.events() if e["type"] == "welcome"]
        return welcome
