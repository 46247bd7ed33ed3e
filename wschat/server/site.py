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
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from wschat import __version__
from wschat.chat.hub import Hub
from wschat.chat.limits import AddressCap, Limits
from wschat.private import release_request
from wschat.server.factory import SERVER_NAME, ChatFactory
from wschat.server.http import BoundedChannel, BoundedRequest, BoundedSite

# An idle HTTP connection is closed after this long.
HTTP_IDLE_TIMEOUT_S = 30
# Everything the page needs is served by wschat itself; only a --client-token-url on another
# origin is added to connect-src (the page fetches its token there).
CSP_TEMPLATE = (
    "default-src 'self'; connect-src 'self' ws: wss:{token_origin}; img-src 'self'; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
UPGRADE_REQUIRED_TEXT = b"This is wschat's WebSocket endpoint: open it with a WebSocket client.\n"
MISDIRECTED_TEXT = b"This server does not serve that host.\n"

_log = Logger(namespace="wschat.web.ChatSite")


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request's Host is one of --allowed-host (any when none is given). An entry
    with a port allows that port only; one without, every port of the host."""
    if not allowed:
        return True
    if host is None:
        return False
    host = host.strip().lower()
    name, colon, port = host.rpartition(":")
    return host in allowed or (bool(colon) and port.isdigit() and name in allowed)


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

    def getChild(self, path: bytes, request: Request) -> Resource:
        """A name no file can have is not found: File would log a traceback for it (os.stat
        raises on a NUL byte; a name that is not UTF-8 is logged as an error)."""
        if b"\x00" in path or not _is_utf8(path):
            return self.childNotFound
        child: Resource = super().getChild(path, request)
        return child


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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


class UpgradeResource(WebSocketResource):
    """Autobahn's resource, letting go of the HTTP request once the WebSocket protocol owns
    the transport. The channel and the request are never used again but refer to each other:
    as a cycle they waited for the cycle collector, and its runs over them during a burst of
    connects cost about a tenth of the connect rate (bench: connect to 10,000)."""

    def render(self, request: Request) -> bytes | int:
        if not _asks_for_websocket(request):
            refuse(
                request, "upgrade", "refused {peer}: {path!r} without an upgrade", path=request.uri
            )
            # Not Autobahn's status page: it names Autobahn and its version.
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return UPGRADE_REQUIRED_TEXT
        if isinstance(request.channel, BoundedChannel):
            # Admission counts the WebSocket under its address from now on.
            request.channel.hand_over()
        result: bytes | int = super().render(request)
        if result is NOT_DONE_YET:
            release_request(request)
        return result


def refuse(request: Request, kind: str, format: str, **fields: object) -> None:
    """Log a refused request through its site's Refusals (once a minute for each address and
    kind), in place of its access-log line."""
    peer = request.getClientAddress()
    site = request.site
    if isinstance(request, BoundedRequest):
        request.refused = True
    if isinstance(site, BoundedSite):
        address = str(getattr(peer, "host", peer))
        site.refusals.refused(_log, address, kind, format, peer=peer, **fields)
    else:
        _log.info(format, peer=peer, **fields)


def _asks_for_websocket(request: Request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return b"websocket" in [token.strip().lower() for token in upgrade.split(b",")]


class ChatRequest(BoundedRequest):
    """A request whose response names the server without its version (as the handshake's)
    and carries the page's Content-Security-Policy; one for a host not in --allowed-host is
    answered 421 (against DNS rebinding: a page of another site whose name now points here)."""

    def render(self, resrc: Resource) -> None:
        self.setHeader(b"server", SERVER_NAME.encode())
        site = self.site
        csp = getattr(site, "csp", None)
        if csp:
            self.setHeader(b"content-security-policy", csp.encode())
        allowed = getattr(site, "allowed_hosts", ())
        # Two Host headers name no host: which one counts would depend on who reads them.
        hosts = self.requestHeaders.getRawHeaders(b"host") or []
        host = hosts[0] if len(hosts) == 1 else None
        if allowed and not host_allowed(None if host is None else host.decode("latin-1"), allowed):
            refuse(self, "host", "refused {peer}: host {host!r} not allowed", host=hosts)
            self.setResponseCode(421, b"Misdirected Request")
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.setHeader(b"content-length", b"%d" % len(MISDIRECTED_TEXT))
            # The client is to ask another connection (RFC 9110 15.5.20): this one ends here.
            self.setHeader(b"connection", b"close")
            self.channel.persistent = False
            self.write(MISDIRECTED_TEXT)
            self.finish()
            return
        super().render(resrc)


class ChatSite(BoundedSite):
    """A Site speaking only HTTP/1.1: WebSockets are upgraded from HTTP/1.1, so ALPN must
    offer exactly that (browsers fail the TLS handshake when nothing is offered). It takes no
    request body."""

    requestFactory = ChatRequest
    csp = ClientConfig().csp()
    # Lower case; empty: any.
    allowed_hosts: tuple[str, ...] = ()

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
    settings = factory.settings
    site.csp = client.csp()
    site.head_timeout_s = settings.open_handshake_timeout_s
    site.request_timeout_s = settings.request_timeout_s
    site.allowed_hosts = tuple(host.lower() for host in settings.allowed_hosts)
    # Behind trusted proxies every connection comes from a proxy: the WebSockets are counted
    # under their forwarded addresses (admission.py), plain HTTP is left to the proxies.
    if settings.max_connections_per_ip and not settings.trusted_proxies:
        site.addresses = AddressCap(settings.max_connections_per_ip)
    site.refusals = factory.refusals
    site.displayTracebacks = False
    return site
