"""Rules for names, rooms and text."""

from __future__ import annotations

import pytest

from wschat.chat.errors import NameInvalid, RoomInvalid, TextEmpty, TextInvalid, TextTooLong
from wschat.chat.model import MAX_TEXT_CHARS, check_name, check_room, check_text


@pytest.mark.parametrize("name", ["a", "alice", "Zoë", "名前", "a b", "x" * 32, "🙂"])
def test_names_accepted(name: str) -> None:
    """Printable names of 1-32 characters, any script, are accepted as given."""
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 33, "a\nb", "tab\t", " lead", "trail ", "zero\u200bwidth", "\ud800", "\x7f"]
)
def test_names_refused(name: str) -> None:
    """Empty, too long, control/format/surrogate characters and edge spaces are refused."""
    with pytest.raises(NameInvalid):
        check_name(name)


@pytest.mark.parametrize("room", ["lobby", "a", "dev-ops_2.0", "x" * 64])
def test_rooms_accepted(room: str) -> None:
    """Letters, digits, '_', '-' and '.' up to 64 characters make a room name."""
    assert check_room(room) == room


@pytest.mark.parametrize("room", ["", "x" * 65, "a b", "a/b", "lobby\n", "é"])
def test_rooms_refused(room: str) -> None:
    """Anything else is refused, so room names are safe in URLs and logs."""
    with pytest.raises(RoomInvalid):
        check_room(room)


def test_text_rules() -> None:
    """Text may hold newlines and tabs; blank, too long or control characters are refused."""
    assert check_text("line 1\n\tline 2") == "line 1\n\tline 2"
    assert check_text("x" * MAX_TEXT_CHARS)
    with pytest.raises(TextTooLong):
        check_text("x" * (MAX_TEXT_CHARS + 1))
    for blank in ("", " ", "\n\t "):
        with pytest.raises(TextEmpty):
            check_text(blank)
    for bad in ("bell\x07", "esc\x1b[31m", "lone \udc00 surrogate"):
        with pytest.raises(TextInvalid):
            check_text(bad)


def test_text_error_carries_ref() -> None:
    """The refusal names the request's ref so the client can match it."""
    with pytest.raises(TextEmpty) as caught:
        check_text("", ref="c1")
    assert caught.value.ref == "c1"
