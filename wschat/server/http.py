"""HTTP/1.1 with bounds on what one client can make the server hold: a deadline on each request
head and another on the whole request, a cap on request bodies (held in memory, never spooled
to a temporary file), and a cap on the connections of one address. Both listeners use it: the
public site (no body at all) and the server API (small JSON bodies)."""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from wschat.chat.limits import AddressCap
from wschat.server.refusals import Refusals

# A request head (the WebSocket handshake included) must arrive complete within this long of
# connecting or of the previous request finishing: a slowloris client trickling bytes would
# otherwise hold the connection open forever, since every byte resets the idle timeout.
REQUEST_HEAD_TIMEOUT_S = 10.0
# The same for the whole request, its body included: a body trickled a byte at a time.
REQUEST_TIMEOUT_S = 15.0
# After a refusal the channel reads (and drops) what the client still sends for this long
# before it closes: closing with unread bytes would reset the connection, and the client could
# lose the answer.
LINGER_S = 2.0

# A module-level Logger keeps the namespace given (a Logger as a class attribute takes its
# class's name instead), which operators' log filters and the e2e tests match.
_log = Logger(namespace="wschat.web.HeadDeadlineChannel")

# The statuses the channel answers itself (twisted.web's RESPONSES lacks 429).
REASONS = {413: b"Content Too Large", 429: b"Too Many Requests"}
# (status, code, message) -> the content type and body of a refusal.
Refusal = Callable[[int, str, str], tuple[bytes, bytes]]


def text_refusal(status: int, code: str, message: str) -> tuple[bytes, bytes]:
    return b"text/plain; charset=utf-8", f"{message}\n".encode()


def json_refusal(status: int, code: str, message: str) -> tuple[bytes, bytes]:
    """As every answer of the server API: {"error": code, "message": text}."""
    return b"application/json", json.dumps({"error": code, "message": message}).encode()


class BoundedRequest(Request):
    """A request whose body is held in memory, never in a temporary file (Request's default
    above 100 KB or without a Content-Length): the channel cuts a body over its site's cap."""

    _body_bytes = 0
    # Refused, and logged as such through the site's Refusals: no access-log line of its own.
    refused = False

    def gotLength(self, length: int | None) -> None:
        # Request declares `content = None` at class level, which types it as None.
        self.content = BytesIO()  # type: ignore[assignment]

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if not isinstance(channel, BoundedChannel) or channel.refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > channel.max_body_bytes:
            channel.body_too_large()
            return
        assert self.content is not None
        self.content.write(data)


class BoundedChannel(HTTPChannel):
    """HTTP/1.1 with the bounds of its BoundedSite, each answered by the channel itself,
    at once: 429 over the address's cap, 413 for a body over the cap (from the headers when
    it is announced), and a cut connection past a deadline."""

    head_timeout_s = REQUEST_HEAD_TIMEOUT_S
    request_timeout_s = REQUEST_TIMEOUT_S
    max_body_bytes = 0
    refused = False
    _refusal: Refusal = staticmethod(text_refusal)
    _deadline: IDelayedCall | None = None
    _reading_body = False
    _addresses: AddressCap | None = None
    _address: str | None = None
    _refusals: Refusals | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # Site.buildProtocol has set self.site by now.
        site = getattr(self, "site", None)
        if isinstance(site, BoundedSite):
            self.head_timeout_s = site.head_timeout_s
            self.request_timeout_s = site.request_timeout_s
            self.max_body_bytes = site.max_body_bytes
            self._refusal = site.refusal
            self._refusals = site.refusals
            if site.addresses is not None and not self._admit(site.addresses):
                return
        self._arm()

    def _admit(self, addresses: AddressCap) -> bool:
        """Count this connection under its address, or refuse it with 429."""
        assert self.transport is not None
        peer = self.transport.getPeer()
        ip = getattr(peer, "host", None)
        if not isinstance(ip, str):
            return True
        if not addresses.admit(ip):
            self._refused(
                ip,
                "http connections",
                "refused {peer}: too many HTTP connections from {ip}",
                peer=peer,
                ip=ip,
            )
            self._refuse(429, "too_many_connections", "too many connections from your address")
            return False
        self._addresses, self._address = addresses, ip
        return True

    def hand_over(self) -> None:
        """The transport now belongs to a WebSocket protocol, which counts it on its own."""
        self._disarm()
        self._release()

    def dataReceived(self, data: bytes) -> None:
        if not self.refused:
            super().dataReceived(data)

    # Called for the rest of the bytes already received when a refusal comes.
    def lineReceived(self, line: bytes) -> None:
        if not self.refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        # The announced Content-Length; None for a chunked body, counted as it comes.
        length = self.length
        if (length is None and not self.max_body_bytes) or (length or 0) > self.max_body_bytes:
            self.body_too_large()
            return
        if length == 0:
            self._disarm()
        else:
            self._reading_body = True
            if self._deadline is not None and self.request_timeout_s > self.head_timeout_s:
                # Armed for the head; the body has until the request's own deadline.
                self._deadline.delay(self.request_timeout_s - self.head_timeout_s)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if not self.refused:
            self._disarm()
            super().allContentReceived()

    def body_too_large(self) -> None:
        if self.max_body_bytes:
            self._refuse(413, "too_large", f"a request body is at most {self.max_body_bytes} bytes")
        else:
            self._refuse(413, "too_large", "this server takes no request body")

    def requestDone(self, request: Request) -> None:
        super().requestDone(request)
        # After a WebSocket upgrade the transport belongs to the WebSocket protocol.
        if self.transport is not None and not getattr(self.transport, "disconnecting", False):
            self._arm()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self._release()
        super().connectionLost(reason)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer `status` now, read nothing more of the request, and close after LINGER_S."""
        self.refused = True
        self.setTimeout(None)
        content_type, body = self._refusal(status, code, message)
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
            status,
            REASONS[status],
            content_type,
            len(body),
        )
        assert self.transport is not None
        self.transport.write(head + b"connection: close\r\n\r\n" + body)
        self._disarm()
        self._deadline = self.callLater(LINGER_S, self.loseConnection)

    def _release(self) -> None:
        if self._addresses is not None and self._address is not None:
            self._addresses.release(self._address)
        self._addresses = self._address = None

    def _arm(self) -> None:
        self._disarm()
        self._reading_body = False
        timeout_s = min(self.head_timeout_s, self.request_timeout_s)
        self._deadline = self.callLater(timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return
        peer = transport.getPeer()
        address = str(getattr(peer, "host", peer))
        if self._reading_body:
            self._refused(
                address,
                "slow request",
                "closing {peer}: no complete request in {timeout}s",
                peer=peer,
                timeout=self.request_timeout_s,
            )
        else:
            self._refused(
                address,
                "slow request head",
                "closing {peer}: no complete request head in {timeout}s",
                peer=peer,
                timeout=min(self.head_timeout_s, self.request_timeout_s),
            )
        # Every stream transport wschat listens on (TCP, TLS, unix) can be aborted.
        abort = getattr(transport, "abortConnection", transport.loseConnection)
        abort()

    def _refused(self, address: str, kind: str, format: str, **fields: object) -> None:
        if self._refusals is None:
            _log.info(format, **fields)
        else:
            self._refusals.refused(_log, address, kind, format, **fields)


class BoundedSite(Site):
    """A Site whose channels apply these bounds; `addresses` None: no per-address cap.
    Refusals are logged through `refusals`, which make_site shares with the WebSocket
    factory; a refused request (`BoundedRequest.refused`) writes no access-log line."""

    protocol = BoundedChannel  # type: ignore[assignment]
    requestFactory = BoundedRequest
    head_timeout_s = REQUEST_HEAD_TIMEOUT_S
    request_timeout_s = REQUEST_TIMEOUT_S
    # 0: no request may have a body.
    max_body_bytes = 0
    addresses: AddressCap | None = None
    refusal: Refusal = staticmethod(text_refusal)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refusals = Refusals(self.reactor)

    def log(self, request: http.Request) -> None:
        if not getattr(request, "refused", False):
            super().log(request)
