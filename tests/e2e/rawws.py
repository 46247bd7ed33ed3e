"""A hand-made WebSocket client on a raw socket, for what a well-behaved library refuses to do.

It sends frames byte by byte as we build them (invalid UTF-8, any opcode), never answers pings
and can stop reading altogether, so the tests can play a broken, dead or slow peer.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
from typing import Any

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

TIMEOUT_S = 10.0


class HandshakeRefused(Exception):
    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"HTTP {status}: {head!r}")
        self.status = status
        self.head = head


class RawWs:
    """One client connection. `recv_buffer_bytes` shrinks SO_RCVBUF before connecting, so that
    a reader that stops reading backs the server up quickly."""

    def __init__(
        self,
        port: int,
        path: str = "/ws",
        *,
        headers: dict[str, str] | None = None,
        recv_buffer_bytes: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer_bytes is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
        raw.settimeout(TIMEOUT_S)
        raw.connect(("127.0.0.1", port))
        self.sock: socket.socket = tls.wrap_socket(raw) if tls else raw
        self._buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            self.sock.close()
            raise HandshakeRefused(status, head)

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            self._fill()
        head, self._buf = self._buf.split(marker, 1)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the TCP connection")
        self._buf += chunk

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """A masked client frame, exactly as given (no validation of the payload)."""
        first = (0x80 if fin else 0) | opcode
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", first, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", first, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, size)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, **fields: Any) -> None:
        self.send_frame(OP_TEXT, json.dumps(fields).encode())

    def recv_frame(self, timeout: float = TIMEOUT_S) -> tuple[int, bytes]:
        """The next frame as (opcode, payload); pings are returned too, never answered."""
        self.sock.settimeout(timeout)
        first, second = self._read_exactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read_exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read_exactly(8))
        return first & 0x0F, self._read_exactly(size)

    def recv_json(self, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """The next text frame, skipping pings."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == OP_TEXT:
                event = json.loads(payload)
                assert isinstance(event, dict)
                return event
            assert opcode == OP_PING, f"unexpected frame {opcode}: {payload!r}"

    def recv_close(self, timeout: float = TIMEOUT_S) -> tuple[int, str]:
        """Skip to the close frame and return its (code, reason)."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == OP_CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode("utf-8")

    def join(self, room: str, name: str) -> dict[str, Any]:
        self.send_json(type="join", room=room, name=name)
        event = self.recv_json()
        assert event["type"] == "welcome", event
        return event

    def close(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self.sock.close()
