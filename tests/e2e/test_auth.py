"""Signed identities against the real `twistd -n wschat`: keys from a file and from a JWKS
served by the test, the auth modes, shared names, and expiry on the real clock."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ..jwtkit import claims, ec_pair, hs256, rsa_pair, signed, write_public_key, write_secret
from .client import Chat, signed_chat, token
from .conftest import ServerFactory

pytestmark = pytest.mark.e2e

GUEST = " (guest)"


def next_message(chat: Chat) -> dict[str, Any]:
    """The next message, skipping presence batches."""
    while True:
        event = chat.recv()
        if event["type"] != "presence":
            assert event["type"] == "message", event
            return event


def test_required_auth_names_and_marks_the_speaker(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """With a secret the server requires auth: authed gives the name and expiry, messages
    and presence carry the sub, and a join under another name is refused."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)))
    alice, authed = signed_chat(server.ws_url, token(name="Alice"))
    assert authed["name"] == "Alice" and authed["user"] == "u-alice"
    assert 3590 <= authed["expires_in"] <= 3600
    assert alice.join("lobby")["subs"] == {"Alice": "u-alice"}
    bob, _ = signed_chat(server.ws_url, token("u-bob", name="Bob"))
    welcome = bob.join("lobby")
    assert welcome["users"] == ["Alice", "Bob"]
    assert welcome["subs"] == {"Alice": "u-alice", "Bob": "u-bob"}
    presence = alice.expect_presence(joined=["Bob"])
    assert presence["subs"] == {"Bob": "u-bob"}
    bob.say("lobby", "hello")
    assert alice.expect("message")["user"] == "u-bob"
    assert bob.expect("message")["user"] == "u-bob"
    bob.send(type="join", room="dev", name="Alice")
    assert bob.expect("error")["code"] == "name_invalid"


def test_required_auth_closes_anything_else_4401(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """A first frame that is not auth, or a forged token, closes with 4401 and a reason."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)))
    anonymous = Chat(server.ws_url)
    anonymous.send(type="join", room="lobby", name="alice")
    assert anonymous.expect_close()[0] == 4401
    forged = Chat(server.ws_url)
    forged.send(type="auth", token=hs256(claims(), b"not-the-secret-" * 3))
    code, reason = forged.expect_close()
    assert code == 4401 and "signature" in reason


def test_two_tabs_of_one_user_are_one_member(wschat_server: ServerFactory, tmp_path: Path) -> None:
    """Two connections of one sub share the name: one member, both get messages, and the
    name leaves only with the last of them."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)))
    watcher, _ = signed_chat(server.ws_url, token("u-bob", name="Bob"))
    watcher.join("lobby")
    tab1, _ = signed_chat(server.ws_url, token(name="Alice"))
    tab2, _ = signed_chat(server.ws_url, token(name="Alice"))
    tab1.join("lobby")
    assert tab2.join("lobby")["count"] == 2
    watcher.expect_presence(joined=["Alice"])
    watcher.say("lobby", "to both tabs")
    watcher.expect("message")
    assert tab1.expect("message")["text"] == "to both tabs"
    # tab2 shares the name: it gets the room's batches whole, its own name's join included.
    assert next_message(tab2)["text"] == "to both tabs"
    tab1.close()
    watcher.say("lobby", "still one")
    assert watcher.expect("message")["text"] == "still one"
    assert next_message(tab2)["text"] == "still one"
    tab2.close()
    assert watcher.expect_presence(left=["Alice"])["count"] == 1


def test_optional_auth_has_marked_guests(wschat_server: ServerFactory, tmp_path: Path) -> None:
    """--auth optional with an ES256 key: signed users and guests side by side; a guest
    asking for a signed name gets it with the guest mark."""
    pair = ec_pair()
    server = wschat_server(
        "--jwt-public-key-file", str(write_public_key(tmp_path, pair)), "--auth", "optional"
    )
    alice, _ = signed_chat(
        server.ws_url, signed(claims(name="alice", exp=int(time.time()) + 600), pair)
    )
    alice.join("lobby")
    guest = Chat(server.ws_url)
    welcome = guest.join("lobby", "alice")
    assert welcome["name"] == "alice" + GUEST and welcome["guests"] == ["alice" + GUEST]
    presence = alice.expect_presence(joined=["alice" + GUEST])
    assert presence["guests"] == ["alice" + GUEST]
    guest.say("lobby", "hi, I am a guest")
    message = alice.expect("message")
    assert message["guest"] is True and "user" not in message


def test_an_expired_token_closes_4440_after_the_grace(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """On the real clock: a token that expires is closed with 4440 once --jwt-grace ends,
    and a refresh in time keeps another connection open."""
    server = wschat_server("--jwt-secret-file", str(write_secret(tmp_path)), "--jwt-grace", "1")
    short, _ = signed_chat(server.ws_url, token(ttl_s=2))
    kept, _ = signed_chat(server.ws_url, token("u-bob", ttl_s=2))
    kept.send(type="refresh", token=token("u-bob", ttl_s=3600))
    assert kept.expect("authed")["expires_in"] >= 3590
    started = time.monotonic()
    assert short.expect_close(timeout=10)[0] == 4440
    assert 1.0 <= time.monotonic() - started <= 6.0
    assert kept.join("lobby")["name"] == "u-bob"


class JwksServer:
    """The application's key server: serves `entries` as a JWKS, counting requests."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps({"keys": outer.entries}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    """A JWKS server on 127.0.0.1 for the test's keys."""
    server = JwksServer()
    yield server
    server.close()


def test_jwks_keys_and_their_rotation(wschat_server: ServerFactory, jwks: JwksServer) -> None:
    """With --jwks-url the server fetches the keys from the application, and a token with a
    new kid (a rotation) makes it fetch them again; a key never served is refused."""
    jwks.entries = [rsa_pair(0).jwk("k-2026-01")]
    server = wschat_server("--jwks-url", jwks.url)
    now = int(time.time())
    _first, authed = signed_chat(
        server.ws_url, signed(claims(exp=now + 600), rsa_pair(0), kid="k-2026-01")
    )
    assert authed["user"] == "u-alice"
    jwks.entries.append(rsa_pair(1).jwk("k-2026-02"))
    _second, authed = signed_chat(
        server.ws_url, signed(claims("u-bob", exp=now + 600), rsa_pair(1), kid="k-2026-02")
    )
    assert authed["user"] == "u-bob"
    assert jwks.requests == 2
    stranger = Chat(server.ws_url)
    stranger.send(type="auth", token=signed(claims(exp=now + 600), ec_pair(), kid="k-unknown"))
    code, reason = stranger.expect_close()
    assert code == 4401 and "no key" in reason
