"""The Roster of several nodes: names are claimed in Redis, and every change is announced there.

Keys (the room's under its hash tag, like the history's):
  wschat:{room}:members  hash name -> {"h": {node: 1, ...}, "u": user, "g": guest, "t": token}
  wschat:{room}:pver     the number of the room's last roster change
  wschat:nodes           sorted set: node -> when its lease ends (Redis's clock, ms)
  wschat:node:<node>:rooms  the rooms where the node may hold names (for whoever reaps it)

Every change is made by one script that also publishes it on the room's channel, numbered by
`pver`; so every node sees a room's changes in the order Redis made them, knows when it missed
some (a number skipped: it reads the whole roster again), and a snapshot plus the changes
numbered after it is the roster exactly.

Each node renews its lease every RENEW_S. Every node looks for leases that ended, every
RENEW_S once it has been connected for LEASE_S (so that after a Redis outage, which stops every
renewal, nobody is reaped before it could renew), and lets go of what such a node held: a node
killed or cut off has its members leave within LEASE_S + RENEW_S (15 s; docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wschat.chat.errors import NameTaken, Unavailable
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
from wschat.redis.history import room_keys
from wschat.redis.link import RedisLink, Script

LEASE_S = 12.0
RENEW_S = 3.0
# How long a reaper has to finish with a dead node before another one may start over.
REAP_RETRY_S = 30.0
# After Redis lost this node's lease (it came back empty), new names wait this long: the
# longest reconnect delay of the other nodes (redis_link.RETRY, 5 s and up to 1 s of jitter),
# so that each has claimed its members' names again before anyone may take them.
RESTORE_S = 7.0
NODES_KEY = "wschat:nodes"

_CHANGE = """
local function announce(pver, channel, changes)
  if #changes == 0 then return end
  local v = redis.call('INCR', pver)
  redis.call('PUBLISH', channel, cjson.encode({p = v, c = changes}))
end
local function store(members, name, rec)
  if next(rec.h) == nil then
    redis.call('HDEL', members, name)
  else
    redis.call('HSET', members, name, cjson.encode(rec))
  end
end
"""

# Returns 'new', 'shared' (the same user on one more node), 'moved' (a takeover by token),
# 'held' (this node held it already) or 'taken'.
CLAIM = Script(
    _CHANGE
    + """
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local name, node, user, guest, takeover, token, moved =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local raw = redis.call('HGET', members, name)
if not raw then
  store(members, name, {h = {[node] = 1}, u = user, g = guest, t = token})
  announce(pver, channel, {{'h', name, node, user, guest}})
  return 'new'
end
local rec = cjson.decode(raw)
if rec.h[node] then
  rec.t = token
  store(members, name, rec)
  return 'held'
end
if user ~= '' and rec.u == user then
  rec.h[node] = 1
  store(members, name, rec)
  announce(pver, channel, {{'h', name, node, user, guest}})
  return 'shared'
end
if takeover ~= '' and rec.u == '' and rec.t == takeover then
  local old = next(rec.h)
  rec.h = {[node] = 1}
  rec.t = moved
  store(members, name, rec)
  announce(pver, channel, {{'m', name, old, node}})
  return 'moved'
end
return 'taken'
"""
)

RELEASE = Script(
    _CHANGE
    + """
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local name, node = ARGV[1], ARGV[2]
local raw = redis.call('HGET', members, name)
if not raw then return 0 end
local rec = cjson.decode(raw)
if not rec.h[node] then return 0 end
rec.h[node] = nil
store(members, name, rec)
announce(pver, channel, {{'r', name, node}})
return 1
"""
)

SNAPSHOT = Script(
    """
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"""
)

# A dead node's holdings in one room are let go.
DROP = Script(
    _CHANGE
    + """
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local node = ARGV[1]
local all = redis.call('HGETALL', members)
local n = 0
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if rec.h[node] then
    rec.h[node] = nil
    store(members, all[i], rec)
    n = n + 1
  end
end
if n > 0 then announce(pver, channel, {{'d', node}}) end
return n
"""
)

# Make this node's holdings in a room exactly the names given (name, user, guest, token...):
# after a reconnect (Redis may have lost them, or releases were lost on the way). Returns the
# names another node holds now.
SYNC = Script(
    _CHANGE
    + """
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local node = ARGV[1]
local want = {}
for i = 2, #ARGV, 4 do want[ARGV[i]] = i end
local changes, lost, have = {}, {}, {}
local all = redis.call('HGETALL', members)
for i = 1, #all, 2 do
  local name, rec = all[i], cjson.decode(all[i + 1])
  if rec.h[node] then
    if want[name] then
      have[name] = true
    else
      rec.h[node] = nil
      store(members, name, rec)
      changes[#changes + 1] = {'r', name, node}
    end
  end
end
for name, i in pairs(want) do
  if not have[name] then
    local user, guest, token = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local raw = redis.call('HGET', members, name)
    local rec = raw and cjson.decode(raw)
    if not rec then
      store(members, name, {h = {[node] = 1}, u = user, g = guest, t = token})
      changes[#changes + 1] = {'h', name, node, user, guest}
    elseif user ~= '' and rec.u == user then
      rec.h[node] = 1
      store(members, name, rec)
      changes[#changes + 1] = {'h', name, node, user, guest}
    else
      lost[#lost + 1] = name
    end
  end
end
announce(pver, channel, changes)
return lost
"""
)

# Returns 1 if the node had no lease (first start, or reaped meanwhile).
RENEW = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""
)

# Nodes whose lease ended (not this one); each is given REAP_RETRY_S to be reaped by us.
EXPIRED = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
local out = {}
for _, node in ipairs(dead) do
  if node ~= ARGV[1] then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), node)
    out[#out + 1] = node
  end
end
return out
"""
)


def rooms_key(node: str) -> str:
    return f"wschat:node:{node}:rooms"


def digest(token: str) -> str:
    """Resume tokens are kept in Redis only as digests."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _keys(room: str) -> list[str]:
    keys = room_keys(room)
    return [keys["members"], keys["pver"], keys["ch"]]


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
    for name, raw in zip(flat[::2], flat[1::2], strict=True):
        rec = json.loads(raw)
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


class RedisRoster(Service):
    _log = Logger(namespace="wschat.redis_roster.RedisRoster")

    def __init__(self, link: RedisLink, clock: IReactorTime) -> None:
        self._link = link
        self._clock = clock
        self.node = link.node
        link.preload(CLAIM, RELEASE, SNAPSHOT, DROP, SYNC, RENEW, EXPIRED)
        self._on_change: OnChange | None = None
        self._on_lost: Callable[[str, str], None] | None = None
        self._rooms: dict[str, _Watched] = {}
        # What this node holds: room -> name -> (user, guest, token digest), for SYNC.
        self._held: dict[str, dict[str, tuple[str, str, str]]] = {}
        # The same for claims sent and not yet answered.
        self._claiming: dict[str, dict[str, tuple[str, str, str]]] = {}
        # Rooms known to be in this node's rooms set since the last sync.
        self._listed: set[str] = set()
        self._needs_sync = True
        self._syncing = False
        # Whether this node had a lease yet, and until when new claims wait after one was lost;
        # None: a (re)connect has not been confirmed by a renewal yet.
        self._had_lease = False
        self._subscribed = False
        self._claims_from: float | None = 0.0
        self._tick = LoopingCall(self._renew)
        self._tick.clock = clock

    def attach(self, on_change: OnChange, on_lost: Callable[[str, str], None]) -> None:
        self._on_change = on_change
        self._on_lost = on_lost

    def startService(self) -> None:
        super().startService()
        self._tick.start(RENEW_S, now=True)

    def stopService(self) -> None:
        if self._tick.running:
            self._tick.stop()
        super().stopService()

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
        since = self._claims_from
        if since is None or self._clock.seconds() < since:
            raise Unavailable("the chat's shared store (Redis) is restoring names; try again soon")
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
        self._fire(self._link.run(RELEASE, _keys(room), [name, self.node]))

    # From the channel (through the broker) and the link.

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
        lost what this node holds."""
        self._needs_sync = True
        if self._subscribed:
            # A reconnect: until a renewal says whether Redis kept the lease, a name freed by
            # Redis losing everything may belong to a node not yet back.
            self._claims_from = None
        self._subscribed = True
        self._renew()

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
        assert on_change is not None
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
        assert self._on_change is not None
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
                args += [name, user, guest, token]
            lost = await self._link.run(SYNC, _keys(room), args)
            for name in lost:
                held.pop(name, None)
                assert self._on_lost is not None
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

    def _renew(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._renew_async()).addErrback(
            self._log_unless_down, "renewing the lease of {node} failed", node=self.node
        )

    async def _renew_async(self) -> None:
        if not self._link.up:
            return
        fresh = int(await self._link.run(RENEW, [NODES_KEY], [self.node, int(LEASE_S * 1000)]))
        if self._claims_from is None:
            lost = fresh == 1 and self._had_lease
            self._claims_from = self._clock.seconds() + (RESTORE_S if lost else 0.0)
            if lost:
                self._log.warn(
                    "redis had lost the lease of {node}: restoring names, new ones wait {s}s",
                    node=self.node,
                    s=RESTORE_S,
                )
        self._had_lease = True
        if fresh == 1 or self._needs_sync:
            self._needs_sync = True
            await self._resync()
        up_since = self._link.up_since
        if up_since is not None and self._clock.seconds() - up_since >= LEASE_S:
            await self._reap()

    async def _reap(self) -> None:
        dead = await self._link.run(EXPIRED, [NODES_KEY], [self.node, int(REAP_RETRY_S * 1000)])
        for node in dead:
            rooms = await self._link.call("SMEMBERS", rooms_key(node))
            members = 0
            for room in rooms:
                members += int(await self._link.run(DROP, _keys(room), [node]))
            await self._link.call("ZREM", NODES_KEY, node)
            await self._link.call("DEL", rooms_key(node))
            self._log.warn(
                "node {dead} stopped renewing its lease: let go of its {members} members "
                "in {rooms} rooms",
                dead=node,
                members=members,
                rooms=len(rooms),
            )

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
