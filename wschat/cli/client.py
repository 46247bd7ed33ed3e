"""The terminal client's connection: Autobahn's WebSocket client, reconnects with backoff,
the token file read again before it expires, and stdin/stdout."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from wschat.cli.state import ChatState, Frame, ws_url
from wschat.wire import CLOSE_DISCONNECTED, CLOSE_REPLACED, CLOSE_UNAUTHORIZED, SUBPROTOCOL

BACKOFF_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0
PING_INTERVAL_S = 10.0
PING_TIMEOUT_S = 5.0
# Refresh this long before the token expires (or at 4/5 of a shorter life), and look at the
# token file again this often until it holds a new token.
REFRESH_BEFORE_S = 60.0
REFRESH_RETRY_S = 5.0
# --json: once stdin is closed, the answers to the frames sent are awaited this long at most
# (`echo '{"type": "history", ...}' | wschat-cli --json` prints the page before it exits).
ANSWER_WAIT_S = 10.0
# The frames that answer a request, one per request (docs/protocol.md); a kick's `left` is not.
_ANSWERS = frozenset(
    {"welcome", "ack", "left", "members", "page", "results", "kicked", "authed", "error"}
)

# Close codes after which reconnecting cannot help (docs/protocol.md): exit with these.
EXIT_UNAUTHORIZED = 2
EXIT_DISCONNECTED = 3
EXIT_REPLACED = 4
FATAL_CLOSES = {
    CLOSE_UNAUTHORIZED: EXIT_UNAUTHORIZED,
    CLOSE_DISCONNECTED: EXIT_DISCONNECTED,
    CLOSE_REPLACED: EXIT_REPLACED,
}


@implementer(IHalfCloseableProtocol)
class Stdin(LineOnlyReceiver):
    """stdin's lines to the client; half-closeable, so that stdout stays open after stdin's
    end for the answers still to come (--json)."""

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self, cli: Cli) -> None:
        self._cli = cli
        self._ended = False
        self.lost: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self._cli.typed(line.decode("utf-8", "replace"))

    def readConnectionLost(self) -> None:
        self._ended = True
        self._cli.stdin_closed()

    def writeConnectionLost(self) -> None:
        """Nobody reads stdout any more: what is shown is lost, the chat goes on."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._ended:
            self._ended = True
            self._cli.stdin_closed()
        if not self.lost.called:
            self.lost.callback(None)


class _ClientFactory(WebSocketClientFactory):
    cli: Cli


class _ChatClient(WebSocketClientProtocol):
    factory: _ClientFactory

    def onOpen(self) -> None:
        self.factory.cli.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.factory.cli.received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.cli.closed(self, code, reason)


class Cli:
    """The client's life: connect, talk, and reconnect with backoff until /quit."""

    def __init__(self, reactor: Any, args: argparse.Namespace, out: Protocol | None = None) -> None:
        self._reactor = reactor
        self._args = args
        self.url = ws_url(args.url)
        self.state = ChatState(args.name)
        for room in args.room or ():
            self.state.rooms[room] = None
            self.state.current = room
        self._json = bool(args.json)
        # --json: frames read before the first connection opened go out once it has; stdin
        # closed meanwhile quits after them (`echo '{...}' | wschat-cli --json` sends its line).
        self._early: list[Frame] | None = [] if self._json else None
        self._quit_when_open = False
        # --json: requests sent and not answered yet, and the wait for them once stdin closed.
        self._unanswered = 0
        self._answer_wait: IDelayedCall | None = None
        self._protocol: _ChatClient | None = None
        self._attempts = 0
        self._retry: IDelayedCall | None = None
        self._refresh: IDelayedCall | None = None
        self._token: str | None = None
        self._quitting = False
        self.done: Deferred[int] = Deferred()
        self._stdio = out

    # Output: through the stdio transport (Twisted makes stdout non-blocking).

    def show(self, line: str) -> None:
        if self._stdio is not None and self._stdio.transport is not None:
            self._stdio.transport.write(line.encode("utf-8") + b"\n")

    def note(self, line: str) -> None:
        """Status for people: on stdout normally, on stderr in --json mode."""
        if self._json:
            print(line, file=sys.stderr, flush=True)
        else:
            self.show(line)

    # Connecting.

    def start(self) -> Deferred[int]:
        self._connect()
        return self.done

    def _endpoint(self) -> IStreamClientEndpoint:
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, host, port, timeout=CONNECT_TIMEOUT_S
        )
        if secure:
            endpoint = wrapClientTLS(
                tls_options(host, self._args.ca, self._args.insecure), endpoint
            )
        return endpoint

    def _connect(self) -> None:
        self._retry = None
        self._token = self._read_token()
        factory = _ClientFactory(self.url, protocols=[SUBPROTOCOL])
        factory.protocol = _ChatClient
        factory.cli = self
        factory.setProtocolOptions(
            autoPingInterval=PING_INTERVAL_S,
            autoPingTimeout=PING_TIMEOUT_S,
            openHandshakeTimeout=CONNECT_TIMEOUT_S,
        )
        connecting = self._endpoint().connect(factory)
        connecting.addErrback(self._not_connected)

    def _not_connected(self, failure: Failure) -> None:
        why = failure.getErrorMessage().rstrip(".")
        self._again(f"could not connect to {self.url}: {why}")

    def _again(self, why: str) -> None:
        if self._quitting:
            return
        if self._json:
            self.note(f"* {why}")
            self._finish(1)
            return
        delay = min(BACKOFF_MAX_S, 2.0**self._attempts) * random.uniform(0.5, 1.0)
        self._attempts += 1
        self.note(f"* {why}; reconnecting in {delay:.1f} s")
        self._retry = self._reactor.callLater(delay, self._connect)

    def opened(self, protocol: _ChatClient) -> None:
        self._protocol = protocol
        self._attempts = 0
        self.note(f"* connected to {self.url}")
        frames = self.state.opening(self._token)
        if self._json:
            frames = [f for f in frames if f["type"] in ("auth", "join")]
        for frame in frames:
            self._send(frame)
        early, self._early = self._early, None
        for frame in early or ():
            self._send(frame)
        if self._quit_when_open:
            self._quit_when_answered()

    def closed(self, protocol: _ChatClient, code: int | None, reason: str | None) -> None:
        """Also called for a connection that never opened (the handshake was refused)."""
        if protocol is self._protocol:
            self._protocol = None
        self._cancel_refresh()
        if self._quitting:
            self._finish(0)
            return
        if code in FATAL_CLOSES:
            self.note(f"* closed by the server: {code} {reason}")
            self._finish(FATAL_CLOSES[code])
            return
        self._again(f"disconnected ({code} {reason or ''})".rstrip())

    # Frames.

    def _send(self, frame: Frame) -> None:
        if self._protocol is not None:
            self._protocol.sendMessage(json.dumps(frame).encode("utf-8"))
            self._unanswered += 1

    def received(self, payload: bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if self._json:
            self.show(json.dumps(frame, ensure_ascii=False))
        kind = frame.get("type")
        if kind in _ANSWERS and not (kind == "left" and frame.get("reason") == "kicked"):
            self._unanswered = max(0, self._unanswered - 1)
        lines, answers = self.state.received(frame)
        if not self._json:
            for line in lines:
                self.show(line)
        for answer in answers:
            self._send(answer)
        if kind == "authed":
            self._schedule_refresh(float(frame.get("expires_in", 0)))
        if self._answer_wait is not None and not self._unanswered:
            self.quit()

    def typed(self, line: str) -> None:
        if self._json:
            self._pipe(line)
            return
        lines, frames, quit_ = self.state.typed(line)
        for shown in lines:
            self.show(shown)
        if quit_:
            self.quit()
            return
        for frame in frames:
            self._send(frame)

    def _pipe(self, line: str) -> None:
        if not line.strip():
            return
        try:
            frame = json.loads(line)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            self.note(f"! not a JSON object, not sent: {line[:80]}")
            return
        if self._early is not None:
            self._early.append(frame)
            return
        self._send(frame)

    def stdin_closed(self) -> None:
        if self._early is not None and self._protocol is None:
            self._quit_when_open = True
            return
        if self._json:
            self._quit_when_answered()
            return
        self.quit()

    def _quit_when_answered(self) -> None:
        """--json, stdin closed: quit once every frame sent has had its answer (the server
        stops serving a connection that closes, so quitting at once would lose them)."""
        if not self._unanswered or self._protocol is None:
            self.quit()
            return
        self._answer_wait = self._reactor.callLater(ANSWER_WAIT_S, self.quit)

    def quit(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        self._cancel_refresh()
        if self._answer_wait is not None and self._answer_wait.active():
            self._answer_wait.cancel()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._protocol is not None:
            self._protocol.sendClose(1000)
        else:
            self._finish(0)

    def _finish(self, code: int) -> None:
        if not self.done.called:
            self.done.callback(code)

    # The token.

    def _read_token(self) -> str | None:
        path = self._args.token_file
        if path is None:
            return None
        try:
            token = Path(path).read_text("utf-8").strip()
        except OSError as exc:
            self.note(f"! cannot read the token file {path}: {exc.strerror}")
            return self._token
        return token or None

    def _schedule_refresh(self, expires_in_s: float) -> None:
        self._cancel_refresh()
        if self._args.token_file is None:
            return
        delay = max(1.0, expires_in_s - min(REFRESH_BEFORE_S, expires_in_s / 5))
        self._refresh = self._reactor.callLater(delay, self._refresh_now)

    def _refresh_now(self) -> None:
        self._refresh = None
        token = self._read_token()
        if token is not None and token != self._token:
            self._token = token
            self._send({"type": "refresh", "token": token})
            return
        # The file still holds the old token: look again soon (until the server gives up).
        self._refresh = self._reactor.callLater(REFRESH_RETRY_S, self._refresh_now)

    def _cancel_refresh(self) -> None:
        if self._refresh is not None and self._refresh.active():
            self._refresh.cancel()
        self._refresh = None


def tls_options(host: str, ca: str | None, insecure: bool) -> Any:
    """Verify the server against the system's CAs, or --ca's; --insecure verifies nothing."""
    if insecure:
        return ssl.CertificateOptions(verify=False)
    if ca is not None:
        trust = ssl.Certificate.loadPEM(Path(ca).read_bytes())
        return ssl.optionsForClientTLS(host, trustRoot=trust)
    return ssl.optionsForClientTLS(host)
