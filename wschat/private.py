"""Every private Twisted and Autobahn name wschat relies on, each behind one small function.

Private names may change in any release without notice; tests/test_private.py checks that each
one still exists and behaves as assumed here, so that an upgrade fails in CI rather than in
production. Checked against Twisted 26.10.0, autobahn 26.11.1 and txaio 26.6.1.
"""

from __future__ import annotations

import socket
from typing import Any, TypeVar

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import tcp
from twisted.web.server import Request

# What Autobahn keeps of the opening handshake on each connection after it is over.
HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_headers",
    "http_status_line",
    "http_request_params",
    "_wskey",
)

P = TypeVar("P", bound=WebSocketServerProtocol)


def use_timer(factory: WebSocketServerFactory, timer: Any) -> None:
    """Autobahn asks `factory._batched_timer.call_later(delay, func)` for every ping and
    handshake deadline; `timer` answers instead of txaio's batched timer."""
    factory._batched_timer = timer


def bake_options(factory: WebSocketServerFactory, base: type[P], name: str) -> type[P]:
    """A subclass of `base` holding the factory's protocol options as class attributes.

    Autobahn's `_connectionMade` copies every name of `CONFIG_ATTRS` the protocol lacks from
    the factory into the instance's __dict__; with the options already on the class and
    CONFIG_ATTRS empty, it copies none. A callable option (perMessageCompressionAccept) is
    wrapped in staticmethod so that it does not become a method."""
    options: dict[str, Any] = {
        attr: staticmethod(value) if callable(value) else value
        for attr in base.CONFIG_ATTRS
        for value in [getattr(factory, attr)]
    }
    options["CONFIG_ATTRS"] = ()
    return type(name, (base,), options)


def forget_handshake(protocol: WebSocketServerProtocol) -> None:
    """Let go of what Autobahn keeps of the opening handshake, and of its send queue: it
    queues only synchronous or chopped writes, which wschat never asks for, and an empty
    tuple is shared where an empty deque is one per connection."""
    for attr in HANDSHAKE_LEFTOVERS:
        setattr(protocol, attr, None)
    protocol.send_queue = ()  # type: ignore[assignment]


def take_unparsed(protocol: WebSocketServerProtocol) -> bytes:
    """Take what Autobahn has received on `protocol` but not parsed yet (its `data`), leaving
    it nothing: called from onMessage, this ends Autobahn's loop over the frames of the
    current read after this one (`processData` goes on only while `data` is left)."""
    unparsed: bytes = protocol.data
    protocol.data = b""
    return unparsed


def idle_tcp_socket(transport: object) -> socket.socket | None:
    """The socket of a connected tcp.Server with nothing waiting in Twisted's own write
    buffer (so that writing to the socket directly keeps the byte order); else None."""
    if type(transport) is not tcp.Server:
        return None
    if (
        transport._tempDataLen
        or len(transport.dataBuffer) != transport.offset
        or not transport.connected
        or transport.disconnecting
    ):
        return None
    return transport.socket


def release_request(request: Request) -> None:
    """Drop `request` from its HTTPChannel's list of requests in progress (`requests`), where
    it would stay forever once the WebSocket protocol owns the transport."""
    request.channel.requests.remove(request)
