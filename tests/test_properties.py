"""Property-based tests: whatever a client sends, the wire decoder and the hub answer with a
ChatError or a valid result, never anything else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wschat.chat.errors import ChatError
from wschat.chat.limits import Limits
from wschat.chat.model import (
    MAX_NAME_CHARS,
    MAX_ROOM_CHARS,
    Command,
    Error,
    Join,
    Leave,
    Message,
    Say,
    Welcome,
    Who,
    check_name,
    check_room,
    check_text,
)
from wschat.wire import decode, encode

from .chatkit import World, run

# Text that stresses Unicode handling: surrogates, RTL, zero-width, 4-byte emoji, controls.
EDGY = st.sampled_from(
    [
        "\ud800",
        "\udfff",
        "\u202e",
        "\u200b",
        "\ufeff",
        "🙂",
        "\U0001d54f",
        "\x00",
        "\x1b",
        "\n",
        " ",
        "é",
    ]
)
TEXTS = st.one_of(st.text(), st.lists(st.one_of(EDGY, st.text(max_size=3))).map("".join))
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | TEXTS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
COMMAND_LIKE = st.fixed_dictionaries(
    {"type": st.sampled_from(["join", "say", "leave", "who", "nope"])},
    optional={
        "room": st.one_of(JSON_VALUES, TEXTS),
        "name": st.one_of(JSON_VALUES, TEXTS),
        "text": st.one_of(JSON_VALUES, TEXTS),
        "ref": st.one_of(JSON_VALUES, TEXTS),
        "since": JSON_VALUES,
        "token": JSON_VALUES,
        "after": st.one_of(JSON_VALUES, TEXTS),
        "limit": JSON_VALUES,
    },
)


def encoded(value: Any) -> bytes:
    # Lone surrogates cannot be UTF-8: Autobahn already refuses such frames with 1007, so the
    # decoder only ever sees them as JSON escapes, which ensure_ascii produces.
    return json.dumps(value, ensure_ascii=True).encode()


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_refuse(data: bytes) -> None:
    """Arbitrary bytes never raise anything but a ChatError."""
    try:
        decode(data)
    except ChatError as exc:
        assert exc.code in {"bad_json", "unknown_type", "invalid_field"}


@given(st.one_of(JSON_VALUES, COMMAND_LIKE))
def test_any_json_decodes_or_refuses(value: Any) -> None:
    """Any JSON value becomes a well-typed command or a ChatError."""
    try:
        command = decode(encoded(value))
    except ChatError:
        return
    assert isinstance(command, Command)
    room = getattr(command, "room", None)
    assert room is None or isinstance(room, str)


@given(st.integers(min_value=1, max_value=5000))
def test_deep_nesting_is_refused_cleanly(depth: int) -> None:
    """Deeply nested arrays are bad JSON or an unknown type, never a crash."""
    try:
        decode(b"[" * depth + b"]" * depth)
    except ChatError:
        pass


@settings(max_examples=300)
@given(st.lists(COMMAND_LIKE, max_size=12))
def test_hub_survives_any_command_sequence(values: list[dict[str, Any]]) -> None:
    """Sequences of arbitrary commands from two connections keep the hub consistent, and
    every event it emits encodes to JSON."""
    world = World(Limits(history_size=5, max_rooms=3))
    sessions = [world.connect("a"), world.connect("b")]
    for i, value in enumerate(values):
        session, peer = sessions[i % 2]
        try:
            command = decode(encoded(value))
            if isinstance(command, Join):
                run(world.hub.join(session, command))
            elif isinstance(command, Say):
                run(world.hub.say(session, command))
            elif isinstance(command, Leave):
                world.hub.leave(session, command)
            elif isinstance(command, Who):
                world.hub.who(session, command)
        except ChatError as exc:
            peer.events.append(Error(exc.code, exc.message, exc.ref))
    for session, peer in sessions:
        for event in peer.events:
            assert json.loads(encode(event))["type"]
        for room in session.rooms:
            assert session.name in world.who(session, room)
        assert len(session.rooms) <= 3
    for session, _ in sessions:
        world.hub.disconnect(session)
    assert world.hub.room_count == 0 and world.hub.connection_count == 0


@given(TEXTS)
def test_validators_accept_or_refuse(value: str) -> None:
    """Validators return their input unchanged or raise a ChatError; what they accept is
    within the limits and encodable as UTF-8."""
    for check, limit in ((check_name, MAX_NAME_CHARS), (check_room, MAX_ROOM_CHARS)):
        try:
            assert check(value) == value
        except ChatError:
            continue
        assert 1 <= len(value) <= limit
        value.encode("utf-8")
    try:
        check_text(value)
    except ChatError:
        return
    value.encode("utf-8")


@given(st.lists(TEXTS.filter(lambda t: t.strip() != ""), min_size=1, max_size=8))
def test_stored_messages_come_back_identical(texts: list[str]) -> None:
    """Whatever text is accepted is broadcast and replayed byte for byte, in order."""
    world = World(Limits(history_size=10, rate_per_s=1000, burst=1000))
    alice, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    accepted = []
    for text in texts:
        try:
            run(world.hub.say(alice, Say("lobby", text)))
            accepted.append(text)
        except ChatError:
            pass
    bob, pb = world.connect()
    run(world.hub.join(bob, Join("lobby", "bob")))
    [welcome] = pb.take()
    assert isinstance(welcome, Welcome)
    assert [m.text for m in welcome.history] == accepted[-10:]
    for msg in welcome.history:
        assert isinstance(msg, Message)
        assert json.loads(encode(msg))["text"] == msg.text
