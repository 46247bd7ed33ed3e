"""Signed identities in the domain: claims, room patterns, guest names, and how signed users,
guests and open-chat users share a room's names (chat/identity.py and the hub)."""

from __future__ import annotations

import pytest

from wschat.chat import errors
from wschat.chat.identity import (
    GUEST_MARK,
    MAX_GUEST_BASE_CHARS,
    Companions,
    Identity,
    guest_name,
    identity_from_claims,
    refresh,
    room_matches,
    sign_in,
)
from wschat.chat.model import Join, Leave, Members, Message, Presence, Say, Welcome, Who
from wschat.chat.session import Session

from .chatkit import Peer, World, run

EXP_S = 1_800_003_600.0


def identity(sub: str = "u-alice", name: str = "alice", **kw: object) -> Identity:
    return Identity(sub, name, EXP_S, **kw)  # type: ignore[arg-type]


def signed_in(world: World, who: Identity, label: str = "peer") -> tuple[Session, Peer]:
    session, peer = world.connect(label)
    sign_in(session, who)
    return session, peer


def guest(world: World, label: str = "guest") -> tuple[Session, Peer]:
    session, peer = world.connect(label)
    session.guest = True
    return session, peer


def test_claims_become_an_identity() -> None:
    """sub, name (default: the sub), exp, rooms and admin are read and checked."""
    assert identity_from_claims({"sub": "u1", "exp": 5}) == Identity("u1", "u1", 5.0)
    full = identity_from_claims(
        {"sub": "u1", "name": "Ann", "exp": 5.5, "rooms": ["lobby", "team-*"], "admin": True}
    )
    assert full == Identity("u1", "Ann", 5.5, ("lobby", "team-*"), True)


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": 5},
        {"sub": "", "exp": 5},
        {"sub": 7, "exp": 5},
        {"sub": "u1"},
        {"sub": "u1", "exp": "5"},
        {"sub": "u1", "exp": True},
        {"sub": "u1", "exp": 5, "name": ""},
        {"sub": "u1", "exp": 5, "name": "x" * 33},
        {"sub": "u1", "exp": 5, "name": "bob" + GUEST_MARK},
        {"sub": "u1", "exp": 5, "rooms": "lobby"},
        {"sub": "u1", "exp": 5, "rooms": ["no spaces"]},
        {"sub": "u1", "exp": 5, "rooms": [3]},
        {"sub": "u1", "exp": 5, "admin": 1},
    ],
)
def test_unusable_claims_are_refused(bad: dict[str, object]) -> None:
    """Missing or ill-typed claims, bad names, a guest-marked name, bad room patterns."""
    with pytest.raises(errors.TokenInvalid):
        identity_from_claims(bad)


def test_room_patterns() -> None:
    """A pattern is a room name, or a prefix ending in '*'; absent rooms allow all."""
    assert room_matches("lobby", "lobby") and not room_matches("lobby", "lobby2")
    assert room_matches("team-*", "team-a") and room_matches("team-*", "team-")
    assert not room_matches("team-*", "teams")
    assert room_matches("*", "anything")
    assert identity().may_join("anything")
    limited = identity(rooms=("lobby", "team-*"))
    assert limited.may_join("lobby") and limited.may_join("team-x")
    assert not limited.may_join("ops")
    assert not identity(rooms=()).may_join("lobby")


def test_guest_names_carry_the_mark() -> None:
    """A guest's name gets the mark (once), and must leave room for it."""
    assert guest_name("bob") == "bob" + GUEST_MARK
    assert guest_name("bob" + GUEST_MARK) == "bob" + GUEST_MARK
    assert len(guest_name("x" * MAX_GUEST_BASE_CHARS)) == 32
    with pytest.raises(errors.NameInvalid):
        guest_name("x" * (MAX_GUEST_BASE_CHARS + 1))
    with pytest.raises(errors.NameInvalid):
        guest_name(GUEST_MARK)


def test_expires_in_counts_whole_seconds_down_to_zero() -> None:
    """expires_in is the whole seconds left, never negative."""
    assert identity().expires_in_s(EXP_S - 90.5) == 90
    assert identity().expires_in_s(EXP_S + 10) == 0


def test_sign_in_only_once_and_only_first() -> None:
    """A connection signs in before anything else, once; a refresh keeps the person."""
    world = World()
    session, _ = world.connect()
    sign_in(session, identity())
    assert (session.name, session.user) == ("alice", "u-alice")
    with pytest.raises(errors.AuthUnexpected):
        sign_in(session, identity())
    anonymous, _ = world.connect()
    run(world.hub.join(anonymous, Join("lobby", "zed")))
    with pytest.raises(errors.AuthUnexpected):
        sign_in(anonymous, identity())
    with pytest.raises(errors.AuthUnexpected):
        refresh(anonymous, identity())
    later = Identity("u-alice", "alice", EXP_S + 3600, ("lobby",))
    refresh(session, later)
    assert session.identity is later
    with pytest.raises(errors.AuthMismatch):
        refresh(session, identity(sub="u-mallory"))
    with pytest.raises(errors.AuthMismatch):
        refresh(session, identity(name="Alice S."))


def test_the_token_names_a_signed_join() -> None:
    """A signed connection joins under its token's name; naming another is refused."""
    world = World()
    alice, peer = signed_in(world, identity())
    run(world.hub.join(alice, Join("lobby")))
    run(world.hub.join(alice, Join("dev", "alice")))
    with pytest.raises(errors.NameInvalid, match="token"):
        run(world.hub.join(alice, Join("ops", "mallory")))
    assert {w.name for w in peer.take() if isinstance(w, Welcome)} == {"alice"}


def test_rooms_outside_the_claim_are_forbidden() -> None:
    """A join of a room the token's `rooms` does not cover is refused with room_forbidden."""
    world = World()
    alice, _ = signed_in(world, identity(rooms=("team-*",)))
    run(world.hub.join(alice, Join("team-a")))
    with pytest.raises(errors.RoomForbidden):
        run(world.hub.join(alice, Join("lobby")))
    assert alice.rooms == {"team-a"}


def test_two_connections_of_one_user_share_the_name() -> None:
    """One person in two tabs: both are in the room under one name, presence sees one join
    and one leave (when the last tab goes), and both tabs get every message."""
    world = World()
    bob, pb = signed_in(world, identity("u-bob", "bob"), "bob")
    run(world.hub.join(bob, Join("lobby")))
    world.batch()
    pb.take()
    tab1, p1 = signed_in(world, identity(), "tab1")
    tab2, p2 = signed_in(world, identity(), "tab2")
    run(world.hub.join(tab1, Join("lobby")))
    run(world.hub.join(tab2, Join("lobby")))
    [welcome] = p2.take()
    assert isinstance(welcome, Welcome) and welcome.users == ["alice", "bob"]
    assert welcome.count == 2
    assert welcome.subs == {"alice": "u-alice", "bob": "u-bob"}
    world.batch()
    assert pb.take() == [Presence("lobby", ["alice"], [], 2, {"alice": "u-alice"})]
    p1.take()
    run(world.hub.say(bob, Say("lobby", "hi both")))
    pb.take()
    assert [e.text for e in p1.take() if isinstance(e, Message)] == ["hi both"]
    assert [e.text for e in p2.take() if isinstance(e, Message)] == ["hi both"]
    world.hub.disconnect(tab1)
    world.batch()
    assert pb.take() == []
    assert world.who(bob, "lobby") == ["alice", "bob"]
    run(world.hub.say(bob, Say("lobby", "still there?")))
    assert [e.text for e in p2.take() if isinstance(e, Message)] == ["still there?"]
    world.hub.leave(tab2, Leave("lobby"))
    pb.take()
    world.batch()
    assert pb.take() == [Presence("lobby", [], ["alice"], 1)]


def test_the_holder_leaving_hands_the_name_to_a_companion() -> None:
    """When the connection the room knows leaves first, a companion holds the name on."""
    world = World()
    tab1, _ = signed_in(world, identity(), "tab1")
    tab2, p2 = signed_in(world, identity(), "tab2")
    run(world.hub.join(tab1, Join("lobby")))
    run(world.hub.join(tab2, Join("lobby")))
    world.hub.leave(tab2, Leave("lobby"))
    run(world.hub.join(tab2, Join("lobby")))
    world.hub.leave(tab1, Leave("lobby"))
    assert world.who(tab2, "lobby") == ["alice"]
    p2.take()
    run(world.hub.say(tab2, Say("lobby", "me again")))
    assert [e.text for e in p2.take() if isinstance(e, Message)] == ["me again"]
    world.hub.disconnect(tab2)
    assert world.hub.rooms() == []


def test_another_user_with_the_same_display_name_is_refused() -> None:
    """Two different subs named alike cannot both be in a room: name_taken."""
    world = World()
    alice, _ = signed_in(world, identity())
    other, _ = signed_in(world, identity(sub="u-alice-2"))
    run(world.hub.join(alice, Join("lobby")))
    with pytest.raises(errors.NameTaken):
        run(world.hub.join(other, Join("lobby")))


def test_a_resume_token_never_takes_a_signed_name() -> None:
    """The takeover by resume token is for anonymous names only."""
    world = World()
    alice, _ = signed_in(world, identity())
    run(world.hub.join(alice, Join("lobby")))
    mallory, _ = world.connect()
    assert alice.resume_token is not None
    with pytest.raises(errors.NameTaken):
        run(world.hub.join(mallory, Join("lobby", "alice", resume_token=alice.resume_token)))


def test_guests_are_marked_and_never_hold_a_signed_name() -> None:
    """A guest asking for a signed user's name gets it with the guest mark; lists and
    messages say who is signed and who is a guest."""
    world = World()
    alice, pa = signed_in(world, identity())
    run(world.hub.join(alice, Join("lobby")))
    world.batch()
    pa.take()
    impostor, pi = guest(world)
    run(world.hub.join(impostor, Join("lobby", "alice")))
    [welcome] = pi.take()
    assert isinstance(welcome, Welcome)
    assert welcome.name == "alice" + GUEST_MARK
    assert welcome.users == ["alice", "alice" + GUEST_MARK]
    assert welcome.subs == {"alice": "u-alice"}
    assert welcome.guests == ["alice" + GUEST_MARK]
    world.batch()
    [batch] = pa.take()
    assert batch == Presence("lobby", ["alice" + GUEST_MARK], [], 2, None, ["alice" + GUEST_MARK])
    run(world.hub.say(impostor, Say("lobby", "it is me")))
    run(world.hub.say(alice, Say("lobby", "no it is me")))
    said = [e for e in pa.take() if isinstance(e, Message)]
    assert [(m.name, m.user, m.guest) for m in said] == [
        ("alice" + GUEST_MARK, None, True),
        ("alice", "u-alice", False),
    ]
    # the guest may name itself again, with or without the mark
    run(world.hub.join(impostor, Join("dev", "alice")))
    run(world.hub.join(impostor, Join("ops", "alice" + GUEST_MARK)))
    with pytest.raises(errors.NameInvalid):
        run(world.hub.join(impostor, Join("misc", "bob")))


def test_who_says_who_is_who() -> None:
    """A page of `who` carries the subs of its signed names and its guests."""
    world = World()
    alice, pa = signed_in(world, identity())
    zed, _ = guest(world)
    run(world.hub.join(alice, Join("lobby")))
    run(world.hub.join(zed, Join("lobby", "zed")))
    pa.take()
    world.hub.who(alice, Who("lobby"))
    assert pa.take() == [
        Members(
            "lobby",
            ["alice", "zed" + GUEST_MARK],
            None,
            2,
            {"alice": "u-alice"},
            ["zed" + GUEST_MARK],
        )
    ]


def test_the_open_chat_lists_carry_no_identities() -> None:
    """With nobody signed in and no guests, welcome and presence carry no subs or guests."""
    world = World()
    a, pa = world.connect()
    b, _ = world.connect()
    run(world.hub.join(a, Join("lobby", "a")))
    world.batch()
    run(world.hub.join(b, Join("lobby", "b")))
    world.batch()
    assert pa.take()[1:] == [Presence("lobby", ["b"], [], 2)]


def test_signed_messages_are_stored_with_their_user() -> None:
    """The history keeps the sender's sub, so a later welcome tells the two alices apart."""
    world = World()
    alice, _ = signed_in(world, identity())
    run(world.hub.join(alice, Join("lobby")))
    run(world.hub.say(alice, Say("lobby", "signed words")))
    world.hub.disconnect(alice)
    reader, pr = world.connect()
    run(world.hub.join(reader, Join("lobby", "alice")))
    [welcome] = pr.take()
    assert isinstance(welcome, Welcome)
    [(name, user)] = [(m.name, m.user) for m in welcome.history]
    assert (name, user) == ("alice", "u-alice")


def test_presence_parts_keep_only_their_own_identities() -> None:
    """A member who joined mid-interval gets only the later changes, with only their subs."""
    world = World()
    first, p1 = signed_in(world, identity("u-1", "one"))
    run(world.hub.join(first, Join("lobby")))
    world.batch()
    second, p2 = signed_in(world, identity("u-2", "two"))
    third, _ = signed_in(world, identity("u-3", "three"))
    run(world.hub.join(second, Join("lobby")))
    run(world.hub.join(third, Join("lobby")))
    p2.take()
    world.batch()
    assert p2.take() == [Presence("lobby", ["three"], [], 3, {"three": "u-3"})]
    assert p1.take()[1:] == [
        Presence("lobby", ["three", "two"], [], 3, {"three": "u-3", "two": "u-2"})
    ]


def test_companions_bookkeeping() -> None:
    """Companions are added, found, handed over and dropped per room and name."""
    seats: Companions[str] = Companions()
    seats.add("lobby", "alice", "tab2")
    seats.add("lobby", "alice", "tab3")
    assert seats.of("lobby", "alice") == ["tab2", "tab3"]
    assert sorted(seats.in_room("lobby")) == ["tab2", "tab3"]
    assert not seats.discard("lobby", "alice", "tab9")
    assert seats.discard("lobby", "alice", "tab2")
    assert seats.pop("lobby", "alice") == "tab3"
    assert seats.pop("lobby", "alice") is None
    assert not seats.has_room("lobby")
