"""/healthz driven in memory with StubTreq.

Static files are checked over real sockets in tests/e2e: twisted.web's File streams through a
pull producer that StubTreq's in-memory transport never pumps.
"""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from wschat.chat.broker import LocalBroker
from wschat.chat.history import MemoryHistory
from wschat.chat.hub import Hub
from wschat.chat.model import Join
from wschat.web import make_site
from wschat.ws import ChatFactory, WsSettings

from .chatkit import Peer, run
from .wsframes import handshake


def make() -> tuple[StubTreq, Hub]:
    clock = Clock()
    factory = ChatFactory(WsSettings(), clock)
    clock.advance(100)
    hub = Hub(
        MemoryHistory(10),
        LocalBroker(),
        factory.fanout,
        clock.seconds,
        lambda: "t",
        clock.callLater,
    )
    factory.attach(hub)
    site = make_site(factory, hub, lambda: 12.5)
    return StubTreq(site.resource), hub


def body(stub: StubTreq, response: object) -> bytes:
    done = []
    treq.content(response).addCallback(done.append)
    stub.flush()
    return done[0]  # type: ignore[no-any-return]


def get(stub: StubTreq, url: str) -> tuple[int, bytes, object]:
    responses: list[object] = []
    stub.get(url).addCallback(responses.append)
    stub.flush()
    [response] = responses
    return response.code, body(stub, response), response  # type: ignore[attr-defined]


def test_healthz_reports_connections_rooms_uptime() -> None:
    """/healthz is 200 JSON with live counts, never cached."""
    stub, hub = make()
    peer = Peer("p")
    session = hub.connect(peer, peer.events.append, lambda: None)
    run(hub.join(session, Join("lobby", "alice")))
    code, data, response = get(stub, "http://chat.example/healthz")
    assert code == 200
    assert json.loads(data) == {"status": "ok", "connections": 1, "rooms": 1, "uptime_s": 12.5}
    headers = response.headers  # type: ignore[attr-defined]
    assert headers.getRawHeaders("content-type") == ["application/json"]
    assert headers.getRawHeaders("cache-control") == ["no-store"]


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


def test_upgrade_leaves_no_http_garbage_behind(no_cycle_collector: None) -> None:
    """After the upgrade the HTTP channel is freed at once, by reference counting, instead of
    waiting in a cycle with its request for the cycle collector."""
    clock = Clock()
    factory = ChatFactory(WsSettings(), clock)
    hub = Hub(
        MemoryHistory(10),
        LocalBroker(),
        factory.fanout,
        clock.seconds,
        lambda: "t",
        clock.callLater,
    )
    factory.attach(hub)
    site = make_site(factory, hub, lambda: 0.0, reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    transport.protocol = channel  # as a TCP transport has; Autobahn swaps it
    channel.makeConnection(transport)
    channel.dataReceived(handshake())
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert hub.connection_count == 1
    gone = weakref.ref(channel)
    del channel
    assert gone() is None


def test_config_tells_the_page_how_to_sign_in() -> None:
    """/config.json says the --auth mode and the token URL; the CSP allows only that URL's
    origin besides the page's own (and WebSockets)."""
    from wschat.web import ClientConfig, Config

    stub = StubTreq(Config(ClientConfig("required", "https://app.example/chat-token")))
    code, data, response = get(stub, "http://chat.example/config.json")
    assert code == 200
    assert json.loads(data) == {"auth": "required", "token_url": "https://app.example/chat-token"}
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]  # type: ignore[attr-defined]
    csp = ClientConfig("required", "https://app.example/chat-token").csp()
    assert "connect-src 'self' ws: wss: https://app.example;" in csp
    assert "connect-src 'self' ws: wss:;" in ClientConfig().csp()
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    code, data, _ = get(make()[0], "http://chat.example/config.json")
    assert json.loads(data) == {"auth": "off", "token_url": None}
