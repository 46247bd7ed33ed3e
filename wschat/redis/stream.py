"""The history of several nodes kept in Redis alone: each room's messages in a Redis Stream,
stored and announced on the room's channel by one script, atomically.

The stream's entry ids are the message ids themselves (`<id>-0`), so ids increase strictly per
room across every node and stream order is id order (keys.py names the keys). `--history-keep`
bounds each stream (0 keeps every message: Redis memory is then the operator's to watch).

A `ref` is remembered for REF_WINDOW_S, as the SQL stores do: a resend at most that long after
the first is the stored message again (while the stream keeps it), a later one is a new
message. The refs are indexed by the time they were stored (the node's clock, µs), and each say
forgets a few of the oldest: those out of the window, and those past `keep` of them (refs of
messages the stream trimmed), so that the index stays bounded when every message is kept.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from wschat.chat.errors import SearchUnavailable, Unavailable
from wschat.chat.model import Message, Recovery
from wschat.chat.ports import NewMessage, recovery
from wschat.chat.search import Query
from wschat.redis.keys import ref_field, room_keys
from wschat.redis.link import RedisLink, Script

# How long a ref is remembered (store/refs.py and postgres/store.py keep theirs as long).
REF_WINDOW_S = 24 * 3600

APPEND = Script.named("append")
AFTER = Script.named("after")
EPOCH = Script.named("epoch")
FIND = Script.named("find")


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


class RedisStream:
    """The HistoryStore in Redis; its `append` also announces on the room's channel."""

    def __init__(
        self,
        link: RedisLink,
        keep: int,
        now_s: Callable[[], float],
        ref_window_s: float = REF_WINDOW_S,
        new_epoch: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self._link = link
        self._keep = keep
        self._now_s = now_s
        self._ref_window_us = round(ref_window_s * 1_000_000)
        self._new_epoch = new_epoch
        link.preload(APPEND, AFTER, EPOCH, FIND)

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
                    self._now_us(),
                    self._ref_window_us,
                ],
            )
        except Unavailable as exc:
            raise Unavailable(exc.message, ref) from None
        if int(stored) == 1:
            msg = Message(room, int(msg_id), new.name, new.text, new.ts, ref, new.user, new.guest)
            return msg, True
        entries = await self._link.call("XRANGE", keys.log, f"{msg_id}-0", f"{msg_id}-0")
        return (
            message_from_entry(room, entries[0])
            if entries
            else Message(room, int(msg_id), new.name, new.text, new.ts, ref)
        ), False

    async def find_ref(
        self, room: str, name: str, ref: str, application: bool = False
    ) -> Message | None:
        keys = room_keys(room)
        entry = await self._link.run(
            FIND,
            [keys.refs, keys.refz, keys.log],
            [ref_field(name, ref, application), self._now_us() - self._ref_window_us],
        )
        return message_from_entry(room, entry) if entry else None

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

    async def last_id(self, room: str) -> int:
        value = await self._link.call("GET", room_keys(room).seq)
        return int(value) if value is not None else 0

    def close(self) -> None:
        return None

    def _now_us(self) -> int:
        return round(self._now_s() * 1_000_000)
