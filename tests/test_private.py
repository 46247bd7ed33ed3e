"""The private Twisted and Autobahn names of wschat/private.py still exist and behave as it
assumes: an upgrade that changes one fails here, not in production."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from wschat.private import (
    HANDSHAKE_LEFTOVERS,
    bake_options,
    forget_handshake,
    idle_tcp_socket,
    release_request,
    take_unparsed,
    use_timer,
)
from wschat.server.factory import ChatFactory
from wschat.server.protocol import ChatProtocol
from wschat.server.settings import WsSettings
from wschat.testing import (
    CLIENT_ADDRESS,
    OP_TEXT,
    TcpLikeTransport,
    client_frame,
    handshake,
    make_factory,
)


class RecordingTimer:
    """A batched timer that notes each deadline it is asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.delays.append(delay)
        return Clock().callLater(delay, func, *args, **kwargs)


def connect(factory: WebSocketServerFactory) -> WebSocketServerProtocol:
    """A protocol of `factory` past its opening handshake, on an in-memory transport."""
    protocol = factory.buildProtocol(CLIENT_ADDRESS)
    assert isinstance(protocol, WebSocketServerProtocol)
    protocol.makeConnection(TcpLikeTransport())
    protocol.dataReceived(handshake())
    return protocol


def test_autobahn_asks_the_factorys_batched_timer_for_its_deadlines(clock: Clock) -> None:
    """Autobahn takes the opening-handshake deadline and the first ping's from
    `factory._batched_timer`."""
    factory = make_factory(clock, WsSettings(open_handshake_timeout_s=7, ping_interval_s=3))
    timer = RecordingTimer()
    use_timer(factory, timer)
    connect(factory)
    assert timer.delays == [7, 3]


def test_autobahn_copies_only_the_config_attrs_a_protocol_lacks(factory: ChatFactory) -> None:
    """CONFIG_ATTRS names the factory's options; Autobahn copies into each connection only
    those its class lacks, so a baked class gets none, and a callable option stays a plain
    function."""
    attrs = WebSocketServerProtocol.CONFIG_ATTRS
    assert "autoPingInterval" in attrs and "perMessageCompressionAccept" in attrs
    assert all(hasattr(factory, attr) for attr in attrs)
    baked = bake_options(factory, ChatProtocol, "Baked")
    assert baked.__name__ == "Baked" and baked.CONFIG_ATTRS == ()
    assert getattr(baked, "perMessageCompressionAccept")([]) is None  # noqa: B009
    factory.protocol = baked
    protocol = connect(factory)
    assert not set(attrs) & set(vars(protocol))


def test_autobahn_keeps_the_handshake_and_a_send_queue_on_each_connection() -> None:
    """After the handshake every name of HANDSHAKE_LEFTOVERS is set on the connection, and its
    send queue is an empty deque; forget_handshake lets go of them all."""
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    protocol = connect(factory)
    assert all(vars(protocol).get(attr) is not None for attr in HANDSHAKE_LEFTOVERS)
    assert protocol.send_queue == deque()
    forget_handshake(protocol)
    assert all(getattr(protocol, attr) is None for attr in HANDSHAKE_LEFTOVERS)
    assert protocol.send_queue == ()


class FirstMessageOnly(WebSocketServerProtocol):
    """Takes what is left unparsed when its first message arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[bytes] = []
        self.unparsed: bytes | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(payload)
        if self.unparsed is None:
            self.unparsed = take_unparsed(self)


def test_autobahn_parses_a_read_only_while_its_data_is_left() -> None:
    """Three frames in one read: onMessage of the first takes Autobahn's `data` (the other
    two frames, unparsed) and the loop over the read stops there; fed back, they are parsed."""
    factory = WebSocketServerFactory()
    factory.protocol = FirstMessageOnly
    protocol = connect(factory)
    assert isinstance(protocol, FirstMessageOnly)
    rest = client_frame(OP_TEXT, b"two") + client_frame(OP_TEXT, b"three")
    protocol.dataReceived(client_frame(OP_TEXT, b"one") + rest)
    assert protocol.messages == [b"one"] and protocol.unparsed == rest
    assert protocol.data == b""
    protocol.dataReceived(protocol.unparsed)
    assert protocol.messages == [b"one", b"two", b"three"]


class Port:
    """Just enough of a listening port for tcp.Server."""

    _realPortNumber = 8080

    def _buildAddr(self, address: tuple[str, int]) -> IPv4Address:
        return IPv4Address("TCP", *address)


@pytest.fixture
def server() -> Iterator[tuple[tcp.Server, socket.socket]]:
    """A tcp.Server on one end of a socket pair."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield tcp.Server(ours, Protocol(), ("127.0.0.1", 5000), Port(), 1, MemoryReactor()), ours  # type: ignore[arg-type]


def test_a_tcp_server_says_when_its_write_buffer_is_empty(
    server: tuple[tcp.Server, socket.socket],
) -> None:
    """tcp.Server's _tempDataLen, dataBuffer, offset, connected, disconnecting and socket tell
    whether its socket may be written directly: only while nothing waits and it is open."""
    transport, sock = server
    assert idle_tcp_socket(transport) is sock
    transport.write(b"queued")
    assert idle_tcp_socket(transport) is None
    transport._tempDataLen = 0
    transport.dataBuffer, transport.offset = b"abc", 1
    assert idle_tcp_socket(transport) is None
    transport.dataBuffer, transport.offset = b"", 0
    assert idle_tcp_socket(transport) is sock
    transport.disconnecting = True
    assert idle_tcp_socket(transport) is None
    assert idle_tcp_socket(StringTransport()) is None


class Pending(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


def test_an_http_channel_lists_the_requests_in_progress() -> None:
    """HTTPChannel.requests holds a request that is not finished; release_request drops it."""
    resource = Pending()
    site_protocol = Site(resource).buildProtocol(CLIENT_ADDRESS)
    assert site_protocol is not None
    site_protocol.makeConnection(StringTransport())
    site_protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    [request] = resource.requests
    assert request.channel.requests == [request]
    release_request(request)
    assert request.channel.requests == []
