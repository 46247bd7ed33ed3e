"""Presence in batches, and who is who in the member lists.

A join or leave marks its room, and every `presence_interval_s` each marked room sends one
frame with all its changes (chat/room.py says how they add up). A join storm into one room
therefore costs a bounded number of frames a second, not one frame per member per join.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from wschat.chat.identity import Companions
from wschat.chat.limits import Limits
from wschat.chat.model import Presence
from wschat.chat.ports import RoomEvent
from wschat.chat.room import Room
from wschat.chat.session import Fanout, Schedule, Session


class WhoIsWho:
    """The `subs` and `guests` of member lists (welcome, members, presence).

    Until some member is signed or a guest (all of --auth off), lists carry neither and cost
    nothing more to build.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen = False

    def note(self, user: str | None, guest: bool) -> None:
        """A member with this identity is in some room (of this node or another)."""
        if user is not None or guest:
            self._seen = True

    def of(
        self, room: Room[Session], names: list[str] | None
    ) -> tuple[dict[str, str] | None, list[str] | None]:
        """Of `names`, the sub of each signed member and the guests (None, None if neither)."""
        if not self._seen or not names:
            return None, None
        subs: dict[str, str] = {}
        guests: list[str] = []
        for name in names:
            member = room.get(name)
            if member is None:
                sub, guest = room.remote_identity(name)
            else:
                sub, guest = member.user, member.guest
            if sub is not None:
                subs[name] = sub
            elif guest:
                guests.append(name)
        return subs or None, guests or None


class PresenceBatcher:
    """Collects the rooms whose members changed and sends each one batch per interval; hands
    every room event to the room's sessions on this node."""

    def __init__(
        self,
        rooms: Mapping[str, Room[Session]],
        companions: Companions[Session],
        who_is_who: WhoIsWho,
        fanout: Fanout,
        schedule: Schedule,
        limits: Limits,
    ) -> None:
        self._rooms = rooms
        self._companions = companions
        self._who_is_who = who_is_who
        self._fanout = fanout
        self._schedule = schedule
        self._limits = limits
        # Rooms with presence changes not yet sent; a room that empties is dropped from
        # the hub's rooms at once but stays here until its batch has been taken.
        self._marked: dict[str, Room[Session]] = {}

    def mark(self, room: str, members: Room[Session]) -> None:
        """The room's members changed: it goes out in the next batch."""
        if not self._marked:
            self._schedule(self._limits.presence_interval_s, self._send)
        self._marked[room] = members

    def pending(self, room: str) -> Room[Session] | None:
        """The room if its last batch is still to be sent (an emptied room that is joined
        again comes back as it was, so that the batch stays right)."""
        return self._marked.get(room)

    def _send(self) -> None:
        marked, self._marked = self._marked, {}
        limit = self._limits.member_list_limit
        for room, members in marked.items():
            joined, left = members.take_changes()
            count = len(members)
            if count > limit:
                # A repeat of the last count is news only to a member welcomed since, with
                # the count of its welcome.
                if count == members.sent_count and not any(
                    name in members for name in members.welcomed_batch
                ):
                    continue
                batch = Presence(room, None, None, count)
            elif joined or left:
                subs, guests = self._who_is_who.of(members, joined)
                batch = Presence(room, joined, left, count, subs, guests)
            else:
                continue
            members.sent_count = count
            self.deliver(room, batch)

    def deliver(self, room: str, event: RoomEvent) -> None:
        """Send a message or a presence batch to the room's sessions on this node."""
        members = self._rooms.get(room)
        if not members:
            return
        if self._companions.has_room(room):
            # Companions get every batch whole: its changes are idempotent to apply, so the
            # ones their own welcome already showed do no harm.
            self._fanout(list(self._companions.in_room(room)), event)
        if isinstance(event, Presence) and event.joined is not None:
            # A member who came in during the interval knows from its welcome of itself and
            # of the changes before it: its copy of the batch has only the later ones.
            newcomers = members.newcomers(event.joined)
            subjects = [s for n in newcomers if (s := members.get(n)) is not None]
            for subject in subjects:
                assert subject.name is not None
                joined, left = members.since_join(subject.name, event.joined, event.left or [])
                if joined or left:
                    self._fanout((subject,), _part_of(event, joined, left))
            if subjects:
                skip = set(map(id, subjects))
                self._fanout([s for s in members.sessions() if id(s) not in skip], event)
                return
        self._fanout(members.sessions(), event)


def _part_of(batch: Presence, joined: list[str], left: list[str]) -> Presence:
    """The batch with only these changes, and only their `subs` and `guests`."""
    subs = {n: batch.subs[n] for n in joined if n in batch.subs} if batch.subs else None
    guests = [n for n in joined if n in batch.guests] if batch.guests else None
    return dataclasses.replace(
        batch, joined=joined, left=left, subs=subs or None, guests=guests or None
    )
