"""Names and presence across nodes: several hubs on one in-memory stand-in for Redis.

The stand-in keeps the claims as the Lua scripts of wschat/redis/lua/ do and queues every
change in the order it made them; `flush` delivers the queue to every node watching the room,
as the room's channel would (later, and in order). The roster contract suite at the end runs
against both the stand-in and the Redis roster running the real scripts on a real
redis-server, so the stand-in cannot drift from them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater

from wschat.chat import errors
from wschat.chat.identity import Identity
from wschat.chat.limits import Limits
from wschat.chat.model import Join, Leave, Left, Members, Presence, Welcome, Who
from wschat.chat.names import name_key
from wschat.chat.nodes import PARK_S
from wschat.chat.ports import (
    Claim,
    Held,
    Moved,
    NodeGone,
    OnChange,
    Released,
    Roster,
    RosterChange,
    Snapshot,
)
from wschat.chat.session import Session
from wschat.redis.node import RedisNode

from .chatkit import Peer, View, World, presences, run
from .conftest import RedisNodeFactory


@dataclass
class Record:
    """One claim, under its name's key (chat/names.py), as the Lua scripts keep it."""

    name: str
    holders: set[str]
    user: str | None
    guest: bool
    token: str


@dataclass
class Directory:
    """The rooms' claims, and the changes not yet delivered."""

    rooms: dict[str, dict[str, Record]] = field(default_factory=dict)
    # Each change numbered, as a room's pver numbers them: a snapshot covers those before it.
    queue: list[tuple[int, str, RosterChange]] = field(default_factory=list)
    version: int = 0
    nodes: list[FakeRoster] = field(default_factory=list)

    def flush(self) -> None:
        queue, self.queue = self.queue, []
        for number, room, change in queue:
            for node in self.nodes:
                node.deliver(number, room, change)

    def announce(self, room: str, change: RosterChange) -> None:
        self.version += 1
        self.queue.append((self.version, room, change))

    def drop(self, dead: str) -> None:
        """The reaper: everything `dead` held is let go."""
        for room, records in self.rooms.items():
            gone = [key for key, rec in records.items() if dead in rec.holders]
            for key in gone:
                records[key].holders.discard(dead)
                if not records[key].holders:
                    del records[key]
            if gone:
                self.announce(room, NodeGone(dead))


class FakeRoster:
    def __init__(self, directory: Directory, node: str) -> None:
        self.node = node
        self._dir = directory
        # The room's number of the snapshot this node started from.
        self._watching: dict[str, int] = {}
        self._on_change: OnChange | None = None
        self._on_lost: Callable[[str, str], None] | None = None
        directory.nodes.append(self)

    def attach(self, on_change: OnChange, on_lost: Callable[[str, str], None]) -> None:
        self._on_change = on_change
        self._on_lost = on_lost

    def lose(self, room: str, name: str) -> None:
        """The node's claim lapsed while it was cut off, and another node took the name."""
        assert self._on_lost is not None
        self._on_lost(room, name)

    async def watch(self, room: str) -> None:
        if room in self._watching:
            return
        self._watching[room] = self._dir.version
        records = self._dir.rooms.get(room, {})
        held = [
            Held(rec.name, node, rec.user, rec.guest)
            for rec in records.values()
            for node in rec.holders
        ]
        assert self._on_change is not None
        self._on_change(room, Snapshot(held))

    def unwatch(self, room: str) -> None:
        self._watching.pop(room, None)

    async def claim(self, room: str, name: str, claim: Claim) -> bool:
        records = self._dir.rooms.setdefault(room, {})
        rec = records.get(name_key(name))
        if rec is not None and rec.name != name:
            raise errors.NameTaken(f"the name {name!r} is taken in {room!r}")
        if rec is not None and self.node in rec.holders:
            rec.token = claim.token
            return False
        if rec is None:
            records[name_key(name)] = Record(
                name, {self.node}, claim.user, claim.guest, claim.token
            )
            self._dir.announce(room, Held(name, self.node, claim.user, claim.guest))
            return False
        if claim.user is not None and rec.user == claim.user:
            rec.holders.add(self.node)
            self._dir.announce(room, Held(name, self.node, claim.user, claim.guest))
            return False
        if claim.takeover is not None and rec.user is None and rec.token == claim.takeover:
            [old] = rec.holders
            rec.holders = {self.node}
            rec.token = claim.moved_token
            self._dir.announce(room, Moved(name, old, self.node))
            return True
        raise errors.NameTaken(f"the name {name!r} is taken in {room!r}")

    def release(self, room: str, name: str) -> None:
        rec = self._dir.rooms.get(room, {}).get(name_key(name))
        if rec is None or self.node not in rec.holders:
            return
        rec.holders.discard(self.node)
        if not rec.holders:
            del self._dir.rooms[room][name_key(name)]
        self._dir.announce(room, Released(name, self.node))

    def deliver(self, number: int, room: str, change: RosterChange) -> None:
        if number <= self._watching.get(room, number):
            return  # not watching, or already in its snapshot
        if isinstance(change, (Held, Released)) and change.node == self.node:
            return  # this node's own: it knew first
        assert self._on_change is not None
        self._on_change(room, change)


class Cluster:
    def __init__(self, nodes: int, limits: Limits = Limits()) -> None:
        self.directory = Directory()
        self.worlds = [
            World(limits, roster=FakeRoster(self.directory, f"n{i}")) for i in range(nodes)
        ]

    def join(self, node: int, name: str, room: str = "lobby") -> tuple[Session, Peer]:
        world = self.worlds[node]
        session, peer = world.connect(name)
        run(world.hub.join(session, Join(room, name)))
        return session, peer

    def settle(self) -> None:
        """The changes reach every node, then one presence interval passes everywhere."""
        self.directory.flush()
        for world in self.worlds:
            world.batch()


def test_a_name_is_unique_across_nodes_and_a_refusal_makes_no_presence() -> None:
    cluster = Cluster(2)
    _, alice = cluster.join(0, "alice")
    cluster.settle()
    alice.take()
    session, _ = cluster.worlds[1].connect("impostor")
    with pytest.raises(errors.NameTaken):
        run(cluster.worlds[1].hub.join(session, Join("lobby", "alice")))
    cluster.settle()
    assert presences(alice) == []
    assert cluster.worlds[1].hub.rooms() == []


def test_welcome_count_and_batches_cover_every_node() -> None:
    cluster = Cluster(3)
    _, alice = cluster.join(0, "alice")
    cluster.join(1, "bob")
    cluster.settle()
    assert presences(alice) == [Presence("lobby", ["bob"], [], 2)]
    _, carol = cluster.join(2, "carol")
    [welcome] = [e for e in carol.take() if isinstance(e, Welcome)]
    assert (welcome.users, welcome.count) == (["alice", "bob", "carol"], 3)
    cluster.settle()
    # The newcomer's welcome had it all: no batch repeats it.
    assert presences(carol) == []
    assert presences(alice) == [Presence("lobby", ["carol"], [], 3)]


def test_a_takeover_from_another_node_closes_the_old_connection_silently() -> None:
    cluster = Cluster(3)
    _, watcher = cluster.join(2, "watcher")
    old, old_peer = cluster.join(0, "alice")
    cluster.settle()
    watcher.take()
    token = old.resume_token
    world = cluster.worlds[1]
    new, new_peer = world.connect("alice again")
    run(world.hub.join(new, Join("lobby", "alice", resume_token=token)))
    assert new.resume_token == token
    cluster.settle()
    assert old_peer.replaced
    assert presences(watcher) == []
    assert presences(new_peer) == []
    assert cluster.worlds[0].hub.rooms() == []
    world.hub.leave(new, Leave("lobby"))
    cluster.settle()
    assert presences(watcher) == [Presence("lobby", [], ["alice"], 1)]


def test_a_signed_user_on_two_nodes_shares_the_name_and_leaves_once() -> None:
    cluster = Cluster(2)
    _, watcher = cluster.join(0, "watcher")
    tabs = []
    for node in (0, 1):
        world = cluster.worlds[node]
        session, _ = world.connect("tab")
        session.identity = _identity("u-1")
        session.name = "alice"
        run(world.hub.join(session, Join("lobby")))
        tabs.append((world, session))
    cluster.settle()
    assert presences(watcher) == [
        Presence("lobby", ["alice"], [], 2, subs={"alice": "u-1"}),
    ]
    first_world, first = tabs[0]
    first_world.hub.disconnect(first)
    cluster.settle()
    assert presences(watcher) == []
    second_world, second = tabs[1]
    second_world.hub.disconnect(second)
    cluster.settle()
    assert presences(watcher) == [Presence("lobby", [], ["alice"], 1)]


def test_a_dead_nodes_members_leave_everywhere() -> None:
    cluster = Cluster(2)
    _, watcher = cluster.join(0, "watcher")
    cluster.join(1, "doomed")
    cluster.settle()
    watcher.take()
    cluster.directory.drop("n1")
    cluster.settle()
    assert presences(watcher) == [Presence("lobby", [], ["doomed"], 1)]
    # The name is free again.
    cluster.join(0, "doomed")


def test_a_name_lost_while_cut_off_takes_the_member_out() -> None:
    cluster = Cluster(1)
    session, peer = cluster.join(0, "alice")
    cluster.settle()
    peer.take()
    cluster.directory.nodes[0].lose("lobby", "alice")
    assert peer.take() == [Left("lobby", "taken")]
    assert session.rooms == set()


def _identity(sub: str) -> Identity:
    return Identity(sub=sub, name="alice", exp_s=4_000_000_000.0)


# Random sessions over three nodes: (action, node, who) with action join/leave/drop/flush.
steps = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "drop", "flush", "batch"]),
        st.integers(0, 2),
        st.integers(0, 6),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps=steps, limit=st.sampled_from([3, 1000]))
def test_every_client_on_every_node_ends_with_the_true_member_list(
    steps: list[tuple[str, int, int]], limit: int
) -> None:
    """Whatever joins, leaves and drops happen on which node, and however late the changes
    reach the other nodes, once they have and a batch went out every member's own view
    (welcome + batches) is the room's member list over all nodes."""
    cluster = Cluster(3, Limits(member_list_limit=limit, rate_per_s=1000, burst=1000))
    live: dict[int, tuple[int, Session, Peer, View]] = {}
    for action, node, i in steps:
        name = f"m{i}"
        if action == "join" and i not in live:
            try:
                session, peer = cluster.join(node, name)
            except errors.NameTaken:
                continue
            # The browser client's rule: back under the limit, it pages the list with `who`.
            view = View(partial(cluster.worlds[node].who, session, "lobby"))
            live[i] = (node, session, peer, view)
        elif action in ("leave", "drop") and i in live:
            where, session, _, _ = live.pop(i)
            hub = cluster.worlds[where].hub
            if action == "leave":
                hub.leave(session, Leave("lobby"))
            else:
                hub.disconnect(session)
        elif action == "flush":
            cluster.directory.flush()
        elif action == "batch":
            cluster.worlds[node].batch()
        for _, _, peer, view in live.values():
            view.apply(peer.take())
    cluster.settle()
    truth = sorted(f"m{i}" for i in live)
    for where, session, peer, view in live.values():
        view.apply(peer.take())
        cluster.worlds[where].hub.who(session, Who("lobby"))
        assert peer.take() == [Members("lobby", truth, None, len(truth))]
        assert view.count == len(truth)
        if len(truth) > limit:
            assert view.names is None
        else:
            assert view.names is not None and sorted(view.names) == truth


def test_a_takeover_keeps_the_old_connections_other_rooms_for_its_rejoins() -> None:
    """The old connection was in two rooms: the client's rejoin of the second one on the new
    node moves that name silently as well; a room it does not come back to sees it leave
    once the parking time is over."""
    cluster = Cluster(3)
    watchers = {room: cluster.join(2, f"w-{room}", room)[1] for room in ("lobby", "hall", "den")}
    old_world = cluster.worlds[0]
    old, old_peer = old_world.connect("alice")
    for room in ("lobby", "hall", "den"):
        run(old_world.hub.join(old, Join(room, "alice")))
    cluster.settle()
    for peer in watchers.values():
        peer.take()
    world = cluster.worlds[1]
    new, _ = world.connect("alice again")
    run(world.hub.join(new, Join("lobby", "alice", resume_token=old.resume_token)))
    cluster.settle()
    assert old_peer.replaced
    old_world.hub.disconnect(old)  # as the protocol does once the 4001 close is done
    run(world.hub.join(new, Join("hall", "alice", resume_token=new.resume_token)))
    cluster.settle()
    assert [presences(peer) for peer in watchers.values()] == [[], [], []]
    old_world.clock.advance(PARK_S)
    cluster.settle()
    assert presences(watchers["den"]) == [Presence("den", [], ["alice"], 1)]
    assert presences(watchers["hall"]) == presences(watchers["lobby"]) == []
    assert old_world.hub.rooms() == []
    assert {name for name, _ in world.hub.rooms()} == {"hall", "lobby"}
    # The parked name was given back in Redis as well: anyone may take it now.
    cluster.join(1, "alice", "den")


# The roster contract: two nodes' rosters on one shared directory, the stand-in's or Redis's.


class Nodes:
    """Two nodes' rosters, and every change each was told of."""

    def __init__(self, rosters: list[Roster]) -> None:
        self.rosters = rosters
        self.seen: list[list[tuple[str, RosterChange]]] = [[] for _ in rosters]
        for i, roster in enumerate(rosters):
            roster.attach(self._recorder(i), lambda room, name: None)

    def _recorder(self, i: int) -> OnChange:
        def changed(room: str, change: RosterChange) -> None:
            self.seen[i].append((room, sorted_snapshot(change)))

        return changed

    async def watch(self, i: int, room: str) -> None:
        await self.rosters[i].watch(room)

    async def settle(self) -> None:
        """Every change announced so far has reached every node."""

    async def node_gone(self, node: str) -> None:
        """The reaper lets go of everything `node` held."""

    async def changes(self, i: int) -> list[tuple[str, RosterChange]]:
        await self.settle()
        seen, self.seen[i] = self.seen[i], []
        return seen


def sorted_snapshot(change: RosterChange) -> RosterChange:
    if isinstance(change, Snapshot):
        return Snapshot(sorted(change.holdings, key=lambda h: (h.name, h.node)))
    return change


class FakeNodes(Nodes):
    def __init__(self) -> None:
        self.directory = Directory()
        super().__init__([FakeRoster(self.directory, f"n{i}") for i in range(2)])

    async def settle(self) -> None:
        self.directory.flush()

    async def node_gone(self, node: str) -> None:
        self.directory.drop(node)


QUIET_S = 0.05
SETTLE_TIMEOUT_S = 5.0


class RedisNodes(Nodes):
    def __init__(self, nodes: list[RedisNode]) -> None:
        self.nodes = nodes
        super().__init__([node.roster for node in nodes])

    async def watch(self, i: int, room: str) -> None:
        # A node's hub watches both: the broker's subscription carries the roster's changes.
        await self.nodes[i].broker.watch(room)
        await super().watch(i, room)

    async def settle(self) -> None:
        # Redis publishes within the script; on one host the channel delivers in well under
        # QUIET_S, so a quiet spell that long means nothing more is on its way.
        waited = 0.0
        before = None
        while waited < SETTLE_TIMEOUT_S:
            now = [len(s) for s in self.seen]
            if now == before:
                return
            before = now
            await deferLater(reactor, QUIET_S)
            waited += QUIET_S

    async def node_gone(self, node: str) -> None:
        await self.nodes[0].roster.let_go(node)


@pytest.fixture(params=["fake", "redis"])
def make_nodes(request: pytest.FixtureRequest) -> Callable[[], Awaitable[Nodes]]:
    """`await make_nodes()`: nodes n0 and n1 on an empty directory."""
    if request.param == "fake":

        async def fake() -> Nodes:
            return FakeNodes()

        return fake
    make_node: RedisNodeFactory = request.getfixturevalue("redis_nodes")

    async def redis() -> Nodes:
        return RedisNodes([await make_node(f"n{i}", 100) for i in range(2)])

    return redis


NodesFactory = Callable[[], Awaitable[Nodes]]


def claim(user: str | None = None, token: str = "t0", takeover: str | None = None) -> Claim:
    return Claim(user, False, token, f"{token}-moved", takeover)


@pytest_twisted.ensureDeferred
async def test_contract_watching_begins_with_a_snapshot_of_every_node(
    make_nodes: NodesFactory,
) -> None:
    """A node that starts watching a room is told, first, everything held there."""
    nodes = await make_nodes()
    await nodes.watch(0, "lobby")
    await nodes.rosters[0].claim("lobby", "alice", claim())
    await nodes.rosters[0].claim("lobby", "bob", claim(user="u-bob"))
    await nodes.watch(1, "lobby")
    assert await nodes.changes(1) == [
        ("lobby", Snapshot([Held("alice", "n0"), Held("bob", "n0", "u-bob")]))
    ]


@pytest_twisted.ensureDeferred
async def test_contract_a_new_name_reaches_the_other_nodes_and_is_theirs_no_more(
    make_nodes: NodesFactory,
) -> None:
    """A claim of a free name is announced to the other nodes (not to the claimer); another
    node's claim of it is NameTaken, the same node's again is no change."""
    nodes = await make_nodes()
    for i in (0, 1):
        await nodes.watch(i, "lobby")
        await nodes.changes(i)
    assert await nodes.rosters[0].claim("lobby", "alice", claim()) is False
    assert await nodes.changes(1) == [("lobby", Held("alice", "n0"))]
    with pytest.raises(errors.NameTaken):
        await nodes.rosters[1].claim("lobby", "alice", claim(token="t1"))
    assert await nodes.rosters[0].claim("lobby", "alice", claim(token="t2")) is False
    assert await nodes.changes(0) == []
    assert await nodes.changes(1) == []


@pytest_twisted.ensureDeferred
async def test_contract_a_signed_user_shares_its_name_across_nodes(
    make_nodes: NodesFactory,
) -> None:
    """The same signed user takes its name on one more node; another user or a guest may
    not."""
    nodes = await make_nodes()
    for i in (0, 1):
        await nodes.watch(i, "lobby")
        await nodes.changes(i)
    await nodes.rosters[0].claim("lobby", "alice", claim(user="u-1"))
    for other in (claim(user="u-2"), claim(), claim(takeover="t0")):
        with pytest.raises(errors.NameTaken):
            await nodes.rosters[1].claim("lobby", "alice", other)
    assert await nodes.rosters[1].claim("lobby", "alice", claim(user="u-1")) is False
    assert await nodes.changes(0) == [("lobby", Held("alice", "n1", "u-1"))]


@pytest_twisted.ensureDeferred
async def test_contract_a_guest_name_moves_with_its_token(make_nodes: NodesFactory) -> None:
    """A guest's name is taken over by another node with its resume token (everyone is told
    it Moved); a wrong token is NameTaken, and the moved token is the one that counts next."""
    nodes = await make_nodes()
    for i in (0, 1):
        await nodes.watch(i, "lobby")
        await nodes.changes(i)
    await nodes.rosters[0].claim("lobby", "alice", claim(token="t0"))
    with pytest.raises(errors.NameTaken):
        await nodes.rosters[1].claim("lobby", "alice", claim(token="t1", takeover="wrong"))
    assert await nodes.rosters[1].claim("lobby", "alice", claim(token="t1", takeover="t0"))
    moved = ("lobby", Moved("alice", "n0", "n1"))
    assert await nodes.changes(0) == [moved]
    assert await nodes.changes(1) == [("lobby", Held("alice", "n0")), moved]
    with pytest.raises(errors.NameTaken):
        await nodes.rosters[0].claim("lobby", "alice", claim(token="t2", takeover="t0"))
    assert await nodes.rosters[0].claim("lobby", "alice", claim(token="t2", takeover="t1-moved"))


@pytest_twisted.ensureDeferred
async def test_contract_a_released_name_is_free(make_nodes: NodesFactory) -> None:
    """A release is announced to the other nodes, and the name may be claimed again."""
    nodes = await make_nodes()
    for i in (0, 1):
        await nodes.watch(i, "lobby")
        await nodes.changes(i)
    await nodes.rosters[0].claim("lobby", "alice", claim())
    nodes.rosters[0].release("lobby", "alice")
    assert await nodes.changes(1) == [
        ("lobby", Held("alice", "n0")),
        ("lobby", Released("alice", "n0")),
    ]
    assert await nodes.rosters[1].claim("lobby", "alice", claim(token="t1")) is False
    assert await nodes.changes(0) == [("lobby", Held("alice", "n1"))]


@pytest_twisted.ensureDeferred
async def test_contract_a_gone_nodes_names_are_let_go(make_nodes: NodesFactory) -> None:
    """When the reaper lets go of a node, the others are told NodeGone and its names are
    free."""
    nodes = await make_nodes()
    for i in (0, 1):
        await nodes.watch(i, "lobby")
        await nodes.changes(i)
    await nodes.rosters[1].claim("lobby", "bob", claim())
    await nodes.node_gone("n1")
    assert await nodes.changes(0) == [("lobby", Held("bob", "n1")), ("lobby", NodeGone("n1"))]
    assert await nodes.rosters[0].claim("lobby", "bob", claim(token="t1")) is False


@pytest_twisted.ensureDeferred
async def test_contract_names_that_read_the_same_are_one_claim(make_nodes: NodesFactory) -> None:
    """`José` (NFC) held on one node makes its NFD form, a look-alike with a Cyrillic o and other
    casings taken on another, even for the same signed user; changes and snapshots carry the
    name as typed, and releasing a look-alike lets go of nothing."""
    nodes = await make_nodes()
    for i in (0, 1):
        await nodes.watch(i, "lobby")
        await nodes.changes(i)
    await nodes.rosters[0].claim("lobby", "José", claim(user="u-1"))
    for alike in ("Jose\u0301", "J\u043esé", "JOSÉ"):
        for other in (claim(user="u-1", token="t1"), claim(token="t1")):
            with pytest.raises(errors.NameTaken):
                await nodes.rosters[1].claim("lobby", alike, other)
        nodes.rosters[1].release("lobby", alike)
    assert await nodes.changes(1) == [("lobby", Held("José", "n0", "u-1"))]
    assert await nodes.rosters[1].claim("lobby", "José", claim(user="u-1")) is False
    assert await nodes.changes(0) == [("lobby", Held("José", "n1", "u-1"))]
    await nodes.watch(1, "hall")
    await nodes.rosters[1].claim("hall", "ADMIN", claim())
    await nodes.watch(0, "hall")
    assert await nodes.changes(0) == [("hall", Snapshot([Held("ADMIN", "n1")]))]
