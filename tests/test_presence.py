"""Batched presence, big-room welcomes and `who` paging, on task.Clock without a reactor."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wschat.chat import errors
from wschat.chat.limits import Limits
from wschat.chat.model import Join, Leave, Members, Presence, Welcome, Who
from wschat.chat.session import Session

from .chatkit import Peer, View, World, presences, run


def joined(world: World, name: str, room: str = "lobby") -> tuple[Session, Peer]:
    session, peer = world.connect(name)
    run(world.hub.join(session, Join(room, name)))
    return session, peer


def test_changes_within_an_interval_go_out_as_one_frame() -> None:
    """Five joins in one interval reach an earlier member as one frame, sorted, with the
    count; nothing is sent before the interval ends, nor after it while nothing changes."""
    world = World()
    _, alice = joined(world, "alice")
    world.batch()
    alice.take()
    for name in ["eve", "bob", "dan", "carol", "fay"]:
        joined(world, name)
    assert presences(alice) == []
    world.batch()
    assert presences(alice) == [
        Presence("lobby", ["bob", "carol", "dan", "eve", "fay"], [], 6),
    ]
    world.batch()
    world.batch()
    assert presences(alice) == []


def test_the_subject_of_a_join_is_left_out_of_its_own_batch() -> None:
    """A newcomer's copy of its interval's batch has only the changes after its own join (the
    earlier ones are in its welcome), never itself; a batch of its own join alone sends it
    nothing."""
    world = World()
    joined(world, "alice")
    world.batch()
    _, bob = joined(world, "bob")
    world.batch()
    assert presences(bob) == []
    _, carol = joined(world, "carol")
    _, dave = joined(world, "dave")
    world.batch()
    assert presences(carol) == [Presence("lobby", ["dave"], [], 4)]
    assert presences(dave) == []
    assert presences(bob) == [Presence("lobby", ["carol", "dave"], [], 4)]


def test_a_name_that_joins_and_leaves_within_one_interval_is_sent_as_left() -> None:
    """Join then leave inside one interval: members before it, and one who came in between
    (and was welcomed with the name listed), all end without the name."""
    world = World()
    _, alice = joined(world, "alice")
    world.batch()
    alice.take()
    brief, _ = joined(world, "brief")
    _, carol = joined(world, "carol")
    [welcome] = [e for e in carol.events if isinstance(e, Welcome)]
    assert welcome.users == ["alice", "brief", "carol"]
    world.hub.leave(brief, Leave("lobby"))
    world.batch()
    assert presences(alice) == [Presence("lobby", ["carol"], ["brief"], 2)]
    view = View()
    view.apply(carol.events)
    assert view.names == {"alice", "carol"} and view.count == 2


def test_leave_and_come_back_within_one_interval_is_sent_as_joined() -> None:
    """A name that leaves and joins again (a reconnect without its token) inside one interval
    is in `joined`: a client who came in while it was away adds it back."""
    world = World()
    _, alice = joined(world, "alice")
    flaky, _ = joined(world, "flaky")
    world.batch()
    alice.take()
    world.hub.disconnect(flaky)
    _, carol = joined(world, "carol")
    joined(world, "flaky")
    world.batch()
    assert presences(alice) == [Presence("lobby", ["carol", "flaky"], [], 3)]
    view = View()
    view.apply(carol.take())
    assert view.names == {"alice", "carol", "flaky"}


def test_a_takeover_makes_no_presence() -> None:
    """A reconnect that takes its name back with its token is silent: no batch shows it."""
    world = World()
    _, alice = joined(world, "alice")
    bob, bob_peer = joined(world, "bob")
    world.batch()
    alice.take()
    token = bob.resume_token
    again, _ = world.connect("bob again")
    run(world.hub.join(again, Join("lobby", "bob", resume_token=token)))
    world.batch()
    assert presences(alice) == []
    assert bob_peer.replaced


def test_above_the_member_list_limit_only_the_count_goes_out() -> None:
    """Crossing --member-list-limit upwards: welcomes lose the list, batches carry only the
    count (none when it did not change); crossing back down, lists come back."""
    world = World(Limits(member_list_limit=3))
    _, alice = joined(world, "alice")
    joined(world, "bob")
    _, carol = joined(world, "carol")
    [welcome] = [e for e in carol.take() if isinstance(e, Welcome)]
    assert welcome.users == ["alice", "bob", "carol"] and welcome.count == 3
    world.batch()
    alice.take()
    dave, dave_peer = joined(world, "dave")
    [welcome] = [e for e in dave_peer.take() if isinstance(e, Welcome)]
    assert welcome.users is None and welcome.count == 4
    world.batch()
    assert presences(alice) == [Presence("lobby", None, None, 4)]
    assert presences(dave_peer) == [Presence("lobby", None, None, 4)]
    # A join and a leave in one interval leave the count as it was: no frame at all.
    eve, _ = joined(world, "eve")
    world.hub.leave(eve, Leave("lobby"))
    world.batch()
    assert presences(alice) == []
    world.hub.leave(dave, Leave("lobby"))
    world.batch()
    assert presences(alice) == [Presence("lobby", [], ["dave"], 3)]


def test_above_the_limit_a_newcomer_hears_the_count_return_to_the_last_batchs() -> None:
    """A member welcomed above the limit with one count gets the next batch even when that
    batch repeats the count of the one before its welcome (found by the property below)."""
    world = World(Limits(member_list_limit=3))
    first, _ = joined(world, "n0")
    for name in ("n2", "n3", "n4"):
        joined(world, name)
    world.batch()
    _, newcomer = joined(world, "n1")
    [welcome] = [e for e in newcomer.take() if isinstance(e, Welcome)]
    assert welcome.count == 5
    world.hub.leave(first, Leave("lobby"))
    world.batch()
    assert presences(newcomer) == [Presence("lobby", None, None, 4)]


def test_who_pages_in_name_order_and_survives_changes_between_pages() -> None:
    """`who` pages through the names in order; names that join before the cursor or leave
    after it between two pages move no other name across a page, so every member present
    throughout is listed exactly once."""
    world = World()
    names = [f"user{i:02d}" for i in range(10)]
    sessions = {name: joined(world, name)[0] for name in names}
    asker = sessions["user00"]
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        world.hub.who(asker, Who("lobby", after, 3))
        [page] = [e for e in peer_of(asker).take() if isinstance(e, Members)]
        seen += page.names
        pages += 1
        if pages == 1:
            joined(world, "aaa")  # sorts before the cursor: not on a later page
            world.hub.leave(sessions["user07"], Leave("lobby"))
        if page.next is None:
            break
        after = page.next
    assert len(seen) == len(set(seen))
    assert set(seen) >= set(names) - {"user07"}
    assert "aaa" not in seen
    assert page.count == 10


def peer_of(session: Session) -> Peer:
    outbox = session.outbox
    assert isinstance(outbox, Peer)
    return outbox


def test_who_is_for_members_only() -> None:
    """Only a member of a room may ask who is in it."""
    world = World()
    joined(world, "alice")
    stranger, _ = joined(world, "stranger", room="elsewhere")
    with pytest.raises(errors.NotInRoom):
        world.hub.who(stranger, Who("lobby"))
    with pytest.raises(errors.NotInRoom):
        world.hub.who(stranger, Who("nowhere"))


def test_the_last_page_has_no_next() -> None:
    """A room that fits one page answers with every name and next null."""
    world = World()
    alice, peer = joined(world, "alice")
    joined(world, "bob")
    peer.take()
    world.hub.who(alice, Who("lobby", None, 2))
    assert peer.take() == [Members("lobby", ["alice", "bob"], None, 2)]
    world.hub.who(alice, Who("lobby", None, 1))
    assert peer.take() == [Members("lobby", ["alice"], "alice", 2)]


# Steps of a random session: (action, who) with action join/leave/drop/batch.
steps = st.lists(
    st.tuples(st.sampled_from(["join", "leave", "drop", "batch"]), st.integers(0, 7)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps=steps, limit=st.sampled_from([3, 1000]))
def test_every_client_ends_with_the_rooms_true_member_list(
    steps: list[tuple[str, int]], limit: int
) -> None:
    """Whatever joins, leaves and drops happen between batches, after the next batch every
    member's own view (welcome + batches) is the room's member list and count; above the
    limit, it has the count and no list."""
    world = World(Limits(member_list_limit=limit, rate_per_s=1000, burst=1000))
    live: dict[int, tuple[Session, Peer, View]] = {}

    def pager(session: Session) -> Callable[[], list[str]]:
        def fetch() -> list[str]:
            names: list[str] = []
            after = None
            while True:
                world.hub.who(session, Who("lobby", after, 2))
                events = peer_of(session).events
                page = events.pop()
                assert isinstance(page, Members)
                names += page.names
                if page.next is None:
                    return names
                after = page.next

        return fetch

    for action, i in steps:
        name = f"n{i}"
        if action == "join" and i not in live:
            try:
                session, peer = joined(world, name)
            except errors.NameTaken:
                continue
            live[i] = (session, peer, View(pager(session)))
        elif action == "leave" and i in live:
            world.hub.leave(live.pop(i)[0], Leave("lobby"))
        elif action == "drop" and i in live:
            world.hub.disconnect(live.pop(i)[0])
        elif action == "batch":
            world.batch()
        for _, peer, view in live.values():
            view.apply(peer.take())
    world.batch()
    members = sorted(f"n{i}" for i in live)
    for _, peer, view in live.values():
        view.apply(peer.take())
        assert view.count == len(members)
        if len(members) > limit:
            assert view.names is None
        else:
            assert view.names is not None and sorted(view.names) == members
