"""Test-only echo endpoint (--conformance-echo): the Autobahn testsuite needs a server that
echoes, which the chat path never does. Same protocol options as /ws."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.web.server import Site

from wschat.server.factory import protocol_options
from wschat.server.settings import WsSettings
from wschat.server.site import UpgradeResource


class EchoProtocol(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def add_echo(site: Site, settings: WsSettings) -> None:
    factory = WebSocketServerFactory()
    factory.protocol = EchoProtocol
    options = protocol_options(settings)
    # The testsuite judges every frame it sees; our keep-alive pings would only add noise.
    options["autoPingInterval"] = 0
    factory.setProtocolOptions(**options)
    # As /ws: the upgrade hands the connection's per-address slot over from HTTP.
    site.resource.putChild(b"echo", UpgradeResource(factory))
