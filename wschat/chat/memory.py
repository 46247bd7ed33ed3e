"""The ports of one node, in memory: history for tests and `--history-db :memory:`, and the
broker and roster of a node that is alone."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from wschat.chat.model import Message, Recovery
from wschat.chat.ports import (
    Claim,
    Deliver,
    HistoryStore,
    NewMessage,
    OnChange,
    Resync,
    Stored,
    recovery,
)
from wschat.chat.search import Query


class MemoryHistory:
    """Keeps the last `keep` messages of each room in memory; for tests and `:memory:` use."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        # Each message with whether the application published it (its refs are apart).
        self._rooms: dict[str, deque[tuple[Message, bool]]] = {}
        self._last_id: dict[str, int] = {}

    async def append(self, room: str, new: NewMessage) -> tuple[Message, bool]:
        ref = new.ref
        if ref is not None:
            resent = await self.find_ref(room, new.name, ref, new.application)
            if resent is not None:
                return resent, False
        msg_id = self._last_id.get(room, 0) + 1
        self._last_id[room] = msg_id
        msg = Message(room, msg_id, new.name, new.text, new.ts, ref, new.user, new.guest)
        kept = self._rooms.get(room)
        if kept is None:
            kept = self._rooms[room] = deque(maxlen=self._keep)
        kept.append((msg, new.application))
        return msg, True

    async def find_ref(
        self, room: str, name: str, ref: str, application: bool = False
    ) -> Message | None:
        for msg, published in self._rooms.get(room, ()):
            if msg.ref == ref and msg.name == name and published == application:
                return msg
        return None

    async def latest(self, room: str, limit: int) -> list[Message]:
        kept = [msg for msg, _ in self._rooms.get(room, ())]
        return kept[-limit:] if limit > 0 else []

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        kept = self._rooms.get(room, deque())
        found = [m for m, _ in kept if m.id > since][: limit + 1]
        oldest = kept[0][0].id if kept else None
        return recovery(since, self._last_id.get(room, 0), oldest, found, limit)

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        kept = [msg for msg, _ in self._rooms.get(room, ())]
        if after is not None:
            return [m for m in kept if m.id > after][:limit]
        if before is not None:
            kept = [m for m in kept if m.id < before]
        return kept[-limit:] if limit > 0 else []

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        found: list[Message] = []
        for msg, _ in reversed(self._rooms.get(room, ())):
            if len(found) >= limit:
                break
            if (before is None or msg.id < before) and query.matches(msg.text):
                found.append(msg)
        return found

    async def epoch(self, room: str) -> str | None:
        return None

    async def last_id(self, room: str) -> int:
        """The room's newest id (0 if none): what several nodes sharing this store catch up
        to (wschat/redis/bus.py)."""
        return self._last_id.get(room, 0)

    def close(self) -> None:
        self._rooms.clear()


class LocalBroker:
    """A single node: storing is announcing, and this node's members are every member."""

    def __init__(self, store: HistoryStore) -> None:
        self._store = store
        self._deliver: Deliver | None = None

    def attach(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver

    async def publish(
        self, room: str, new: NewMessage, stored: Stored | None = None
    ) -> tuple[Message, bool]:
        if self._deliver is None:
            raise RuntimeError("LocalBroker.publish before attach")
        msg, fresh = await self._store.append(room, new)
        if stored is not None:
            stored(msg, fresh)
        if fresh:
            self._deliver(room, msg)
        return msg, fresh

    async def watch(self, room: str) -> None:
        return None

    def unwatch(self, room: str) -> None:
        return None


class LocalRoster:
    """One node: the hub's own rooms are the whole truth."""

    node = "local"

    def attach(self, on_change: OnChange, on_lost: Callable[[str, str], None]) -> None:
        return None

    async def watch(self, room: str) -> None:
        return None

    def unwatch(self, room: str) -> None:
        return None

    async def claim(self, room: str, name: str, claim: Claim) -> bool:
        return False

    def release(self, room: str, name: str) -> None:
        return None
