"""Fan-out between the hub and the members of a room, possibly on other nodes.

The hub publishes room events to a Broker; the broker hands them to every node's
`deliver` callback, in id order and once each. A single node's LocalBroker delivers at once;
the Redis broker (wschat/redis_broker.py) delivers what any node stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from wschat.chat.model import Message, Presence

RoomEvent = Message | Presence
Deliver = Callable[[str, RoomEvent], None]
# The broker lost the thread of a room's messages: its members must recover with `since`.
Resync = Callable[[str], None]


class Broker(Protocol):
    def attach(self, deliver: Deliver, resync: Resync) -> None:
        """Set the callbacks through which this node's members get a room's events."""

    def publish(self, room: str, event: RoomEvent) -> None:
        """Send an event to every member of `room`, on every node. A Message has already been
        stored (and, with a shared store, announced to the other nodes by it)."""

    async def watch(self, room: str) -> None:
        """This node has a member in `room` now: from when this returns, every message stored
        in the room reaches `deliver`."""

    def unwatch(self, room: str) -> None:
        """This node's last member of `room` is gone."""


class LocalBroker:
    """A single node: publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def attach(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver

    def publish(self, room: str, event: RoomEvent) -> None:
        if self._deliver is None:
            raise RuntimeError("LocalBroker.publish before attach")
        self._deliver(room, event)

    async def watch(self, room: str) -> None:
        return None

    def unwatch(self, room: str) -> None:
        return None
