"""The chat's ports: what the hub needs from the engines behind it, and the values they trade.

Each port has an in-memory implementation for one node (chat/memory.py) and engine ones beside
it (wschat/store/ for SQLite, wschat/redis/ for several nodes); one contract suite per port runs
against each (tests/test_history.py, tests/test_roster.py).

- HistoryStore keeps a room's messages in id order, and reads them back.
- Broker stores a message and announces it to every node, in one step where the engine allows
  it; then hands every room event to this node's members, in id order and once each.
- Roster decides who holds which name in a room across nodes, and tells each node of the other
  nodes' changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from wschat.chat.model import Message, Presence, Recovery
from wschat.chat.search import Query


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message as it is said, before the store gives it an id."""

    name: str
    text: str
    ts: str
    ref: str | None = None
    # The signed sender's sub; a guest's message is marked as such.
    user: str | None = None
    guest: bool = False
    # Published by the application (the server API): its `ref` is the application's, kept
    # apart from every client's, so that a client can never pre-empt an API publish.
    application: bool = False


class HistoryStore(Protocol):
    """Durable, ordered per-room history. Methods are coroutines so a networked store fits."""

    async def append(self, room: str, new: NewMessage) -> tuple[Message, bool]:
        """Store the message under the room's next id, and say True; but if its name already
        stored one with this `ref` in `room` from the same side (the application's or the
        clients', `new.application`) and it is still kept, return that one and False.
        StorageUnavailable (or Unavailable) if it was not stored."""

    async def find_ref(
        self, room: str, name: str, ref: str, application: bool = False
    ) -> Message | None:
        """The kept message `name` stored in `room` with this `ref`, if any: among the
        application's messages if `application`, else among the clients'."""

    async def latest(self, room: str, limit: int) -> list[Message]:
        """The newest `limit` messages, oldest first."""

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        """Messages with id > since, and whether they are all of them (complete)."""

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        """Up to `limit` kept messages, oldest first: the newest with ids below `before`, or the
        oldest with ids above `after`, or the newest of all (neither given; never both)."""

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        """Up to `limit` kept messages that `query` matches (chat/search.py), newest first,
        with ids below `before` when given; from an index, never by reading the room.
        SearchUnavailable where the engine has no index."""

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


RoomEvent = Message | Presence
Deliver = Callable[[str, RoomEvent], None]
# The broker lost the thread of a room's messages: its members must recover with `since`.
Resync = Callable[[str], None]
# Called once a message is stored, before any member of this node gets it: store, then ack,
# then broadcast.
Stored = Callable[[Message, bool], None]


class Broker(Protocol):
    def attach(self, deliver: Deliver, resync: Resync) -> None:
        """Set the callbacks through which this node's members get a room's events."""

    async def publish(
        self, room: str, new: NewMessage, stored: Stored | None = None
    ) -> tuple[Message, bool]:
        """Store the message and announce it to every node's members of `room` (this node's
        through `deliver`, after `stored`). A `ref` already stored under its name returns that
        message and False, and reaches nobody again."""

    async def watch(self, room: str) -> None:
        """This node has a member in `room` now: from when this returns, every message stored
        in the room reaches `deliver`."""

    def unwatch(self, room: str) -> None:
        """This node's last member of `room` is gone."""


@dataclass(frozen=True, slots=True)
class Held:
    """`node` holds `name` (joined, or the same user came in on one more node)."""

    name: str
    node: str
    user: str | None = None
    guest: bool = False


@dataclass(frozen=True, slots=True)
class Released:
    name: str
    node: str


@dataclass(frozen=True, slots=True)
class Moved:
    """A token takeover from one node to another: nobody sees the name leave or come back."""

    name: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class NodeGone:
    """The node stopped renewing its lease: everything it held is let go."""

    node: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every holding of the room, when this node starts watching it or may have missed
    changes (a reconnect to Redis, a gap in the announcements)."""

    holdings: list[Held]


RosterChange = Held | Released | Moved | NodeGone | Snapshot
OnChange = Callable[[str, RosterChange], None]


@dataclass(frozen=True, slots=True)
class Claim:
    """What a node asks for when a connection takes a name in a room."""

    user: str | None
    guest: bool
    # The session's resume token if it comes in as a new holder, and if it takes the name
    # over from another node (it keeps the token it presented unless it already had one).
    token: str
    moved_token: str
    # The resume token presented for a takeover (None: no takeover asked).
    takeover: str | None = None


class Roster(Protocol):
    node: str

    def attach(self, on_change: OnChange, on_lost: Callable[[str, str], None]) -> None:
        """`on_change(room, change)`: another node's holdings changed. `on_lost(room, name)`:
        a name this node held went to another node while this node was cut off."""

    async def watch(self, room: str) -> None:
        """This node has a member in `room`: from when this returns, its changes arrive
        (beginning with a Snapshot)."""

    def unwatch(self, room: str) -> None:
        """This node's last member of `room` is gone (and its name released)."""

    async def claim(self, room: str, name: str, claim: Claim) -> bool:
        """Take `name` in `room` for a connection of this node: True if taken over from
        another node with the takeover token. NameTaken if another node holds it."""

    def release(self, room: str, name: str) -> None:
        """This node no longer holds `name` in `room`."""
