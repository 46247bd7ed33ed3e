"""The Autobahn adapter: the handshake, then decode a frame, call the hub, encode the answer.

Each request type has one `handle_<type>` method; every refused request leaves through
`_refuse`; every broadcast is framed once in `ChatFactory.fanout` and queued for each member
as the same bytes by the write path (wschat/output.py).

With --auth optional or required a connection may sign in with its first frame (`auth`): the
token is verified by wschat/tokens.py, and chat/identity.py says what the identity may do.
"""

from __future__ import annotations

from collections.abc import Collection, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wschat.chat import identity
from wschat.chat.errors import AuthUnexpected, ChatError, KeysUnavailable, TokenInvalid
from wschat.chat.hub import Hub, Session
from wschat.chat.identity import AuthMode, Identity
from wschat.chat.limits import AddressCap, RefusalLog
from wschat.chat.model import (
    Auth,
    Authed,
    Command,
    Error,
    Event,
    Join,
    Kick,
    Kicked,
    Leave,
    Refresh,
    Say,
    Who,
)
from wschat.chat.ports import RoomEvent
from wschat.server.counts import Counts
from wschat.server.output import Outbox, Output
from wschat.server.timers import BucketTimer
from wschat.server.tokens import TokenVerifier
from wschat.wire import SUBPROTOCOL, decode, encode

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_REPLACED = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHORIZED = 4401
CLOSE_DISCONNECTED = 4403
CLOSE_TOKEN_EXPIRED = 4440
# RFC 6455 5.5: a control frame's payload is at most 125 bytes, two of them the code.
MAX_CLOSE_REASON_BYTES = 123

# The Server header of the handshake: no version for scanners to match against.
SERVER_NAME = "wschat"

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


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Signed identities: --auth, the verifier of the --jwt-* options, and --jwt-grace."""

    mode: AuthMode = AuthMode.OFF
    verifier: TokenVerifier | None = None
    # A connection whose token expired is closed (4440) this long after `exp` (+ leeway)
    # unless a `refresh` came: long enough for a client that woke from sleep to fetch one.
    grace_s: float = 25.0


class _Close(Exception):
    """Raised by a request that ends the connection: closed with `code`, not answered."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _no_compression(offers: list[Any]) -> None:
    """Decline every permessage-deflate offer: a broadcast's frame is prepared once and its
    bytes are written to every member as they are, which a compressed connection cannot take."""
    return None


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
        "perMessageCompressionAccept": _no_compression,
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


@implementer(IPushProducer)
class ChatProtocol(WebSocketServerProtocol):
    """One client connection. Autobahn owns `self.log`, `self.peer` (the client's address),
    `self.is_open` (a Deferred) and `factory.server`: ours are `_log`, `_client`,
    `output_open` and SERVER_NAME."""

    factory: ChatFactory
    _log = Logger(namespace="wschat.ws.ChatProtocol")

    def __init__(self) -> None:
        super().__init__()
        self._session: Session | None = None
        self._paused = False
        self._bytes_while_paused = 0
        self._refusals = RefusalLog()
        self._client = "?"
        self._counted_ip: str | None = None
        self._opened_at = 0.0
        self._was_open = False
        self.outbox = Outbox(self)
        self._first_frame = True
        # Frames that arrive while an `auth` is being verified (a JWKS fetch), in order.
        self._held: list[bytes] | None = None
        self._auth_deadline: IDelayedCall | None = None
        self._expiry: IDelayedCall | None = None

    # The handshake.

    def onConnect(self, request: ConnectionRequest) -> str | None:
        # Autobahn would answer an unexpected exception with HTTP 500 and the exception's
        # text in the body: log it here instead, and say nothing about it to the client.
        try:
            return self._admit(request)
        except ConnectionDeny:
            raise
        except Exception:
            self._log.failure("handshake of {client} failed", client=self._client)
            raise ConnectionDeny(
                ConnectionDeny.INTERNAL_SERVER_ERROR, "Internal Server Error"
            ) from None

    def _admit(self, request: ConnectionRequest) -> str | None:
        self._client = str(self.peer)
        if self.factory.draining:
            # Stopping (wschat/drain.py): the client should come back to the next instance.
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "server is restarting")
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        allowed = self.factory.settings.allowed_origins
        if not origin_allowed(origin, host, allowed):
            self._log.info(
                "refused {client}: origin {origin} not allowed (compared with {against})",
                client=self._client,
                origin=origin,
                against=f"--allowed-origin {' '.join(allowed)}" if allowed else f"host {host}",
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        ip = self._client_ip()
        addresses = self.factory.addresses
        if not addresses.admit(ip):
            self._log.info(
                "refused {client}: too many connections from {ip}", client=self._client, ip=ip
            )
            if self.factory.settings.trusted_proxies == 0 and addresses.proxy_hint(ip):
                self._log.warn(
                    "{ip} holds --max-connections-per-ip {limit} connections; if wschat is "
                    "behind a reverse proxy, start it with --trust-proxies N so that each "
                    "client counts under its own forwarded address",
                    ip=ip,
                    limit=addresses.limit,
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
            self._session = self.factory.hub.connect(
                self.outbox, self.send_event, self._replaced, self._counted_ip
            )
            self.factory.protocols.add(self)
            self._was_open = True
            self.factory.counts.opened += 1
            # twisted.web's HTTPChannel registered itself as the transport's producer; after
            # the upgrade we are the one that must hear about a full send buffer.
            consumer = IConsumer(self.transport)
            try:
                consumer.unregisterProducer()
            except RuntimeError:
                pass  # no producer was registered (a bare transport, as in tests)
            consumer.registerProducer(self, True)
            if self.factory.auth.mode is AuthMode.REQUIRED:
                self._auth_deadline = self.factory.clock.callLater(
                    self.factory.settings.open_handshake_timeout_s, self._auth_too_slow
                )
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
        self.outbox.pending = None
        self._held = None
        for timer in (self._auth_deadline, self._expiry):
            if timer is not None and timer.active():
                timer.cancel()
        self._auth_deadline = self._expiry = None
        if self._counted_ip is not None:
            self.factory.addresses.release(self._counted_ip)
            self._counted_ip = None
        if self._was_open:
            self._was_open = False
            self.factory.counts.closed["none" if code is None else str(code)] += 1
        if self._session is None:
            return
        session, self._session = self._session, None
        self.factory.hub.disconnect(session)
        self._log.info(
            "closed {client} after {duration:.1f}s: code={code} reason={reason} clean={clean}"
            " user={user}",
            client=self._client,
            duration=self.factory.clock.seconds() - self._opened_at,
            code=code,
            reason=reason,
            clean=wasClean,
            user=session.user,
        )

    # Requests: one handle_<type> per request type of the codec.

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._close_with(CLOSE_UNSUPPORTED_DATA, "wschat speaks JSON in text frames")
            return
        session = self._session
        if session is None:
            return
        if self._held is not None:
            self._held.append(payload)
            return
        maybeDeferred(self._dispatch, session, payload).addErrback(self._failed)

    def _dispatch(self, session: Session, payload: bytes) -> object:
        first, self._first_frame = self._first_frame, False
        try:
            command: Command = decode(payload)
        except ChatError:
            self._check_signed_in(session, None, first)
            raise
        self._check_signed_in(session, command, first)
        return getattr(self, "handle_" + command.kind)(session, command)

    def _check_signed_in(self, session: Session, command: Command | None, first: bool) -> None:
        """--auth required: nothing but `auth` until signed in. --auth optional: a connection
        whose first frame is not `auth` is a guest from then on."""
        mode = self.factory.auth.mode
        if isinstance(command, Auth) or session.identity is not None:
            return
        if mode is AuthMode.REQUIRED:
            raise _Close(CLOSE_UNAUTHORIZED, "sign in first: the first frame must be 'auth'")
        if mode is AuthMode.OPTIONAL and first:
            session.guest = True

    def handle_join(self, session: Session, cmd: Join) -> Coroutine[Any, Any, None]:
        return self.factory.hub.join(session, cmd)

    def handle_say(self, session: Session, cmd: Say) -> Coroutine[Any, Any, None]:
        self.factory.counts.messages_received += 1
        return self.factory.hub.say(session, cmd)

    def handle_leave(self, session: Session, cmd: Leave) -> None:
        self.factory.hub.leave(session, cmd)

    def handle_who(self, session: Session, cmd: Who) -> None:
        self.factory.hub.who(session, cmd)

    def handle_kick(self, session: Session, cmd: Kick) -> None:
        identity.require_admin(session)
        connections = self.factory.hub.kick(cmd.room, cmd.name)
        self._log.info(
            "{user} kicked {name} from {room}", user=session.user, name=cmd.name, room=cmd.room
        )
        session.send(Kicked(cmd.room, cmd.name, connections))

    async def handle_auth(self, session: Session, cmd: Auth) -> None:
        verifier = self._verifier()
        identity.check_may_sign_in(session)
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._auth_deadline = None
        self._held = []
        try:
            try:
                signed = await verifier.verify(cmd.token)
            except TokenInvalid as exc:
                self._log.info("refused auth from {client}: {why}", client=self._client, why=exc)
                raise _Close(CLOSE_UNAUTHORIZED, exc.message) from None
            except KeysUnavailable as exc:
                raise _Close(CLOSE_TRY_AGAIN_LATER, exc.message) from None
            identity.sign_in(session, signed)
        except BaseException:
            self._held = None
            raise
        self._arm_expiry(signed)
        session.send(self._authed(signed))
        held, self._held = self._held, None
        for payload in held:
            self.onMessage(payload, False)

    async def handle_refresh(self, session: Session, cmd: Refresh) -> None:
        verifier = self._verifier()
        if session.identity is None:
            raise AuthUnexpected("'refresh' needs a connection that signed in with 'auth'")
        signed = await verifier.verify(cmd.token)
        identity.refresh(session, signed)
        self._arm_expiry(signed)
        session.send(self._authed(signed))

    def _verifier(self) -> TokenVerifier:
        verifier = self.factory.auth.verifier
        if verifier is None or self.factory.auth.mode is AuthMode.OFF:
            raise AuthUnexpected("this server has no signed identities (--auth off)")
        return verifier

    def _authed(self, signed: Identity) -> Authed:
        now_s = self.factory.clock.seconds()
        return Authed(signed.name, signed.sub, signed.expires_in_s(now_s), signed.admin)

    def _arm_expiry(self, signed: Identity) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        auth = self.factory.auth
        assert auth.verifier is not None
        deadline_s = signed.exp_s + auth.verifier.leeway_s + auth.grace_s
        delay_s = max(0.0, deadline_s - self.factory.clock.seconds())
        self._expiry = self.factory.clock.callLater(delay_s, self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        self._log.info("closing {client}: its token expired", client=self._client)
        self._close_with(CLOSE_TOKEN_EXPIRED, "token expired: refresh before exp")

    def _auth_too_slow(self) -> None:
        self._auth_deadline = None
        self._log.info("closing {client}: no auth in time", client=self._client)
        timeout = self.factory.settings.open_handshake_timeout_s
        self._close_with(CLOSE_UNAUTHORIZED, f"no 'auth' within {timeout:g} s")

    def _failed(self, failure: Failure) -> None:
        if failure.check(_Close):
            self._close_with(failure.value.code, failure.value.reason)
            return
        if failure.check(ChatError):
            self._refuse(failure.value)
            return
        self._log.failure("request from {client} failed", failure, client=self._client)
        self.factory.counts.errors["internal"] += 1
        self.send_event(Error("internal", "the server failed on this request"))

    def _refuse(self, exc: ChatError) -> None:
        self.factory.counts.errors[exc.code] += 1
        if self._refusals.refused(exc.code):
            self._log.info("refused {kind} from {client}", kind=exc.code, client=self._client)
        self.send_event(Error(exc.code, exc.message, exc.ref))

    # Output.

    def send_event(self, event: Event) -> None:
        if self.state != STATE_OPEN:
            return
        if not isinstance(event, Error):
            self._refusals.served()
        # Framed here rather than by sendMessage: Autobahn applies maxMessagePayloadSize (our
        # limit on what a client may send) to outgoing messages too, and a welcome carrying
        # the history is often larger than that.
        self.factory.output.broadcast(
            (self,), self.factory.prepareMessage(encode(event)).payloadHybi
        )

    def admit_output(self, size: int) -> bool:
        if self.state != STATE_OPEN:
            return False
        # Counting may close a slow consumer: nothing may be queued behind its close frame.
        self._count_output(size)
        return self.state == STATE_OPEN

    def output_open(self) -> bool:
        return self.state == STATE_OPEN

    def output_failed(self) -> None:
        try:
            self._close_with(CLOSE_INTERNAL_ERROR, "internal error")
        except Exception:
            self._log.failure("could not close {client} after a failed write", client=self._client)
            self.dropConnection(abort=True)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Everything Autobahn writes itself (pongs, close frames) goes after what we queued.
        self.factory.output.before_transport_write(self.outbox)
        super().sendData(data, sync, chopsize)

    def dropConnection(self, abort: bool = False) -> None:
        self.outbox.fd = -1
        super().dropConnection(abort)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Twisted has just closed the socket: its descriptor number may be reused at once.
        self.outbox.fd = -1
        super().connectionLost(reason)
        self.outbox.sink = None

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
            if self.state == STATE_OPEN:
                self.factory.counts.slow_consumer_closes += 1
            # The close frame waits behind the backlog; Autobahn aborts the TCP connection
            # if the closing handshake does not finish in closeHandshakeTimeout.
            self.sendClose(CLOSE_SLOW_CONSUMER, "slow consumer: too much output waiting")

    def onPing(self, payload: bytes) -> None:
        # A pong is output like any other: a client flooding pings without reading the pongs
        # must meet the slow-consumer limit, not grow the server's send buffer without bound.
        self._count_output(len(payload) + 2)
        super().onPing(payload)

    # Closing.

    def _replaced(self) -> None:
        self._session = None
        self._log.info("replaced {client} by a reconnect with its token", client=self._client)
        self.sendClose(CLOSE_REPLACED, "replaced by a newer connection")

    def _close_with(self, code: int, reason: str) -> None:
        # sendClose accepts only 1000 and 3000-4999; protocol codes go through sendCloseFrame.
        encoded = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
        reason_utf8 = encoded.decode("utf-8", errors="ignore").encode("utf-8")
        self.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)

    def go_away(self) -> None:
        self._close_with(CLOSE_GOING_AWAY, "server going away")

    def restart(self) -> None:
        self._close_with(CLOSE_SERVICE_RESTART, "service restart")

    @property
    def user(self) -> str | None:
        return self._session.user if self._session is not None else None

    def disconnect(self) -> None:
        """The application asked for this user's connections to be closed (the server API)."""
        self._close_with(CLOSE_DISCONNECTED, "disconnected by the application")

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

    def __init__(
        self, settings: WsSettings, clock: IReactorTime, auth: AuthSettings = AuthSettings()
    ) -> None:
        self.settings = settings
        self.auth = auth
        super().__init__(server=SERVER_NAME)
        self.setProtocolOptions(**protocol_options(settings))
        self.clock = clock
        self._batched_timer = BucketTimer(clock)
        self.output = Output(clock)
        self.counts = Counts()
        self.addresses = AddressCap(settings.max_connections_per_ip)
        self.protocols: set[ChatProtocol] = set()
        # Set by the drain at shutdown: new upgrades are refused with 503.
        self.draining = False
        self._hub: Hub | None = None

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        super().setProtocolOptions(*args, **options)
        self._bake_options()

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()
        self._bake_options()

    def _bake_options(self) -> None:
        """Autobahn copies ~40 options into each protocol's __dict__ when it connects; as
        class attributes of a subclass per factory they cost nothing per connection. Baked
        again whenever an option changes, so that no change can miss new connections.
        (A callable option such as perMessageCompressionAccept must not become a method.)"""
        options = {
            attr: staticmethod(value) if callable(value) else value
            for attr in ChatProtocol.CONFIG_ATTRS
            for value in [getattr(self, attr)]
        }
        options["CONFIG_ATTRS"] = ()
        self.protocol = type("ChatProtocol", (ChatProtocol,), options)  # type: ignore[assignment]

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise RuntimeError("ChatFactory used before attach(hub)")
        return self._hub

    def attach(self, hub: Hub) -> None:
        self._hub = hub

    def fanout(self, sessions: Collection[Session], event: RoomEvent) -> None:
        frame = self.prepareMessage(encode(event)).payloadHybi
        self.counts.delivered += self.output.broadcast(sessions, frame)

    def go_away(self) -> None:
        for protocol in list(self.protocols):
            protocol.go_away()

    def disconnect_user(self, sub: str) -> int:
        """Close every connection signed in as `sub` (4403); how many there were."""
        found = [p for p in self.protocols if p.user == sub]
        for protocol in found:
            protocol.disconnect()
        return len(found)
