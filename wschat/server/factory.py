"""The WebSocket factory of one server: our settings as Autobahn's protocol options, the open
connections, and the fan-out of room events to them."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import IReactorTime

from wschat.chat.hub import Hub
from wschat.chat.ports import RoomEvent
from wschat.chat.session import Session
from wschat.private import bake_options, use_timer
from wschat.server.admission import Admission
from wschat.server.connection import ConnectionContext
from wschat.server.counts import Counts
from wschat.server.output import Output
from wschat.server.protocol import ChatProtocol
from wschat.server.refusals import Refusals
from wschat.server.settings import AuthSettings, WsSettings
from wschat.server.timers import BucketTimer
from wschat.wire import encode

# The Server header of the handshake: no version for scanners to match against.
SERVER_NAME = "wschat"


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
        # Our own Origin check (admission.py) is stricter than Autobahn's patterns.
        "allowedOrigins": ["*"],
        "allowNullOrigin": True,
        "perMessageCompressionAccept": _no_compression,
        # No status page naming Autobahn and its version (site.py answers 426 instead).
        "webStatus": False,
    }


class ChatFactory(WebSocketServerFactory):
    """Builds a ChatProtocol per connection; `attach(hub)` before the first connects."""

    protocol = ChatProtocol  # type: ignore[assignment]

    def __init__(
        self, settings: WsSettings, clock: IReactorTime, auth: AuthSettings = AuthSettings()
    ) -> None:
        self.settings = settings
        self.auth = auth
        super().__init__(server=SERVER_NAME)
        self.setProtocolOptions(**protocol_options(settings))
        self.clock = clock
        use_timer(self, BucketTimer(clock))
        self.output = Output(clock)
        self.counts = Counts()
        self.refusals = Refusals(clock)
        self.admission = Admission(settings, self.refusals)
        self.protocols: set[ChatProtocol] = set()
        self._context: ConnectionContext | None = None

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        super().setProtocolOptions(*args, **options)
        self._bake_options()

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()
        self._bake_options()

    def _bake_options(self) -> None:
        """Autobahn copies ~40 options into each protocol's __dict__ when it connects; as
        class attributes of a subclass per factory they cost nothing per connection. Baked
        again whenever an option changes, so that no change can miss new connections."""
        self.protocol = bake_options(self, ChatProtocol, "ChatProtocolWithOptions")

    @property
    def draining(self) -> bool:
        """Set by the drain at shutdown: new upgrades are refused with 503."""
        return self.admission.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.admission.draining = value

    @property
    def hub(self) -> Hub:
        return self.context.hub

    @property
    def context(self) -> ConnectionContext:
        """What each connection is served with."""
        if self._context is None:
            raise RuntimeError("ChatFactory used before attach(hub)")
        return self._context

    def attach(self, hub: Hub) -> None:
        settings = self.settings
        self._context = ConnectionContext(
            hub,
            self.clock,
            self.counts,
            self.auth,
            settings.open_handshake_timeout_s,
            settings.welcome_rate_bytes_per_s,
            settings.welcome_burst_bytes,
        )

    def fanout(self, sessions: Collection[Session], event: RoomEvent) -> None:
        """Frame `event` once and queue the same bytes for every session."""
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
