"""A real redis-server of the test's own, on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..missing import missing
from .client import Chat
from .process import ServerProcess, free_port

START_TIMEOUT_S = 10.0


def require_redis() -> str:
    path = shutil.which("redis-server")
    if path is None:
        missing("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    """One redis-server; its port and directory stay the same across kill() and start(), so
    that with `persistent` it comes back with its data (appendonly, fsync always)."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        self.binary = require_redis()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
        ]
        if self.persistent:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    def start(self) -> RedisServer:
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if self.cli("PING") == "PONG":
                    return self
            except (OSError, RuntimeError):
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def cli(self, *args: str) -> str:
        """One command over a plain socket (RESP), its reply as text."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"".join(parts))
            reply = b""
            while not _complete(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        kind, head, rest = reply[:1], *reply[1:].split(b"\r\n", 1)
        if kind == b"-":
            raise RuntimeError(head.decode())
        if kind == b"$":
            return "" if int(head) < 0 else rest[: int(head)].decode()
        return head.decode()


def _complete(reply: bytes) -> bool:
    """Whether `reply` holds one whole simple, integer, error or bulk-string reply."""
    if b"\r\n" not in reply:
        return False
    head, _, rest = reply.partition(b"\r\n")
    if head[:1] == b"$" and int(head[1:]) >= 0:
        return len(rest) >= int(head[1:]) + 2
    return True


NodeFactory = Callable[..., ServerProcess]


def nodes_on(wschat_server: Callable[..., ServerProcess], redis: RedisServer) -> NodeFactory:
    """`node(name, *args)` starts a `twistd -n wschat` node on this Redis."""

    def node(name: str, *extra: str, healthy: bool = True) -> ServerProcess:
        return wschat_server("--redis", redis.url, "--node-name", name, *extra, healthy=healthy)

    return node


def health(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def join_when_available(chat: Chat, room: str, name: str, **extra: Any) -> dict[str, Any]:
    """Join as a client does after Redis restarted: again while it answers `unavailable`
    (a node restoring names waits redis_roster.RESTORE_S before it gives out new ones)."""
    deadline = time.monotonic() + 20
    while True:
        chat.send(type="join", room=room, name=name, **extra)
        event = chat.recv()
        while event["type"] in ("presence", "resync"):
            event = chat.recv()
        if event["type"] == "welcome":
            return event
        assert event.get("code") == "unavailable", event
        assert time.monotonic() < deadline, "still unavailable"
        time.sleep(0.2)
