"""Signing in over the WebSocket: the `auth`/`authed` exchange, --auth modes, `refresh`, and
the expiry grace period, on in-memory transports with a task.Clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from wschat.chat.identity import GUEST_MARK, AuthMode
from wschat.chat.memory import MemoryHistory
from wschat.server.factory import ChatFactory
from wschat.server.settings import AuthSettings, WsSettings
from wschat.server.tokens import JwksKeys, KeySource, StaticKey, TokenVerifier
from wschat.testing import OP_CLOSE, Client, close_code, make_factory, text
from wschat.wire import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
)

from .jwtkit import NOW_S, SECRET, claims, hs256, rsa_pair, signed

GRACE_S = 25.0


@pytest.fixture
def clock(clock: Clock) -> Clock:
    """The shared clock, at the epoch time the tokens speak of."""
    clock.advance(NOW_S)
    return clock


def auth_factory(
    clock: Clock,
    mode: AuthMode = AuthMode.REQUIRED,
    keys: KeySource | None = None,
    leeway_s: float = 0.0,
) -> ChatFactory:
    verifier = TokenVerifier(
        keys or StaticKey(SECRET, ("HS256",)), clock.seconds, leeway_s=leeway_s
    )
    # No keep-alive pings: these clients never answer them, and hours pass on the clock.
    settings = WsSettings(ping_interval_s=0)
    auth = AuthSettings(mode, verifier, GRACE_S)
    return make_factory(clock, settings, auth=auth, store=MemoryHistory(100))


def sign_in(client: Client, token: str) -> dict[str, Any]:
    client.send(text({"type": "auth", "token": token}))
    [authed] = client.events()
    assert authed["type"] == "authed", authed
    return authed


def test_auth_then_join_under_the_tokens_name(clock: Clock) -> None:
    """`auth` is answered with `authed` (name, user, expires_in); the join needs no name,
    and the room sees the sub of the signed member."""
    factory = auth_factory(clock)
    alice = Client(factory)
    authed = sign_in(alice, hs256(claims(name="Alice")))
    assert authed == {"type": "authed", "name": "Alice", "user": "u-alice", "expires_in": 3600}
    welcome = alice.join("lobby")
    assert (welcome["name"], welcome["subs"]) == ("Alice", {"Alice": "u-alice"})
    alice.send(text({"type": "join", "room": "dev", "name": "Mallory"}))
    [error] = alice.events()
    assert error["code"] == "name_invalid"
    alice.send(text({"type": "say", "room": "lobby", "text": "hi"}))
    _ack, message = alice.events()
    assert message["user"] == "u-alice" and message["name"] == "Alice"
    assert "guest" not in message


def test_admin_is_told_in_authed(clock: Clock) -> None:
    """A token with admin: true says so in its `authed`."""
    alice = Client(auth_factory(clock))
    assert sign_in(alice, hs256(claims(admin=True)))["admin"] is True


@pytest.mark.parametrize(
    "first",
    [
        {"type": "join", "room": "lobby", "name": "alice"},
        {"type": "who", "room": "lobby"},
        {"type": "refresh", "token": "x"},
        "not json",
    ],
)
def test_required_closes_4401_on_any_other_first_frame(clock: Clock, first: Any) -> None:
    """With --auth required a first frame other than `auth` (even a bad one) closes 4401."""
    client = Client(auth_factory(clock))
    client.send(text(first))
    [(code, reason)] = client.closes()
    assert code == CLOSE_UNAUTHORIZED and b"auth" in reason


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (hs256(claims(exp=int(NOW_S) - 1)), b"expired"),
        (hs256(claims(), b"wrong-secret-" * 4), b"signature"),
        ("garbage", b"not a JWT"),
        (hs256({"sub": "u-alice"}), b"'exp'"),
    ],
)
def test_a_bad_token_closes_4401_saying_why(clock: Clock, token: str, why: bytes) -> None:
    """An `auth` whose token fails verification closes the connection with 4401 and the
    reason, and nothing the client sent after it is served."""
    factory = auth_factory(clock)
    client = Client(factory)
    client.send(
        text({"type": "auth", "token": token})
        + text({"type": "join", "room": "lobby", "name": "alice"})
    )
    frames = client.frames()
    [(code, reason)] = [(close_code(p), p[2:]) for op, p in frames if op == OP_CLOSE]
    assert code == CLOSE_UNAUTHORIZED and why in reason
    assert [op for op, _ in frames] == [OP_CLOSE]
    assert [m[0] for m in factory.hub.members_of("lobby")] == []


def test_no_auth_within_the_handshake_timeout_closes_4401(clock: Clock) -> None:
    """A connection that sends nothing is closed 4401 after --handshake-timeout."""
    client = Client(auth_factory(clock))
    clock.advance(WsSettings().open_handshake_timeout_s - 0.5)
    assert client.closes() == []
    clock.advance(0.5)
    [(code, reason)] = client.closes()
    assert code == CLOSE_UNAUTHORIZED and b"within" in reason


def test_an_auth_in_time_disarms_the_deadline(clock: Clock) -> None:
    """Once `auth` came, the handshake deadline closes nothing."""
    client = Client(auth_factory(clock))
    sign_in(client, hs256(claims()))
    clock.advance(WsSettings().open_handshake_timeout_s * 2)
    assert client.closes() == []


def test_optional_lets_guests_in_marked(clock: Clock) -> None:
    """With --auth optional a connection that does not sign in is a guest: its name carries
    the mark, its messages say guest, and a later `auth` is refused."""
    factory = auth_factory(clock, AuthMode.OPTIONAL)
    alice, zed = Client(factory), Client(factory)
    sign_in(alice, hs256(claims(name="alice")))
    alice.join("lobby")
    welcome = zed.join("lobby", "alice")
    assert welcome["name"] == "alice" + GUEST_MARK
    assert welcome["guests"] == ["alice" + GUEST_MARK]
    assert welcome["subs"] == {"alice": "u-alice"}
    zed.send(text({"type": "say", "room": "lobby", "text": "hello"}))
    _, message = zed.events()
    assert message["guest"] is True and "user" not in message
    zed.send(text({"type": "auth", "token": hs256(claims("u-zed"))}))
    [error] = zed.events()
    assert error["code"] == "auth_unexpected"
    clock.advance(0.25)
    [presence] = [e for e in alice.events() if e["type"] == "presence"]
    assert presence["joined"] == ["alice" + GUEST_MARK]
    assert presence["guests"] == ["alice" + GUEST_MARK]


def test_optional_auth_with_a_bad_token_still_closes(clock: Clock) -> None:
    """In optional mode a client that tries to sign in and fails is closed, not made a guest."""
    client = Client(auth_factory(clock, AuthMode.OPTIONAL))
    client.send(text({"type": "auth", "token": hs256(claims(), b"wrong-secret-" * 4)}))
    [(code, _)] = client.closes()
    assert code == CLOSE_UNAUTHORIZED


def test_off_refuses_auth_and_keeps_the_connection(clock: Clock) -> None:
    """With --auth off, auth and refresh are refused with auth_unexpected; chat goes on."""
    factory = make_factory(clock)
    client = Client(factory)
    client.send(text({"type": "auth", "token": "x"}) + text({"type": "refresh", "token": "x"}))
    assert [e["code"] for e in client.events()] == ["auth_unexpected", "auth_unexpected"]
    assert client.join("lobby", "alice")["name"] == "alice"


def test_an_expired_token_is_closed_4440_after_the_grace(clock: Clock) -> None:
    """A connection whose token expired stays open --jwt-grace seconds, then closes 4440."""
    client = Client(auth_factory(clock))
    sign_in(client, hs256(claims(exp=int(NOW_S) + 60)))
    client.join("lobby")
    clock.advance(60 + GRACE_S - 1)
    assert client.closes() == []
    clock.advance(1)
    [(code, _)] = client.closes()
    assert code == CLOSE_TOKEN_EXPIRED


def test_the_leeway_adds_to_the_grace(clock: Clock) -> None:
    """--jwt-leeway counts before the grace period starts."""
    client = Client(auth_factory(clock, leeway_s=10))
    sign_in(client, hs256(claims(exp=int(NOW_S) + 60)))
    clock.advance(60 + 10 + GRACE_S - 1)
    assert client.closes() == []
    clock.advance(1)
    assert [code for code, _ in client.closes()] == [CLOSE_TOKEN_EXPIRED]


def test_refresh_before_expiry_moves_the_deadline(clock: Clock) -> None:
    """A refresh is answered with `authed` and the connection lives to the new token's exp."""
    client = Client(auth_factory(clock))
    sign_in(client, hs256(claims(exp=int(NOW_S) + 60)))
    clock.advance(50)
    client.send(text({"type": "refresh", "token": hs256(claims(exp=int(NOW_S) + 600))}))
    [authed] = client.events()
    assert authed["type"] == "authed" and authed["expires_in"] == 550
    clock.advance(100)
    assert client.closes() == []
    clock.advance(600 - 150 + GRACE_S)
    assert [code for code, _ in client.closes()] == [CLOSE_TOKEN_EXPIRED]


def test_refresh_in_the_grace_period_saves_the_connection(clock: Clock) -> None:
    """A token that already expired can still be replaced during the grace period."""
    client = Client(auth_factory(clock))
    sign_in(client, hs256(claims(exp=int(NOW_S) + 60)))
    clock.advance(60 + GRACE_S - 5)
    client.send(text({"type": "refresh", "token": hs256(claims(exp=int(NOW_S) + 3600))}))
    assert client.events()[0]["type"] == "authed"
    clock.advance(10)
    assert client.closes() == []


def test_a_bad_refresh_is_an_error_and_the_old_token_still_counts(clock: Clock) -> None:
    """A refresh with an invalid token, or another person's, is refused; the connection
    stays open until its current token runs out."""
    client = Client(auth_factory(clock))
    sign_in(client, hs256(claims(exp=int(NOW_S) + 60)))
    client.send(text({"type": "refresh", "token": hs256(claims(exp=int(NOW_S) - 5))}))
    client.send(text({"type": "refresh", "token": hs256(claims("u-mallory"))}))
    client.send(text({"type": "refresh", "token": hs256(claims(name="Alicia"))}))
    codes = [e["code"] for e in client.events()]
    assert codes == ["auth_invalid", "auth_mismatch", "auth_mismatch"]
    clock.advance(60 + GRACE_S)
    assert [code for code, _ in client.closes()] == [CLOSE_TOKEN_EXPIRED]


def test_rooms_of_the_token_limit_joins(clock: Clock) -> None:
    """A join outside the token's `rooms` is refused with room_forbidden."""
    client = Client(auth_factory(clock))
    sign_in(client, hs256(claims(rooms=["team-*"])))
    assert client.join("team-red")["room"] == "team-red"
    client.send(text({"type": "join", "room": "lobby"}))
    assert client.events()[0]["code"] == "room_forbidden"


def test_frames_after_a_slow_auth_wait_for_it(clock: Clock) -> None:
    """While a JWKS fetch holds up the `auth`, the frames after it wait and are then served
    in order: authed, then the welcome."""
    fetches: list[Deferred[bytes]] = []

    def slow_fetch(url: str) -> Deferred[bytes]:
        fetched: Deferred[bytes] = Deferred()
        fetches.append(fetched)
        return fetched

    keys = JwksKeys("https://app.example/jwks", slow_fetch, clock.seconds)
    client = Client(auth_factory(clock, keys=keys))
    client.send(
        text({"type": "auth", "token": signed(claims(), rsa_pair(), kid="k1")})
        + text({"type": "join", "room": "lobby"})
    )
    assert client.events() == []
    fetches[0].callback(json.dumps({"keys": [rsa_pair().jwk("k1")]}).encode())
    assert [e["type"] for e in client.events()] == ["authed", "welcome"]


def slow_jwks(clock: Clock) -> tuple[JwksKeys, list[Deferred[bytes]]]:
    """A JWKS whose fetches wait until the test answers them."""
    fetches: list[Deferred[bytes]] = []

    def slow_fetch(url: str) -> Deferred[bytes]:
        fetched: Deferred[bytes] = Deferred()
        fetches.append(fetched)
        return fetched

    return JwksKeys("https://app.example/jwks", slow_fetch, clock.seconds), fetches


JWKS_BODY = json.dumps({"keys": [rsa_pair().jwk("k1")]}).encode()


@pytest.mark.parametrize(
    ("settings", "frames"),
    [
        (AuthSettings(max_held_frames=5), [text({"type": "who", "room": "lobby"})] * 6),
        (AuthSettings(max_held_bytes=100_000), [text({"type": "x", "pad": "y" * 60_000})] * 2),
    ],
)
def test_frames_held_during_sign_in_are_capped(
    clock: Clock, settings: AuthSettings, frames: list[bytes]
) -> None:
    """While `auth` waits for the JWKS, a client that sends more frames or bytes than
    --max-held-frames/--max-held-bytes is closed 1008, and nothing it sent is served."""
    keys, fetches = slow_jwks(clock)
    verifier = TokenVerifier(keys, clock.seconds)
    auth = AuthSettings(
        AuthMode.REQUIRED, verifier, GRACE_S, settings.max_held_frames, settings.max_held_bytes
    )
    factory = make_factory(clock, WsSettings(ping_interval_s=0), auth=auth)
    client = Client(factory)
    client.send(text({"type": "auth", "token": signed(claims(), rsa_pair(), kid="k1")}))
    client.send(b"".join(frames[:-1]))
    assert client.frames() == []
    client.send(frames[-1])
    assert [code for code, _ in client.closes()] == [CLOSE_POLICY_VIOLATION]
    client.send(text({"type": "join", "room": "lobby"}))
    fetches[0].callback(JWKS_BODY)
    assert client.frames() == []


def test_a_close_during_the_jwks_fetch_ends_the_sign_in(
    clock: Clock, log_events: EventLoggingObserver
) -> None:
    """A client gone while its `auth` waits for the JWKS: once the keys come, nothing is
    signed in, nothing fails, and no expiry timer is left on the closed connection."""
    keys, fetches = slow_jwks(clock)
    client = Client(auth_factory(clock, keys=keys))
    client.send(text({"type": "auth", "token": signed(claims(), rsa_pair(), kid="k1")}))
    client.send(text({"type": "join", "room": "lobby"}))
    client.protocol.connectionLost(Failure(ConnectionDone()))
    fetches[0].callback(JWKS_BODY)
    assert [e for e in log_events if e["log_level"] >= LogLevel.warn] == []
    # IDelayedCall does not declare func; Clock's DelayedCall has it.
    timers = [getattr(getattr(c, "func", None), "__name__", "") for c in clock.getDelayedCalls()]
    assert "_token_expired" not in timers
    assert client.frames() == []


def test_keys_that_cannot_be_fetched_close_1013(clock: Clock) -> None:
    """When the JWKS cannot be fetched (and none was before), the client is told to try
    again later (1013), not that its token is bad."""

    async def down(url: str) -> bytes:
        raise ConnectionRefusedError("down")

    client = Client(
        auth_factory(clock, keys=JwksKeys("https://app.example/jwks", down, clock.seconds))
    )
    client.send(text({"type": "auth", "token": signed(claims(), rsa_pair(), kid="k1")}))
    assert [code for code, _ in client.closes()] == [CLOSE_TRY_AGAIN_LATER]


def test_a_long_reason_is_cut_to_fit_a_close_frame(clock: Clock) -> None:
    """Close reasons are cut to 123 bytes (a control frame holds 125) on a UTF-8 boundary."""
    client = Client(auth_factory(clock))
    client.send(text({"type": "auth", "token": hs256(claims(rooms=["é" * 200]))}))
    [(code, reason)] = client.closes()
    assert code == CLOSE_UNAUTHORIZED and len(reason) <= 123
    reason.decode("utf-8")


def test_an_admin_kicks_and_others_may_not(clock: Clock) -> None:
    """`kick` by an admin takes the name out (it is told `left` with reason kicked and the
    kicker `kicked`); a non-admin is refused with forbidden, an absent name no_such_member."""
    factory = auth_factory(clock)
    mod, bob = Client(factory), Client(factory)
    sign_in(mod, hs256(claims("u-mod", name="mod", admin=True)))
    sign_in(bob, hs256(claims("u-bob", name="bob")))
    mod.join("lobby")
    bob.join("lobby")
    bob.send(text({"type": "kick", "room": "lobby", "name": "mod"}))
    assert [e["code"] for e in bob.events()] == ["forbidden"]
    mod.send(text({"type": "kick", "room": "lobby", "name": "nobody"}))
    assert [e.get("code") for e in mod.events()] == ["no_such_member"]
    mod.send(text({"type": "kick", "room": "lobby", "name": "bob"}))
    assert mod.events() == [{"type": "kicked", "room": "lobby", "name": "bob", "connections": 1}]
    assert bob.events() == [{"type": "left", "room": "lobby", "reason": "kicked"}]
    assert [m[0] for m in factory.hub.members_of("lobby")] == ["mod"]


def test_an_admin_kicks_only_in_the_rooms_of_its_token(clock: Clock) -> None:
    """An admin whose token's `rooms` is ["team-*"] may kick in team-a, not in lobby."""
    factory = auth_factory(clock)
    mod, bob = Client(factory), Client(factory)
    sign_in(mod, hs256(claims("u-mod", name="mod", admin=True, rooms=["team-*"])))
    sign_in(bob, hs256(claims("u-bob", name="bob")))
    bob.join("lobby")
    bob.join("team-a")
    mod.send(text({"type": "kick", "room": "lobby", "name": "bob"}))
    assert [e.get("code") for e in mod.events()] == ["forbidden"]
    assert bob.events() == []
    mod.send(text({"type": "kick", "room": "team-a", "name": "bob"}))
    assert mod.events() == [{"type": "kicked", "room": "team-a", "name": "bob", "connections": 1}]
    assert bob.events() == [{"type": "left", "room": "team-a", "reason": "kicked"}]
    assert [m[0] for m in factory.hub.members_of("lobby")] == ["bob"]


def test_the_application_disconnects_a_user_4403(clock: Clock) -> None:
    """disconnect_user (the API's) closes every connection of that sub with 4403."""
    factory = auth_factory(clock)
    tabs = [Client(factory) for _ in range(2)]
    other = Client(factory)
    for tab in tabs:
        sign_in(tab, hs256(claims()))
    sign_in(other, hs256(claims("u-bob")))
    assert factory.disconnect_user("u-alice") == 2
    for tab in tabs:
        assert [code for code, _ in tab.closes()] == [4403]
    assert other.closes() == []
