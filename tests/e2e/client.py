"""A small synchronous chat client on the `websockets` library, for end-to-end tests."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ..jwtkit import claims, hs256

RECV_TIMEOUT_S = 10.0


class Chat:
    def __init__(self, url: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_size", None)
        if url.startswith("wss:"):
            context = kwargs.setdefault("ssl", insecure_context())
            # websockets' threading client reads in a thread while the caller writes, and
            # CPython's ssl lets both into one OpenSSL connection at once (CPython issue 143756).
            # When TLS 1.3's session tickets arrive just after the handshake, the upgrade
            # request can be lost: a handshake timeout about once in a hundred connections.
            # TLS 1.2 sends nothing after its handshake.
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        # legacy=True: a plain connection object, not a context manager (websockets >= 15).
        self.ws: ClientConnection = connect(url, open_timeout=10, legacy=True, **kwargs)

    def send(self, **fields: Any) -> None:
        self.ws.send(json.dumps(fields))

    def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        frame = self.ws.recv(timeout=timeout)
        assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
        event = json.loads(frame)
        assert isinstance(event, dict)
        return event

    def expect(self, type_: str, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        """The next event, which must be of `type_`."""
        event = self.recv(timeout)
        assert event["type"] == type_, f"expected {type_}, got {event}"
        return event

    def expect_presence(
        self,
        joined: Iterable[str] = (),
        left: Iterable[str] = (),
        timeout: float = RECV_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Presence batches until every name of `joined` was seen joining and every one of
        `left` leaving (a change may share a batch with others or come in a later one); the
        events in between must all be presence. Returns the last batch."""
        want_joined, want_left = set(joined), set(left)
        while True:
            event = self.expect("presence", timeout)
            want_joined -= set(event.get("joined", ()))
            want_left -= set(event.get("left", ()))
            if not want_joined and not want_left:
                return event

    def join(self, room: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"type": "join", "room": room, **extra}
        if name is not None:
            fields["name"] = name
        self.send(**fields)
        return self.expect("welcome")

    def say(self, room: str, text: str, ref: str | None = None) -> dict[str, Any]:
        """Send and return the ack (the broadcast copy is left to be received)."""
        self.send(type="say", room=room, text=text, ref=ref)
        return self.expect("ack")

    def expect_close(self, timeout: float = RECV_TIMEOUT_S) -> tuple[int, str]:
        """Skip events until the server closes; return the close code and reason it sent."""
        try:
            while True:
                self.ws.recv(timeout=timeout)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, f"closed without a close frame: {exc}"
            return exc.rcvd.code, exc.rcvd.reason

    def close(self) -> None:
        self.ws.close()


def insecure_context() -> ssl.SSLContext:
    """Tests trust the self-signed certificate they just generated."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def token(sub: str = "u-alice", ttl_s: float = 3600, **extra: Any) -> str:
    """An HS256 token for the test secret, valid `ttl_s` from now (real time)."""
    return hs256(claims(sub, exp=int(time.time() + ttl_s), **extra))


def signed_chat(url: str, jwt: str) -> tuple[Chat, dict[str, Any]]:
    """A connection signed in with `jwt`, and its `authed` answer."""
    chat = Chat(url)
    chat.send(type="auth", token=jwt)
    return chat, chat.expect("authed")
