"""/healthz driven in memory with StubTreq.

Static files are checked over real sockets in tests/e2e: twisted.web's File streams through a
pull producer that StubTreq's in-memory transport never pumps.
"""

from __future__ import annotations

import json

import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock

from wschat.chat.broker import LocalBroker
from wschat.chat.history import MemoryHistory
from wschat.chat.hub import Hub
from wschat.chat.model import Join
from wschat.web import make_site
from wschat.ws import ChatFactory, WsSettings

from .chatkit import Peer, run


def make() -> tuple[StubTreq, Hub]:
    clock = Clock()
    factory = ChatFactory(WsSettings(), clock)
    clock.advance(100)
    hub = Hub(MemoryHistory(10), LocalBroker(), factory.fanout, clock.seconds, lambda: "t")
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
