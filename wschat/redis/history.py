"""The shared HistoryStore: each room's history is a Redis Stream whose entry ids are the
message ids themselves (`<id>-0`), so ids increase strictly per room across every node and
stream order is id order.

Keys of a room, all under the hash tag {room} (so that a Redis Cluster could hold them):
  wschat:{room}:seq    the last id given out (INCR)
  wschat:{room}:log    the stream, trimmed to about --history-size entries
  wschat:{room}:refs   hash "name\\nref" -> id, for ref idempotency
  wschat:{room}:refz   the same refs by id, so that those of trimmed messages are dropped
  wschat:{room}:epoch  a random id of this history: if Redis loses the room, it changes
Channel: wschat:{room}:ch carries every stored message, published by the same script.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from wschat.chat.errors import Unavailable
from wschat.chat.model import Message, Recovery
from wschat.chat.ports import NewMessage, recovery
from wschat.redis.link import RedisLink, Script

# One say: the ref check, the next id, the XADD, the trim of the ref index, the publish, all
# atomic. Returns {stored (1 new, 0 a resend of a kept ref), id, epoch}.
APPEND = Script(
    """
local seq, log, refs, refz, epoch_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local name, text, ts, ref, keep, channel, new_epoch, node, user, guest =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9],
  ARGV[10]
local epoch = redis.call('GET', epoch_key)
if not epoch then
  epoch = new_epoch
  redis.call('SET', epoch_key, epoch)
end
local ref_key = name .. '\\n' .. ref
if ref ~= '' then
  local found = redis.call('HGET', refs, ref_key)
  if found and #redis.call('XRANGE', log, found .. '-0', found .. '-0') > 0 then
    return {0, tonumber(found), epoch}
  end
end
local id = redis.call('INCR', seq)
redis.call(
  'XADD', log, 'MAXLEN', '~', keep, id .. '-0',
  'n', name, 't', text, 'ts', ts, 'r', ref, 'u', user, 'g', guest)
if ref ~= '' then
  redis.call('HSET', refs, ref_key, id)
  redis.call('ZADD', refz, id, ref_key)
end
local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
if #oldest > 0 then
  local first = tonumber(string.match(oldest[1][1], '^(%d+)'))
  local gone = redis.call('ZRANGEBYSCORE', refz, '-inf', '(' .. first)
  if #gone > 0 then
    redis.call('HDEL', refs, unpack(gone))
    redis.call('ZREMRANGEBYSCORE', refz, '-inf', '(' .. first)
  end
end
local announced = cjson.encode(
  {id = id, n = name, t = text, ts = ts, r = ref, o = node, u = user, g = guest})
redis.call('PUBLISH', channel, announced)
return {1, id, epoch}
"""
)

# Messages after an id, with what `recovery` needs to judge them: {last id, oldest kept id,
# entries...}.
AFTER = Script(
    """
local seq, log = KEYS[1], KEYS[2]
local last = tonumber(redis.call('GET', seq) or '0')
local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
local first = 0
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local found = redis.call('XRANGE', log, ARGV[1], ARGV[2], 'COUNT', ARGV[3])
return {last, first, found}
"""
)

EPOCH = Script(
    """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
return epoch
"""
)


def room_keys(room: str) -> dict[str, str]:
    tag = f"wschat:{{{room}}}"
    names = ("seq", "log", "refs", "refz", "epoch", "ch", "members", "pver")
    return {name: f"{tag}:{name}" for name in names}


def channel_room(channel: str) -> str | None:
    """The room of a channel named by room_keys, else None."""
    if channel.startswith("wschat:{") and channel.endswith("}:ch"):
        return channel[len("wschat:{") : -len("}:ch")]
    return None


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


class RedisHistory:
    def __init__(
        self,
        link: RedisLink,
        keep: int,
        new_epoch: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self._link = link
        self._keep = keep
        self._new_epoch = new_epoch
        link.preload(APPEND, AFTER, EPOCH)

    async def append(self, room: str, new: NewMessage) -> tuple[Message, bool]:
        ref = new.ref
        keys = room_keys(room)
        try:
            stored, msg_id, _epoch = await self._link.run(
                APPEND,
                [keys["seq"], keys["log"], keys["refs"], keys["refz"], keys["epoch"]],
                [
                    new.name,
                    new.text,
                    new.ts,
                    ref or "",
                    self._keep,
                    keys["ch"],
                    self._new_epoch(),
                    self._link.node,
                    new.user or "",
                    "1" if new.guest else "0",
                ],
            )
        except Unavailable as exc:
            raise Unavailable(exc.message, ref) from None
        if int(stored) == 1:
            msg = Message(room, int(msg_id), new.name, new.text, new.ts, ref, new.user, new.guest)
            return msg, True
        kept = await self.range(room, int(msg_id), int(msg_id))
        return (
            kept[0] if kept else Message(room, int(msg_id), new.name, new.text, new.ts, ref)
        ), False

    async def find_ref(self, room: str, name: str, ref: str) -> Message | None:
        keys = room_keys(room)
        found = await self._link.call("HGET", keys["refs"], f"{name}\n{ref}")
        if found is None:
            return None
        entries = await self._link.call("XRANGE", keys["log"], f"{found}-0", f"{found}-0")
        return message_from_entry(room, entries[0]) if entries else None

    async def latest(self, room: str, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        entries = await self._link.call(
            "XREVRANGE", room_keys(room)["log"], "+", "-", "COUNT", limit
        )
        return [message_from_entry(room, e) for e in reversed(entries)]

    async def range(self, room: str, first: int, last: int) -> list[Message]:
        """What is kept of ids first..last, in order."""
        entries = await self._link.call("XRANGE", room_keys(room)["log"], f"{first}-0", f"{last}-0")
        return [message_from_entry(room, e) for e in entries]

    async def last_id(self, room: str) -> int:
        value = await self._link.call("GET", room_keys(room)["seq"])
        return int(value) if value is not None else 0

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        keys = room_keys(room)
        last, oldest, entries = await self._link.run(
            AFTER, [keys["seq"], keys["log"]], [f"{since + 1}-0", "+", limit + 1]
        )
        found = [message_from_entry(room, e) for e in entries]
        oldest_kept = int(oldest) if int(oldest) else None
        return recovery(since, int(last), oldest_kept, found, limit)

    async def epoch(self, room: str) -> str | None:
        return str(await self._link.run(EPOCH, [room_keys(room)["epoch"]], [self._new_epoch()]))

    def close(self) -> None:
        return None
