"""One room's messages on one node, in id order and once each, from two sources.

With a shared store every stored message is announced on the room's channel, in id order
(the store gives the id and announces it in one atomic step). A node's own messages also come
straight from the say that stored them, after its ack: the sender must get its ack before its
copy, and the channel copy may well arrive first. So:

- a message is delivered when every lower id has been, and never twice;
- one of this node's own messages seen on the channel waits for its local offer (its ack is on
  the way) or for `release` (the ack never came: the node gave up waiting for the store);
- an id that the channel skipped is a gap (the node missed part of the channel): it is to be
  read from the store with `fill`; what the store no longer has is reported as lost, and the
  room's members must recover with `since`;
- `hole` says which ids are still missing below the newest one waiting: where the store does
  not announce in order itself (several nodes announce what they committed in PostgreSQL, and
  their announcements may cross, or one may never come), the broker reads a hole that outlives
  a short wait.
  (A message read back this way goes out as soon as its turn comes, even if it is one of
  ours whose ack is still on the way: the stream does not say which node stored it.)
"""

from __future__ import annotations

from dataclasses import dataclass

from wschat.chat.model import Message


@dataclass(frozen=True, slots=True)
class Gap:
    """Ids first..last (inclusive) are missing: read them from the store."""

    first: int
    last: int


class Sequencer:
    __slots__ = ("_holding", "_waiting", "last")

    def __init__(self, last: int) -> None:
        # The highest id delivered (or known to be in the history the members were welcomed
        # with).
        self.last = last
        self._waiting: dict[int, Message] = {}
        self._holding: set[int] = set()

    def local(self, msg: Message) -> list[Message]:
        """One of this node's own messages, stored and acked."""
        self._holding.discard(msg.id)
        if msg.id > self.last:
            self._waiting[msg.id] = msg
        return self._drain()

    def channel(self, msg: Message, own: bool) -> tuple[list[Message], Gap | None]:
        """A message announced on the room's channel; `own` if this node stored it."""
        if msg.id <= self.last or msg.id in self._waiting:
            if own:
                self._holding.discard(msg.id)
            return self._drain(), None
        if own:
            self._holding.add(msg.id)
        self._waiting[msg.id] = msg
        gap = None
        missing = [i for i in range(self.last + 1, msg.id) if i not in self._waiting]
        if missing:
            gap = Gap(missing[0], missing[-1])
        return self._drain(), gap

    def release(self, msg_id: int) -> list[Message]:
        """Stop waiting for the local offer of an own message."""
        self._holding.discard(msg_id)
        return self._drain()

    def fill(self, first: int, last: int, found: list[Message]) -> tuple[list[Message], bool]:
        """What the store had of ids first..last; returns what can be delivered now, and
        whether some of those ids are gone for good (the members must resync)."""
        for msg in found:
            if first <= msg.id <= last and msg.id > self.last:
                self._waiting.setdefault(msg.id, msg)
        lost = any(i not in self._waiting for i in range(max(first, self.last + 1), last + 1))
        if lost:
            # What is gone is skipped: the members are told to recover with `since` (which
            # answers recovered: false), and what comes after the gap goes on as usual.
            self.last = max(self.last, last)
            self._waiting = {i: m for i, m in self._waiting.items() if i > self.last}
        return self._drain(), lost

    def hole(self) -> Gap | None:
        """The ids missing below the newest one waiting, if any."""
        first = last = None
        expected = self.last + 1
        for i in sorted(self._waiting):
            if i > expected:
                first = expected if first is None else first
                last = i - 1
            expected = i + 1
        return Gap(first, last) if first is not None and last is not None else None

    def reset(self, last: int) -> None:
        """The store's history was lost or restarted: count from its current last id."""
        self.last = last
        self._waiting.clear()
        self._holding.clear()

    def _drain(self) -> list[Message]:
        ready = []
        waiting = self._waiting
        while (nxt := self.last + 1) in waiting and nxt not in self._holding:
            ready.append(waiting.pop(nxt))
            self.last = nxt
        return ready
