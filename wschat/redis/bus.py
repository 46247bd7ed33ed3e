"""The Broker of several nodes: a room's messages reach every node through the room's Redis
channel, in id order and once each, whichever node stored them and wherever they are kept.

Two stores fit under it (node.py picks one):
- Redis alone (stream.py): one script stores a say in the room's stream and announces it on
  the channel, atomically. The channel then carries every id in order, so an id it skips was
  missed by this node (its subscription was down): it is read back from the stream at once.
- a store of record that draws the ids itself (PostgreSQL): a say is committed there, acked,
  then announced on the channel by the node that committed it. Two nodes' announcements may
  cross on the way, and a node that dies between its commit and its announcement never makes
  one, so an id missing below a later one is given ANNOUNCE_WAIT_S to come and is then read
  from the store. Such a store must make its ids visible in id order (a committed id means
  every lower one is committed too), which drawing them from a per-room row does.

Every message this node stored is also offered locally right after its ack (chat/sequence.py
orders the two sources and drops the second copy). When the subscription was down the rooms
catch up from the store's last id; ids the store no longer has make the room's members resync
(they join again with `since`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from wschat.chat.errors import StorageUnavailable, Unavailable
from wschat.chat.model import Message
from wschat.chat.ports import Deliver, HistoryStore, NewMessage, Resync, RoomEvent, Stored
from wschat.chat.sequence import Gap, Sequencer
from wschat.logger import NamedLogger
from wschat.redis.keys import room_channel
from wschat.redis.link import RedisLink

# How long one of our own messages seen on the channel waits for its ack to be sent first.
OWN_HOLD_S = 2.0
# How long an id missing below a later one waits for its announcement before it is read from
# the store; and then how long between reads while the store cannot answer.
ANNOUNCE_WAIT_S = 0.25
RETRY_S = 1.0
# Missed messages read back at most at once: past that (a long cut with everything kept) the
# members resync instead, and a rejoin with `since` gets at most --history-size anyway.
MAX_GAP_READ = 10_000


class BusStore(HistoryStore, Protocol):
    """A HistoryStore the bus reads missed messages from."""

    async def last_id(self, room: str) -> int:
        """The room's newest id (0 if none): every message up to it is stored."""


def announcement(msg: Message, node: str) -> str:
    """A message as the room's channel carries it (lua/append.lua encodes the same)."""
    return json.dumps(
        {
            "id": msg.id,
            "n": msg.name,
            "t": msg.text,
            "ts": msg.ts,
            "r": msg.ref or "",
            "o": node,
            "u": msg.user or "",
            "g": "1" if msg.guest else "0",
        },
        ensure_ascii=False,
    )


def message_from_channel(room: str, obj: dict[str, Any]) -> tuple[Message, str]:
    """A channel announcement (parsed): the message and the node that stored it."""
    msg = Message(
        room,
        int(obj["id"]),
        obj["n"],
        obj["t"],
        obj["ts"],
        obj["r"] or None,
        obj.get("u") or None,
        obj.get("g") == "1",
    )
    return msg, obj["o"]


class _Watched:
    __slots__ = ("hole_check", "ready", "sequencer", "waiters")

    def __init__(self) -> None:
        self.sequencer: Sequencer | None = None
        self.waiters: list[Deferred[None]] = []
        self.ready = False
        self.hole_check: IDelayedCall | None = None


class RedisBus:
    # The namespace operators filter on since the broker owned the history too.
    _log = NamedLogger("wschat.redis_broker.RedisBroker")

    def __init__(
        self, link: RedisLink, store: BusStore, clock: IReactorTime, store_announces: bool
    ) -> None:
        """`store_announces`: the store's append announces on the channel itself (the Redis
        stream's script); else the bus announces what was stored."""
        self._link = link
        self._store = store
        self._clock = clock
        self._store_announces = store_announces
        self._deliver: Deliver = lambda room, event: None
        self._resync: Resync = lambda room: None
        self._rooms: dict[str, _Watched] = {}
        # Per room, the newest message whose announcement failed (Redis out of reach): made
        # again once the link is back. The newest is enough: the other nodes read the ids
        # below it from the store.
        self._unannounced: dict[str, Message] = {}

    # The Broker interface.

    def attach(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver
        self._resync = resync

    async def publish(
        self, room: str, new: NewMessage, stored: Stored | None = None
    ) -> tuple[Message, bool]:
        msg, fresh = await self._store.append(room, new)
        if stored is not None:
            stored(msg, fresh)
        if not self._store_announces:
            # A resend is announced (and offered) again too: the first time may have been
            # committed without its answer reaching us, and so never announced. Every node's
            # sequencer drops what it delivered already.
            self._announce(room, msg)
        elif not fresh:
            return msg, fresh
        watched = self._rooms.get(room)
        if watched is not None and watched.sequencer is not None:
            # Ours, offered before the channel's copy comes back (the sequencer keeps one).
            self._hand(room, watched, watched.sequencer.local(msg))
        return msg, fresh

    async def watch(self, room: str) -> None:
        watched = self._rooms.get(room)
        if watched is not None and watched.ready:
            return
        waiter: Deferred[None] = Deferred()
        if watched is None:
            watched = self._rooms[room] = _Watched()
            watched.waiters.append(waiter)
            self._start(room, watched)
        else:
            watched.waiters.append(waiter)
        await waiter

    def unwatch(self, room: str) -> None:
        watched = self._rooms.pop(room, None)
        if watched is None:
            return
        waiters, watched.waiters = watched.waiters, []
        for waiter in waiters:
            waiter.errback(Unavailable("left before the room's channel was ready"))
        if watched.hole_check is not None and watched.hole_check.active():
            watched.hole_check.cancel()
        self._link.unsubscribe(room_channel(room))

    # From the link (through the node's router).

    def announced(self, room: str, obj: dict[str, Any]) -> None:
        """A message announced on the room's channel (its payload, parsed)."""
        watched = self._rooms.get(room)
        if watched is None or watched.sequencer is None:
            return
        msg, origin = message_from_channel(room, obj)
        own = origin == self._link.node
        ready, gap = watched.sequencer.channel(msg, own)
        if own and msg.id > watched.sequencer.last:
            self._clock.callLater(OWN_HOLD_S, self._release, room, watched, msg.id)
        if gap is not None and self._store_announces:
            # The channel carries every id in order: this one was missed, read it now.
            self._fill(room, watched, gap)
        self._hand(room, watched, ready)

    def on_subscribed(self) -> None:
        """The subscription is (back) up: what was published meanwhile is read from the
        store, and what this node could not announce is announced."""
        unannounced, self._unannounced = self._unannounced, {}
        for room, msg in unannounced.items():
            self._announce(room, msg)
        for room, watched in list(self._rooms.items()):
            if watched.sequencer is not None:
                self._catch_up(room, watched)

    # Inside.

    def _announce(self, room: str, msg: Message) -> None:
        payload = announcement(msg, self._link.node)
        self._link.send("PUBLISH", room_channel(room), payload).addCallbacks(
            self._was_announced,
            self._not_announced,
            callbackArgs=(room, msg),
            errbackArgs=(room, msg),
        )

    def _was_announced(self, _: object, room: str, msg: Message) -> None:
        missed = self._unannounced.get(room)
        if missed is not None and missed.id <= msg.id:
            del self._unannounced[room]

    def _not_announced(self, failure: Failure, room: str, msg: Message) -> None:
        missed = self._unannounced.get(room)
        if missed is None or missed.id < msg.id:
            self._unannounced[room] = msg
        if not failure.check(Unavailable):
            self._log.failure("announcing {room} {id} failed", failure, room=room, id=msg.id)

    def _start(self, room: str, watched: _Watched) -> None:
        Deferred.fromCoroutine(self._subscribe(room, watched)).addErrback(
            self._failed_watch, room, watched
        )

    async def _subscribe(self, room: str, watched: _Watched) -> None:
        await self._link.subscribe(room_channel(room))
        # Subscribed first, then the last id: every later one comes on the channel (or is
        # read as a hole below one that does), every earlier one is in the history the
        # joining members are welcomed with.
        last = await self._store.last_id(room)
        if self._rooms.get(room) is not watched:
            return
        watched.sequencer = Sequencer(last)
        watched.ready = True
        waiters, watched.waiters = watched.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed_watch(self, failure: Failure, room: str, watched: _Watched) -> None:
        if self._rooms.get(room) is watched:
            del self._rooms[room]
            # Not watched: not subscribed again on the next reconnect either.
            self._link.unsubscribe(room_channel(room))
        waiters, watched.waiters = watched.waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def _catch_up(self, room: str, watched: _Watched) -> None:
        Deferred.fromCoroutine(self._read_last(room, watched)).addErrback(
            self._failed_catch_up, room, watched
        )

    async def _read_last(self, room: str, watched: _Watched) -> None:
        # The link has subscribed to every watched room's channel again before saying so.
        last = await self._store.last_id(room)
        sequencer = watched.sequencer
        if sequencer is None or self._rooms.get(room) is not watched:
            return
        if last < sequencer.last:
            # The room's history is gone (Redis restarted without it): ids start over.
            self._log.warn(
                "the history of {room} went back from id {old} to {new}; its members resync",
                room=room,
                old=sequencer.last,
                new=last,
            )
            sequencer.reset(last)
            self._resync(room)
        elif last > sequencer.last:
            self._fill(room, watched, Gap(sequencer.last + 1, last))

    def _failed_catch_up(self, failure: Failure, room: str, watched: _Watched) -> None:
        if not failure.check(Unavailable, StorageUnavailable):
            self._log.failure("catching up {room} failed", failure, room=room)
        elif not self._store_announces and self._link.up:
            # The store of record is down while Redis is up: nothing else would try again.
            self._clock.callLater(RETRY_S, self._catch_up_again, room, watched)
        # (Redis down: its next reconnect catches up.)

    def _catch_up_again(self, room: str, watched: _Watched) -> None:
        if self._rooms.get(room) is watched and self._link.up:
            self._catch_up(room, watched)

    def _release(self, room: str, watched: _Watched, msg_id: int) -> None:
        if self._rooms.get(room) is watched and watched.sequencer is not None:
            self._hand(room, watched, watched.sequencer.release(msg_id))

    def _fill(self, room: str, watched: _Watched, gap: Gap) -> None:
        Deferred.fromCoroutine(self._read_gap(room, watched, gap)).addErrback(
            self._failed_read, room, watched
        )

    async def _read_gap(self, room: str, watched: _Watched, gap: Gap) -> None:
        limit = min(gap.last - gap.first + 1, MAX_GAP_READ)
        found = await self._store.page(room, None, gap.first - 1, limit)
        if self._rooms.get(room) is not watched or watched.sequencer is None:
            return
        ready, lost = watched.sequencer.fill(gap.first, gap.last, found)
        if lost:
            self._log.warn(
                "ids {first}-{last} of {room} were trimmed before this node got them (or are "
                "more than it reads at once); its members resync",
                first=gap.first,
                last=gap.last,
                room=room,
            )
            self._resync(room)
        self._hand(room, watched, ready)

    def _failed_read(self, failure: Failure, room: str, watched: _Watched) -> None:
        if not failure.check(Unavailable, StorageUnavailable):
            self._log.failure("reading missed messages of {room} failed", failure, room=room)
        if self._link.up:
            # What is still missing is read again later; with the link down, the catch-up
            # when it is back reads it.
            self._check_holes(room, watched, RETRY_S)

    def _hand(self, room: str, watched: _Watched, events: Sequence[RoomEvent]) -> None:
        deliver = self._deliver
        for event in events:
            deliver(room, event)
        self._check_holes(room, watched, ANNOUNCE_WAIT_S)

    def _check_holes(self, room: str, watched: _Watched, wait_s: float) -> None:
        """If ids are missing below a waiting one, read them in `wait_s` unless they come."""
        if watched.hole_check is None and watched.sequencer is not None:
            if watched.sequencer.hole() is not None:
                watched.hole_check = self._clock.callLater(wait_s, self._hole_due, room, watched)

    def _hole_due(self, room: str, watched: _Watched) -> None:
        watched.hole_check = None
        if self._rooms.get(room) is not watched or watched.sequencer is None:
            return
        gap = watched.sequencer.hole()
        if gap is not None:
            self._fill(room, watched, gap)
