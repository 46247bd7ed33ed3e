"""The Broker of several nodes: a room's messages reach this node through its Redis channel.

A node subscribes to a room's channel while it has members there. Every message it stored
itself is also offered locally right after its ack (chat/sequence.py orders the two sources
and drops the second copy). When the channel skips an id, or the subscription was down, the
missing ids are read from the room's stream before anything newer is delivered; ids the
stream no longer has make the room's members resync (they join again with `since`).

The same channel carries the room's roster changes (wschat/redis_roster.py): they go to the
roster, in the order they came.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wschat.chat.errors import Unavailable
from wschat.chat.model import Message
from wschat.chat.ports import Deliver, NewMessage, Resync, RoomEvent, Stored
from wschat.chat.sequence import Gap, Sequencer
from wschat.redis.history import RedisHistory, channel_room, message_from_channel, room_keys
from wschat.redis.link import RedisLink
from wschat.redis.roster import RedisRoster

# How long one of our own messages seen on the channel waits for its ack to be sent first.
OWN_HOLD_S = 2.0


class _Watched:
    __slots__ = ("filling", "ready", "sequencer", "waiters")

    def __init__(self) -> None:
        self.sequencer: Sequencer | None = None
        self.waiters: list[Deferred[None]] = []
        self.filling = False
        self.ready = False


class RedisBroker:
    _log = Logger(namespace="wschat.redis_broker.RedisBroker")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._link: RedisLink | None = None
        self._store_: RedisHistory | None = None
        self._roster: RedisRoster | None = None
        self._deliver: Deliver | None = None
        self._resync: Resync | None = None
        self._rooms: dict[str, _Watched] = {}

    def connect(self, link: RedisLink, store: RedisHistory, roster: RedisRoster) -> None:
        """The link calls back into the broker, and the store and roster run on the link:
        all are made, then tied together here."""
        self._link = link
        self._store_ = store
        self._roster = roster

    @property
    def _store(self) -> RedisHistory:
        assert self._store_ is not None
        return self._store_

    def attach(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver
        self._resync = resync

    async def publish(
        self, room: str, new: NewMessage, stored: Stored | None = None
    ) -> tuple[Message, bool]:
        # One script stores the message and announces it on the room's channel.
        msg, fresh = await self._store.append(room, new)
        if stored is not None:
            stored(msg, fresh)
        watched = self._rooms.get(room)
        if fresh and watched is not None and watched.sequencer is not None:
            # Ours, offered before the channel's copy comes back (the sequencer keeps one).
            self._hand(room, watched.sequencer.local(msg))
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
        for waiter in watched.waiters:
            waiter.errback(Unavailable("left before the room's channel was ready"))
        assert self._link is not None
        self._link.unsubscribe(room_keys(room)["ch"])

    def _start(self, room: str, watched: _Watched) -> None:
        Deferred.fromCoroutine(self._subscribe(room, watched)).addErrback(
            self._failed_watch, room, watched
        )

    async def _subscribe(self, room: str, watched: _Watched) -> None:
        assert self._link is not None
        await self._link.subscribe(room_keys(room)["ch"])
        # Subscribed first, then the last id: every later one comes on the channel, every
        # earlier one is in the history the joining members are welcomed with.
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
        waiters, watched.waiters = watched.waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    # From the link.

    def on_message(self, channel: str, payload: str) -> None:
        room = channel_room(channel)
        watched = self._rooms.get(room) if room is not None else None
        if room is None or watched is None or watched.sequencer is None:
            return
        try:
            obj = json.loads(payload)
            if "p" in obj:
                assert self._roster is not None
                self._roster.announced(room, obj)
                return
            msg, origin = message_from_channel(room, obj)
        except (ValueError, KeyError, TypeError):
            self._log.failure("bad announcement on {channel}", channel=channel)
            return
        assert self._link is not None
        own = origin == self._link.node
        ready, gap = watched.sequencer.channel(msg, own)
        self._hand(room, ready)
        if own and msg.id > watched.sequencer.last:
            self._clock.callLater(OWN_HOLD_S, self._release, room, watched, msg.id)
        if gap is not None:
            self._fill(room, watched, gap)

    def on_subscribed(self) -> None:
        """The subscription is (back) up: what was published meanwhile is read from the
        streams, and the rosters are read again."""
        assert self._roster is not None
        self._roster.on_subscribed()
        for room, watched in list(self._rooms.items()):
            if watched.sequencer is None:
                continue
            Deferred.fromCoroutine(self._catch_up(room, watched)).addErrback(
                self._log_failure, room
            )

    async def _catch_up(self, room: str, watched: _Watched) -> None:
        assert watched.sequencer is not None
        # The link has subscribed to every watched room's channel again before saying so.
        last = await self._store.last_id(room)
        sequencer = watched.sequencer
        if last < sequencer.last:
            # The room's history is gone (Redis restarted without it): ids start over.
            self._log.warn(
                "the history of {room} went back from id {old} to {new}; its members resync",
                room=room,
                old=sequencer.last,
                new=last,
            )
            sequencer.reset(last)
            self._tell_resync(room)
        elif last > sequencer.last:
            self._fill(room, watched, Gap(sequencer.last + 1, last))

    def _release(self, room: str, watched: _Watched, msg_id: int) -> None:
        if self._rooms.get(room) is watched and watched.sequencer is not None:
            self._hand(room, watched.sequencer.release(msg_id))

    def _fill(self, room: str, watched: _Watched, gap: Gap) -> None:
        Deferred.fromCoroutine(self._read_gap(room, watched, gap)).addErrback(
            self._log_failure, room
        )

    async def _read_gap(self, room: str, watched: _Watched, gap: Gap) -> None:
        found = await self._store.range(room, gap.first, gap.last)
        if self._rooms.get(room) is not watched or watched.sequencer is None:
            return
        ready, lost = watched.sequencer.fill(gap.first, gap.last, found)
        if lost:
            self._log.warn(
                "ids {first}-{last} of {room} were trimmed before this node got them; "
                "its members resync",
                first=gap.first,
                last=gap.last,
                room=room,
            )
            self._tell_resync(room)
        self._hand(room, ready)

    def _hand(self, room: str, events: Sequence[RoomEvent]) -> None:
        deliver = self._deliver
        assert deliver is not None
        for event in events:
            deliver(room, event)

    def _tell_resync(self, room: str) -> None:
        assert self._resync is not None
        self._resync(room)

    def _log_failure(self, failure: Failure, room: str) -> None:
        if failure.check(Unavailable):
            return  # down again: the next reconnect catches up
        self._log.failure("catching up {room} failed", failure, room=room)
