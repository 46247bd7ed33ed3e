"""Who holds which name in a room, across nodes.

One node decides names alone (LocalRoster). Several nodes on one Redis claim each name there
(wschat/redis_roster.py), so that a name is unique in a room on all nodes, and each node keeps
a copy of the other nodes' members of its rooms from the changes Redis announces in order.
The hub counts, lists and batches presence from that copy and its own members.

A node "holds" a name while it has a connection named so in the room; several nodes hold one
name when the same signed user is on each. The changes are about holdings, not names: a name
leaves the room when its last holder lets it go.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


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
