"""A real redis-server of the test's own, on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..missing import missing
from .client import Chat
from .process import RedisProcess, ServerProcess


def require_redis() -> str:
    path = shutil.which("redis-server")
    if path is None:
        missing("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer(RedisProcess):
    """The test's own redis-server; with `persistent` it comes back with its data
    (appendonly, fsync always)."""

    def __init__(
        self, workdir: Path, persistent: bool = False, extra_args: Sequence[str] = ()
    ) -> None:
        super().__init__(
            workdir,
            require_redis(),
            appendfsync="always" if persistent else None,
            extra_args=extra_args,
        )
        self.persistent = persistent


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
    (a node restoring names waits wschat.redis.lease.RESTORE_S before it gives out new ones)."""
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


def messages_until(chat: Chat, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next `count` messages, skipping presence; nothing else may come in between."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        event = chat.recv(timeout)
        if event["type"] == "presence":
            continue
        assert event["type"] == "message", event
        got.append(event)
    return got


class Sender(threading.Thread):
    """A client that keeps saying in the lobby, as the browser client does: each say with a
    ref, resent with the same ref after an error with one of `codes`, the next one only once
    the ack is in."""

    def __init__(self, url: str, name: str, codes: Sequence[str] = ("unavailable",)) -> None:
        super().__init__(daemon=True)
        self.codes = tuple(codes)
        self.chat = Chat(url)
        self.chat.join("lobby", name)
        self.name = name
        self.acked: list[int] = []
        self.unavailable = 0
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                self.chat.send(type="say", room="lobby", text=f"{self.name} {i}", ref=f"{i}")
                while True:
                    event = self.chat.recv(timeout=15)
                    if event["type"] == "ack":
                        self.acked.append(int(event["id"]))
                        i += 1
                        break
                    if event["type"] == "error":
                        assert event["code"] in self.codes, event
                        self.unavailable += 1
                        time.sleep(0.05)
                        break
                    assert event["type"] in ("message", "presence"), event
        except BaseException as exc:  # reported by the test
            self.failure = exc
