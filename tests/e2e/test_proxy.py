"""wschat behind Debian's nginx, configured with docs/deployment.md's server block.

The block is read from the markdown file and only its listen port, certificate paths,
server_name and upstream port are replaced, so a regression in the docs fails these tests.
TLS ends at nginx; wschat runs as the docs say (`--trust-proxies 1`) under the real twistd.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from wschat.certs import write_dev_cert

from ..missing import missing
from .browser import (
    CHROMIUM_ARGS,
    CHROMIUM_PATH,
    EXPECT_TIMEOUT_MS,
    REPO_ROOT,
    PageWatch,
    artifacts_dir,
    import_playwright,
)
from .client import Chat
from .conftest import ServerFactory
from .process import ServerProcess, free_port

pytestmark = pytest.mark.e2e

NGINX = "/usr/sbin/nginx"
DEPLOYMENT_MD = REPO_ROOT / "docs" / "deployment.md"
PROXY_SECTION = "## Behind a reverse proxy"
# The upstream the docs' block proxies to, and the --listen the docs give wschat for it.
DOCS_UPSTREAM = "http://127.0.0.1:8080"
DOCS_LISTEN = "tcp:8080:interface=127.0.0.1"
NGINX_START_TIMEOUT_S = 10.0
NGINX_STOP_TIMEOUT_S = 10.0
LOG_TIMEOUT_S = 5.0
# Source addresses for the plain clients: all of 127.0.0.0/8 is loopback on Linux, so each
# binds as a different client and nginx forwards that address in X-Forwarded-For.
CLIENT_A = "127.0.0.2"
CLIENT_B = "127.0.0.3"
PER_IP_CAP = 2


def require_nginx() -> None:
    """Skip without nginx; in CI (CI=true) that is a failure instead."""
    if not (os.path.isfile(NGINX) and os.access(NGINX, os.X_OK)):
        missing(f"proxy tests need Debian's nginx at {NGINX} (apt-get install nginx-light)")


def docs_proxy_section() -> str:
    text = DEPLOYMENT_MD.read_text("utf-8")
    assert PROXY_SECTION in text, f"{DEPLOYMENT_MD} has no '{PROXY_SECTION}' section"
    return text.split(PROXY_SECTION, 1)[1].split("\n## ", 1)[0]


def docs_server_block() -> str:
    """The one ```nginx block of the reverse-proxy section, verbatim."""
    blocks = re.findall(r"^```nginx\n(.*?)^```", docs_proxy_section(), re.M | re.S)
    assert len(blocks) == 1, f"expected one nginx block in the proxy section, found {len(blocks)}"
    return str(blocks[0])


def docs_wschat_args() -> list[str]:
    """The options the proxy section says to run wschat with, less its --listen."""
    found = re.search(r"Run wschat with `([^`]+)`", docs_proxy_section())
    assert found, "the proxy section no longer says what to run wschat with"
    args = shlex.split(found.group(1))
    assert args[:2] == ["--listen", DOCS_LISTEN], args
    return args[2:]


def substitute(block: str, pattern: str, replacement: str) -> str:
    """Replace the one line of the docs' block that `pattern` matches."""
    out, count = re.subn(pattern, lambda m: m.group(1) + replacement, block, flags=re.M)
    assert count == 1, f"the docs' nginx block should have one match of {pattern!r}:\n{block}"
    return out


def server_block(port: int, cert: Path, key: Path, upstream_port: int) -> str:
    block = docs_server_block()
    block = substitute(block, r"^(\s*listen\s+)443(?=\s)", f"127.0.0.1:{port}")
    block = substitute(block, r"^(\s*server_name\s+)[^;]+", "localhost")
    block = substitute(block, r"^(\s*ssl_certificate\s+)[^;]+", str(cert))
    block = substitute(block, r"^(\s*ssl_certificate_key\s+)[^;]+", str(key))
    upstream = rf"^(\s*proxy_pass\s+){re.escape(DOCS_UPSTREAM)}(?=;)"
    return substitute(block, upstream, f"http://127.0.0.1:{upstream_port}")


class NginxProcess:
    """nginx in the foreground with every file it writes (pid, logs, temp) under `prefix`."""

    def __init__(self, prefix: Path, server: str) -> None:
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.error_log = prefix / "error.log"
        self.output = prefix / "output.log"
        temp = "\n".join(
            f"    {kind}_temp_path {prefix / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # As root the workers would run as nobody, who cannot enter pytest's private tmp dir.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}worker_processes 1;\n"
            f"pid {prefix / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            '    log_format test \'$remote_addr $ssl_protocol "$request" $status '
            'xff="$http_x_forwarded_for"\';\n'
            f"    access_log {prefix / 'access.log'} test;\n"
            f"{temp}\n"
            f"{server}\n"
            "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        files = ["-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.error_log)]
        # In the foreground, nginx stays our child and is stopped through its pid.
        return [NGINX, *files, "-g", "daemon off;"]

    def start(self, port: int) -> NginxProcess:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + NGINX_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen in {NGINX_START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM is nginx's fast shutdown: open WebSockets are not waited for."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=NGINX_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=NGINX_STOP_TIMEOUT_S)

    def log(self) -> str:
        return "\n".join(
            p.read_text("utf-8", errors="replace")
            for p in (self.output, self.error_log)
            if p.exists()
        )


@dataclass
class Proxied:
    """wschat behind nginx: where clients connect, and the certificate nginx presents."""

    server: ServerProcess
    nginx: NginxProcess
    port: int
    cert: Path

    @property
    def origin(self) -> str:
        """What a browser on the page sends as Origin: the port is part of it."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    def tls(self) -> ssl.SSLContext:
        """Verifies nginx's certificate against the one the test generated (127.0.0.1 in it)."""
        return ssl.create_default_context(cafile=str(self.cert))

    def chat(self, source: str = CLIENT_A, **kwargs: Any) -> Chat:
        """A plain client from address `source`, sending Origin like a browser on the page."""
        kwargs.setdefault("origin", self.origin)
        return Chat(self.wss_url, ssl=self.tls(), source_address=(source, 0), **kwargs)


ProxyFactory = Callable[..., Proxied]


@pytest.fixture
def behind_nginx(tmp_path: Path, wschat_server: ServerFactory) -> Iterator[ProxyFactory]:
    """`behind_nginx(*wschat_args)`: wschat as the docs say, behind nginx on a free port."""
    require_nginx()
    started: list[NginxProcess] = []

    def start(*extra_args: str) -> Proxied:
        server = wschat_server(*docs_wschat_args(), *extra_args)
        cert, key = write_dev_cert(tmp_path / "nginx-certs")
        port = free_port()
        nginx = NginxProcess(
            tmp_path / f"nginx{len(started)}", server_block(port, cert, key, server.port)
        )
        started.append(nginx)
        nginx.start(port)
        return Proxied(server, nginx, port, cert)

    yield start
    for nginx in started:
        nginx.stop()


def wait_for_log(server: ServerProcess, pattern: str) -> re.Match[str]:
    """The first match of `pattern` in the server's log, waiting up to LOG_TIMEOUT_S for it."""
    deadline = time.monotonic() + LOG_TIMEOUT_S
    while not (found := re.search(pattern, server.log(), re.M)):
        assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{server.log()}"
        time.sleep(0.05)
    return found


@pytest.mark.browser
def test_browser_chats_through_nginx(behind_nginx: ProxyFactory, playwright: Any) -> None:
    """The page loads from nginx over https, its wss:// passes the Origin check, and it chats."""
    expect = import_playwright().expect
    proxied = behind_nginx()
    # No Origin (not a browser), so only the page's own socket depends on the Origin check.
    bot = proxied.chat(origin=None)
    bot.join("room", "bot")
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM_PATH,
        headless=True,
        # localhost without trying ::1 first: nginx listens on 127.0.0.1 only.
        args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP localhost 127.0.0.1"],
    )
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    watch = PageWatch("alice")
    page.on("console", watch.on_console)
    page.on("pageerror", watch.on_page_error)
    page.on("dialog", watch.on_dialog)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    try:
        page.goto(f"https://localhost:{proxied.port}/#/room")
        expect(page.locator("#name-dialog")).to_be_visible(timeout=EXPECT_TIMEOUT_MS)
        page.fill("#name-input", "alice")
        page.press("#name-input", "Enter")
        expect(page.locator("#status")).to_have_attribute(
            "data-state", "online", timeout=EXPECT_TIMEOUT_MS
        )
        bot.expect_presence(joined=["alice"])

        page.fill("#input", "hello from the page")
        page.press("#input", "Enter")
        assert bot.expect("message")["text"] == "hello from the page"
        bot.say("room", "hello from python")
        shown = page.locator("#messages li[data-id] .text", has_text="hello from python")
        expect(shown).to_have_count(1, timeout=EXPECT_TIMEOUT_MS)
    finally:
        page.screenshot(path=artifacts_dir() / "test_browser_chats_through_nginx.png")
        browser.close()
        # Shown by pytest if the test failed: why the server turned the page away.
        print("\n".join(line for line in proxied.server.log().splitlines() if "refused" in line))
    bot.close()
    assert sockets == [f"wss://localhost:{proxied.port}/ws"]
    assert not watch.problems(), "\n".join(watch.problems())
    assert "not allowed" not in proxied.server.log()


def test_plain_client_chats_through_nginx(behind_nginx: ProxyFactory) -> None:
    """Two wss:// clients through nginx (Origin with the port, as browsers send it) chat."""
    proxied = behind_nginx()
    alice, bob = proxied.chat(CLIENT_A), proxied.chat(CLIENT_B)
    assert alice.join("lobby", "alice")["users"] == ["alice"]
    bob.join("lobby", "bob")
    alice.expect_presence(joined=["bob"])
    ack = alice.say("lobby", "through nginx", ref="p1")
    assert alice.expect("message")["id"] == ack["id"]
    assert bob.expect("message")["text"] == "through nginx"
    alice.close()
    bob.close()


def test_foreign_origin_is_still_refused_through_nginx(behind_nginx: ProxyFactory) -> None:
    """Passing the browser's Host through does not open the Origin check to other sites."""
    proxied = behind_nginx()
    with pytest.raises(InvalidStatus) as refused:
        proxied.chat(origin="https://evil.example")
    assert refused.value.response.status_code == 403
    # The Host wschat compared with is the one the client sent, port included.
    host = re.escape(f"127.0.0.1:{proxied.port}")
    wait_for_log(
        proxied.server,
        rf"origin 'https://evil\.example' not allowed \(compared with host '{host}'\)",
    )


def test_forwarded_address_is_logged(behind_nginx: ProxyFactory) -> None:
    """The close line names the client's address as nginx saw it, not nginx's, nor a forged one."""
    proxied = behind_nginx()
    # A client's own X-Forwarded-For comes first in nginx's; one trusted hop takes the last.
    chat = proxied.chat(CLIENT_A, additional_headers={"X-Forwarded-For": "203.0.113.9"})
    chat.join("lobby", "alice")
    chat.close()
    found = wait_for_log(proxied.server, r"closed (\S+) after [\d.]+s: code=1000")
    assert found.group(1) == CLIENT_A
    assert "203.0.113.9" not in proxied.server.log()


def test_per_address_cap_counts_forwarded_addresses(behind_nginx: ProxyFactory) -> None:
    """--max-connections-per-ip counts each client's forwarded address, not nginx's."""
    proxied = behind_nginx("--max-connections-per-ip", str(PER_IP_CAP))
    held = [proxied.chat(CLIENT_A) for _ in range(PER_IP_CAP)]
    with pytest.raises(InvalidStatus) as refused:
        proxied.chat(CLIENT_A)
    assert refused.value.response.status_code == 429
    wait_for_log(proxied.server, rf"refused {re.escape(CLIENT_A)}: too many connections")
    other = proxied.chat(CLIENT_B)
    assert other.join("lobby", "bob")["users"] == ["bob"]
    for chat in [*held, other]:
        chat.close()
