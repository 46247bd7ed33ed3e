"""Where messages are kept: the HistoryStore interface and an in-memory store."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from wschat.chat.model import Message, Recovery


class HistoryStore(Protocol):
    """Durable, ordered per-room history. Methods are coroutines so a networked store fits."""

    async def append(
        self,
        room: str,
        name: str,
        text: str,
        ts: str,
        ref: str | None,
        *,
        user: str | None = None,
        guest: bool = False,
    ) -> tuple[Message, bool]:
        """Store a message under the room's next id, and say True; but if `name` already
        stored one with this `ref` in `room` (and it is still kept), return that one and False.
        StorageUnavailable (or Unavailable) if it was not stored. `user` is the signed sender's
        sub; `guest` marks a guest's message."""

    async def find_ref(self, room: str, name: str, ref: str) -> Message | None:
        """The kept message `name` stored in `room` with this `ref`, if any."""

    async def latest(self, room: str, limit: int) -> list[Message]:
        """The newest `limit` messages, oldest first."""

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        """Messages with id > since, and whether they are all of them (complete)."""

    async def epoch(self, room: str) -> str | None:
        """The room's history epoch (see Welcome.epoch); None for a store that keeps ids."""

    def close(self) -> None:
        """Release the store; called once at shutdown."""


def recovery(
    since: int, last_id: int, oldest_kept: int | None, found: list[Message], limit: int
) -> Recovery:
    """Decide whether `found` (ids > since, oldest first, up to limit + 1) is every missed message.

    Incomplete when `since` is ahead of the room (its history was reset), when messages right
    after `since` were already trimmed, or when more than `limit` were missed.
    """
    if since > last_id:
        return Recovery([], complete=False)
    if since == last_id:
        return Recovery([], complete=True)
    if oldest_kept is None or oldest_kept > since + 1 or len(found) > limit:
        return Recovery([], complete=False)
    return Recovery(found, complete=True)


class MemoryHistory:
    """Keeps the last `keep` messages of each room in memory; for tests and `:memory:` use."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._rooms: dict[str, deque[Message]] = {}
        self._last_id: dict[str, int] = {}

    async def append(
        self,
        room: str,
        name: str,
        text: str,
        ts: str,
        ref: str | None,
        *,
        user: str | None = None,
        guest: bool = False,
    ) -> tuple[Message, bool]:
        if ref is not None and (resent := await self.find_ref(room, name, ref)) is not None:
            return resent, False
        msg_id = self._last_id.get(room, 0) + 1
        self._last_id[room] = msg_id
        msg = Message(room, msg_id, name, text, ts, ref, user, guest)
        kept = self._rooms.get(room)
        if kept is None:
            kept = self._rooms[room] = deque(maxlen=self._keep)
        kept.append(msg)
        return msg, True

    async def find_ref(self, room: str, name: str, ref: str) -> Message | None:
        for msg in self._rooms.get(room, ()):
            if msg.ref == ref and msg.name == name:
                return msg
        return None

    async def latest(self, room: str, limit: int) -> list[Message]:
        kept = list(self._rooms.get(room, ()))
        return kept[-limit:] if limit > 0 else []

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        kept = self._rooms.get(room, deque())
        found = [m for m in kept if m.id > since][: limit + 1]
        oldest = kept[0].id if kept else None
        return recovery(since, self._last_id.get(room, 0), oldest, found, limit)

    async def epoch(self, room: str) -> str | None:
        return None

    def close(self) -> None:
        self._rooms.clear()
