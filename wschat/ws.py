"""The Autobahn adapter: decode a frame, call the hub, encode the answer; nothing else.

Every refused request leaves through `_refuse`; every broadcast is framed once in
`ChatFactory.fanout` and written to each member as the same bytes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import tcp
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .chat.broker import RoomEvent
from .chat.errors import ChatError
from .chat.hub import Hub, Session
from .chat.model import Error, Event, Join, Leave, Say
from .codec import SUBPROTOCOL, decode, encode
from .timers import BucketTimer

try:
    from ._sendmany import flush_many
except ImportError:  # installed without a C compiler: ChatProtocol.flush writes each one

    def flush_many(outboxes: list[Any]) -> list[tuple[Any, int]]:
        return [(out, 0) for out in outboxes]


CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INTERNAL_ERROR = 1011
CLOSE_REPLACED = 4001
CLOSE_SLOW_CONSUMER = 4008

STATE_OPEN = WebSocketProtocol.STATE_OPEN
_HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_headers",
    "http_status_line",
    "http_request_params",
    "_wskey",
)


@dataclass(frozen=True, slots=True)
class WsSettings:
    """WebSocket-level settings; defaults are the production values (see docs/deployment.md)."""

    max_message_bytes: int = 65536
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 5.0
    open_handshake_timeout_s: float = 10.0
    close_handshake_timeout_s: float = 5.0
    max_output_bytes: int = 1024 * 1024
    # Empty: only pages served from the request's own host may connect.
    allowed_origins: tuple[str, ...] = ()
    max_connections: int = 0
    # 0: no limit. Many people can share one address (NAT), so this is generous.
    max_connections_per_ip: int = 256
    trusted_proxies: int = 0


def protocol_options(settings: WsSettings) -> dict[str, Any]:
    """The one place where our settings become Autobahn's protocol options."""
    return {
        "maxFramePayloadSize": settings.max_message_bytes,
        "maxMessagePayloadSize": settings.max_message_bytes,
        "utf8validateIncoming": True,
        "requireMaskedClientFrames": True,
        "autoPingInterval": settings.ping_interval_s,
        "autoPingTimeout": settings.ping_timeout_s,
        "openHandshakeTimeout": settings.open_handshake_timeout_s,
        "closeHandshakeTimeout": settings.close_handshake_timeout_s,
        "failByDrop": False,
        "echoCloseCodeReason": True,
        "tcpNoDelay": True,
        "maxConnections": settings.max_connections,
        "trustXForwardedFor": settings.trusted_proxies,
        # Our own Origin check in onConnect is stricter than Autobahn's patterns.
        "allowedOrigins": ["*"],
        "allowNullOrigin": True,
    }


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


class Outbox:
    """A connection's output of one reactor turn, and all that a broadcast reads and writes
    per member: a small object of its own. A protocol's ~75 attributes are too many for
    CPython's compact instance layout and live in a full dict, probed for each one looked up;
    with the caches cold after the previous broadcast's sends, that made queueing a frame for
    1,000 members take about half a millisecond (now about 0.15 ms).

    `fd` is the socket's descriptor while nothing but our own direct sends has been written
    since the last check that Twisted's buffer is empty (see ChatProtocol.flush), else -1. It
    is also what lets a broadcast take the short way: a connection that is paused, closing
    or closed has fd -1, since each of those wrote through Twisted or dropped the socket.

    One frame is kept as bytes, which the garbage collector does not track: a tracked list
    per recipient per message made it run full collections (50 ms pauses with 1,000
    connections) every few seconds under steady traffic. Only a connection with several
    frames in one turn gets a list. (A bytearray grown by += copied too much under fan-out:
    it grows by 1/8 at a time.)
    """

    __slots__ = ("fd", "pending", "protocol")

    def __init__(self, protocol: ChatProtocol) -> None:
        # Cleared when the connection is lost, so that the two form no reference cycle.
        self.protocol: ChatProtocol | None = protocol
        self.pending: bytes | list[bytes] | None = None
        self.fd = -1


@implementer(IPushProducer)
class ChatProtocol(WebSocketServerProtocol):
    """One client connection. Autobahn owns `self.log` and `factory.server`: we use `_log`."""

    factory: ChatFactory
    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self._session: Session | None = None
        self._paused = False
        self._bytes_while_paused = 0
        self._quiet_rate_limit = False
        self._client = "?"
        self._counted_ip: str | None = None
        self._opened_at = 0.0
        self._out = Outbox(self)

    def onConnect(self, request: ConnectionRequest) -> str | None:
        self._client = str(self.peer)
        origin = request.headers.get("origin")
        if not origin_allowed(
            origin, request.headers.get("host"), self.factory.settings.allowed_origins
        ):
            self._log.info(
                "refused {client}: origin {origin} not allowed", client=self._client, origin=origin
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        ip = self._client_ip()
        if not self.factory.admit_ip(ip):
            self._log.info(
                "refused {client}: too many connections from {ip}", client=self._client, ip=ip
            )
            raise ConnectionDeny(429, "too many connections from your address")
        self._counted_ip = ip
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def _client_ip(self) -> str:
        # With --trust-proxies Autobahn has already replaced self.peer by the forwarded address.
        peer = str(self.peer)
        if peer.startswith(("tcp4:", "tcp6:")):
            return peer.split(":", 1)[1].rsplit(":", 1)[0]
        return peer

    def onOpen(self) -> None:
        # Logged once, at close (with how long it lasted): a line at open as well cost
        # about a tenth of the connect rate (twisted.logger formats every line in full).
        self._opened_at = self.factory.clock.seconds()
        try:
            self._forget_handshake()
            self._session = self.factory.hub.connect(self._out, self.send_event, self._replaced)
            self.factory.protocols.add(self)
            # twisted.web's HTTPChannel registered itself as the transport's producer; after
            # the upgrade we are the one that must hear about a full send buffer.
            consumer = IConsumer(self.transport)
            try:
                consumer.unregisterProducer()
            except RuntimeError:
                pass  # no producer was registered (a bare transport, as in tests)
            consumer.registerProducer(self, True)
        except Exception:
            self._log.failure("could not open {client}", client=self._client)
            self._close_with(CLOSE_INTERNAL_ERROR, "internal error")

    def _forget_handshake(self) -> None:
        """The request and response of the opening handshake are not needed after it; at
        tens of thousands of idle connections they would be a fair share of the memory."""
        for attr in _HANDSHAKE_LEFTOVERS:
            setattr(self, attr, None)
        # Autobahn queues only synchronous or chopped writes, which we never ask for; an
        # empty deque is 600 bytes per connection, an empty tuple is shared.
        self.send_queue = ()  # type: ignore[assignment]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.protocols.discard(self)
        self._out.pending = None
        if self._counted_ip is not None:
            self.factory.release_ip(self._counted_ip)
            self._counted_ip = None
        if self._session is None:
            return
        session, self._session = self._session, None
        self.factory.hub.disconnect(session)
        self._log.info(
            "closed {client} after {duration:.1f}s: code={code} reason={reason} clean={clean}",
            client=self._client,
            duration=self.factory.clock.seconds() - self._opened_at,
            code=code,
            reason=reason,
            clean=wasClean,
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._close_with(CLOSE_UNSUPPORTED_DATA, "wschat speaks JSON in text frames")
            return
        session = self._session
        if session is None:
            return
        try:
            command = decode(payload)
        except ChatError as exc:
            self._refuse(exc)
            return
        if isinstance(command, Say):
            handled = ensureDeferred(self.factory.hub.say(session, command))
        elif isinstance(command, Join):
            handled = ensureDeferred(self.factory.hub.join(session, command))
        else:
            handled = self._handle_leave(session, command)
        handled.addErrback(self._failed)

    def _handle_leave(self, session: Session, command: Leave) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        try:
            self.factory.hub.leave(session, command)
        except ChatError as exc:
            done.errback(Failure(exc))
        else:
            done.callback(None)
        return done

    def _failed(self, failure: Failure) -> None:
        if failure.check(ChatError):
            self._refuse(failure.value)
            return
        self._log.failure("request from {client} failed", failure, client=self._client)
        self.send_event(Error("internal", "the server failed on this request"))

    def _refuse(self, exc: ChatError) -> None:
        if exc.code == "rate_limited":
            if self._quiet_rate_limit:
                self.send_event(Error(exc.code, exc.message, exc.ref))
                return
            self._quiet_rate_limit = True
        else:
            self._quiet_rate_limit = False
        self._log.info("refused {kind} from {client}", kind=exc.code, client=self._client)
        self.send_event(Error(exc.code, exc.message, exc.ref))

    def send_event(self, event: Event) -> None:
        if self.state != STATE_OPEN:
            return
        if not isinstance(event, Error):
            self._quiet_rate_limit = False
        # Framed here rather than by sendMessage: Autobahn applies maxMessagePayloadSize (our
        # limit on what a client may send) to outgoing messages too, and a welcome carrying
        # the history is often larger than that.
        self._queue(self.factory.prepareMessage(encode(event)).payloadHybi)

    def send_frame(self, frame: bytes) -> None:
        """Queue an already framed message (the same bytes go to every member)."""
        if self.state == STATE_OPEN:
            self._queue(frame)

    def _queue(self, frame: bytes) -> None:
        self._count_output(len(frame))
        if self.state != STATE_OPEN:
            return
        out = self._out
        pending = out.pending
        if pending is None:
            out.pending = frame
            self.factory.flush_soon(out)
        elif isinstance(pending, bytes):
            out.pending = [pending, frame]
        else:
            pending.append(frame)

    def flush(self, skip: int = 0) -> None:
        """Write what was queued this reactor turn in one go (see ChatFactory.flush_soon),
        but its first `skip` bytes, which flush_many has already sent."""
        out = self._out
        pending, out.pending = out.pending, None
        out.fd = -1
        transport = self.transport
        if not pending or transport is None:
            return
        data = pending if isinstance(pending, bytes) else b"".join(pending)
        if skip:
            data = data[skip:]
        if (
            # Nothing waits in Twisted's own buffer, so writing directly keeps the byte order.
            type(transport) is tcp.Server
            and not transport._tempDataLen
            and len(transport.dataBuffer) == transport.offset
            and transport.connected
            and not transport.disconnecting
        ):
            # Twisted's write() would buffer, register the socket for writing, send on the
            # next poll and unregister it: three extra system calls per delivery when the
            # socket could take the data right now. Only what does not fit is buffered; an
            # error is left for Twisted to find when it writes the rest.
            try:
                sent = transport.socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                if self.state == STATE_OPEN:
                    # Until something else writes, flush_many may send to the socket itself.
                    out.fd = transport.fileno()
                return
            data = data[sent:]
        transport.write(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Everything Autobahn writes itself (pongs, close frames) goes after what we queued,
        # and through Twisted's buffer, which flush_many must not write past.
        if self._out.pending is not None:
            self.flush()
        self._out.fd = -1
        super().sendData(data, sync, chopsize)

    def dropConnection(self, abort: bool = False) -> None:
        self._out.fd = -1
        super().dropConnection(abort)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Twisted has just closed the socket: its descriptor number may be reused at once.
        self._out.fd = -1
        super().connectionLost(reason)
        self._out.protocol = None

    def _count_output(self, size: int) -> None:
        if not self._paused:
            return
        self._bytes_while_paused += size
        if self._bytes_while_paused > self.factory.settings.max_output_bytes:
            self._log.warn(
                "closing slow consumer {client}: over {limit} bytes of output waiting",
                client=self._client,
                limit=self.factory.settings.max_output_bytes,
            )
            # The close frame waits behind the backlog; Autobahn aborts the TCP connection
            # if the closing handshake does not finish in closeHandshakeTimeout.
            self.sendClose(CLOSE_SLOW_CONSUMER, "slow consumer: too much output waiting")

    def onPing(self, payload: bytes) -> None:
        # A pong is output like any other: a client flooding pings without reading the pongs
        # must meet the slow-consumer limit, not grow the server's send buffer without bound.
        self._count_output(len(payload) + 2)
        super().onPing(payload)

    def _replaced(self) -> None:
        self._session = None
        self._log.info("replaced {client} by a reconnect with its token", client=self._client)
        self.sendClose(CLOSE_REPLACED, "replaced by a newer connection")

    def _close_with(self, code: int, reason: str) -> None:
        # sendClose accepts only 1000 and 3000-4999; protocol codes go through sendCloseFrame.
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)

    def go_away(self) -> None:
        self._close_with(CLOSE_GOING_AWAY, "server going away")

    # IPushProducer: the transport tells us when its buffer is over its high-water mark.

    def pauseProducing(self) -> None:
        # Twisted calls this again on every write while its buffer stays full: count from the
        # first call, or the count restarts with each message and never reaches the limit.
        if self._paused:
            return
        self._paused = True
        self._bytes_while_paused = 0

    def resumeProducing(self) -> None:
        self._paused = False
        self._bytes_while_paused = 0

    def stopProducing(self) -> None:
        self._paused = True


class ChatFactory(WebSocketServerFactory):
    protocol = ChatProtocol  # type: ignore[assignment]
    _log = Logger()

    def __init__(self, settings: WsSettings, clock: IReactorTime) -> None:
        super().__init__()
        self.settings = settings
        self.setProtocolOptions(**protocol_options(settings))
        # Autobahn copies ~40 options into each protocol's __dict__ when it connects; as class
        # attributes of a subclass per factory they cost nothing per connection.
        # (A callable option such as perMessageCompressionAccept must not become a method.)
        options = {
            attr: staticmethod(value) if callable(value) else value
            for attr in ChatProtocol.CONFIG_ATTRS
            for value in [getattr(self, attr)]
        }
        options["CONFIG_ATTRS"] = ()
        self.protocol = type("ChatProtocol", (ChatProtocol,), options)  # type: ignore[assignment]
        self.clock = clock
        self._batched_timer = BucketTimer(clock)
        self._dirty: list[Outbox] = []
        self._flush_call: IDelayedCall | None = None
        self.protocols: set[ChatProtocol] = set()
        self._hub: Hub | None = None
        self._per_ip: dict[str, int] = {}

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise RuntimeError("ChatFactory used before attach(hub)")
        return self._hub

    def attach(self, hub: Hub) -> None:
        self._hub = hub

    def admit_ip(self, ip: str) -> bool:
        count = self._per_ip.get(ip, 0)
        limit = self.settings.max_connections_per_ip
        if limit and count >= limit:
            return False
        self._per_ip[ip] = count + 1
        return True

    def release_ip(self, ip: str) -> None:
        count = self._per_ip.pop(ip, 0) - 1
        if count > 0:
            self._per_ip[ip] = count

    def flush_soon(self, out: Outbox) -> None:
        """Output queued during one reactor turn is written once per connection at its end
        (callLater(0) runs before the next poll): under load several messages share one
        system call, and a lone message still goes out in the same turn."""
        self._dirty.append(out)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush_all)

    def _flush_all(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, []
        # The common case, a connection whose socket keeps up, in C: one call for all.
        try:
            leftovers = flush_many(dirty)
        except Exception:
            # Out of memory inside the C loop: what it did not send is back in `pending`
            # (see _sendmany.c), so writing every connection from Python loses nothing.
            self._log.failure("the C write loop failed; writing this turn from Python")
            leftovers = [(out, 0) for out in dirty]
        for out, sent in leftovers:
            protocol = out.protocol
            if protocol is not None:
                protocol.flush(sent)

    def fanout(self, sessions: Iterable[Session], event: RoomEvent) -> None:
        frame = self.prepareMessage(encode(event)).payloadHybi
        dirty = self._dirty
        # The common case inlined (a connection whose socket keeps up): this loop runs once
        # per recipient of every message, and its calls were most of its cost.
        for session in sessions:
            out = session.peer
            if out.fd < 0:
                protocol = out.protocol
                if protocol is not None:
                    protocol.send_frame(frame)
            else:
                pending = out.pending
                if pending is None:
                    out.pending = frame
                    dirty.append(out)
                elif isinstance(pending, bytes):
                    out.pending = [pending, frame]
                else:
                    pending.append(frame)
        if dirty and self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush_all)

    def go_away(self) -> None:
        for protocol in list(self.protocols):
            protocol.go_away()


def new_token() -> str:
    return secrets.token_urlsafe(24)
