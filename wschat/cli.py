"""`wschat-cli URL --room R [--name N]`: a line chat in the terminal, on Autobahn's client.

Type a line to say it in the current room (the one joined last); commands start with `/`:
/join ROOM, /leave [ROOM], /who [ROOM], /kick NAME (admins), /help, /quit. The client
reconnects with backoff, rejoins its rooms with `since` (so it shows what it missed, once), and
resends what it said while offline (with the same `ref`, so nothing is stored twice).

--json is for scripts: every line on stdin is sent as a frame, every frame received is written
to stdout as one JSON line, and the client exits when the connection ends.

The token of a signed identity is read from --token-file, never from the command line (argv is
visible to every user of the machine), and read again before it expires and on a reconnect, so
a job that rewrites the file keeps the client signed in.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import ssl, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

SUBPROTOCOL = "wschat.v1"
BACKOFF_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0
PING_INTERVAL_S = 10.0
PING_TIMEOUT_S = 5.0
# Refresh this long before the token expires (or at 4/5 of a shorter life), and look at the
# token file again this often until it holds a new token.
REFRESH_BEFORE_S = 60.0
REFRESH_RETRY_S = 5.0
WHO_PAGE = 1000

# Close codes after which reconnecting cannot help (docs/protocol.md): exit with these.
EXIT_UNAUTHORIZED = 2
EXIT_DISCONNECTED = 3
EXIT_REPLACED = 4
FATAL_CLOSES = {4401: EXIT_UNAUTHORIZED, 4403: EXIT_DISCONNECTED, 4001: EXIT_REPLACED}

HELP = [
    "* type a line to say it in the current room; commands:",
    "*   /join ROOM      join (and switch to) a room",
    "*   /leave [ROOM]   leave the current room (or ROOM)",
    "*   /who [ROOM]     list the members",
    "*   /kick NAME      take NAME out of the current room (admins only)",
    "*   /quit           leave",
]

Frame = dict[str, Any]


def ws_url(url: str) -> str:
    """ws(s)://host:port/ws from what a person types: http(s) and a bare host:port work too."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


@dataclass
class ChatState:
    """What the client knows across connections; turns frames into lines to show and typed
    lines into frames to send. Knows nothing of sockets or time."""

    name: str | None
    rooms: dict[str, int | None] = field(default_factory=dict)
    current: str | None = None
    resume_token: str | None = None
    signed: bool = False
    # say frames not acked yet, by ref: sent again after a reconnect.
    pending: dict[str, Frame] = field(default_factory=dict)
    # Rooms welcomed into at least once: a rejoin after a reconnect is not news.
    welcomed: set[str] = field(default_factory=set)
    new_ref: Callable[[], str] = lambda: uuid.uuid4().hex

    def opening(self, token: str | None) -> list[Frame]:
        """The frames of a new connection: sign in, rejoin every room, resend what is unacked."""
        frames: list[Frame] = [{"type": "auth", "token": token}] if token else []
        first = True
        for room, last_id in self.rooms.items():
            frames.append(self._join(room, last_id, first))
            first = False
        frames += self.pending.values()
        return frames

    def _join(self, room: str, since: int | None, with_name: bool) -> Frame:
        frame: Frame = {"type": "join", "room": room}
        if with_name and self.name is not None and not self.signed:
            frame["name"] = self.name
        if since is not None:
            frame["since"] = since
        if self.resume_token is not None:
            frame["token"] = self.resume_token
        return frame

    def typed(self, line: str) -> tuple[list[str], list[Frame], bool]:
        """A line from the keyboard: (lines to show, frames to send, quit?)."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return [], [], False
        if not line.startswith("/"):
            if self.current is None:
                return ["! join a room first: /join ROOM"], [], False
            ref = self.new_ref()
            frame = {"type": "say", "room": self.current, "text": line, "ref": ref}
            self.pending[ref] = frame
            return [], [frame], False
        command, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        room = arg or self.current
        if command == "quit":
            return [], [], True
        if command == "help":
            return list(HELP), [], False
        if command == "join" and arg:
            self.rooms.setdefault(arg, None)
            self.current = arg
            return [], [self._join(arg, self.rooms[arg], True)], False
        if command in ("leave", "who") and room:
            if command == "leave":
                return [], [{"type": "leave", "room": room}], False
            return [], [{"type": "who", "room": room, "limit": WHO_PAGE}], False
        if command == "kick" and arg and self.current:
            return [], [{"type": "kick", "room": self.current, "name": arg}], False
        return [f"! unknown or incomplete command: {line} (/help)"], [], False

    def received(self, frame: Frame) -> tuple[list[str], list[Frame]]:
        """A frame from the server: (lines to show, frames to send in answer)."""
        kind = frame.get("type")
        room = frame.get("room")
        if kind == "message":
            return self._message(frame), []
        if kind == "presence":
            lines = [f"* {n} joined #{room}" for n in frame.get("joined", [])]
            return lines + [f"* {n} left #{room}" for n in frame.get("left", [])], []
        if kind == "welcome":
            return self._welcome(frame), []
        if kind == "ack":
            self.pending.pop(frame.get("ref") or "", None)
            return [], []
        if kind == "members":
            lines = [f"* #{room}: {', '.join(frame['names'])} ({frame['count']} in all)"]
            more = []
            if frame.get("next") is not None:
                more = [{"type": "who", "room": room, "after": frame["next"], "limit": WHO_PAGE}]
            return lines, more
        if kind == "left":
            self._forget(str(room))
            why = " (kicked)" if frame.get("reason") == "kicked" else ""
            return [f"* you left #{room}{why}"], []
        if kind == "kicked":
            return [f"* {frame['name']} was kicked from #{room}"], []
        if kind == "authed":
            self.signed = True
            self.name = frame["name"]
            admin = ", admin" if frame.get("admin") else ""
            return [f"* signed in as {frame['name']} ({frame['user']}{admin})"], []
        if kind == "error":
            return [f"! {frame.get('code')}: {frame.get('message')}"], []
        return [], []

    def _welcome(self, frame: Frame) -> list[str]:
        room = frame["room"]
        self.name = frame["name"]
        self.resume_token = frame.get("token", self.resume_token)
        known = room in self.welcomed
        self.welcomed.add(room)
        self.rooms.setdefault(room, None)
        lines = []
        if not known:
            users = frame.get("users")
            listed = f": {', '.join(users)}" if users is not None else ""
            lines.append(f"* joined #{room} as {frame['name']} ({frame['count']} members{listed})")
        elif frame.get("recovered") is False:
            lines.append(f"* #{room}: some messages were missed while offline")
        for msg in frame.get("history", []):
            lines += self._message(msg)
        return lines

    def _message(self, msg: Frame) -> list[str]:
        room = msg["room"]
        last = self.rooms.get(room)
        if last is not None and msg["id"] <= last:
            return []  # seen already (a rejoin's history overlaps the live messages)
        if room in self.rooms:
            self.rooms[room] = msg["id"]
        return [f"[{room}] <{msg['name']}> {msg['text']}"]

    def _forget(self, room: str) -> None:
        self.rooms.pop(room, None)
        self.welcomed.discard(room)
        if self.current == room:
            self.current = next(reversed(self.rooms), None) if self.rooms else None


class _Stdin(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self, cli: Cli) -> None:
        self._cli = cli
        self.lost: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self._cli.typed(line.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
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

    def received(self, payload: bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if self._json:
            self.show(json.dumps(frame, ensure_ascii=False))
        lines, answers = self.state.received(frame)
        if not self._json:
            for line in lines:
                self.show(line)
        for answer in answers:
            self._send(answer)
        if frame.get("type") == "authed":
            self._schedule_refresh(float(frame.get("expires_in", 0)))

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
        self._send(frame)

    def stdin_closed(self) -> None:
        self.quit()

    def quit(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        self._cancel_refresh()
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="wschat-cli",
        # No --token abbreviating --token-file: a token on the command line is what to avoid.
        allow_abbrev=False,
        description="A line chat in the terminal for a wschat server.",
        epilog="Commands: /join ROOM, /leave [ROOM], /who [ROOM], /kick NAME, /help, /quit.",
    )
    parser.add_argument("url", help="ws://host:port/ws, wss://…, or http(s)://host:port")
    parser.add_argument(
        "--room", action="append", help="room to join (repeatable; the last is current)"
    )
    parser.add_argument("--name", help="your name (a signed token names you instead)")
    parser.add_argument("--token-file", help="file holding your JWT; read again before it expires")
    parser.add_argument(
        "--ca", help="PEM certificate(s) to trust for wss:// instead of the system's"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="wss:// without verifying the certificate"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="frames as JSON lines: stdin is sent, what arrives is printed; exit when closed",
    )
    args = parser.parse_args(argv)
    if not args.json and not args.room:
        parser.error("--room is required (except with --json)")
    if not args.json and args.name is None and args.token_file is None:
        parser.error("--name is required without --token-file")
    if args.ca and args.insecure:
        parser.error("--ca and --insecure contradict each other")
    try:
        ws_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def run(reactor: Any) -> None:
        holder = Protocol()
        cli = Cli(reactor, args, holder)
        stdin = _Stdin(cli)
        stdio = StandardIO(stdin, reactor=reactor)
        holder.transport = stdio
        code = await cli.start()
        # Let what is written reach the terminal before the reactor stops.
        stdio.loseConnection()
        await stdin.lost
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
