"""The Broker of several nodes, which owns the history: a say is stored and announced on the
room's channel by one script, atomically; a room's messages reach this node through that
channel.

Each room's history is a Redis Stream whose entry ids are the message ids themselves (`<id>-0`),
so ids increase strictly per room across every node and stream order is id order (keys.py names
the keys). The broker is also the HistoryStore: what it stored, it reads back.

A node subscribes to a room's channel while it has members there. Every message it stored
itself is also offered locally right after its ack (chat/sequence.py orders the two sources
and drops the second copy). When the channel skips an id, or the subscription was down, the
missing ids are read from the room's stream before anything newer is delivered; ids the
stream no longer has make the room's members resync (they join again with `since`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from wschat.chat.errors import SearchUnavailable, Unavailable
from wschat.chat.model import Message, Recovery
from wschat.chat.ports import Deliver, NewMessage, Resync, RoomEvent, Stored, recovery
from wschat.chat.search import Query
from wschat.chat.sequence import Gap, Sequencer
from wschat.logger import NamedLogger
from wschat.redis.keys import ref_field, room_keys
from wschat.redis.link import RedisLink, Script

# How long one of our own messages seen on the channel waits for its ack to be sent first.
OWN_HOLD_S = 2.0

APPEND = Script.named("append")
AFTER = Script.named("after")
EPOCH = Script.named("epoch")


def message_from_entry(room: str, entry: list[Any]) -> Message:
    entry_id, fields = entry
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return Message(
        room,
        int(entry_id.split("-", 1)[0]),
        values["n"],
        values["t"],
        values["ts"],
        values["r"] or None,
        values.get("u") or None,
        values.get("g") == "1",
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
    __slots__ = ("ready", "sequencer", "waiters")

    def __init__(self) -> None:
        self.sequencer: Sequencer | None = None
        self.waiters: list[Deferred[None]] = []
        self.ready = False


class RedisBroker:
    _log = NamedLogger("wschat.redis_broker.RedisBroker")

    def __init__(
        self,
        link: RedisLink,
        keep: int,
        clock: IReactorTime,
        new_epoch: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self._link = link
        self._keep = keep
        self._clock = clock
        self._new_epoch = new_epoch
        link.preload(APPEND, AFTER, EPOCH)
        self._deliver: Deliver = lambda room, event: None
        self._resync: Resync = lambda room: None
        self._rooms: dict[str, _Watched] = {}

    # The Broker interface.

    def attach(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver
        self._resync = resync

    async def publish(
        self, room: str, new: NewMessage, stored: Stored | None = None
    ) -> tuple[Message, bool]:
        msg, fresh = await self.append(room, new)
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
        waiters, watched.waiters = watched.waiters, []
        for waiter in waiters:
            waiter.errback(Unavailable("left before the room's channel was ready"))
        self._link.unsubscribe(room_keys(room).channel)

    # The HistoryStore interface.

    async def append(self, room: str, new: NewMessage) -> tuple[Message, bool]:
        """Store and announce, in one script (it publishes on the room's channel)."""
        ref = new.ref
        keys = room_keys(room)
        try:
            stored, msg_id, _epoch = await self._link.run(
                APPEND,
                [keys.seq, keys.log, keys.refs, keys.refz, keys.epoch],
                [
                    new.name,
                    new.text,
                    new.ts,
                    ref or "",
                    self._keep,
                    keys.channel,
                    self._new_epoch(),
                    self._link.node,
                    new.user or "",
                    "1" if new.guest else "0",
                    "1" if new.application else "0",
                ],
            )
        except Unavailable as exc:
            raise Unavailable(exc.message, ref) from None
        if int(stored) == 1:
            msg = Message(room, int(msg_id), new.name, new.text, new.ts, ref, new.user, new.guest)
            return msg, True
        kept = await self._range(room, int(msg_id), int(msg_id))
        return (
            kept[0] if kept else Message(room, int(msg_id), new.name, new.text, new.ts, ref)
        ), False

    async def find_ref(
        self, room: str, name: str, ref: str, application: bool = False
    ) -> Message | None:
        keys = room_keys(room)
        found = await self._link.call("HGET", keys.refs, ref_field(name, ref, application))
        if found is None:
            return None
        entries = await self._link.call("XRANGE", keys.log, f"{found}-0", f"{found}-0")
        return message_from_entry(room, entries[0]) if entries else None

    async def latest(self, room: str, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        entries = await self._link.call("XREVRANGE", room_keys(room).log, "+", "-", "COUNT", limit)
        return [message_from_entry(room, e) for e in reversed(entries)]

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        keys = room_keys(room)
        last, oldest, entries = await self._link.run(
            AFTER, [keys.seq, keys.log], [f"{since + 1}-0", "+", limit + 1]
        )
        found = [message_from_entry(room, e) for e in entries]
        oldest_kept = int(oldest) if int(oldest) else None
        return recovery(since, int(last), oldest_kept, found, limit)

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        log = room_keys(room).log
        if after is not None:
            entries = await self._link.call("XRANGE", log, f"({after}-0", "+", "COUNT", limit)
            return [message_from_entry(room, e) for e in entries]
        top = f"({before}-0" if before is not None else "+"
        entries = await self._link.call("XREVRANGE", log, top, "-", "COUNT", limit)
        return [message_from_entry(room, e) for e in reversed(entries)]

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        raise SearchUnavailable(
            "this server keeps history in Redis alone, which has no index to search: "
            "searching needs --history-db postgresql://..."
        )

    async def epoch(self, room: str) -> str | None:
        return str(await self._link.run(EPOCH, [room_keys(room).epoch], [self._new_epoch()]))

    def close(self) -> None:
        return None

    # From the link (through the node's router).

    def announced(self, room: str, obj: dict[str, Any]) -> None:
        """A message announced on the room's channel (its payload, parsed)."""
        watched = self._rooms.get(room)
        if watched is None or watched.sequencer is None:
            return
        msg, origin = message_from_channel(room, obj)
        own = origin == self._link.node
        ready, gap = watched.sequencer.channel(msg, own)
        self._hand(room, ready)
        if own and msg.id > watched.sequencer.last:
            self._clock.callLater(OWN_HOLD_S, self._release, room, watched, msg.id)
        if gap is not None:
            self._fill(room, watched, gap)

    def on_subscribed(self) -> None:
        """The subscription is (back) up: what was published meanwhile is read from the
        streams."""
        for room, watched in list(self._rooms.items()):
            if watched.sequencer is None:
                continue
            Deferred.fromCoroutine(self._catch_up(room, watched)).addErrback(
                self._log_failure, room
            )

    # Inside.

    async def _range(self, room: str, first: int, last: int) -> list[Message]:
        """What is kept of ids first..last, in order."""
        entries = await self._link.call("XRANGE", room_keys(room).log, f"{first}-0", f"{last}-0")
        return [message_from_entry(room, e) for e in entries]

    async def _last_id(self, room: str) -> int:
        value = await self._link.call("GET", room_keys(room).seq)
        return int(value) if value is not None else 0

    def _start(self, room: str, watched: _Watched) -> None:
        Deferred.fromCoroutine(self._subscribe(room, watched)).addErrback(
            self._failed_watch, room, watched
        )

    async def _subscribe(self, room: str, watched: _Watched) -> None:
        await self._link.subscribe(room_keys(room).channel)
        # Subscribed first, then the last id: every later one comes on the channel, every
        # earlier one is in the history the joining members are welcomed with.
        last = await self._last_id(room)
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
            self._link.unsubscribe(room_keys(room).channel)
        waiters, watched.waiters = watched.waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    async def _catch_up(self, room: str, watched: _Watched) -> None:
        # The link has subscribed to every watched room's channel again before saying so.
        last = await self._last_id(room)
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

    def _release(self, room: str, watched: _Watched, msg_id: int) -> None:
        if self._rooms.get(room) is watched and watched.sequencer is not None:
            self._hand(room, watched.sequencer.release(msg_id))

    def _fill(self, room: str, watched: _Watched, gap: Gap) -> None:
        Deferred.fromCoroutine(self._read_gap(room, watched, gap)).addErrback(
            self._log_failure, room
        )

    async def _read_gap(self, room: str, watched: _Watched, gap: Gap) -> None:
        found = await self._range(room, gap.first, gap.last)
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
            self._resync(room)
        self._hand(room, ready)

    def _hand(self, room: str, events: Sequence[RoomEvent]) -> None:
        deliver = self._deliver
        for event in events:
            deliver(room, event)

    def _log_failure(self, failure: Failure, room: str) -> None:
        if failure.check(Unavailable):
            return  # down again: the next reconnect catches up
        self._log.failure("catching up {room} failed", failure, room=room)
