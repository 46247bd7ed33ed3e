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
from twisted.web.iweb import IResponse

import wschat
from wschat.chat.hub import Hub
from wschat.chat.model import Join
from wschat.server.factory import ChatFactory
from wschat.server.site import make_site
from wschat.testing import TcpLikeTransport, handshake, make_factory

from .chatkit import Peer, run


def make() -> tuple[StubTreq, Hub, ChatFactory]:
    clock = Clock()
    factory = make_factory(clock)
    clock.advance(100)
    site = make_site(factory, factory.hub, lambda: 12.5)
    return StubTreq(site.resource), factory.hub, factory


def body(stub: StubTreq, response: IResponse) -> bytes:
    done: list[bytes] = []
    treq.content(response).addCallback(done.append)
    stub.flush()
    return done[0]


def get(stub: StubTreq, url: str) -> tuple[int, bytes, IResponse]:
    responses: list[IResponse] = []
    # StubTreq copies treq's request functions onto itself at run time, out of mypy's sight.
    stub.get(url).addCallback(responses.append)  # type: ignore[attr-defined]
    stub.flush()
    [response] = responses
    return response.code, body(stub, response), response


def test_healthz_reports_connections_rooms_uptime() -> None:
    """/healthz is 200 JSON with the version and live counts, never cached."""
    stub, hub, _ = make()
    peer = Peer("p")
    session = hub.connect(peer, peer.events.append, lambda: None)
    run(hub.join(session, Join("lobby", "alice")))
    code, data, response = get(stub, "http://chat.example/healthz")
    assert code == 200
    assert json.loads(data) == {
        "status": "ok",
        "version": wschat.__version__,
        "draining": False,
        "connections": 1,
        "rooms": 1,
        "uptime_s": 12.5,
    }
    headers = response.headers
    assert headers.getRawHeaders("content-type") == ["application/json"]
    assert headers.getRawHeaders("cache-control") == ["no-store"]


def test_healthz_is_503_draining_while_the_server_drains() -> None:
    """While draining, /healthz answers 503 with the same JSON saying so (readiness)."""
    stub, _, factory = make()
    factory.draining = True
    code, data, _ = get(stub, "http://chat.example/healthz")
    status = json.loads(data)
    assert code == 503
    assert (status["status"], status["draining"]) == ("draining", True)
    assert status["version"] == wschat.__version__


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
    factory = make_factory(clock)
    hub = factory.hub
    site = make_site(factory, hub, lambda: 0.0, reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = TcpLikeTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    transport.protocol = channel
    channel.makeConnection(transport)
    channel.dataReceived(handshake())
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert hub.connection_count == 1
    gone = weakref.ref(channel)
    del channel
    assert gone() is None


def test_scripts_come_as_javascript() -> None:
    """The client's modules are served as text/javascript, which module scripts require."""
    stub = make()[0]
    responses: list[IResponse] = []
    stub.head("http://chat.example/app.js").addCallback(responses.append)  # type: ignore[attr-defined]
    stub.flush()
    [response] = responses
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/javascript"]


def test_config_tells_the_page_how_to_sign_in() -> None:
    """/config.json says the --auth mode, the token URL and the rate limit; the CSP allows only
    that URL's origin besides the page's own (and WebSockets)."""
    from wschat.server.site import ClientConfig, Config

    stub = StubTreq(Config(ClientConfig("required", "https://app.example/chat-token", 2.5, 7)))
    code, data, response = get(stub, "http://chat.example/config.json")
    assert code == 200
    assert json.loads(data) == {
        "auth": "required",
        "token_url": "https://app.example/chat-token",
        "rate": 2.5,
        "burst": 7,
    }
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]
    csp = ClientConfig("required", "https://app.example/chat-token").csp()
    assert "connect-src 'self' ws: wss: https://app.example;" in csp
    assert "connect-src 'self' ws: wss:;" in ClientConfig().csp()
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    code, data, _ = get(make()[0], "http://chat.example/config.json")
    assert json.loads(data) == {"auth": "off", "token_url": None, "rate": 5.0, "burst": 20}
