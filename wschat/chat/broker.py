"""Fan-out between the hub and the members of a room, possibly on other nodes.

The hub publishes room events to a Broker; the broker hands them to every node's
`deliver` callback (here: just this node). A Redis broker implements the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .model import Message, Presence

RoomEvent = Message | Presence
Deliver = Callable[[str, RoomEvent], None]


class Broker(Protocol):
    def attach(self, deliver: Deliver) -> None:
        """Set the callback that delivers a room's events to this node's members."""

    def publish(self, room: str, event: RoomEvent) -> None:
        """Send an event to every member of `room`, on every node."""


class LocalBroker:
    """A single node: publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def attach(self, deliver: Deliver) -> None:
        self._deliver = deliver

    def publish(self, room: str, event: RoomEvent) -> None:
        if self._deliver is None:
            raise RuntimeError("LocalBroker.publish before attach")
        self._deliver(room, event)
