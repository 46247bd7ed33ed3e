"""Tools for the hostile-input and fault tests: a raw-socket WebSocket client that sends
whatever bytes it is given (built with tests/wsframes.py), HTTP probes, and process metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from tests.wsframes import OP_CLOSE, OP_PING, OP_TEXT, client_frame

from .process import ServerProcess

TIMEOUT_S = 10.0
T = TypeVar("T")
OP_CONT = 0x0


def request_head(port: int, path: str = "/ws") -> bytes:
    """A complete WebSocket upgrade request for 127.0.0.1:`port`."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Closed(Exception):
    """The server ended the TCP connection (EOF or reset) before the expected frame."""


class RawClient:
    """One TCP connection to the server that does exactly what the test says, nothing more:
    it never answers pings and reads only when asked to."""

    def __init__(self, port: int, *, recv_buffer_bytes: int | None = None) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer_bytes is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(("127.0.0.1", port))
        self._buf = b""

    # -- HTTP

    def upgrade(self) -> int:
        """Send a valid handshake; return the HTTP status (101 when upgraded)."""
        self.sock.sendall(request_head(self.port))
        head = self.read_head()
        return int(head.split(b" ", 2)[1])

    def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self._buf:
            self._fill()
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        return head

    # -- WebSocket

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, **fields: Any) -> None:
        self.send(client_frame(OP_TEXT, json.dumps(fields).encode()))

    def join(self, room: str, name: str) -> dict[str, Any]:
        self.send_json(type="join", room=room, name=name)
        return self.expect("welcome")

    def recv_frame(self, timeout: float = TIMEOUT_S) -> tuple[int, bytes]:
        """The next server frame as (opcode, payload); raises Closed on EOF or reset."""
        self.sock.settimeout(timeout)
        first, second = self._take(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._take(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, self._take(size)

    def recv_json(self, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """The next text frame as JSON, skipping pings and pongs."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == OP_TEXT:
                event = json.loads(payload)
                assert isinstance(event, dict)
                return event
            if opcode == OP_CLOSE:
                raise Closed(f"close frame {payload!r}")

    def expect(self, type_: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        event = self.recv_json(timeout)
        assert event["type"] == type_, f"expected {type_}, got {event}"
        return event

    def recv_close(self, timeout: float = TIMEOUT_S) -> int:
        """Skip to the server's close frame and return its code."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0])

    def wait_eof(self, timeout: float = TIMEOUT_S) -> float:
        """Read and discard until the server ends the connection; returns the seconds it took."""
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return time.monotonic() - start

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError as exc:
            raise Closed("reset by the server") from exc
        if not chunk:
            raise Closed("EOF from the server")
        self._buf += chunk

    def _take(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data


def ping(payload: bytes = b"") -> bytes:
    return client_frame(OP_PING, payload)


def http_exchange(port: int, data: bytes, timeout: float = TIMEOUT_S) -> bytes:
    """Send raw bytes to the port, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def health(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=10) as resp:
        status = json.load(resp)
    assert isinstance(status, dict)
    return status


def rss_mib(server: ServerProcess) -> float:
    """The server process's resident set size (VmRSS) in MiB."""
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a thread of its own: other tests (Playwright's sync API, pytest-twisted)
    may leave an event loop running in the main thread, where asyncio.run refuses to start."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
