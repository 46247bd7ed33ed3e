"""Who may open a WebSocket, decided in the opening handshake, before the upgrade: nobody
while the server drains (503), no page of a foreign origin (403, against cross-site WebSocket
hijacking), and no address over its connection cap (429)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger

from wschat.chat.limits import AddressCap
from wschat.server.refusals import Refusals
from wschat.server.settings import WsSettings

# A module-level Logger keeps the namespace given (a Logger as a class attribute takes its
# class's name instead), which operators' log filters and the e2e tests match.
_log = Logger(namespace="wschat.ws.ChatProtocol")


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """Browsers always send Origin; without one the client is not a browser and CSWSH is moot."""
    if origin is None:
        return True
    allowed = tuple(allowed)
    if "*" in allowed:
        return True
    if allowed:
        return origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}
    if origin == "null" or host is None:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def address_of(peer: str) -> str:
    """The IP address in Autobahn's peer string ("tcp4:10.0.0.1:5000"). With --trust-proxies
    Autobahn has already put the forwarded address there."""
    if peer.startswith(("tcp4:", "tcp6:")):
        return peer.split(":", 1)[1].rsplit(":", 1)[0]
    return peer


class Admission:
    """The handshake's gate for one server; `addresses` counts the connections it let in.
    Its refusals are logged through `refusals`: one address retrying makes no line a try."""

    def __init__(self, settings: WsSettings, refusals: Refusals) -> None:
        self._settings = settings
        self._refusals = refusals
        self.addresses = AddressCap(settings.max_connections_per_ip)
        # Set by the drain at shutdown (wschat/app/lifecycle.py).
        self.draining = False

    def admit(self, request: ConnectionRequest, client: str) -> str:
        """Let `client` (Autobahn's peer string) in, counted under its address, which is
        returned for `release`; or refuse the upgrade by raising ConnectionDeny."""
        ip = address_of(client)
        if self.draining:
            self._refusals.refused(
                _log, ip, "draining", "refused {client}: the server is draining", client=client
            )
            # The client should come back to the next instance.
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "server is restarting")
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        allowed = self._settings.allowed_origins
        if not origin_allowed(origin, host, allowed):
            self._refusals.refused(
                _log,
                ip,
                "origin",
                "refused {client}: origin {origin!r} not allowed (compared with {against})",
                client=client,
                origin=origin,
                against=f"--allowed-origin {' '.join(allowed)}" if allowed else f"host {host!r}",
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        if not self.addresses.admit(ip):
            self._refusals.refused(
                _log,
                ip,
                "connections",
                "refused {client}: too many connections from {ip}",
                client=client,
                ip=ip,
            )
            if self._settings.trusted_proxies == 0 and self.addresses.proxy_hint(ip):
                _log.warn(
                    "{ip} holds --max-connections-per-ip {limit} connections; if wschat is "
                    "behind a reverse proxy, start it with --trust-proxies N so that each "
                    "client counts under its own forwarded address",
                    ip=ip,
                    limit=self.addresses.limit,
                )
            raise ConnectionDeny(429, "too many connections from your address")
        return ip

    def release(self, address: str) -> None:
        """A connection admitted under `address` has closed."""
        self.addresses.release(address)
