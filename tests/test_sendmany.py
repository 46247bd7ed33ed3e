"""The C write loop of a reactor turn (wschat/server/_sendmany.c), on real loopback TCP sockets."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from .missing import missing


@pytest.fixture
def sendmany() -> ModuleType:
    try:
        from wschat.server import _sendmany
    except ImportError:
        missing("wschat.server._sendmany is not built (pip install -e . with a C compiler)")
    return _sendmany


class Conn:
    """What flush_many reads and writes on an Outbox."""

    def __init__(self, fd: int, pending: Any = None) -> None:
        self.fd = fd
        self.pending = pending


Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """(server side, non-blocking as Twisted has it; client side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    with server, client:
        yield server, client


def read_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(5)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def nothing_to_read(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    return False


def test_one_frame_goes_out_and_is_taken(sendmany: ModuleType, pair: Pair) -> None:
    """A single pending bytes frame is written to the socket and taken from the outbox."""
    server, client = pair
    conn = Conn(server.fileno(), b"hello")
    assert sendmany.flush_many([conn]) == []
    assert conn.pending is None
    assert read_exactly(client, 5) == b"hello"


def test_several_frames_go_out_in_order(sendmany: ModuleType, pair: Pair) -> None:
    """A list of frames goes out as one stream in list order (empty frames add nothing)."""
    server, client = pair
    frames = [b"one,", b"two,", b"", b"three"]
    conn = Conn(server.fileno(), list(frames))
    assert sendmany.flush_many([conn]) == []
    assert conn.pending is None
    assert read_exactly(client, 13) == b"one,two,three"


def test_many_connections_each_get_their_own(sendmany: ModuleType) -> None:
    """Fifty outboxes in one call each reach their own socket with exactly their frames."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        clients = [socket.create_connection(listener.getsockname()) for _ in range(50)]
        servers = [listener.accept()[0] for _ in clients]
    try:
        for s in servers:
            s.setblocking(False)
        conns = [Conn(s.fileno(), [b"to ", str(i).encode()]) for i, s in enumerate(servers)]
        assert sendmany.flush_many(conns) == []
        # accept() order is connect order on loopback; match by the peer's port to be sure.
        by_port = {s.getpeername()[1]: i for i, s in enumerate(servers)}
        for c in clients:
            i = by_port[c.getsockname()[1]]
            assert read_exactly(c, 3 + len(str(i))) == b"to " + str(i).encode()
    finally:
        for s in servers + clients:
            s.close()


def test_nothing_pending_is_skipped(sendmany: ModuleType, pair: Pair) -> None:
    """An outbox with nothing pending is skipped: nothing is written or handed back."""
    server, client = pair
    assert sendmany.flush_many([Conn(server.fileno(), None)]) == []
    assert nothing_to_read(client)


def test_no_direct_fd_is_left_to_python_untouched(sendmany: ModuleType, pair: Pair) -> None:
    """An outbox without a descriptor is handed back with 0 bytes sent, its frames untouched."""
    _, client = pair
    conn = Conn(-1, [b"a", b"b"])
    assert sendmany.flush_many([conn]) == [(conn, 0)]
    assert conn.pending == [b"a", b"b"]
    assert nothing_to_read(client)


def test_a_connection_listed_twice_is_written_once(sendmany: ModuleType, pair: Pair) -> None:
    """An outbox listed twice in one call is written once."""
    server, client = pair
    conn = Conn(server.fileno(), b"once")
    assert sendmany.flush_many([conn, conn]) == []
    assert read_exactly(client, 4) == b"once"
    assert nothing_to_read(client)


def test_a_full_socket_reports_what_went_out_and_keeps_the_rest(
    sendmany: ModuleType, pair: Pair
) -> None:
    """A socket that fills mid-write: the outbox comes back with the bytes sent, frames kept."""
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 8192  # 2 MiB: more than any loopback buffer takes at once
    conn = Conn(server.fileno(), [data[:1000], data[1000:]])
    [(returned, sent)] = sendmany.flush_many([conn])
    assert returned is conn
    assert 0 < sent < len(data)
    assert conn.pending == [data[:1000], data[1000:]]
    assert read_exactly(client, sent) == data[:sent]
    assert nothing_to_read(client)


def test_a_reset_connection_is_left_to_python_without_sigpipe(
    sendmany: ModuleType, pair: Pair
) -> None:
    """A reset connection is handed back (0 sent, output kept) on every call, without SIGPIPE."""
    server, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    conn = Conn(server.fileno(), b"x" * 100)
    results = [sendmany.flush_many([conn]) for _ in range(3)]
    assert all(r == [(conn, 0)] for r in results)
    assert conn.pending == b"x" * 100


@pytest.mark.parametrize(
    "pending",
    [[b"x"] * 1025, [b"x", "not bytes"], bytearray(b"x"), ("a", "tuple")],
    ids=["over IOV_MAX frames", "a str in the list", "bytearray", "tuple"],
)
def test_what_it_does_not_know_is_left_to_python(
    sendmany: ModuleType, pair: Pair, pending: Any
) -> None:
    """Output it cannot send as is (too many frames, str, bytearray, tuple) comes back untouched."""
    server, client = pair
    conn = Conn(server.fileno(), pending)
    assert sendmany.flush_many([conn]) == [(conn, 0)]
    assert conn.pending is pending
    assert nothing_to_read(client)


def test_it_takes_only_a_list(sendmany: ModuleType) -> None:
    """flush_many refuses anything but a list with TypeError."""
    with pytest.raises(TypeError):
        sendmany.flush_many((Conn(-1, b"x"),))


def test_an_attribute_error_puts_back_what_was_taken(sendmany: ModuleType, pair: Pair) -> None:
    """When reading an outbox raises, output already taken from the others is put back unsent."""
    server, client = pair
    taken = Conn(server.fileno(), b"kept")
    broken = Conn(server.fileno(), b"y")
    del broken.fd
    with pytest.raises(AttributeError):
        sendmany.flush_many([taken, broken])
    assert taken.pending == b"kept"
    assert nothing_to_read(client)


class PutBackFails(Conn):
    """A connection whose pending output cannot be given back after the sends, as when memory
    runs out there."""

    armed = False

    def __setattr__(self, name: str, value: Any) -> None:
        if self.armed and name == "pending" and value is not None:
            raise MemoryError
        super().__setattr__(name, value)


def test_a_half_sent_connection_that_cannot_be_put_back_is_shut_down(
    sendmany: ModuleType, pair: Pair
) -> None:
    """Its first bytes are out: putting all of it back would send them twice. The stream
    ends instead, after exactly the bytes that went out, and the client reconnects."""
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 8192
    conn = PutBackFails(server.fileno(), [data[:1000], data[1000:]])
    conn.armed = True
    with pytest.raises(MemoryError):
        sendmany.flush_many([conn])
    assert conn.pending is None
    client.settimeout(5)
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    assert 0 < len(received) < len(data)
    assert received == data[: len(received)]
