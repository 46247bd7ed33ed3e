"""twistd plugins: `twistd wschat`, and the `wschat-tls:` endpoint strings of its TLS listeners.

Every twistd run and every endpoint string naming a plugin imports this module, so it declares
and imports nothing more: wschat.app.wiring is imported only when twistd runs wschat, and
wschat.app.tls only when a `wschat-tls:` string is parsed.
"""

from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

wschat = ServiceMaker(
    "wschat",
    "wschat.app.wiring",
    "A real-time WebSocket chat server (browser client at /, WebSocket at /ws).",
    "wschat",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class WschatTlsParser:
    """`wschat-tls:ENDPOINT:certKey=CERT:privateKey=KEY`: TLS over any stream server endpoint,
    its pair read again from the files on SIGHUP (wschat/app/tls.py)."""

    prefix = "wschat-tls"

    def parseStreamServer(
        self, reactor: Any, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        from wschat.app.tls import tls_endpoint

        return tls_endpoint(reactor, *args, **kwargs)


wschatTls = WschatTlsParser()
