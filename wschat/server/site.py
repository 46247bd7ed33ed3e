"""One port, four things: the static client at /, the WebSocket at /ws, a health check, and
the client's configuration (/config.json: whether to sign in, and where to get a token)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from wschat import __version__
from wschat.chat.hub import Hub
from wschat.chat.limits import Limits
from wschat.private import release_request
from wschat.server.factory import SERVER_NAME, ChatFactory

# An idle HTTP connection is closed after this long.
HTTP_IDLE_TIMEOUT_S = 30
# A request head (the WebSocket handshake included) must arrive complete within this long of
# connecting or of the previous request finishing: a slowloris client trickling bytes would
# otherwise hold the connection open forever, since every byte resets the idle timeout.
REQUEST_HEAD_TIMEOUT_S = 10.0
# Everything the page needs is served by wschat itself; only a --client-token-url on another
# origin is added to connect-src (the page fetches its token there).
CSP_TEMPLATE = (
    "default-src 'self'; connect-src 'self' ws: wss:{token_origin}; img-src 'self'; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


# A module-level Logger keeps the namespace given (a Logger as a class attribute takes its
# class's name instead), which operators' log filters and the e2e tests match.
_log = Logger(namespace="wschat.web.HeadDeadlineChannel")


_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What /config.json tells the browser client: the --auth mode and --client-token-url,
    and --rate and --burst (the page paces what it sends so as never to be refused for them)."""

    auth: str = "off"
    token_url: str | None = None
    rate: float = _LIMITS.rate_per_s
    burst: int = _LIMITS.burst

    def csp(self) -> str:
        origin = ""
        if self.token_url is not None:
            parts = urlsplit(self.token_url)
            if parts.scheme and parts.netloc:
                origin = f" {parts.scheme}://{parts.netloc}"
        return CSP_TEMPLATE.format(token_origin=origin)


def static_dir() -> Path:
    return Path(str(resources.files("wschat").joinpath("static")))


class StaticFiles(File):
    """The client's files. A browser runs a module script only when it comes with a JavaScript
    type, so `.js` does not depend on the host's mime.types (File creates each file's
    resource with this class, so the mapping holds below the root too)."""

    contentTypes = {**File.contentTypes, ".js": "text/javascript"}


# Something /healthz reports on beside the counts: its fields, and whether it is healthy
# (if not, /healthz answers 503 so that a load balancer sends clients elsewhere).
HealthCheck = Callable[[], tuple[dict[str, object], bool]]


class Health(Resource):
    """Liveness and readiness in one: 200 while serving, 503 while draining (a load balancer
    stops sending clients), the same JSON either way."""

    isLeaf = True

    def __init__(
        self,
        hub: Hub,
        uptime_s: Callable[[], float],
        draining: Callable[[], bool],
        checks: Sequence[HealthCheck] = (),
    ) -> None:
        super().__init__()
        self._hub = hub
        self._uptime_s = uptime_s
        self._draining = draining
        self._checks = tuple(checks)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        draining = self._draining()
        status: dict[str, object] = {
            "status": "draining" if draining else "ok",
            "version": __version__,
            "draining": draining,
            "connections": self._hub.connection_count,
            "rooms": self._hub.room_count,
            "uptime_s": round(self._uptime_s(), 3),
        }
        for check in self._checks:
            fields, healthy = check()
            status.update(fields)
            if not healthy and not draining:
                status["status"] = "degraded"
        if status["status"] != "ok":
            request.setResponseCode(503)
        return json.dumps(status).encode()


class Config(Resource):
    isLeaf = True

    def __init__(self, config: ClientConfig) -> None:
        super().__init__()
        self._body = json.dumps(
            {
                "auth": config.auth,
                "token_url": config.token_url,
                "rate": config.rate,
                "burst": config.burst,
            }
        ).encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return self._body


class HeadDeadlineChannel(HTTPChannel):
    """HTTP/1.1 with an absolute deadline on each request head."""

    head_timeout_s = REQUEST_HEAD_TIMEOUT_S
    _head_deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # Site.buildProtocol has set self.site by now.
        site = getattr(self, "site", None)
        self.head_timeout_s = getattr(site, "head_timeout_s", self.head_timeout_s)
        self._arm()

    def allHeadersReceived(self) -> None:
        self._disarm()
        super().allHeadersReceived()

    def requestDone(self, request: Request) -> None:
        super().requestDone(request)
        # After a WebSocket upgrade the transport belongs to the WebSocket protocol.
        if self.transport is not None and not getattr(self.transport, "disconnecting", False):
            self._arm()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        super().connectionLost(reason)

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.callLater(self.head_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        transport = ITCPTransport(self.transport, None)
        if transport is not None:
            _log.info(
                "closing {peer}: no complete request head in {timeout}s",
                peer=transport.getPeer(),
                timeout=self.head_timeout_s,
            )
            transport.abortConnection()


class UpgradeResource(WebSocketResource):
    """Autobahn's resource, letting go of the HTTP request once the WebSocket protocol owns
    the transport. The channel and the request are never used again but refer to each other:
    as a cycle they waited for the cycle collector, and its runs over them during a burst of
    connects cost about a tenth of the connect rate (bench: connect to 10,000)."""

    def render(self, request: Request) -> bytes | int:
        result: bytes | int = super().render(request)
        if result is NOT_DONE_YET:
            release_request(request)
        return result


class ChatRequest(Request):
    """A request whose response names the server without its version (as the handshake's)
    and carries the page's Content-Security-Policy."""

    def render(self, resrc: Resource) -> None:
        self.setHeader(b"server", SERVER_NAME.encode())
        csp = getattr(self.site, "csp", None)
        if csp:
            self.setHeader(b"content-security-policy", csp.encode())
        super().render(resrc)


class ChatSite(Site):
    """A Site speaking only HTTP/1.1: WebSockets are upgraded from HTTP/1.1, so ALPN must
    offer exactly that (browsers fail the TLS handshake when nothing is offered)."""

    protocol = HeadDeadlineChannel  # type: ignore[assignment]
    requestFactory = ChatRequest
    head_timeout_s = REQUEST_HEAD_TIMEOUT_S
    csp = ClientConfig().csp()

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]


def make_site(
    factory: ChatFactory,
    hub: Hub,
    uptime_s: Callable[[], float],
    reactor: object = None,
    checks: Sequence[HealthCheck] = (),
    client: ClientConfig = ClientConfig(),
) -> ChatSite:
    root = StaticFiles(str(static_dir()))
    root.putChild(b"ws", UpgradeResource(factory))
    root.putChild(b"healthz", Health(hub, uptime_s, lambda: factory.draining, checks))
    root.putChild(b"config.json", Config(client))
    site = ChatSite(root, timeout=HTTP_IDLE_TIMEOUT_S, reactor=reactor)
    site.csp = client.csp()
    site.head_timeout_s = factory.settings.open_handshake_timeout_s
    site.displayTracebacks = False
    return site
