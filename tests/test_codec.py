"""Protocol v1 frames <-> commands and events."""

from __future__ import annotations

import json

import pytest

from wschat.chat import errors
from wschat.chat.model import (
    Ack,
    Auth,
    Authed,
    Error,
    Join,
    Leave,
    Left,
    Members,
    Message,
    Presence,
    Refresh,
    Say,
    Welcome,
    Who,
)
from wschat.wire import MAX_ID, decode, encode


def test_decode_commands() -> None:
    """join, say and leave decode to their commands with optional fields."""
    assert decode(b'{"type":"join","room":"lobby","name":"alice"}') == Join("lobby", "alice")
    assert decode(b'{"type":"join","room":"r","since":4,"token":"t"}') == Join("r", None, 4, "t")
    assert decode(b'{"type":"say","room":"r","text":"hi","ref":"c1"}') == Say("r", "hi", "c1")
    assert decode(b'{"type":"say","room":"r","text":"hi"}') == Say("r", "hi", None)
    assert decode(b'{"type":"leave","room":"r"}') == Leave("r")


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"not json", errors.BadJson),
        (b"[1,2]", errors.BadJson),
        (b'"string"', errors.BadJson),
        (b"[" * 100_000, errors.BadJson),
        (b"1" * 5000, errors.BadJson),
        (b"{}", errors.UnknownType),
        (b'{"type":"shout"}', errors.UnknownType),
        (b'{"type":7}', errors.UnknownType),
        (b'{"type":"say","room":"r"}', errors.InvalidField),
        (b'{"type":"say","room":5,"text":"x"}', errors.InvalidField),
        (b'{"type":"join","room":"r","since":-1}', errors.InvalidField),
        (b'{"type":"join","room":"r","since":true}', errors.InvalidField),
        (b'{"type":"join","room":"r","since":1.5}', errors.InvalidField),
        (b'{"type":"join","room":"r","since":%d}' % (MAX_ID + 1), errors.InvalidField),
        (b'{"type":"join","room":"r","name":3}', errors.InvalidField),
        (b'{"type":"say","room":"r","text":"x","ref":""}', errors.InvalidField),
        (b'{"type":"say","room":"r","text":"x","ref":{}}', errors.InvalidField),
        (b'{"type":"say","room":"r","text":"x","ref":"\\ud800"}', errors.InvalidField),
        (b'{"type":"join","room":"r","token":"\\udfff"}', errors.InvalidField),
    ],
)
def test_decode_refusals(frame: bytes, error: type[errors.ChatError]) -> None:
    """Malformed frames raise the ChatError whose code the client will see."""
    with pytest.raises(error):
        decode(frame)


def test_refusal_carries_ref() -> None:
    """A bad field in a request with a valid ref is answered with that ref."""
    with pytest.raises(errors.InvalidField) as caught:
        decode(b'{"type":"say","room":"r","ref":"c7"}')
    assert caught.value.ref == "c7"


def test_encode_events() -> None:
    """Each event encodes to the documented JSON object, non-ASCII kept as UTF-8."""
    msg = Message("lobby", 42, "bob", "hï 🙂", "2026-11-27T21:00:00.123Z", "secret-ref")
    assert json.loads(encode(msg)) == {
        "type": "message",
        "room": "lobby",
        "id": 42,
        "name": "bob",
        "text": "hï 🙂",
        "ts": "2026-11-27T21:00:00.123Z",
    }
    assert "🙂".encode() in encode(msg)
    assert json.loads(encode(Ack("lobby", "c1", 42))) == {
        "type": "ack",
        "room": "lobby",
        "ref": "c1",
        "id": 42,
    }
    assert json.loads(encode(Presence("lobby", ["carol"], ["dave"], 7))) == {
        "type": "presence",
        "room": "lobby",
        "joined": ["carol"],
        "left": ["dave"],
        "count": 7,
    }
    assert json.loads(encode(Presence("lobby", None, None, 1001))) == {
        "type": "presence",
        "room": "lobby",
        "count": 1001,
    }
    assert json.loads(encode(Members("lobby", ["a", "b"], "b", 9))) == {
        "type": "members",
        "room": "lobby",
        "names": ["a", "b"],
        "next": "b",
        "count": 9,
    }
    assert json.loads(encode(Left("lobby"))) == {"type": "left", "room": "lobby"}
    assert json.loads(encode(Error("name_taken", "taken", None))) == {
        "type": "error",
        "code": "name_taken",
        "message": "taken",
        "ref": None,
    }
    welcome = json.loads(encode(Welcome("lobby", "bob", ["bob"], 1, [msg], "tok", True)))
    assert welcome["recovered"] is True and welcome["history"][0]["id"] == 42
    assert welcome["users"] == ["bob"] and welcome["count"] == 1
    assert "recovered" not in json.loads(encode(Welcome("l", "b", ["b"], 1, [], "t", None)))
    big = json.loads(encode(Welcome("l", "b", None, 5000, [], "t", None)))
    assert "users" not in big and big["count"] == 5000


def test_who_is_decoded_with_its_defaults_and_bounds() -> None:
    """who: `after` and `limit` are optional (limit 200), limit is 1-1000."""
    assert decode(b'{"type":"who","room":"lobby"}') == Who("lobby", None, 200)
    assert decode(b'{"type":"who","room":"lobby","after":"m","limit":1000}') == Who(
        "lobby", "m", 1000
    )
    for bad in (0, 1001, "5", True, 2.5):
        with pytest.raises(errors.InvalidField):
            decode(json.dumps({"type": "who", "room": "lobby", "limit": bad}).encode())
    with pytest.raises(errors.InvalidField):
        decode(b'{"type":"who","room":"lobby","after":7}')


def test_every_error_code_is_documented() -> None:
    """docs/protocol.md lists every code a client can receive."""
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for error in errors.ALL_ERRORS:
        assert f"`{error.code}`" in doc, error.code


def test_auth_and_refresh_carry_a_token() -> None:
    """auth and refresh need a token string of 1-16384 characters."""
    assert decode(b'{"type":"auth","token":"a.b.c"}') == Auth("a.b.c")
    assert decode(b'{"type":"refresh","token":"a.b.c"}') == Refresh("a.b.c")
    for bad in ({}, {"token": ""}, {"token": 5}, {"token": "x" * 16385}):
        with pytest.raises(errors.InvalidField):
            decode(json.dumps({"type": "auth", **bad}).encode())


def test_identities_are_encoded_only_when_there_are_any() -> None:
    """authed has name, user, expires_in (admin only when true); messages carry user/guest,
    and lists carry subs/guests, only when set: the open chat's frames are as before."""
    assert json.loads(encode(Authed("Ann", "u1", 60))) == {
        "type": "authed",
        "name": "Ann",
        "user": "u1",
        "expires_in": 60,
    }
    assert json.loads(encode(Authed("Ann", "u1", 60, True)))["admin"] is True
    signed = json.loads(encode(Message("l", 1, "Ann", "hi", "t", None, "u1")))
    assert signed["user"] == "u1" and "guest" not in signed
    guest = json.loads(encode(Message("l", 2, "zed (guest)", "hi", "t", None, None, True)))
    assert guest["guest"] is True and "user" not in guest
    plain = json.loads(encode(Message("l", 3, "bob", "hi", "t")))
    assert "user" not in plain and "guest" not in plain
    batch = json.loads(
        encode(Presence("l", ["Ann", "z (guest)"], [], 2, {"Ann": "u1"}, ["z (guest)"]))
    )
    assert batch["subs"] == {"Ann": "u1"} and batch["guests"] == ["z (guest)"]
    assert "subs" not in json.loads(encode(Presence("l", ["b"], [], 1)))
    welcome = json.loads(encode(Welcome("l", "Ann", ["Ann"], 1, [], "t", None, subs={"Ann": "u1"})))
    assert welcome["subs"] == {"Ann": "u1"} and "guests" not in welcome
    page = json.loads(encode(Members("l", ["Ann"], None, 1, {"Ann": "u1"})))
    assert page["subs"] == {"Ann": "u1"}


def test_every_close_code_is_documented() -> None:
    """docs/protocol.md's close-code table lists every code the server closes with."""
    from pathlib import Path

    from wschat import wire

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    codes = [v for k, v in vars(wire).items() if k.startswith("CLOSE_") and isinstance(v, int)]
    assert len(codes) == 11
    for code in codes:
        assert f"| {code} |" in doc or f"| **{code}** |" in doc, code


def test_kick_and_its_answers() -> None:
    """kick needs a room and a name; left may carry a reason; kicked counts connections."""
    from wschat.chat.model import Kick, Kicked

    assert decode(b'{"type":"kick","room":"lobby","name":"bob"}') == Kick("lobby", "bob")
    for bad in ({"room": "lobby"}, {"room": "lobby", "name": ""}, {"room": "lobby", "name": 3}):
        with pytest.raises(errors.InvalidField):
            decode(json.dumps({"type": "kick", **bad}).encode())
    assert json.loads(encode(Left("lobby", "kicked"))) == {
        "type": "left",
        "room": "lobby",
        "reason": "kicked",
    }
    assert json.loads(encode(Kicked("lobby", "bob", 2))) == {
        "type": "kicked",
        "room": "lobby",
        "name": "bob",
        "connections": 2,
    }
