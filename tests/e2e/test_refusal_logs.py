"""The log of the real server under refused attempts in a loop: a line for the first of each
kind from an address, not a line (or three) for each try."""

from __future__ import annotations

import socket

import pytest

from .abuse import http_exchange
from .client import Chat
from .conftest import ServerFactory
from .rawws import TIMEOUT_S, HandshakeRefused, RawWs

pytestmark = pytest.mark.e2e

TRIES = 300
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def refused_status(port: int, headers: dict[str, str]) -> int:
    try:
        RawWs(port, headers=headers).close()
    except HandshakeRefused as exc:
        return exc.status
    return 101


def answer_head(port: int, request: bytes) -> bytes:
    """The head of the server's answer; the connection is closed without waiting for the
    server's close (a refused one lingers a while)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        return answer


def test_refused_attempts_in_a_loop_make_a_line_per_kind(wschat_server: ServerFactory) -> None:
    """300 tries of each refusal from one address (foreign Origin 403, other Host 421, GET /ws
    without an upgrade 426, over the WebSocket and the HTTP caps 429) add one line per kind
    (the first, in its usual format) and no access-log line, where they added over 2,000."""
    server = wschat_server("--allowed-host", "127.0.0.1", "--max-connections-per-ip", "2")
    before = len(server.log().splitlines())
    for _ in range(TRIES):
        assert refused_status(server.port, {"Origin": "http://evil.example"}) == 403
    for _ in range(TRIES):
        answer = http_exchange(server.port, b"GET / HTTP/1.0\r\nHost: evil.example\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 421 ")
    for _ in range(TRIES):
        answer = http_exchange(server.port, b"GET /ws HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 426 ")
    members = [Chat(server.ws_url) for _ in range(2)]
    for _ in range(TRIES):
        assert refused_status(server.port, {}) == 429
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    for _ in range(TRIES):
        assert answer_head(server.port, HEALTHZ).startswith(b"HTTP/1.1 429 ")
    for sock in held:
        sock.close()
    members[0].join("lobby", "still-served")
    lines = server.log().splitlines()[before:]
    refused = [line for line in lines if "] refused " in line]
    assert len(refused) == 5, refused
    for kind in (
        "origin 'http://evil.example' not allowed",
        "host [b'evil.example'] not allowed",
        "b'/ws' without an upgrade",
        "too many connections from 127.0.0.1",
        "too many HTTP connections from 127.0.0.1",
    ):
        assert len([line for line in refused if kind in line]) == 1, kind
    assert not [line for line in lines if "autobahn" in line or '" 421 ' in line], lines
    assert len(lines) < 20, lines
