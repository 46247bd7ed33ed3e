"""A real redis-server of the test's own, on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import shutil
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
