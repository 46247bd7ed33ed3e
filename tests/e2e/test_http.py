"""HTTP on the WebSocket's port: the static client, /healthz, and the Origin check on /ws."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

import wschat
from wschat.server.site import static_dir

from .client import Chat
from .conftest import ServerFactory
from .process import ServerProcess
from .rawws import HandshakeRefused, RawWs

pytestmark = pytest.mark.e2e


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def test_static_index(server: ServerProcess) -> None:
    """GET / serves wschat/static/index.html as HTML, and the files next to it; the Server
    header names wschat without a version (nor Twisted's)."""
    status, headers, body = get(server.http_url + "/")
    assert status == 200
    assert headers["server"] == "wschat"
    assert headers["content-type"].startswith("text/html")
    assert body == (static_dir() / "index.html").read_bytes()
    for path in sorted(Path(static_dir()).iterdir()):
        if path.is_file():
            assert get(f"{server.http_url}/{path.name}")[2] == path.read_bytes(), path.name


def test_healthz(server: ServerProcess) -> None:
    """/healthz is 200 JSON with status, version, draining and counts that follow the state."""
    status, headers, body = get(server.http_url + "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["server"] == "wschat"
    health = json.loads(body)
    assert set(health) == {"status", "version", "draining", "connections", "rooms", "uptime_s"}
    assert (health["status"], health["draining"]) == ("ok", False)
    assert health["version"] == wschat.__version__
    assert (health["connections"], health["rooms"]) == (0, 0)
    assert isinstance(health["uptime_s"], float | int) and health["uptime_s"] >= 0

    alice = Chat(server.ws_url)
    alice.join("a", "alice")
    alice.join("b")
    bob = Chat(server.ws_url)
    bob.join("a", "bob")
    Chat(server.ws_url)  # connected, in no room
    health = json.loads(get(server.http_url + "/healthz")[2])
    assert (health["connections"], health["rooms"]) == (3, 2)
    assert health["uptime_s"] > 0


def refused_status(port: int, origin: str) -> int | None:
    """The HTTP status that refused a handshake with this Origin, or None if it was accepted."""
    try:
        RawWs(port, headers={"Origin": origin}).close()
    except HandshakeRefused as exc:
        return exc.status
    return None


def test_origin_default_same_host(server: ServerProcess) -> None:
    """By default a foreign or null Origin gets 403; same host and no Origin pass."""
    assert refused_status(server.port, "http://evil.example") == 403
    assert refused_status(server.port, f"http://evil.example:{server.port}") == 403
    assert refused_status(server.port, "http://127.0.0.1") == 403
    assert refused_status(server.port, "null") == 403
    assert refused_status(server.port, f"http://127.0.0.1:{server.port}") is None
    assert refused_status(server.port, f"https://127.0.0.1:{server.port}") is None
    browser_like = Chat(server.ws_url, origin=f"http://127.0.0.1:{server.port}")
    assert browser_like.join("lobby", "same-origin")["users"] == ["same-origin"]
    no_origin = Chat(server.ws_url)
    assert no_origin.join("lobby", "no-origin")["users"] == ["no-origin", "same-origin"]
    assert "origin 'http://evil.example' not allowed" in server.log()


def test_allowed_origin_option(wschat_server: ServerFactory) -> None:
    """--allowed-origin (repeatable) admits exactly the listed origins; others get 403."""
    server = wschat_server(
        "--allowed-origin", "https://chat.example", "--allowed-origin", "http://evil.example"
    )
    assert refused_status(server.port, "http://evil.example") is None
    assert refused_status(server.port, "https://chat.example/") is None
    assert refused_status(server.port, "http://chat.example") == 403
    assert refused_status(server.port, "https://other.example") == 403
    chat = Chat(server.ws_url, origin="https://chat.example")
    assert chat.join("lobby", "listed")["name"] == "listed"
    assert Chat(server.ws_url).join("lobby", "no-origin")["name"] == "no-origin"


def test_every_response_has_the_content_security_policy(server: ServerProcess) -> None:
    """The page's CSP comes as a header (on the page and the rest): scripts, styles and
    connections only from wschat itself."""
    for path in ("/", "/app.js", "/healthz", "/config.json"):
        _, headers, _ = get(server.http_url + path)
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self' ws: wss:;" in csp, path
