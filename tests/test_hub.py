"""The hub: joining, saying, leaving, names, takeover and limits, without a reactor."""

from __future__ import annotations

import json

import pytest

from wschat.chat import errors
from wschat.chat.limits import Limits
from wschat.chat.memory import MemoryHistory
from wschat.chat.model import (
    Ack,
    Join,
    Leave,
    Left,
    Message,
    Presence,
    Say,
    Welcome,
    Who,
    format_ts,
)
from wschat.wire import event_fields

from .chatkit import World, run


def test_first_join_needs_a_name() -> None:
    """A connection's first join without a name is refused; with one it is welcomed."""
    world = World()
    alice, peer = world.connect()
    with pytest.raises(errors.NameRequired):
        run(world.hub.join(alice, Join("lobby")))
    run(world.hub.join(alice, Join("lobby", "alice")))
    [welcome] = peer.take()
    assert welcome == Welcome("lobby", "alice", ["alice"], 1, [], "token-1", None)


def test_later_joins_reuse_the_name() -> None:
    """After the first join the name may be omitted, but not changed."""
    world = World()
    alice, peer = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    run(world.hub.join(alice, Join("dev")))
    with pytest.raises(errors.NameInvalid):
        run(world.hub.join(alice, Join("ops", "mallory")))
    welcomes = peer.take()
    assert [w.room for w in welcomes if isinstance(w, Welcome)] == ["lobby", "dev"]
    assert {w.name for w in welcomes if isinstance(w, Welcome)} == {"alice"}
    assert alice.rooms == {"lobby", "dev"}


def test_presence_goes_to_the_others() -> None:
    """Joining and leaving is announced to the other members, not to the subject."""
    world = World()
    alice, pa = world.connect()
    bob, pb = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    world.batch()
    run(world.hub.join(bob, Join("lobby", "bob")))
    world.batch()
    assert pa.take()[1:] == [Presence("lobby", ["bob"], [], 2)]
    [welcome] = pb.take()
    assert isinstance(welcome, Welcome) and welcome.users == ["alice", "bob"]
    assert welcome.count == 2
    world.hub.leave(bob, Leave("lobby"))
    world.batch()
    assert pb.take() == [Left("lobby")]
    assert pa.take() == [Presence("lobby", [], ["bob"], 1)]


def test_say_stores_acks_then_broadcasts() -> None:
    """A message gets the next id, is acked to the sender first, then reaches every member."""
    world = World()
    alice, pa = world.connect()
    bob, pb = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    run(world.hub.join(bob, Join("lobby", "bob")))
    pa.take(), pb.take()
    run(world.hub.say(alice, Say("lobby", "hi", "r1")))
    msg = Message("lobby", 1, "alice", "hi", format_ts(world.now_s), "r1")
    assert pa.take() == [Ack("lobby", "r1", 1), msg]
    assert pb.take() == [msg]
    run(world.hub.say(bob, Say("lobby", "hello")))
    assert [e.id for e in pb.take() if isinstance(e, Ack | Message)] == [2, 2]


def test_say_outside_a_room_is_refused() -> None:
    """Only members may speak in a room; the error names the request's ref."""
    world = World()
    alice, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    with pytest.raises(errors.NotInRoom) as caught:
        run(world.hub.say(alice, Say("dev", "hi", "r9")))
    assert caught.value.ref == "r9"
    with pytest.raises(errors.NotInRoom):
        world.hub.leave(alice, Leave("dev"))


def test_same_ref_is_acked_not_stored_twice() -> None:
    """Resending a say with the same ref gets the original id and no second broadcast."""
    world = World()
    alice, pa = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    pa.take()
    run(world.hub.say(alice, Say("lobby", "once", "r1")))
    fanouts = world.fanouts
    run(world.hub.say(alice, Say("lobby", "once", "r1")))
    assert pa.take()[-1] == Ack("lobby", "r1", 1)
    assert world.fanouts == fanouts
    assert [m.text for m in run(world.store.latest("lobby", 10))] == ["once"]


def test_refs_are_per_name() -> None:
    """Another name using the same ref is a different message."""
    world = World()
    alice, _ = world.connect()
    bob, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    run(world.hub.join(bob, Join("lobby", "bob")))
    run(world.hub.say(alice, Say("lobby", "a", "same")))
    run(world.hub.say(bob, Say("lobby", "b", "same")))
    assert [m.id for m in run(world.store.latest("lobby", 10))] == [1, 2]


def test_names_are_unique_per_room() -> None:
    """A name held in a room is refused there, but free in another room."""
    world = World()
    first, _ = world.connect()
    second, _ = world.connect()
    run(world.hub.join(first, Join("lobby", "alice")))
    with pytest.raises(errors.NameTaken):
        run(world.hub.join(second, Join("lobby", "alice")))
    run(world.hub.join(second, Join("dev", "alice")))
    assert world.who(first, "lobby") == ["alice"] and world.who(second, "dev") == ["alice"]


def test_takeover_with_token_is_silent() -> None:
    """The right token takes the name and all rooms over; the old connection is closed,
    and the others see no presence."""
    world = World()
    old, p_old = world.connect("old")
    bob, pb = world.connect("bob")
    run(world.hub.join(old, Join("lobby", "alice")))
    run(world.hub.join(old, Join("dev")))
    run(world.hub.join(bob, Join("lobby", "bob")))
    [first_welcome] = p_old.take()[:1]
    assert isinstance(first_welcome, Welcome)
    pb.take()
    new, p_new = world.connect("new")
    with pytest.raises(errors.NameTaken):
        run(world.hub.join(new, Join("lobby", "alice", resume_token="wrong")))
    run(world.hub.join(new, Join("lobby", "alice", resume_token=first_welcome.resume_token)))
    assert p_old.replaced
    assert new.rooms == {"lobby", "dev"} and old.rooms == set()
    [welcome] = p_new.take()
    assert isinstance(welcome, Welcome) and welcome.resume_token == first_welcome.resume_token
    world.hub.disconnect(old)
    assert pb.take() == []
    run(world.hub.say(bob, Say("lobby", "still there?")))
    assert isinstance(p_new.take()[-1], Message)
    assert world.hub.connection_count == 2


def test_a_takeover_keeps_to_max_rooms_over_both_connections_rooms() -> None:
    """A takeover that would put the new connection in more than --max-rooms rooms (its own
    and the old one's together) is refused, and nothing moves; one that fits goes through."""
    world = World(Limits(max_rooms=2))
    old, p_old = world.connect("old")
    run(world.hub.join(old, Join("lobby", "alice")))
    run(world.hub.join(old, Join("dev")))
    assert old.resume_token is not None
    new, _ = world.connect("new")
    run(world.hub.join(new, Join("ops", "alice")))
    with pytest.raises(errors.TooManyRooms):
        run(world.hub.join(new, Join("lobby", "alice", resume_token=old.resume_token)))
    assert new.rooms == {"ops"} and old.rooms == {"lobby", "dev"} and not p_old.replaced
    assert world.who(old, "lobby") == ["alice"]
    world.hub.leave(new, Leave("ops"))
    run(world.hub.join(new, Join("lobby", "alice", resume_token=old.resume_token)))
    assert new.rooms == {"lobby", "dev"} and p_old.replaced


def test_rejoin_is_a_fresh_welcome() -> None:
    """Joining a room again answers with a welcome and broadcasts nothing."""
    world = World()
    alice, pa = world.connect()
    bob, pb = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    run(world.hub.join(bob, Join("lobby", "bob")))
    world.batch()
    pa.take()
    pb.take()
    run(world.hub.join(bob, Join("lobby")))
    world.batch()
    assert [type(e) for e in pb.take()] == [Welcome]
    assert pa.take() == []


def test_disconnect_leaves_every_room_and_forgets_empty_rooms() -> None:
    """A dropped connection is announced in each room and leaves nothing behind."""
    world = World()
    alice, pa = world.connect()
    bob, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    run(world.hub.join(bob, Join("lobby", "bob")))
    run(world.hub.join(bob, Join("dev")))
    world.batch()
    pa.take()
    world.hub.disconnect(bob)
    world.batch()
    assert pa.take() == [Presence("lobby", [], ["bob"], 1)]
    assert world.hub.room_count == 1 and world.hub.connection_count == 1
    world.hub.disconnect(alice)
    assert world.hub.room_count == 0 and world.hub.connection_count == 0


def test_rate_limit_refuses_beyond_burst_and_recovers() -> None:
    """Beyond the burst a say is refused with rate_limited; time restores the allowance."""
    world = World(Limits(rate_per_s=1.0, burst=2))
    alice, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    run(world.hub.say(alice, Say("lobby", "1")))
    run(world.hub.say(alice, Say("lobby", "2")))
    with pytest.raises(errors.RateLimited):
        run(world.hub.say(alice, Say("lobby", "3", "r3")))
    world.now_s += 1.0
    run(world.hub.say(alice, Say("lobby", "3", "r3")))
    assert [m.text for m in run(world.store.latest("lobby", 10))] == ["1", "2", "3"]


def test_join_leave_and_who_share_a_request_bucket_apart_from_say() -> None:
    """join, who and leave each take a token of the request bucket (refused with rate_limited
    beyond its burst, doing nothing); say draws from its own; time restores the allowance."""
    world = World(Limits(request_rate_per_s=1.0, request_burst=3))
    alice, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    world.who(alice, "lobby")
    world.hub.leave(alice, Leave("lobby"))
    with pytest.raises(errors.RateLimited, match="join, leave, who"):
        run(world.hub.join(alice, Join("lobby")))
    with pytest.raises(errors.RateLimited):
        world.hub.who(alice, Who("lobby"))
    assert alice.rooms == set()
    world.now_s += 1.0
    run(world.hub.join(alice, Join("lobby")))
    run(world.hub.say(alice, Say("lobby", "say is charged apart")))
    assert alice.rooms == {"lobby"}


def test_a_welcome_keeps_the_newest_history_that_fits_its_bytes() -> None:
    """The welcome's history, as encoded on the wire, is at most --welcome-history-bytes: the
    newest messages that fit; a `since` it cannot fully answer says recovered false."""
    cap = 20_000
    world = World(Limits(welcome_history_bytes=cap))
    alice, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    for index in range(10):
        run(world.hub.say(alice, Say("lobby", '"😀\n' * 500 + str(index))))
    world.now_s += 10.0
    bob, pb = world.connect()
    run(world.hub.join(bob, Join("lobby", "bob", since=0)))
    [welcome] = pb.take()
    assert isinstance(welcome, Welcome) and welcome.recovered is False
    fields = event_fields(welcome)["history"]
    assert len(json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()) <= cap
    assert [m.id for m in welcome.history] == [7, 8, 9, 10]
    run(world.hub.join(bob, Join("lobby", since=6)))
    [welcome] = pb.take()
    assert isinstance(welcome, Welcome) and welcome.recovered is True
    assert [m.id for m in welcome.history] == [7, 8, 9, 10]


def test_rate_per_ip_is_shared_by_the_connections_of_one_address() -> None:
    """--rate-per-ip: one address's connections share a burst and a rate; another address
    is not held back; the bucket goes with the connections: a new one starts a full burst."""
    world = World(Limits(rate_per_s=10.0, burst=10, rate_per_ip_s=1.0, burst_per_ip=3))
    sessions = [world.connect(address="10.0.0.9")[0] for _ in range(3)]
    other, _ = world.connect(address="10.0.0.1")
    for index, session in enumerate([*sessions, other]):
        run(world.hub.join(session, Join("lobby", f"user{index}")))
    for session in sessions:
        run(world.hub.say(session, Say("lobby", "ok")))
    with pytest.raises(errors.RateLimited, match="your address"):
        run(world.hub.say(sessions[0], Say("lobby", "over")))
    run(world.hub.say(other, Say("lobby", "still fine")))
    world.now_s += 1.0
    run(world.hub.say(sessions[1], Say("lobby", "one more a second")))
    with pytest.raises(errors.RateLimited, match="your address"):
        run(world.hub.say(sessions[2], Say("lobby", "over again")))
    for session in sessions:
        world.hub.disconnect(session)
    again, _ = world.connect(address="10.0.0.9")
    run(world.hub.join(again, Join("lobby", "again")))
    for _ in range(3):
        run(world.hub.say(again, Say("lobby", "a fresh burst")))


def test_a_takeover_releases_the_replaced_connections_address() -> None:
    """A connection replaced by a reconnect with its token no longer holds its address: the
    address's next connection starts a full burst, not the replaced one's spent bucket."""
    world = World(Limits(rate_per_ip_s=1.0, burst_per_ip=3))
    old, _ = world.connect(address="10.0.0.9")
    run(world.hub.join(old, Join("lobby", "alice")))
    for _ in range(3):
        run(world.hub.say(old, Say("lobby", "spending")))
    assert old.resume_token is not None
    new, _ = world.connect(address="10.0.0.7")
    run(world.hub.join(new, Join("lobby", "alice", resume_token=old.resume_token)))
    bob, _ = world.connect(address="10.0.0.9")
    run(world.hub.join(bob, Join("lobby", "bob")))
    for _ in range(3):
        run(world.hub.say(bob, Say("lobby", "a fresh burst")))


def test_room_and_member_limits() -> None:
    """--max-rooms and --max-members refuse joins beyond them."""
    world = World(Limits(max_rooms=2, max_members=1))
    alice, _ = world.connect()
    bob, _ = world.connect()
    run(world.hub.join(alice, Join("a", "alice")))
    run(world.hub.join(alice, Join("b")))
    with pytest.raises(errors.TooManyRooms):
        run(world.hub.join(alice, Join("c")))
    with pytest.raises(errors.RoomFull):
        run(world.hub.join(bob, Join("a", "bob")))


def test_history_on_join_is_the_latest() -> None:
    """A joiner gets the newest history_size messages, oldest first."""
    world = World(Limits(history_size=3))
    alice, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    for i in range(5):
        run(world.hub.say(alice, Say("lobby", f"m{i}")))
    bob, pb = world.connect()
    run(world.hub.join(bob, Join("lobby", "bob")))
    [welcome] = pb.take()
    assert isinstance(welcome, Welcome)
    assert [m.text for m in welcome.history] == ["m2", "m3", "m4"]
    assert welcome.recovered is None


@pytest.mark.parametrize(
    ("since", "recovered", "ids"),
    [
        (5, True, []),
        (3, True, [4, 5]),
        (2, True, [3, 4, 5]),
        (1, False, [3, 4, 5]),
        (0, False, [3, 4, 5]),
        (9, False, [3, 4, 5]),
    ],
)
def test_since_recovers_exactly_or_says_not(since: int, recovered: bool, ids: list[int]) -> None:
    """`since` returns exactly the missed messages, or recovered=false with the latest ones."""
    world = World(Limits(history_size=3))
    alice, _ = world.connect()
    run(world.hub.join(alice, Join("lobby", "alice")))
    for i in range(5):
        run(world.hub.say(alice, Say("lobby", f"m{i}")))
    bob, pb = world.connect()
    run(world.hub.join(bob, Join("lobby", "bob", since=since)))
    [welcome] = pb.take()
    assert isinstance(welcome, Welcome)
    assert welcome.recovered is recovered
    assert [m.id for m in welcome.history] == ids


def test_failed_history_read_undoes_the_join() -> None:
    """If the welcome cannot be built, the joiner is not left half in the room."""

    class BrokenReads(MemoryHistory):
        async def latest(self, room: str, limit: int) -> list[Message]:
            raise errors.StorageUnavailable("disk on fire")

    world = World(store=BrokenReads(10))
    alice, _ = world.connect()
    with pytest.raises(errors.StorageUnavailable):
        run(world.hub.join(alice, Join("lobby", "alice")))
    assert alice.rooms == set() and world.hub.room_count == 0


def test_timestamps_are_utc_milliseconds() -> None:
    """`ts` is ISO 8601 UTC with milliseconds and a Z, as JavaScript writes it."""
    assert format_ts(1_800_000_000.1234) == "2027-01-15T08:00:00.123Z"
