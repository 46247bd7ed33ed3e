"""Peer 2: the naive Autobahn broadcast server.

The factory keeps a list of clients; every text message received is sent to each
of them with ``sendMessage``.  Usage: python peers/autobahn_naive.py PORT
"""

import sys
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class BroadcastProtocol(WebSocketServerProtocol):
    def onOpen(self) -> None:
        self.factory.register(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.broadcast(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.unregister(self)


class BroadcastFactory(WebSocketServerFactory):
    protocol = BroadcastProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clients: list[BroadcastProtocol] = []

    def register(self, client: BroadcastProtocol) -> None:
        if client not in self.clients:
            self.clients.append(client)

    def unregister(self, client: BroadcastProtocol) -> None:
        if client in self.clients:
            self.clients.remove(client)

    def broadcast(self, payload: bytes, isBinary: bool) -> None:
        for c in self.clients:
            c.sendMessage(payload, isBinary)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    factory = BroadcastFactory(f"ws://127.0.0.1:{port}")
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    print(f"autobahn naive peer listening on 127.0.0.1:{port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
