"""The Roster of several nodes: names are claimed in Redis, and every change is announced there.

Every change is made by one script (wschat/redis/lua/) that also publishes it on the room's
channel, numbered by the room's `pver` (keys.py names the keys); so every node sees a room's
changes in the order Redis made them, knows when it missed some (a number skipped: it reads the
whole roster again), and a snapshot plus the changes numbered after it is the roster exactly.

A name is a hash field under its key (wschat/chat/names.py), so that names that read the same
are one claim; its record keeps the name as typed, which every change and snapshot reports.

The names are held under this node's lease (lease.py): a fresh lease makes the roster claim
its names again, and an ended one of another node makes it let go of that node's names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from wschat.chat.errors import NameTaken, Unavailable
from wschat.chat.names import name_key
from wschat.chat.ports import (
    Claim,
    Held,
    Moved,
    NodeGone,
    OnChange,
    Released,
    RosterChange,
    Snapshot,
)
from wschat.logger import NamedLogger
from wschat.redis.keys import room_keys, rooms_key
from wschat.redis.lease import NodeLease
from wschat.redis.link import RedisLink, Script

CLAIM = Script.named("change", "claim")
RELEASE = Script.named("change", "release")
SNAPSHOT = Script.named("snapshot")
# A dead node's holdings in one room are let go.
DROP = Script.named("change", "drop")
# After a reconnect: this node's holdings in a room made exactly the names given.
SYNC = Script.named("change", "sync")


def digest(token: str) -> str:
    """Resume tokens are kept in Redis only as digests."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _keys(room: str) -> list[str]:
    return room_keys(room).roster


def changes_from(items: list[list[str]]) -> list[RosterChange]:
    found: list[RosterChange] = []
    for item in items:
        kind = item[0]
        if kind == "h":
            found.append(Held(item[1], item[2], item[3] or None, item[4] == "1"))
        elif kind == "r":
            found.append(Released(item[1], item[2]))
        elif kind == "m":
            found.append(Moved(item[1], item[2], item[3]))
        elif kind == "d":
            found.append(NodeGone(item[1]))
        else:
            raise ValueError(f"unknown roster change {kind!r}")
    return found


def holdings_from(flat: list[str]) -> list[Held]:
    held: list[Held] = []
    for _key, raw in zip(flat[::2], flat[1::2], strict=True):
        rec = json.loads(raw)
        name = rec["n"]
        user = rec.get("u") or None
        guest = rec.get("g") == "1"
        held.extend(Held(name, node, user, guest) for node in rec["h"])
    return held


class _Watched:
    __slots__ = ("loading", "pending", "version", "waiters")

    def __init__(self) -> None:
        # None while a snapshot is on its way; the changes that arrive meanwhile wait.
        self.version: int | None = None
        self.loading = False
        self.pending: list[tuple[int, list[list[str]]]] = []
        self.waiters: list[Deferred[None]] = []


class RedisRoster:
    _log = NamedLogger("wschat.redis_roster.RedisRoster")

    def __init__(self, link: RedisLink, lease: NodeLease) -> None:
        self._link = link
        self._lease = lease
        self.node = link.node
        link.preload(CLAIM, RELEASE, SNAPSHOT, DROP, SYNC)
        lease.attach(self)
        self._on_change: OnChange = lambda room, change: None
        self._on_lost: Callable[[str, str], None] = lambda room, name: None
        self._rooms: dict[str, _Watched] = {}
        # What this node holds: room -> name -> (user, guest, token digest), for SYNC.
        self._held: dict[str, dict[str, tuple[str, str, str]]] = {}
        # The same for claims sent and not yet answered.
        self._claiming: dict[str, dict[str, tuple[str, str, str]]] = {}
        # Rooms known to be in this node's rooms set since the last sync.
        self._listed: set[str] = set()
        self._needs_sync = True
        self._syncing = False

    def attach(self, on_change: OnChange, on_lost: Callable[[str, str], None]) -> None:
        self._on_change = on_change
        self._on_lost = on_lost

    # The Roster interface.

    async def watch(self, room: str) -> None:
        watched = self._rooms.get(room)
        if watched is not None and watched.version is not None:
            return
        waiter: Deferred[None] = Deferred()
        if watched is None:
            watched = self._rooms[room] = _Watched()
        watched.waiters.append(waiter)
        # (Nothing happens if a read is on its way already; one that failed is tried again.)
        self._load(room, watched)
        await waiter

    def unwatch(self, room: str) -> None:
        watched = self._rooms.pop(room, None)
        if watched is not None:
            waiters, watched.waiters = watched.waiters, []
            for waiter in waiters:
                waiter.errback(Unavailable("left before the room's members were known"))
        if not self._held.get(room):
            self._held.pop(room, None)
            if room in self._listed:
                self._listed.discard(room)
                self._fire(self._link.call("SREM", rooms_key(self.node), room))

    async def claim(self, room: str, name: str, claim: Claim) -> bool:
        if not self._link.up:
            # (Its command connection alone may be back: this node has not checked its lease.)
            raise Unavailable("the chat's shared store (Redis) is out of reach; try again soon")
        self._lease.check_claims()
        if room not in self._listed:
            # Listed before anything is held there, so that whoever reaps this node finds it.
            self._listed.add(room)
            self._fire(self._link.call("SADD", rooms_key(self.node), room))
        token = digest(claim.token)
        user, guest = claim.user or "", "1" if claim.guest else "0"
        # A sync sent while the claim is on its way must not let go of it.
        claiming = self._claiming.setdefault(room, {})
        claiming[name] = (user, guest, token)
        try:
            outcome = await self._link.run(
                CLAIM,
                _keys(room),
                [
                    name_key(name),
                    name,
                    self.node,
                    user,
                    guest,
                    digest(claim.takeover) if claim.takeover else "",
                    token,
                    digest(claim.moved_token),
                ],
            )
        finally:
            del claiming[name]
            if not claiming:
                del self._claiming[room]
        if outcome == "taken":
            raise NameTaken(f"the name {name!r} is taken in {room!r}")
        moved = outcome == "moved"
        self._held.setdefault(room, {})[name] = (
            user,
            guest,
            digest(claim.moved_token) if moved else token,
        )
        return moved

    def release(self, room: str, name: str) -> None:
        held = self._held.get(room)
        if held is not None:
            held.pop(name, None)
        self._fire(self._link.run(RELEASE, _keys(room), [name_key(name), self.node]))

    # From the channel and the link (through the node's router), and the lease.

    def announced(self, room: str, payload: dict[str, Any]) -> None:
        watched = self._rooms.get(room)
        if watched is None:
            return
        version, items = int(payload["p"]), payload["c"]
        if watched.version is None:
            watched.pending.append((version, items))
            return
        self._apply(room, watched, version, items)

    def on_subscribed(self) -> None:
        """The subscription is (back) up: changes may have been missed, and Redis may have
        lost what this node holds; the lease's next renewal syncs."""
        self._needs_sync = True

    async def renewed(self, fresh: bool) -> None:
        if fresh or self._needs_sync:
            self._needs_sync = True
            await self._resync()

    async def let_go(self, node: str) -> None:
        rooms = await self._link.call("SMEMBERS", rooms_key(node))
        members = 0
        for room in rooms:
            members += int(await self._link.run(DROP, _keys(room), [node]))
        await self._link.call("DEL", rooms_key(node))
        self._log.warn(
            "node {dead} stopped renewing its lease: let go of its {members} members "
            "in {rooms} rooms",
            dead=node,
            members=members,
            rooms=len(rooms),
        )

    # Inside.

    def _apply(self, room: str, watched: _Watched, version: int, items: list[list[str]]) -> None:
        assert watched.version is not None
        if version <= watched.version:
            return  # already in the snapshot
        if version > watched.version + 1:
            self._log.info(
                "missed roster changes of {room} ({first}-{last}); reading it again",
                room=room,
                first=watched.version + 1,
                last=version - 1,
            )
            watched.version = None
            watched.pending = [(version, items)]
            self._load(room, watched)
            return
        watched.version = version
        node = self.node
        on_change = self._on_change
        for change in changes_from(items):
            if isinstance(change, Moved) and change.old == node:
                self._held.get(room, {}).pop(change.name, None)
            elif isinstance(change, (Held, Released)) and change.node == node:
                continue
            on_change(room, change)

    def _load(self, room: str, watched: _Watched) -> None:
        if watched.loading:
            return
        watched.loading = True
        Deferred.fromCoroutine(self._read(room, watched)).addErrback(
            self._load_failed, room, watched
        )

    async def _read(self, room: str, watched: _Watched) -> None:
        try:
            version, flat = await self._link.run(SNAPSHOT, _keys(room), [])
        finally:
            watched.loading = False
        if self._rooms.get(room) is not watched:
            return
        self._on_change(room, Snapshot(holdings_from(flat)))
        watched.version = int(version)
        pending, watched.pending = watched.pending, []
        for i, (number, items) in enumerate(pending):
            if watched.version is None:
                # A gap among them: read again, and these wait for that snapshot.
                watched.pending.extend(pending[i:])
                break
            self._apply(room, watched, number, items)
        waiters, watched.waiters = watched.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _load_failed(self, failure: Failure, room: str, watched: _Watched) -> None:
        waiters, watched.waiters = watched.waiters, []
        if waiters:
            if self._rooms.get(room) is watched:
                del self._rooms[room]
            for waiter in waiters:
                waiter.errback(failure)
        else:
            # A re-read of a room already watched: the next tick tries again.
            self._needs_sync = True
            self._log_unless_down(failure, "reading the members of {room} failed", room=room)

    async def _resync(self) -> None:
        if not self._link.up or self._syncing:
            return
        self._syncing = True
        try:
            await self._sync()
        finally:
            self._syncing = False

    async def _sync(self) -> None:
        self._needs_sync = False
        listed = await self._link.call("SMEMBERS", rooms_key(self.node))
        rooms = set(listed) | self._held.keys() | self._rooms.keys()
        for room in sorted(rooms):
            held = self._held.get(room, {})
            args: list[str] = [self.node]
            for name, (user, guest, token) in {**self._claiming.get(room, {}), **held}.items():
                args += [name_key(name), name, user, guest, token]
            lost = await self._link.run(SYNC, _keys(room), args)
            for name in lost:
                held.pop(name, None)
                self._on_lost(room, name)
        keep = {room for room, names in self._held.items() if names} | self._rooms.keys()
        for room in set(listed) - keep:
            await self._link.call("SREM", rooms_key(self.node), room)
        self._listed = keep
        if self._listed:
            await self._link.call("SADD", rooms_key(self.node), *sorted(self._listed))
        for room, watched in list(self._rooms.items()):
            if not watched.loading:
                watched.version = None
                watched.pending = []
                self._load(room, watched)

    def _fire(self, work: Any) -> None:
        """Start a command whose answer nobody waits for; if it fails, sync at the next tick."""
        Deferred.fromCoroutine(work).addErrback(self._failed_quietly)

    def _failed_quietly(self, failure: Failure) -> None:
        self._needs_sync = True
        self._log_unless_down(failure, "a roster update failed; syncing at the next renewal")

    def _log_unless_down(self, failure: Failure, text: str, **fields: Any) -> None:
        if failure.check(Unavailable):
            return  # the link logs the outage; the next reconnect syncs
        self._log.failure(text, failure, **fields)
