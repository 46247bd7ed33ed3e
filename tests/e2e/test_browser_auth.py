"""The browser client signed in, in headless Chromium against the real `twistd -n wschat`: a
token from the application's endpoint (docs/examples/token_backend.py, run as it is) or the URL
fragment, refreshed before it expires, the signed name shown, guests beside signed users."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..jwtkit import claims, hs256, write_secret
from .browser import EXPECT_TIMEOUT_MS, REPO_ROOT, PageWatch, artifacts_dir, import_playwright
from .client import Chat
from .conftest import ServerFactory
from .process import ServerProcess, free_port

sync_api = import_playwright()
expect = sync_api.expect
expect.set_options(timeout=EXPECT_TIMEOUT_MS)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TOKEN_BACKEND = REPO_ROOT / "docs" / "examples" / "token_backend.py"
USERS = {
    "alice-session": {"id": "u-alice", "name": "Alice"},
    "bob-session": {"id": "u-bob", "name": "Bob", "rooms": ["lobby"]},
}
OpenPage = Callable[..., Any]


@pytest.fixture
def open_page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[OpenPage]:
    """`open_page(url, cookie=None)`: a page in its own context (with the application's session
    cookie, if given) that records the frames it sends; failing on console errors, uncaught
    exceptions and dialogs, screenshotted at the end."""
    opened: list[tuple[Any, Any, PageWatch]] = []

    def open_(url: str, cookie: str | None = None, label: str = "page") -> Any:
        context = chromium.new_context(viewport={"width": 1000, "height": 680})
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        if cookie is not None:
            context.add_cookies(
                [{"name": "session", "value": cookie, "domain": "127.0.0.1", "path": "/"}]
            )
        page = context.new_page()
        watch = PageWatch(label)
        page.on("console", watch.on_console)
        page.on("pageerror", watch.on_page_error)
        page.on("dialog", watch.on_dialog)
        page.sent_frames = []
        page.sockets = []

        def on_socket(ws: Any) -> None:
            page.sockets.append(ws)
            ws.on("framesent", lambda payload: page.sent_frames.append(payload))

        page.on("websocket", on_socket)
        opened.append((context, page, watch))
        page.goto(url)
        return page

    yield open_
    problems: list[str] = []
    for i, (context, page, watch) in enumerate(opened):
        try:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{request.node.name}-{i}-{watch.name}")
            page.screenshot(path=artifacts_dir() / f"{stem}.png")
        finally:
            context.close()
        problems += watch.problems()
    assert not problems, "\n".join(problems)


class TokenBackend:
    """docs/examples/token_backend.py on a port of its own: the application's endpoint."""

    def __init__(self, workdir: Path, chat_origin: str, lifetime_s: int) -> None:
        self.port = free_port()
        users = workdir / "users.json"
        users.write_text(json.dumps(USERS))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(TOKEN_BACKEND),
                "--secret-file",
                str(write_secret(workdir)),
                "--port",
                str(self.port),
                "--chat-origin",
                chat_origin,
                "--users",
                str(users),
                "--lifetime",
                str(lifetime_s),
            ]
        )
        self.url = f"http://127.0.0.1:{self.port}/chat-token"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the token backend did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def signed_server(tmp_path: Path) -> Iterator[Callable[..., tuple[ServerProcess, TokenBackend]]]:
    """`signed_server(*args, lifetime_s=600)`: wschat with the test secret and a
    --client-token-url served by the example backend, which allows the chat's origin."""
    started: list[tuple[ServerProcess, TokenBackend]] = []

    def start(*args: str, lifetime_s: int = 600) -> tuple[ServerProcess, TokenBackend]:
        server = ServerProcess(tmp_path / f"server{len(started)}")
        backend = TokenBackend(tmp_path, server.http_url, lifetime_s)
        started.append((server, backend))
        server.extra_args += [
            "--jwt-secret-file",
            str(write_secret(tmp_path)),
            "--client-token-url",
            backend.url,
            *args,
        ]
        return server.start(), backend

    yield start
    for server, backend in started:
        backend.stop()
        if server.running:
            server.kill()


def signed_chat(server: ServerProcess, sub: str, name: str) -> Chat:
    chat = Chat(server.ws_url)
    chat.send(type="auth", token=hs256(claims(sub, exp=int(time.time()) + 600, name=name)))
    chat.expect("authed")
    return chat


def frames_of(page: Any, kind: str) -> list[dict[str, Any]]:
    return [f for raw in page.sent_frames if (f := json.loads(raw)).get("type") == kind]


def test_the_page_signs_in_with_the_applications_token(
    signed_server: Any, open_page: OpenPage
) -> None:
    """With --client-token-url the page gets a token with the application's cookie, signs in
    (no name to choose), shows the signed name, and its messages carry the user id; others'
    signed messages are marked with theirs."""
    server, _ = signed_server()
    bob = signed_chat(server, "u-bob", "Bob")
    bob.join("lobby")
    page = open_page(f"{server.http_url}/#/lobby", cookie="alice-session", label="alice")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator("#name-dialog")).to_be_hidden()
    expect(page.locator("#me-name")).to_have_text("Alice")
    expect(page.locator("#me")).to_have_attribute("data-signed", "true")
    expect(page.locator("#me")).to_be_disabled()
    [auth] = frames_of(page, "auth")
    assert auth["token"].count(".") == 2
    assert "token" not in page.url
    assert all("name" not in j for j in frames_of(page, "join"))
    # Bob's next frames in order: Alice's join (batched), her message, then his own ack.
    bob.expect_presence(joined=["Alice"])
    page.fill("#input", "hello, signed")
    page.press("#input", "Enter")
    got = bob.recv()
    while got["type"] != "message":
        got = bob.recv()
    assert (got["name"], got["user"], got["text"]) == ("Alice", "u-alice", "hello, signed")
    bob.say("lobby", "hi Alice")
    author = page.locator("#messages li[data-id]", has_text="hi Alice").locator(".author")
    expect(author).to_have_attribute("data-user", "u-bob")
    expect(author).to_have_class(re.compile(r"\bsigned\b"))
    expect(page.locator("#messages li.own", has_text="hello, signed")).to_have_count(1)


def test_the_token_is_refreshed_before_it_expires(signed_server: Any, open_page: OpenPage) -> None:
    """Tokens that live 6 s: the page fetches a new one and sends `refresh` on the same socket
    before exp, so it is still online, on its first connection, after several lifetimes."""
    server, _ = signed_server("--jwt-grace", "1", lifetime_s=6)
    page = open_page(f"{server.http_url}/#/lobby", cookie="alice-session")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    page.wait_for_timeout(14_000)
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    assert len(page.sockets) == 1
    refreshes = frames_of(page, "refresh")
    assert len(refreshes) >= 2
    assert len({r["token"] for r in refreshes}) == len(refreshes)
    page.fill("#input", "still signed in")
    page.press("#input", "Enter")
    expect(page.locator("#messages li[data-id]", has_text="still signed in")).to_have_count(1)


def test_a_token_in_the_fragment_signs_in_and_leaves_the_url(
    wschat_server: ServerFactory, open_page: OpenPage, tmp_path: Path
) -> None:
    """`#token=…` signs the page in and is taken out of the URL; without a way to refresh it,
    the page says the session expired once the server closed it (4440)."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)), "--jwt-grace", "1")
    # Long enough for a loaded machine to start the page and sign in before it expires.
    token = hs256(claims("u-carol", exp=int(time.time()) + 10, name="Carol"))
    page = open_page(f"{server.http_url}/?room=lobby#token={token}")
    expect(page.locator("#me-name")).to_have_text("Carol")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    assert "token" not in page.url
    expect(page.locator("#status")).to_have_text(re.compile("session expired"), timeout=25_000)
    expect(page.locator("#status")).to_have_attribute("data-state", "offline")


def test_required_without_a_token_asks_to_sign_in(
    wschat_server: ServerFactory, open_page: OpenPage, tmp_path: Path
) -> None:
    """A server that requires signing in, and a page with no way to get a token: no name
    dialog, no connection, a status that says to sign in."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)))
    page = open_page(f"{server.http_url}/#/lobby")
    expect(page.locator("#status")).to_have_text(re.compile("sign in"))
    expect(page.locator("#name-dialog")).to_be_hidden()
    page.wait_for_timeout(500)
    assert page.sockets == []


def test_guests_beside_signed_users(
    wschat_server: ServerFactory, open_page: OpenPage, tmp_path: Path
) -> None:
    """--auth optional: a page without a token chooses a name and is shown as a guest (the
    server marks the name); a signed user's messages are marked as signed."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)), "--auth", "optional")
    alice = signed_chat(server, "u-alice", "Alice")
    alice.join("lobby")
    page = open_page(f"{server.http_url}/#/lobby", label="guest")
    expect(page.locator("#name-dialog")).to_be_visible()
    page.fill("#name-input", "Alice")
    page.press("#name-input", "Enter")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")
    expect(page.locator("#me-name")).to_have_text("Alice (guest)")
    expect(page.locator("#me")).to_have_attribute("data-signed", "false")
    page.fill("#input", "a guest speaks")
    page.press("#input", "Enter")
    mine = page.locator("#messages li[data-id]", has_text="a guest speaks")
    expect(mine).to_have_class(re.compile(r"\bown\b"))
    expect(mine.locator(".author")).to_have_class(re.compile(r"\bguest\b"))
    alice.send(type="say", room="lobby", text="the real Alice")
    real = page.locator("#messages li[data-id]", has_text="the real Alice").locator(".author")
    expect(real).to_have_attribute("data-user", "u-alice")
    expect(page.locator("#users li[data-name='Alice (guest)'] .you")).to_have_count(1)
