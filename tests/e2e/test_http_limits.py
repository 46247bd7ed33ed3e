"""Plain HTTP against the real server as an attacker would use it: request bodies, bodies
trickled, connections held, a WebSocket URL fetched as a page, odd paths, foreign hosts."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .abuse import http_exchange, wait_for
from .api import KEY, api_server
from .client import Chat
from .conftest import ServerFactory
from .process import ServerProcess
from .rawws import request_head

pytestmark = pytest.mark.e2e

# How long a test waits for what must happen before it gives up: a guard against hangs, no
# claim about speed.
HANG_GUARD_S = 30.0
# What an answer "at once" may take: far less than any of the server's timeouts.
AT_ONCE_S = 5.0
TEN_GIB = 10 * 1024**3


def answer_to_head(
    port: int, head: bytes, *, then_send: bytes = b""
) -> tuple[bytes, socket.socket]:
    """Send a request head (and `then_send`), read what the server answers before any more
    is sent, and return it with the socket, still open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=AT_ONCE_S)
    sock.sendall(head + then_send)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer, sock


def deleted_files_open(server: ServerProcess) -> list[str]:
    """The unlinked files the server holds open: where twisted.web spools a request body
    (tempfile.TemporaryFile)."""
    assert server.proc is not None
    fds = Path(f"/proc/{server.proc.pid}/fd")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return [t for t in targets if t.endswith("(deleted)")]


def test_the_site_refuses_a_body_from_its_headers(server: ServerProcess) -> None:
    """POST / announcing 10 GiB, or a chunked body, is answered 413 before a byte of body is
    sent; what is sent afterwards is dropped, never written to a temporary file."""
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {TEN_GIB}\r\n\r\n".encode()
    answer, sock = answer_to_head(server.port, head)
    with sock:
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        try:
            for _ in range(16):
                sock.sendall(b"x" * 65536)
        except OSError:
            pass  # the server may have closed already
        assert deleted_files_open(server) == []
    chunked = b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer, sock = answer_to_head(server.port, chunked)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert deleted_files_open(server) == []


def test_the_api_refuses_a_body_over_64_kib_as_soon_as_it_is_known(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """The API answers 413 JSON from a Content-Length over 64 KiB (before credentials are
    looked at), and to a chunked body once it passes 64 KiB; a chunked body under the cap is
    served."""
    _, api = api_server(wschat_server, tmp_path)
    port = int(api.rsplit(":", 1)[1])
    head = f"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {TEN_GIB}\r\n\r\n".encode()
    answer, sock = answer_to_head(port, head)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 ") and b"application/json" in answer, answer

    chunked = (
        f"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    # Five 16 KiB chunks, never the last one: only the cap can end this request.
    answer, sock = answer_to_head(port, chunked, then_send=chunk * 5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer

    body = b'{"room": "lobby", "text": "chunked"}'
    small = chunked + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    assert http_exchange(port, small.replace(b"HTTP/1.1", b"HTTP/1.0")).startswith(b"HTTP/1.0 201 ")


def test_a_trickled_body_is_cut_by_the_request_deadline(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """A body sent a byte at a time, each byte within the idle timeout, is cut at
    --request-timeout, counted from the request's first byte."""
    server, api = api_server(wschat_server, tmp_path, "--request-timeout", "2")
    port = int(api.rsplit(":", 1)[1])
    head = (
        f"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=AT_ONCE_S) as sock:
        sock.sendall(head)
        sock.settimeout(0.3)
        cut = False
        deadline = time.monotonic() + HANG_GUARD_S
        while not cut and time.monotonic() < deadline:
            try:
                sock.sendall(b"x")
                cut = sock.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                cut = True
    assert cut, "the trickled body was never cut"
    wait_for(lambda: "no complete request in 2.0s" in server.log(), HANG_GUARD_S, "the log line")


def test_plain_http_connections_are_capped_per_address(wschat_server: ServerFactory) -> None:
    """With --max-connections-per-ip 3 an address holding 3 WebSockets may still hold 3 idle
    HTTP connections, and gets 429 on a 4th at once; a closed one frees its slot."""
    server = wschat_server("--max-connections-per-ip", "3")
    chats = [Chat(server.ws_url) for _ in range(3)]
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    answer, fourth = answer_to_head(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    fourth.close()
    assert answer.startswith(b"HTTP/1.1 429 "), answer
    assert "too many HTTP connections from 127.0.0.1" in server.log()
    held.pop().close()

    def healthz_served() -> bool:
        try:
            with urllib.request.urlopen(server.http_url + "/healthz", timeout=5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_for(healthz_served, HANG_GUARD_S, "a freed slot")
    for sock in held:
        sock.close()
    for chat in chats:
        chat.close()


def test_get_ws_without_an_upgrade_is_426(server: ServerProcess) -> None:
    """GET /ws as a page is 426 with `Upgrade: websocket` and a short text, not Autobahn's
    status page naming its version."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.http_url + "/ws", timeout=5)
    assert refused.value.code == 426
    assert refused.value.headers["upgrade"] == "websocket"
    body = refused.value.read()
    assert b"WebSocket" in body and b"utobahn" not in body and len(body) < 200


@pytest.mark.parametrize("path", ["/index.html%00", "/%00", "/%ff", "/ws%00"])
def test_a_path_no_file_can_have_is_404_without_a_traceback(
    server: ServerProcess, path: str
) -> None:
    """A NUL byte or bytes that are not UTF-8 in the path are 404, logged without a traceback."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.http_url + path, timeout=5)
    assert refused.value.code == 404
    assert "Traceback" not in server.log()


def test_allowed_host_answers_other_hosts_421(wschat_server: ServerFactory) -> None:
    """With --allowed-host, a request or a WebSocket upgrade naming another Host (a DNS
    rebinding page) is 421; the listed hosts, with or without their port, are served."""
    server = wschat_server("--allowed-host", "Chat.Example", "--allowed-host", "127.0.0.1")
    for host, status in [
        ("evil.example", b"421"),
        (f"evil.example:{server.port}", b"421"),
        ("chat.example.evil", b"421"),
        ("chat.example", b"200"),
        ("chat.example:8443", b"200"),
        (f"127.0.0.1:{server.port}", b"200"),
    ]:
        request = f"GET /healthz HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
        answer = http_exchange(server.port, request)
        assert answer.split(b" ", 2)[1] == status, (host, answer[:100])
    assert http_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 421 ")
    listed = f"Host: 127.0.0.1:{server.port}".encode()
    upgrade = request_head(server.port)
    twice = upgrade.replace(listed, listed + b"\r\nHost: evil.example")
    for head in (upgrade.replace(listed, b"Host: evil.example"), twice):
        assert http_exchange(server.port, head).startswith(b"HTTP/1.1 421"), head
    assert Chat(server.ws_url).join("lobby", "ann")["name"] == "ann"
    assert "host [b'evil.example'] not allowed" in server.log()
