"""Fixtures that run the real server; every test here talks to it over real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import import_playwright, require_chromium
from .process import ServerProcess
from .redis import RedisServer

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    """One Playwright driver for the whole session: its sync API cannot be started again in a
    thread where it runs (test_browser keeps one browser open for the session)."""
    require_chromium()
    with import_playwright().sync_playwright() as driver:
        yield driver


@pytest.fixture
def wschat_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """`wschat_server(*args, tls=False, healthy=True)` starts a `twistd -n wschat` and stops
    it afterwards (healthy=False: do not wait for /healthz to say 200)."""
    started: list[ServerProcess] = []

    def start(*extra_args: str, tls: bool = False, healthy: bool = True) -> ServerProcess:
        server = ServerProcess(tmp_path / f"server{len(started)}", *extra_args, tls=tls)
        started.append(server)
        return server.start(healthy)

    yield start
    for server in started:
        if server.running:
            server.kill()


@pytest.fixture
def server(wschat_server: ServerFactory) -> ServerProcess:
    """A server with default options (quick pings so dead peers are found within the test)."""
    return wschat_server()


@pytest.fixture(scope="session")
def chromium(playwright: Any) -> Iterator[Any]:
    """One headless Debian Chromium for the whole session (contexts isolate the tests); here
    so that every browser test module shares it (Playwright's sync API runs one at a time)."""
    from .browser import CHROMIUM_ARGS, CHROMIUM_PATH

    browser = playwright.chromium.launch(
        executable_path=CHROMIUM_PATH, headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server without persistence (a restart loses everything)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with appendonly + fsync always: a restart keeps what it acknowledged."""
    server = RedisServer(tmp_path / "redis-aof", persistent=True).start()
    yield server
    server.kill()
