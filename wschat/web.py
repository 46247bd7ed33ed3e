"""One port, three things: the static client at /, the WebSocket at /ws, a health check."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from .chat.hub import Hub
from .ws import ChatFactory

# Plain HTTP requests (and a handshake that never finishes its headers) get this long.
HTTP_TIMEOUT_S = 30


def static_dir() -> Path:
    return Path(str(resources.files("wschat").joinpath("static")))


class Health(Resource):
    isLeaf = True

    def __init__(self, hub: Hub, uptime_s: Callable[[], float]) -> None:
        super().__init__()
        self._hub = hub
        self._uptime_s = uptime_s

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        status = {
            "status": "ok",
            "connections": self._hub.connection_count,
            "rooms": self._hub.room_count,
            "uptime_s": round(self._uptime_s(), 3),
        }
        return json.dumps(status).encode()


def make_site(factory: ChatFactory, hub: Hub, uptime_s: Callable[[], float]) -> Site:
    root = File(str(static_dir()))
    root.putChild(b"ws", WebSocketResource(factory))
    root.putChild(b"healthz", Health(hub, uptime_s))
    site = Site(root, timeout=HTTP_TIMEOUT_S)
    site.displayTracebacks = False
    return site
