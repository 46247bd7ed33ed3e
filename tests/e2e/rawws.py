"""A hand-made WebSocket client on a raw socket, for what a well-behaved library refuses to do.

It sends frames byte by byte as we build them (invalid UTF-8, any opcode, or any bytes at all,
built with wschat/testing.py), never answers pings and reads only when asked to, so the tests
can play a broken, dead, slow or hostile peer.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
from typing import Any

from wschat.testing import client_frame

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

TIMEOUT_S = 10.0
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example Sec-WebSocket-Key


class HandshakeRefused(Exception):
    """The server answered the upgrade request with an HTTP status other than 101."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"HTTP {status}: {head!r}")
        self.status = status
        self.head = head


class Closed(ConnectionError):
    """The server ended the TCP connection (EOF or reset), or sent a close frame where a
    message was expected."""


def request_head(port: int, path: str = "/ws", headers: dict[str, str] | None = None) -> bytes:
    """A complete WebSocket upgrade request for 127.0.0.1:`port`, plus any extra `headers`."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {SAMPLE_KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawWs:
    """One TCP connection to the server that does exactly what the test says, nothing more.

    By default the constructor performs the handshake and raises HandshakeRefused unless the
    server answers 101; with `handshake=False` it only connects, and `upgrade()` sends the
    request and returns the status, so the test can check refusals (429, 503) itself.
    `recv_buffer_bytes` shrinks SO_RCVBUF before connecting, so that a reader that stops
    reading backs the server up quickly.
    """

    def __init__(
        self,
        port: int,
        path: str = "/ws",
        *,
        headers: dict[str, str] | None = None,
        recv_buffer_bytes: int | None = None,
        tls: ssl.SSLContext | None = None,
        handshake: bool = True,
    ) -> None:
        self.port = port
        self.path = path
        self.headers = headers or {}
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer_bytes is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
        raw.settimeout(TIMEOUT_S)
        raw.connect(("127.0.0.1", port))
        self.sock: socket.socket = tls.wrap_socket(raw) if tls else raw
        self._buf = b""
        if handshake:
            status, head = self._handshake()
            if status != 101:
                self.sock.close()
                raise HandshakeRefused(status, head)

    # -- HTTP

    def upgrade(self) -> int:
        """Send the upgrade request; return the HTTP status (101 when upgraded)."""
        return self._handshake()[0]

    def _handshake(self) -> tuple[int, bytes]:
        self.sock.sendall(request_head(self.port, self.path, self.headers))
        head = self._read_until(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), head

    # -- WebSocket

    def send(self, data: bytes) -> None:
        """Raw bytes, exactly as given: any frames, or anything at all."""
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """A masked client frame, exactly as given (no validation of the payload)."""
        self.send(client_frame(opcode, payload, fin=fin))

    def send_json(self, **fields: Any) -> None:
        self.send_frame(OP_TEXT, json.dumps(fields).encode())

    def join(self, room: str, name: str) -> dict[str, Any]:
        """Join `room` as `name` and return the welcome."""
        self.send_json(type="join", room=room, name=name)
        return self.expect("welcome")

    def recv_frame(self, timeout: float = TIMEOUT_S) -> tuple[int, bytes]:
        """The next server frame as (opcode, payload); pings are returned too, never answered.
        Raises Closed on EOF or reset."""
        self.sock.settimeout(timeout)
        first, second = self._read_exactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read_exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read_exactly(8))
        return first & 0x0F, self._read_exactly(size)

    def recv_json(self, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """The next text frame as JSON, skipping pings and pongs. Raises Closed on a close
        frame, EOF or reset; any other frame fails the test."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == OP_TEXT:
                event = json.loads(payload)
                assert isinstance(event, dict)
                return event
            if opcode == OP_CLOSE:
                raise Closed(f"close frame {payload!r}")
            assert opcode in (OP_PING, OP_PONG), f"unexpected frame {opcode}: {payload!r}"

    def expect(self, type_: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """The next event, which must be of type `type_`."""
        event = self.recv_json(timeout)
        assert event["type"] == type_, f"expected {type_}, got {event}"
        return event

    def recv_close(self, timeout: float = TIMEOUT_S) -> tuple[int, str]:
        """Skip to the server's close frame and return its (code, reason)."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == OP_CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode("utf-8")

    def close(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self.sock.close()

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            self._fill()
        head, self._buf = self._buf.split(marker, 1)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError as exc:
            raise Closed("reset by the server") from exc
        if not chunk:
            raise Closed("EOF from the server")
        self._buf += chunk
