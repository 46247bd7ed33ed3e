"""The Autobahn side of a chat connection: the handshake (admission.py decides), text frames
in (connection.py serves them), frames out through the write path (output.py), backpressure
both ways, and the close.

A connection refused for its rate is not read until its bucket has a token again: its next
frames stay unparsed, in Autobahn's buffer of the read and then in the kernel's, so a flood
costs the reactor about one refusal per refill instead of one per frame.

Every broadcast is framed once in `ChatFactory.fanout` and queued for each member as the same
bytes by the write path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wschat.chat.model import Event
from wschat.private import forget_handshake, take_unparsed
from wschat.server.admission import address_of
from wschat.server.connection import Connection
from wschat.server.counts import close_label
from wschat.server.output import Outbox
from wschat.wire import (
    CLOSE_DISCONNECTED,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_SERVICE_RESTART,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNSUPPORTED_DATA,
    MAX_CLOSE_REASON_BYTES,
    SUBPROTOCOL,
    encode,
)

if TYPE_CHECKING:
    from wschat.server.factory import ChatFactory

STATE_OPEN = WebSocketProtocol.STATE_OPEN
# The longest a connection over its rate goes unread at a time (a bucket refilling slower
# waits in several holds): its pongs and close frame wait behind the hold, and the ping timeout
# (--ping-timeout, 5 s by default) must not run out on a client that has slowed down.
MAX_INPUT_HOLD_S = 1.0


# A module-level Logger keeps the namespace given (a Logger as a class attribute takes its
# class's name instead), which operators' log filters and the e2e tests match.
_log = Logger(namespace="wschat.ws.ChatProtocol")


@implementer(IPushProducer)
class ChatProtocol(WebSocketServerProtocol):
    """One client's WebSocket; the Transport of its Connection and the Sink of its Outbox.

    Autobahn owns `self.log`, `self.peer` (the client's address), `self.is_open` (a Deferred)
    and `factory.server`: ours are the module's `_log`, `_client`, `output_open` and SERVER_NAME."""

    factory: ChatFactory

    def __init__(self) -> None:
        super().__init__()
        self._connection: Connection | None = None
        self._paused = False
        self._bytes_while_paused = 0
        self._client = "?"
        self._counted_ip: str | None = None
        # Admission refused the upgrade, and logged why.
        self._denied = False
        self._was_open = False
        # While input is held (hold_input): what was received and not parsed yet, in order.
        self._unread: list[bytes] | None = None
        self._resume_input: IDelayedCall | None = None
        self.outbox = Outbox(self)

    # The handshake.

    def onConnect(self, request: ConnectionRequest) -> str | None:
        # Autobahn would answer an unexpected exception with HTTP 500 and the exception's
        # text in the body: log it here instead, and say nothing about it to the client.
        try:
            self._client = self._peer_for_log()
            self._counted_ip = self.factory.admission.admit(request, self._client)
        except ConnectionDeny:
            self._denied = True
            raise
        except Exception:
            _log.failure("handshake of {client} failed", client=self._client)
            self._denied = True  # logged: failHandshake adds no line of its own
            raise ConnectionDeny(
                ConnectionDeny.INTERNAL_SERVER_ERROR, "Internal Server Error"
            ) from None
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def _peer_for_log(self) -> str:
        # With --trust-proxies this is what the proxy wrote in X-Forwarded-For, and it starts
        # every log line about the connection: escaped unless plainly printable.
        client = str(self.peer)
        return client if client.isprintable() else ascii(client)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Refuse the upgrade as Autobahn does, without the two lines it writes for each
        refusal (an info and a warning): a client retrying in a loop would write them for
        every try. Ours go through the factory's Refusals, once a minute for each address."""
        if not self._denied:
            client = self._peer_for_log()
            self.factory.refusals.refused(
                _log,
                address_of(client),
                f"handshake {code}",
                "refused {client}: {reason!r} ({code})",
                client=client,
                reason=reason,
                code=code,
            )
        self.wasNotCleanReason = reason
        self.sendHttpErrorResponse(code, reason, responseHeaders)
        # An answered refusal ends the connection as planned: left unclean, dropConnection
        # would log a warning for it.
        self.wasClean = True
        self.dropConnection(abort=False)

    def onOpen(self) -> None:
        try:
            # At tens of thousands of idle connections the handshake's request and response
            # would be a fair share of the memory.
            forget_handshake(self)
            # Set first: should open() fail after the hub took the session, onClose ends it.
            connection = self._connection = Connection(self, self.factory.context, self._client)
            connection.open(self.outbox, self._counted_ip)
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
        except Exception:
            _log.failure("could not open {client}", client=self._client)
            self.close(CLOSE_INTERNAL_ERROR, "internal error")

    def dataReceived(self, data: bytes) -> None:
        if self._unread is not None:
            # A TLS transport may deliver the rest of what it decrypted after the pause.
            self._unread.append(data)
            return
        super().dataReceived(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.close(CLOSE_UNSUPPORTED_DATA, "wschat speaks JSON in text frames")
            return
        # Once the server has sent its close frame, nothing more is served.
        if self._connection is not None and self.state == STATE_OPEN:
            self._connection.receive(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.protocols.discard(self)
        self.outbox.pending = None
        if self._counted_ip is not None:
            self.factory.admission.release(self._counted_ip)
            self._counted_ip = None
        if self._was_open:
            self._was_open = False
            self.factory.counts.closed[close_label(code)] += 1
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.closed(code, reason, wasClean)

    @property
    def user(self) -> str | None:
        """The sub this connection signed in as, if any."""
        return self._connection.user if self._connection is not None else None

    # Output (Transport and Sink).

    def send_event(self, event: Event) -> int:
        if self.state != STATE_OPEN:
            return 0
        # Framed here rather than by sendMessage: Autobahn applies maxMessagePayloadSize (our
        # limit on what a client may send) to outgoing messages too, and a welcome carrying
        # the history is often larger than that.
        frame = self.factory.prepareMessage(encode(event)).payloadHybi
        self.factory.output.broadcast((self,), frame)
        return len(frame)

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
            self.close(CLOSE_INTERNAL_ERROR, "internal error")
        except Exception:
            _log.failure("could not close {client} after a failed write", client=self._client)
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
        if self._resume_input is not None and self._resume_input.active():
            self._resume_input.cancel()
        self._resume_input = self._unread = None
        super().connectionLost(reason)
        self.outbox.sink = None

    def _count_output(self, size: int) -> None:
        if not self._paused:
            return
        self._bytes_while_paused += size
        limit = self.factory.settings.max_output_bytes
        if self._bytes_while_paused > limit:
            _log.warn(
                "closing slow consumer {client}: over {limit} bytes of output waiting",
                client=self._client,
                limit=limit,
            )
            if self.state == STATE_OPEN:
                self.factory.counts.slow_consumer_closes += 1
            # The close frame waits behind the backlog; Autobahn aborts the TCP connection
            # if the closing handshake does not finish in closeHandshakeTimeout.
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer: too much output waiting")

    def onPing(self, payload: bytes) -> None:
        # A pong is output like any other: a client flooding pings without reading the pongs
        # must meet the slow-consumer limit, not grow the server's send buffer without bound.
        self._count_output(len(payload) + 2)
        super().onPing(payload)

    # Input held while the client is over its rate.

    def serving(self) -> bool:
        return self.state == STATE_OPEN

    def hold_input(self, delay_s: float) -> None:
        if self._unread is not None or self.state != STATE_OPEN:
            return
        # A debt that is due already (its timer not run yet) still holds for this turn.
        hold_s = max(0.0, min(delay_s, MAX_INPUT_HOLD_S))
        self._resume_input = self.factory.clock.callLater(hold_s, self._read_again)
        # The frames after the refused one in this read are parsed after the hold, in order.
        self._unread = [take_unparsed(self)]
        producer = IPushProducer(self.transport, None)
        if producer is not None:
            producer.pauseProducing()

    def _read_again(self) -> None:
        self._resume_input = None
        unread, self._unread = self._unread, None
        if unread is None:
            return
        producer = IPushProducer(self.transport, None)
        if producer is not None:
            # Before the held bytes are parsed: a refusal among them holds input again.
            producer.resumeProducing()
        data = b"".join(unread)
        if data:
            super().dataReceived(data)

    # Closing.

    def close(self, code: int, reason: str) -> None:
        # sendClose accepts only 1000 and 3000-4999; protocol codes go through sendCloseFrame.
        encoded = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
        reason_utf8 = encoded.decode("utf-8", errors="ignore").encode("utf-8")
        self.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)

    def go_away(self) -> None:
        self.close(CLOSE_GOING_AWAY, "server going away")

    def restart(self) -> None:
        self.close(CLOSE_SERVICE_RESTART, "service restart")

    def disconnect(self) -> None:
        """The application asked for this user's connections to be closed (the server API)."""
        self.close(CLOSE_DISCONNECTED, "disconnected by the application")

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
