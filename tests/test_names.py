"""When two names are one: NFC case-folded UTS #39 skeletons (wschat/chat/names.py), in a room
of one node, for guests and signed users, with the name kept as typed."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from wschat.chat import errors
from wschat.chat.identity import GUEST_MARK, identity_from_claims
from wschat.chat.model import Join, Presence, Welcome
from wschat.chat.names import name_key, prototypes

from .chatkit import World, presences, run

NFC = "José"
NFD = unicodedata.normalize("NFD", NFC)
CYRILLIC = "J\u043esé"  # CYRILLIC SMALL LETTER O
ALIKE = [
    (NFC, NFD),
    (NFC, CYRILLIC),
    ("admin", "ADMIN"),
    ("paypal", "p\u0430yp\u0430l"),
    ("bill", "bi11"),
    ("bob", "b0b"),  # a capital prototype: 0 reads as O
]


@pytest.mark.parametrize(("one", "other"), ALIKE)
def test_names_that_read_the_same_have_one_key(one: str, other: str) -> None:
    """Normalization forms, case, and confusable letters of other scripts give one key."""
    assert one != other and name_key(one) == name_key(other)


@pytest.mark.parametrize(("one", "other"), [("alice", "bob"), ("José", "Jose"), ("ann", "anne")])
def test_different_names_have_different_keys(one: str, other: str) -> None:
    """An accent, or a letter more, is another name."""
    assert name_key(one) != name_key(other)


def test_the_table_is_unicodes_full_confusables_list() -> None:
    """confusables.tsv holds every mapping of a UTS #39 confusables.txt, with its version."""
    path = Path(__file__).parent.parent / "wschat" / "chat" / "confusables.tsv"
    header = [line for line in path.read_text(encoding="utf-8").splitlines() if line[:1] == "#"]
    assert "# Version: 13.0.0" in header
    assert len(prototypes()) == 6311
    assert prototypes()[0x043E] == "o"


@pytest.mark.parametrize(("one", "other"), ALIKE)
def test_a_name_that_reads_as_a_members_is_taken_and_shown_as_typed(one: str, other: str) -> None:
    """The second of two look-alike names is refused in the room (free in another); the
    first stays as it was typed in welcomes and presence."""
    world = World()
    first, p_first = world.connect()
    second, _ = world.connect()
    run(world.hub.join(first, Join("lobby", one)))
    with pytest.raises(errors.NameTaken):
        run(world.hub.join(second, Join("lobby", other)))
    run(world.hub.join(second, Join("dev", other)))
    assert world.who(first, "lobby") == [one] and world.who(second, "dev") == [other]
    third, p_third = world.connect()
    run(world.hub.join(third, Join("lobby", "carol")))
    [welcome] = p_third.take()
    assert isinstance(welcome, Welcome) and welcome.users == sorted([one, "carol"])
    world.batch()
    assert presences(p_first)[-1] == Presence("lobby", ["carol"], [], 2)


def test_a_name_is_free_again_once_its_look_alike_left() -> None:
    """The key goes with the member: after `admin` leaves, `ADMIN` may join."""
    world = World()
    first, _ = world.connect()
    second, _ = world.connect()
    run(world.hub.join(first, Join("lobby", "admin")))
    world.hub.disconnect(first)
    run(world.hub.join(second, Join("lobby", "ADMIN")))
    assert world.who(second, "lobby") == ["ADMIN"]


def test_a_signed_name_may_not_end_with_a_look_alike_of_the_guest_mark() -> None:
    """`bob (guest)` with a Cyrillic e (U+0435) would pass a signed user for a guest: refused."""
    alike = GUEST_MARK.replace("e", "\u0435")
    assert alike != GUEST_MARK
    with pytest.raises(errors.TokenInvalid):
        identity_from_claims({"sub": "u1", "exp": 5, "name": "bob" + alike})
