"""Tools for the hostile-input and fault tests: raw frames, HTTP probes, process metrics and
waiting helpers. The raw-socket WebSocket client they drive is RawWs in tests/e2e/rawws.py."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from wschat.testing import OP_PING, client_frame

from .process import ServerProcess
from .rawws import TIMEOUT_S

T = TypeVar("T")


def ping(payload: bytes = b"") -> bytes:
    """A masked client ping frame."""
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
